"""Where frames come from: a camera, a whole screen, a screen region, a video file or a test pattern."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QStyle,
    QToolButton,
    QWidget,
)

from app.gui.widgets import find_data, hint_label
from app.gui.settings import AppSettings, format_region, parse_region

log = logging.getLogger(__name__)

VIDEO_FILTER = "Videos (*.mp4 *.mov *.mkv *.avi *.webm *.m4v);;All files (*)"


@dataclass(frozen=True)
class SourceChoice:
    kind: str  # camera, screen, region, video, test
    camera_index: int = 0
    monitor: int = 1
    region: tuple[int, int, int, int] | None = None
    follow_mouse: bool = False
    video_path: str = ""


def build_source(choice: SourceChoice):
    """The app.sources object for a choice. Opening happens later, in the capture thread."""
    from app import sources

    if choice.kind == "camera":
        return sources.Camera(choice.camera_index)
    if choice.kind in ("screen", "region"):
        region = choice.region if choice.kind == "region" else None
        return sources.Screen(choice.monitor, region, follow_mouse=choice.follow_mouse and region is not None)
    if choice.kind == "video":
        return sources.VideoFile(choice.video_path, loop=True, paced=True)
    return sources.TestPattern(640, 480, fps=30.0)


def discover_devices() -> tuple[list, list[dict], str]:
    """Cameras, monitors (mss numbering, 0 = all screens) and a note when screens cannot be listed."""
    from app import sources

    try:
        cameras = sources.list_cameras()
    except Exception as error:  # noqa: BLE001 - a listing failure must not stop the window opening
        log.warning("listing cameras failed: %s", error)
        cameras = []
    try:
        monitors = sources.list_monitors()
        note = ""
    except Exception as error:  # noqa: BLE001
        monitors, note = [], str(error)
    return cameras, monitors, note


class SourcePanel(QGroupBox):
    source_changed = Signal(object)  # SourceChoice
    pick_region_requested = Signal(int)  # monitor

    def __init__(self, parent: QWidget | None = None, discover=discover_devices):
        super().__init__("Source", parent)
        self._discover = discover
        self._loading = False
        self._monitor = 1
        self._video_path = ""
        form = QFormLayout(self)
        self._form = form

        self.kind_combo = QComboBox()
        self.kind_combo.activated.connect(self._on_kind_activated)
        self.refresh_button = QToolButton()
        self.refresh_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_BrowserReload))
        self.refresh_button.setToolTip("Look for cameras and screens again")
        self.refresh_button.clicked.connect(self.refresh)
        row = QHBoxLayout()
        row.addWidget(self.kind_combo, 1)
        row.addWidget(self.refresh_button)
        form.addRow("Input", row)

        self.region_edit = QLineEdit()
        self.region_edit.setPlaceholderText("x, y, width, height")
        self.region_edit.setToolTip("The region of the screen, in pixels from its top-left corner")
        self.region_edit.editingFinished.connect(self._on_region_typed)
        self.pick_button = QToolButton(text="Pick…")
        self.pick_button.setToolTip("Drag a rectangle over a screenshot")
        self.pick_button.clicked.connect(lambda: self.pick_region_requested.emit(self._monitor))
        region_row = QHBoxLayout()
        region_row.addWidget(self.region_edit, 1)
        region_row.addWidget(self.pick_button)
        self.region_row = QWidget()
        self.region_row.setLayout(region_row)
        region_row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Region", self.region_row)
        self.follow_check = QCheckBox("Follow the mouse")
        self.follow_check.setToolTip("Keep the region's size and centre it on the pointer")
        self.follow_check.toggled.connect(self._emit)
        form.addRow("", self.follow_check)
        self.note = hint_label()
        form.addRow(self.note)
        self.refresh()

    # --------------------------------------------------------------------------------- listing

    def refresh(self) -> None:
        current = self.choice() if self.kind_combo.count() else None
        cameras, monitors, note = self._discover()
        self.kind_combo.blockSignals(True)
        self.kind_combo.clear()
        for camera in cameras:
            self.kind_combo.addItem(f"Camera {camera.label()}", ("camera", camera.index))
        for number, monitor in enumerate(monitors):
            if number == 0 and len(monitors) > 2:
                self.kind_combo.addItem(f"All screens ({monitor['width']}×{monitor['height']})", ("screen", 0))
            elif number > 0:
                self.kind_combo.addItem(f"Screen {number} ({monitor['width']}×{monitor['height']})", ("screen", number))
        if monitors:
            self.kind_combo.addItem("Screen region…", ("region", None))
        self.kind_combo.addItem("Video file…", ("video", None))
        self.kind_combo.addItem("Test pattern", ("test", None))
        self.kind_combo.blockSignals(False)
        hints = []
        if not cameras:
            hints.append("No camera found.")
        if note:
            hints.append(f"Screens unavailable: {note}")
        self.note.setText(" ".join(hints))
        self.note.setVisible(bool(hints))
        if current is not None:
            self._select(current)

    # ---------------------------------------------------------------------------------- values

    def choice(self) -> SourceChoice:
        kind, number = self.kind_combo.currentData() or ("test", None)
        region = None
        try:
            region = parse_region(self.region_edit.text()) if self.region_edit.text().strip() else None
        except ValueError:
            region = None
        return SourceChoice(
            kind=kind if not (kind == "region" and region is None) else "screen",
            camera_index=number if kind == "camera" else 0,
            monitor=number if kind == "screen" else self._monitor,
            region=region,
            follow_mouse=self.follow_check.isChecked(),
            video_path=self._video_path,
        )

    def load(self, settings: AppSettings) -> None:
        self._loading = True
        try:
            self._monitor = settings.monitor
            self._video_path = settings.video_path
            self.region_edit.setText(settings.region)
            self.follow_check.setChecked(settings.follow_mouse)
            try:
                region = parse_region(settings.region) if settings.region else None
            except ValueError:
                region = None
            self._select(SourceChoice(settings.source_kind, settings.camera_index, settings.monitor, region,
                                      settings.follow_mouse, settings.video_path))
        finally:
            self._loading = False

    def store(self, settings: AppSettings) -> None:
        kind, number = self.kind_combo.currentData() or ("test", None)
        settings.source_kind = kind
        if kind == "camera":
            settings.camera_index = number
        settings.monitor = self._monitor
        settings.region = self.region_edit.text().strip() if self._region_valid() else ""
        settings.follow_mouse = self.follow_check.isChecked()
        settings.video_path = self._video_path

    def set_region(self, monitor: int, region: tuple[int, int, int, int]) -> None:
        self._monitor = monitor
        self.region_edit.setText(format_region(region))
        self._select_kind("region")
        self._emit()

    def _select(self, choice: SourceChoice) -> None:
        wanted = {"camera": ("camera", choice.camera_index), "screen": ("screen", choice.monitor)}.get(choice.kind)
        index = find_data(self.kind_combo, wanted) if wanted else -1
        if index < 0:
            index = find_data(self.kind_combo, (choice.kind, None))
        if index < 0:  # the saved camera or screen is gone: the test pattern always exists
            index = find_data(self.kind_combo, ("test", None))
        self.kind_combo.setCurrentIndex(index)
        if choice.kind == "video" and choice.video_path:
            self.kind_combo.setItemText(index, f"Video: {choice.video_path.rsplit('/', 1)[-1]}")
        self._update_enabled()

    def _select_kind(self, kind: str) -> None:
        index = find_data(self.kind_combo, (kind, None))
        if index >= 0:
            self.kind_combo.setCurrentIndex(index)
        self._update_enabled()

    def _region_valid(self) -> bool:
        try:
            parse_region(self.region_edit.text())
            return True
        except ValueError:
            return False

    def _update_enabled(self) -> None:
        kind = (self.kind_combo.currentData() or ("test", None))[0]
        # setRowVisible hides the row's label too, which setVisible on the field would leave behind.
        self._form.setRowVisible(self.region_row, kind == "region")
        self._form.setRowVisible(self.follow_check, kind == "region")

    # -------------------------------------------------------------------------------- handlers

    def _on_kind_activated(self, _index: int) -> None:
        kind, number = self.kind_combo.currentData()
        if kind == "screen":
            self._monitor = number
        if kind == "video":
            path, _ = QFileDialog.getOpenFileName(self, "Open a video", self._video_path, VIDEO_FILTER)
            if not path:
                self._update_enabled()
                return
            self._video_path = path
            self.kind_combo.setItemText(self.kind_combo.currentIndex(), f"Video: {path.rsplit('/', 1)[-1]}")
        self._update_enabled()
        if kind == "region" and not self._region_valid():
            self.pick_region_requested.emit(self._monitor)
            return
        self._emit()

    def _on_region_typed(self) -> None:
        if self._region_valid():
            self.region_edit.setStyleSheet("")
            self._emit()
        elif self.region_edit.text().strip():
            self.region_edit.setStyleSheet("border-color: #e2475d;")

    def _emit(self, *_args) -> None:
        if not self._loading:
            self.source_changed.emit(self.choice())
