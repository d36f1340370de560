"""Where the result goes: the preview view, the virtual camera, recordings and snapshots."""

from __future__ import annotations

import os

from PySide6.QtCore import QStandardPaths, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
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
from app.gui.widgets import hint_label
from app.gui.settings import AppSettings


def default_output_dir() -> str:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return os.path.join(base or os.path.expanduser("~"), "livediffusion")


class OutputPanel(QGroupBox):
    view_changed = Signal(str)
    mirror_changed = Signal(bool)
    virtual_camera_toggled = Signal(bool)
    record_toggled = Signal(bool)
    snapshot_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Output", parent)
        self._output_dir = ""
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
        self.set_output_dir(settings.output_dir or default_output_dir())

    def store(self, settings: AppSettings) -> None:
        settings.view = self.current_view()
        settings.mirror = self.mirror_check.isChecked()
        settings.output_dir = self._output_dir
        settings.virtual_camera = self.vcam_check.isChecked()

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
