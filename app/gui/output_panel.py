"""Where the result goes: the preview view, the virtual camera, recordings and snapshots."""

from __future__ import annotations

import os

from PySide6.QtCore import QStandardPaths, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QToolButton,
    QWidget,
)

from app.gui import icons
from app.gui.preview import VIEW_INPUT, VIEW_OUTPUT, VIEW_SIDE
from app.gui.widgets import find_data, hint_label
from app.gui.settings import AppSettings
from core.sizes import OUTPUT_SIZES, parse_size


def output_size_of(key: str) -> tuple[int, int]:
    """A setting's output size as (width, height); (0, 0) for the generated size."""
    size = OUTPUT_SIZES.get(key, ()) if key in OUTPUT_SIZES else parse_size(key)
    return size or (0, 0)


def default_output_dir() -> str:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return os.path.join(base or os.path.expanduser("~"), "livediffusion")


OUTPUT_SIZE_LABELS = (("1280x720", "1280 × 720 (HD)"), ("1920x1080", "1920 × 1080 (Full HD)"),
                      ("640x360", "640 × 360"), ("generated", "Same as generated"))


class OutputPanel(QGroupBox):
    view_changed = Signal(str)
    mirror_changed = Signal(bool)
    output_mirror_changed = Signal(bool)
    output_size_changed = Signal(int, int)  # width, height; 0, 0: the generated size
    fit_changed = Signal(str)  # crop / letterbox
    bypass_toggled = Signal(bool)
    virtual_camera_toggled = Signal(bool)
    record_toggled = Signal(bool)
    snapshot_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Output", parent)
        self._output_dir = ""
        self._vcam_probe_text = ""
        form = QFormLayout(self)

        views = QHBoxLayout()
        views.setSpacing(0)
        self.view_group = QButtonGroup(self)
        self.view_buttons: dict[str, QToolButton] = {}
        for view, text in ((VIEW_OUTPUT, "Output"), (VIEW_INPUT, "Input"), (VIEW_SIDE, "Side by side")):
            button = QToolButton(text=text, checkable=True)
            self.view_group.addButton(button)
            self.view_buttons[view] = button
            views.addWidget(button)
            button.toggled.connect(lambda on, v=view: on and self.view_changed.emit(v))
        views.addStretch(1)
        form.addRow("View", views)
        self.mirror_check = QCheckBox("Mirror the preview")
        self.mirror_check.setToolTip("Flip the preview like a mirror; the virtual camera and recordings are not flipped")
        self.mirror_check.toggled.connect(self.mirror_changed)
        form.addRow("", self.mirror_check)

        self.size_combo = QComboBox()
        for key, label in OUTPUT_SIZE_LABELS:
            self.size_combo.addItem(label, key)
        self.size_combo.setToolTip("The size of the preview, recordings and the virtual camera; the model's "
                                   "picture is upscaled to it on the GPU")
        self.size_combo.currentIndexChanged.connect(self._on_size)
        self.fit_combo = QComboBox()
        self.fit_combo.addItem("Crop", "crop")
        self.fit_combo.addItem("Letterbox", "letterbox")
        self.fit_combo.setToolTip("When the source's shape and the output's differ: fill the frame and cut "
                                  "the edges (Crop), or show all of it with black bars (Letterbox)")
        self.fit_combo.currentIndexChanged.connect(lambda _i: self.fit_changed.emit(self.fit_combo.currentData()))
        sizes = QHBoxLayout()
        sizes.addWidget(self.size_combo, 1)
        sizes.addWidget(self.fit_combo)
        form.addRow("Size", sizes)
        self.mirror_output_check = QCheckBox("Mirror the output")
        self.mirror_output_check.setToolTip("Flip what the virtual camera and recordings get, left to right")
        self.mirror_output_check.toggled.connect(self.output_mirror_changed)
        self.bypass_check = QCheckBox("Bypass the effect")
        self.bypass_check.setToolTip("Send the source unfiltered (at the output size) to the preview, the "
                                     "virtual camera and recordings; the model stays loaded")
        self.bypass_check.toggled.connect(self.bypass_toggled)
        checks = QHBoxLayout()
        checks.addWidget(self.mirror_output_check)
        checks.addWidget(self.bypass_check)
        form.addRow("", checks)

        self.vcam_check = QCheckBox("Virtual camera")
        self.vcam_check.setToolTip("Publish the output as a webcam for video calls and streaming programs")
        self.vcam_check.toggled.connect(self.virtual_camera_toggled)
        self.vcam_label = hint_label("Checking for a virtual camera driver…")
        form.addRow(self.vcam_check)
        form.addRow(self.vcam_label)

        self.record_button = QPushButton(icons.record(), "Record")
        self.record_button.setObjectName("record")
        self.record_button.setCheckable(True)
        self.record_button.setToolTip("Record the output to a video file (Ctrl+Shift+R)")
        self.record_button.toggled.connect(self.record_toggled)
        self.snapshot_button = QPushButton(icons.camera(), "Snapshot")
        self.snapshot_button.setToolTip("Save the current output as PNG (Ctrl+S)")
        self.snapshot_button.clicked.connect(self.snapshot_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.record_button)
        buttons.addWidget(self.snapshot_button)
        form.addRow(buttons)
        self.folder_button = QToolButton()
        self.folder_button.setToolTip("Folder for recordings and snapshots")
        self.folder_button.clicked.connect(self.choose_folder)
        form.addRow("Save to", self.folder_button)
        self.saved_label = hint_label()
        form.addRow(self.saved_label)

    # -------------------------------------------------------------------------------- settings

    def load(self, settings: AppSettings) -> None:
        self.set_view(settings.view)
        self.mirror_check.setChecked(settings.mirror)
        self.mirror_output_check.setChecked(settings.mirror_output)
        self.set_output_size(settings.output_size)
        self.fit_combo.setCurrentIndex(max(0, find_data(self.fit_combo, settings.resize_mode)))
        self.set_output_dir(settings.output_dir or default_output_dir())

    def store(self, settings: AppSettings) -> None:
        settings.view = self.current_view()
        settings.mirror = self.mirror_check.isChecked()
        settings.mirror_output = self.mirror_output_check.isChecked()
        settings.output_size = self.size_combo.currentData()
        settings.resize_mode = self.fit_combo.currentData()
        settings.output_dir = self._output_dir
        settings.virtual_camera = self.vcam_check.isChecked()

    def output_size(self) -> tuple[int, int]:
        """(width, height) chosen; (0, 0) for the generated size."""
        return output_size_of(self.size_combo.currentData())

    def set_output_size(self, key: str) -> None:
        index = find_data(self.size_combo, key)
        if index < 0:  # a size given on the command line or typed in the settings file
            width, height = output_size_of(key)
            self.size_combo.addItem(f"{width} × {height}", key)
            index = self.size_combo.count() - 1
        self.size_combo.setCurrentIndex(index)

    def letterbox(self) -> bool:
        return self.fit_combo.currentData() == "letterbox"

    def _on_size(self, _index: int) -> None:
        self.output_size_changed.emit(*self.output_size())

    def current_view(self) -> str:
        for view, button in self.view_buttons.items():
            if button.isChecked():
                return view
        return VIEW_OUTPUT

    def set_view(self, view: str) -> None:
        self.view_buttons.get(view, self.view_buttons[VIEW_OUTPUT]).setChecked(True)

    def output_dir(self) -> str:
        return self._output_dir

    def set_output_dir(self, folder: str) -> None:
        self._output_dir = folder
        shown = folder.replace(os.path.expanduser("~"), "~", 1)
        self.folder_button.setText(shown if len(shown) < 34 else "…" + shown[-33:])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save recordings and snapshots to", self._output_dir)
        if folder:
            self.set_output_dir(folder)

    # ------------------------------------------------------------------------------ virtual camera

    def set_virtual_camera_state(self, available: bool, text: str) -> None:
        """Enable the toggle, or disable it with the reason and the set-up step shown under it."""
        self.vcam_check.setEnabled(available or self.vcam_check.isChecked())
        self.vcam_label.setText(text)
        self.vcam_label.setObjectName("hint" if available else "warning")
        self.vcam_label.style().unpolish(self.vcam_label)
        self.vcam_label.style().polish(self.vcam_label)

    def show_virtual_camera_probe(self, available: bool, text: str) -> None:
        self._vcam_probe_text = f"Device: {text}" if available else text
        self.set_virtual_camera_state(available, self._vcam_probe_text)

    def show_virtual_camera(self, on: bool, text: str) -> None:
        """The camera's state: the device, size and rate it writes at, or why it stopped."""
        self.set_virtual_camera_checked(on)
        if text:
            self.vcam_label.setText(text)
        elif not on:
            self.vcam_label.setText(self._vcam_probe_text)

    def set_virtual_camera_checked(self, checked: bool) -> None:
        self.vcam_check.blockSignals(True)
        self.vcam_check.setChecked(checked)
        self.vcam_check.blockSignals(False)

    def set_recording(self, recording: bool) -> None:
        self.record_button.blockSignals(True)
        self.record_button.setChecked(recording)
        self.record_button.setText("Stop recording" if recording else "Record")
        self.record_button.blockSignals(False)

    def show_saved(self, text: str) -> None:
        self.saved_label.setText(text)
