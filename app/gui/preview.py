"""The preview: shows the input, the output or both side by side, scaled to fit with the aspect kept.

Frames arrive as numpy arrays. A QImage is built straight on the array's memory (no per-pixel work in
Python) and the array is kept referenced for as long as the image is, since QImage does not own
borrowed memory. Usually a display-sized copy made off the GUI thread comes along (see display.py) and
painting is a plain copy; otherwise, and right after a resize, QPainter scales the full frame.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPalette
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.gui.display import DisplayTarget, FramePacket

VIEW_OUTPUT, VIEW_INPUT, VIEW_SIDE = "output", "input", "side"


def image_from_array(frame: np.ndarray, bgra: bool = False) -> tuple[QImage, np.ndarray]:
    """A QImage over ``frame``'s memory and the array that must stay alive with it.

    The array is made C-contiguous first only when it is not (a crop or a mirrored view); the usual
    frame from the pipeline is used as it is. ``bgra``: four channels in B, G, R, A order (RGB32).
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 or HxWx4 uint8 array, got {frame.dtype} {frame.shape}")
    if not frame.flags.c_contiguous:
        frame = np.ascontiguousarray(frame)
    height, width, channels = frame.shape
    if channels == 3:
        fmt = QImage.Format.Format_RGB888
    else:
        fmt = QImage.Format.Format_RGB32 if bgra else QImage.Format.Format_RGBA8888
    image = QImage(frame.data, width, height, frame.strides[0], fmt)
    return image, frame


def fit_rect(image_size: QSize, area: QRect) -> QRect:
    """The largest rectangle of the image's aspect ratio centred in ``area``."""
    if image_size.isEmpty() or area.isEmpty():
        return QRect()
    scaled = image_size.scaled(area.size(), Qt.AspectRatioMode.KeepAspectRatio)
    x = area.x() + (area.width() - scaled.width()) // 2
    y = area.y() + (area.height() - scaled.height()) // 2
    return QRect(x, y, scaled.width(), scaled.height())


class _Slot:
    """One shown frame: the full image, a display-sized copy if any, and the arrays they borrow from."""

    __slots__ = ("image", "array", "shown", "shown_array")

    def __init__(self) -> None:
        self.image: QImage | None = None
        self.array: np.ndarray | None = None
        self.shown: QImage | None = None
        self.shown_array: np.ndarray | None = None

    def set(self, frame: np.ndarray | None, shown: np.ndarray | None = None) -> None:
        if frame is None:
            self.image, self.array = None, None
        else:
            self.image, self.array = image_from_array(frame)
        if shown is None:
            self.shown, self.shown_array = None, None
        else:
            self.shown, self.shown_array = image_from_array(shown, bgra=True)


class PreviewWidget(QWidget):
    """Paints the latest frames; ``show_frames`` is cheap enough to call for every frame."""

    double_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._input = _Slot()
        self._output = _Slot()
        self._view = VIEW_OUTPUT
        self._mirror = False
        self._placeholder = "Press Start (Space) to begin"
        #: What the window says about the model (e.g. random weights); shown on the output pane.
        self._model_badge = ""
        #: The last frame came through without a model: the output pane shows the raw input.
        self._passthrough = False
        self._alert = ""  # over every other note: something the user must know now (a lost engine server)
        self.frames_shown = 0
        #: Read by worker threads to scale frames for this widget; replaced, never mutated.
        self.display_target = DisplayTarget()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setAutoFillBackground(False)

    # ---------------------------------------------------------------------------------------- state

    def set_view(self, view: str) -> None:
        if view not in (VIEW_OUTPUT, VIEW_INPUT, VIEW_SIDE):
            raise ValueError(f"unknown view {view!r}")
        self._view = view
        self._publish_target()
        self.update()

    def view(self) -> str:
        return self._view

    def set_mirror(self, mirror: bool) -> None:
        """Mirror the display only (a selfie view); the virtual camera and recordings stay unmirrored."""
        self._mirror = mirror
        for slot in (self._input, self._output):  # their copies were flipped for the old setting
            slot.shown, slot.shown_array = None, None
        self._publish_target()
        self.update()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def set_model_badge(self, text: str) -> None:
        self._model_badge = text
        self.update()

    def set_alert(self, text: str) -> None:
        if text != self._alert:
            self._alert = text
            self.update()

    def badge(self) -> str:
        """The note painted over the output pane, '' for none."""
        if self._alert:
            return self._alert
        if self._passthrough:
            return "No model loaded: the picture passes through unfiltered"
        return self._model_badge

    def show_frames(self, input_frame: np.ndarray | None, output_frame: np.ndarray | None,
                    processed: bool = True) -> None:
        self.show_packet(FramePacket(input_frame, output_frame, processed=processed))

    def show_packet(self, packet: FramePacket) -> None:
        if packet.output is not None:
            self._passthrough = not packet.processed
        if packet.input is not None:
            self._input.set(packet.input, packet.shown_input)
        if packet.output is not None:
            self._output.set(packet.output, packet.shown_output)
        self.frames_shown += 1
        self.update()

    def clear(self) -> None:
        self._input.set(None)
        self._output.set(None)
        self.update()

    def current_image(self, which: str = VIEW_OUTPUT) -> QImage | None:
        slot = self._input if which == VIEW_INPUT else self._output
        return slot.image

    def current_array(self, which: str = VIEW_OUTPUT) -> np.ndarray | None:
        slot = self._input if which == VIEW_INPUT else self._output
        return slot.array

    # -------------------------------------------------------------------------------------- painting

    def sizeHint(self) -> QSize:
        return QSize(640, 480)

    def resizeEvent(self, event) -> None:  # noqa: N802
        self._publish_target()
        super().resizeEvent(event)

    def _publish_target(self) -> None:
        ratio = self.devicePixelRatioF()
        sizes = {}
        for name, area in (("input", self._pane_rect(VIEW_INPUT)), ("output", self._pane_rect(VIEW_OUTPUT))):
            sizes[name] = (int(area.width() * ratio), int(area.height() * ratio)) if area is not None else (0, 0)
        self.display_target = DisplayTarget(sizes["input"], sizes["output"], self._mirror)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(12, 13, 16))
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        panes = self._panes()
        if not any(slot.image is not None for slot, _, _ in panes):
            self._paint_placeholder(painter)
            return
        ratio = self.devicePixelRatioF()
        for slot, area, label in panes:
            if slot.image is None:
                continue
            target = fit_rect(slot.image.size(), area)
            shown = slot.shown
            if shown is not None and shown.width() == int(target.width() * ratio) and shown.height() == int(target.height() * ratio):
                # Already scaled (and mirrored) by a worker thread: a plain copy.
                shown.setDevicePixelRatio(ratio)
                painter.drawImage(target.topLeft(), shown)
            elif self._mirror:
                painter.save()
                painter.translate(target.x() * 2 + target.width(), 0)
                painter.scale(-1, 1)
                painter.drawImage(target, slot.image)
                painter.restore()
            else:
                painter.drawImage(target, slot.image)
            if label:
                self._paint_label(painter, target, label)
            if slot is self._output and self.badge():
                self._paint_badge(painter, target, self.badge())

    def _pane_rect(self, which: str) -> QRect | None:
        """Where ``which`` (input or output) is painted in the current view, None when it is not."""
        area = self.rect()
        if self._view != VIEW_SIDE:
            return area if self._view == which else None
        gap = 6
        half = (area.width() - gap) // 2
        if which == VIEW_INPUT:
            return QRect(area.x(), area.y(), half, area.height())
        return QRect(area.x() + half + gap, area.y(), area.width() - half - gap, area.height())

    def _panes(self) -> list[tuple[_Slot, QRect, str]]:
        labels = self._view == VIEW_SIDE
        panes = []
        for slot, which, label in ((self._input, VIEW_INPUT, "Input"), (self._output, VIEW_OUTPUT, "Output")):
            area = self._pane_rect(which)
            if area is not None:
                panes.append((slot, area, label if labels else ""))
        return panes

    def _paint_label(self, painter: QPainter, target: QRect, text: str) -> None:
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, font.pointSizeF() * 0.9))
        font.setBold(True)
        painter.setFont(font)
        metrics = painter.fontMetrics()
        box = QRectF(target.x() + 8, target.y() + 8, metrics.horizontalAdvance(text) + 14, metrics.height() + 6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor(235, 235, 240))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _paint_badge(self, painter: QPainter, target: QRect, text: str) -> None:
        # Amber and at the bottom: a user must not mistake the raw feed (or noise) for the styled one.
        font = QFont(self.font())
        font.setBold(True)
        painter.setFont(font)
        metrics = painter.fontMetrics()
        width = min(target.width() - 16, metrics.horizontalAdvance(text) + 20)
        box = QRectF(target.center().x() - width / 2, target.bottom() - metrics.height() - 18, width, metrics.height() + 10)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(214, 140, 20, 225))
        painter.drawRoundedRect(box, 5, 5)
        painter.setPen(QColor(20, 16, 8))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, metrics.elidedText(text, Qt.TextElideMode.ElideRight, int(width) - 12))

    def _paint_placeholder(self, painter: QPainter) -> None:
        painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.3)
        painter.setFont(font)
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._placeholder)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        self.double_clicked.emit()
        super().mouseDoubleClickEvent(event)
