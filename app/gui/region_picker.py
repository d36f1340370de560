"""Choose a screen region by dragging a rectangle over a screenshot of that screen."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QVBoxLayout, QWidget

from app.gui.preview import fit_rect, image_from_array


def grab_monitor(monitor: int) -> np.ndarray:
    """An RGB screenshot of mss monitor ``monitor``. Raises SourceError when the screen cannot be read."""
    import cv2

    from app.sources.screen import grab_error_hint, new_mss
    from app.sources import SourceError

    try:
        with new_mss() as grabber:
            shot = grabber.grab(grabber.monitors[monitor])
    except Exception as exc:  # noqa: BLE001 - any back-end failure means the same thing to the user
        raise SourceError(f"Cannot take a screenshot: {exc}. {grab_error_hint()}") from exc
    bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)


class RegionCanvas(QWidget):
    """Shows the screenshot scaled to fit and lets the user drag a rectangle on it."""

    region_changed = Signal()

    def __init__(self, screenshot: np.ndarray, parent: QWidget | None = None):
        super().__init__(parent)
        self._image, self._array = image_from_array(screenshot)
        self._start: QPoint | None = None
        self._selection = QRect()  # in screenshot pixels
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setMinimumSize(480, 300)

    def sizeHint(self) -> QSize:  # noqa: N802
        return self._image.size().scaled(QSize(1000, 640), Qt.AspectRatioMode.KeepAspectRatio)

    def _target(self) -> QRect:
        return fit_rect(self._image.size(), self.rect())

    def _to_image(self, point: QPoint) -> QPoint:
        target = self._target()
        scale = self._image.width() / max(1, target.width())
        x = int((point.x() - target.x()) * scale)
        y = int((point.y() - target.y()) * scale)
        return QPoint(min(max(x, 0), self._image.width()), min(max(y, 0), self._image.height()))

    def selection(self) -> tuple[int, int, int, int] | None:
        rect = self._selection.normalized()
        if rect.width() < 16 or rect.height() < 16:
            return None
        return rect.x(), rect.y(), rect.width(), rect.height()

    def set_selection(self, region: tuple[int, int, int, int]) -> None:
        self._selection = QRect(*region)
        self.update()

    def mousePressEvent(self, event) -> None:  # noqa: N802
        self._start = self._to_image(event.position().toPoint())
        self._selection = QRect(self._start, self._start)
        self.update()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if self._start is not None:
            self._selection = QRect(self._start, self._to_image(event.position().toPoint())).normalized()
            self.update()
            self.region_changed.emit()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        self._start = None
        self.region_changed.emit()

    def paintEvent(self, event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(10, 10, 12))
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        target = self._target()
        painter.drawImage(target, self._image)
        region = self.selection()
        if region is None:
            return
        scale = target.width() / max(1, self._image.width())
        shown = QRect(
            target.x() + int(region[0] * scale), target.y() + int(region[1] * scale),
            int(region[2] * scale), int(region[3] * scale),
        )
        # Dim everything outside the chosen rectangle so the choice reads at a glance.
        shade = QColor(0, 0, 0, 140)
        painter.fillRect(QRect(target.left(), target.top(), target.width(), shown.top() - target.top()), shade)
        painter.fillRect(QRect(target.left(), shown.bottom() + 1, target.width(), target.bottom() - shown.bottom()), shade)
        painter.fillRect(QRect(target.left(), shown.top(), shown.left() - target.left(), shown.height()), shade)
        painter.fillRect(QRect(shown.right() + 1, shown.top(), target.right() - shown.right(), shown.height()), shade)
        painter.setPen(QPen(QColor(124, 92, 255), 2))
        painter.drawRect(shown)


class RegionPickerDialog(QDialog):
    def __init__(self, screenshot: np.ndarray, current: tuple[int, int, int, int] | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Choose a screen region")
        self.canvas = RegionCanvas(screenshot)
        if current:
            self.canvas.set_selection(current)
        self.info = QLabel("Drag a rectangle over the part of the screen to use.")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.canvas.region_changed.connect(self._update)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.buttons)
        self._update()

    def region(self) -> tuple[int, int, int, int] | None:
        return self.canvas.selection()

    def _update(self) -> None:
        region = self.region()
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(region is not None)
        if region:
            self.info.setText(f"Region: x {region[0]}, y {region[1]}, {region[2]} × {region[3]} pixels")
