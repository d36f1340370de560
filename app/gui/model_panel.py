"""Model, resolution and acceleration: the settings that need a new engine when they change.

The model field takes a hub id, a local folder, a .safetensors file or an offline architecture preset.
A choice from the list or a browse applies at once; typed text applies on Enter or with "Load", so that
a half-typed hub id never starts a download.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QMenu,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.engine_choice import EngineChoice, RemoteTarget
from app.gui.widgets import find_data, hint_label
from app.gui.settings import AppSettings
from app.pipeline.engine_policy import changing_stage, describe_engine
from core.config import ACCELERATIONS, DEFAULT_MODEL

MODEL_CHOICES = (
    (DEFAULT_MODEL, "SD-Turbo from the hub (default)"),
    ("stabilityai/sdxl-turbo", "SDXL-Turbo from the hub"),
    ("preset:sd-turbo", "SD-Turbo architecture, random weights (offline)"),
    ("preset:sdxl-turbo", "SDXL-Turbo architecture, random weights (offline)"),
    ("preset:sd15", "SD 1.5 architecture, random weights (offline)"),
    ("preset:tiny", "Tiny test model (offline, CPU-fast)"),
)
RESOLUTIONS = ((256, 256), (384, 384), (512, 512), (512, 384), (640, 384), (768, 432), (768, 768), (1024, 576), (1024, 1024))
ACCELERATION_TIPS = {
    "none": "Eager PyTorch: starts at once",
    "compile": "torch.compile: faster frames after a compile of a minute or more",
    "tensorrt": "TensorRT engines: fastest on NVIDIA GPUs; the first build takes minutes and is cached",
}


def gpu_count() -> int:
    """CUDA GPUs torch sees (0 without CUDA or without torch)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver is doctor's to explain; one engine runs meanwhile
        return 0


QUALITY_LABELS = (
    ("fast", "Fast", "Smallest size for the source's shape (16:9: 640×360): most frames per second"),
    ("balanced", "Balanced", "16:9: 768×432, 4:3: 640×480, square: 512×512"),
    ("high", "High", "Largest size for the source's shape (16:9: 1024×576): most detail"),
    ("custom", "Custom size", "Generate at the resolution chosen below, whatever the source's shape"),
)


class ModelPanel(QGroupBox):
    reload_requested = Signal()  # the model, the size or the acceleration changed
    quality_changed = Signal(str)  # fast / balanced / high (the size follows the source), or custom
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self._loading_values = False
        self._custom_size = (512, 512)
        self._ready = self._runs = ""  # the loaded model's line, and what runs as last shown under it
        form = QFormLayout()

        self.engine_choice = EngineChoice()
        self.engine_choice.changed.connect(self._on_engine_choice)
        form.addRow("Engine", self.engine_choice)

        self.model_combo = QComboBox(editable=True)
        self.model_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        # A long path or hub id must not widen the whole side panel past its scroll area.
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(12)
        for model, description in MODEL_CHOICES:
            self.model_combo.addItem(model)
            self.model_combo.setItemData(self.model_combo.count() - 1, description, role=3)  # Qt.ToolTipRole
        self.model_combo.setToolTip("A hub id, a local diffusers folder, a .safetensors file or preset:NAME")
        self.model_combo.activated.connect(lambda _i: self._request())
        self.model_combo.lineEdit().returnPressed.connect(self._request)
        self.browse_button = QToolButton(text="Open…")
        self.browse_button.setObjectName("browse")
        self.browse_button.setToolTip("Open a local model folder or file")
        menu = QMenu(self.browse_button)
        menu.addAction("Diffusers folder…", self.browse_folder)
        menu.addAction("Single file (.safetensors)…", self.browse_file)
        self.browse_button.setMenu(menu)
        self.browse_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.browse_button)
        form.addRow("Model", row)

        self.quality_combo = QComboBox()
        for key, label, tip in QUALITY_LABELS:
            self.quality_combo.addItem(label, key)
            self.quality_combo.setItemData(self.quality_combo.count() - 1, tip, role=3)
        self.quality_combo.setToolTip("The generated size follows the source's shape at this quality; "
                                      "Custom size uses the resolution below")
        self.quality_combo.currentIndexChanged.connect(self._on_quality)
        form.addRow("Quality", self.quality_combo)

        self.size_combo = QComboBox()
        for width, height in RESOLUTIONS:
            self.size_combo.addItem(f"{width} × {height}", (width, height))
        self.size_combo.setToolTip("The size the model works at; smaller is faster and needs less GPU memory")
        self.size_combo.currentIndexChanged.connect(lambda _i: self._request())
        form.addRow("Resolution", self.size_combo)

        self.accel_combo = QComboBox()
        for name in ACCELERATIONS:
            self.accel_combo.addItem(name)
            self.accel_combo.setItemData(self.accel_combo.count() - 1, ACCELERATION_TIPS.get(name, ""), role=3)
        self.accel_combo.currentIndexChanged.connect(lambda _i: self._request())
        form.addRow("Acceleration", self.accel_combo)

        # Shown only where there is a choice: two or more GPUs (core.parallel).
        self.gpus_spin = QSpinBox()
        self.gpus_spin.setRange(1, max(1, gpu_count()))
        self.gpus_spin.setToolTip("Spread the work over this many GPUs: at 1 step each GPU takes every Nth frame; "
                                  "at 2-4 steps the UNet's stages run side by side on them (AsyncDiff)")
        self.gpus_spin.valueChanged.connect(lambda _v: self._request())
        form.addRow("GPUs", self.gpus_spin)
        form.setRowVisible(self.gpus_spin, gpu_count() > 1)

        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the model with these settings")
        self.load_button.clicked.connect(self._request)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop waiting for this model; the running one keeps going")
        self.cancel_button.clicked.connect(self.cancel_requested)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.load_button)

        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.status_label = hint_label("")
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addLayout(buttons)
        self.set_busy(False)

    # ------------------------------------------------------------------------------------- values

    def model(self) -> str:
        return self.model_combo.currentText().strip()

    def size(self) -> tuple[int, int]:
        return self.size_combo.currentData()

    def quality(self) -> str:
        return self.quality_combo.currentData()

    def show_picked_size(self, width: int, height: int) -> None:
        """Show the size the quality picked for the source, without asking for a reload (the caller does)."""
        self._loading_values = True
        try:
            self.set_size(width, height)
        finally:
            self._loading_values = False

    def acceleration(self) -> str:
        return self.accel_combo.currentText()

    def gpus(self) -> int:
        return self.gpus_spin.value()

    def engine_target(self) -> RemoteTarget | None:
        """The engine server chosen, or None for this computer."""
        return self.engine_choice.target()

    def _on_engine_choice(self) -> None:
        self._grey_out_for_server()
        self._request()

    def _grey_out_for_server(self) -> None:
        """A server's engine has its own model, size and GPUs (its ``serve`` options)."""
        local = not self.engine_choice.uses_server()
        for widget in (self.model_combo, self.browse_button, self.quality_combo, self.accel_combo, self.gpus_spin):
            widget.setEnabled(local)
        self.size_combo.setEnabled(local and self.quality() == "custom")

    def load(self, settings: AppSettings) -> None:
        self._loading_values = True
        try:
            self.set_model(settings.model)
            self.set_size(settings.width, settings.height)
            self.quality_combo.setCurrentIndex(max(0, find_data(self.quality_combo, settings.quality)))
            self.size_combo.setEnabled(self.quality() == "custom")
            self.accel_combo.setCurrentText(settings.acceleration)
            self.gpus_spin.setValue(settings.gpus)
            self.engine_choice.load(settings)
        finally:
            self._loading_values = False
        self._grey_out_for_server()
        self._custom_size = (settings.width, settings.height)

    def store(self, settings: AppSettings) -> None:
        settings.model = self.model() or DEFAULT_MODEL
        settings.quality = self.quality()
        # The custom size is kept while a quality picks sizes, so that going back to Custom restores it.
        settings.width, settings.height = self.size() if self.quality() == "custom" else self._custom_size
        settings.acceleration = self.acceleration()
        settings.gpus = self.gpus()
        self.engine_choice.store(settings)

    def set_model(self, model: str) -> None:
        index = self.model_combo.findText(model)
        if index < 0:
            self.model_combo.addItem(model)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def set_size(self, width: int, height: int) -> None:
        index = find_data(self.size_combo, (width, height))
        if index < 0:
            self.size_combo.addItem(f"{width} × {height}", (width, height))
            index = self.size_combo.count() - 1
        self.size_combo.setCurrentIndex(index)

    # --------------------------------------------------------------------------------- load state

    def set_busy(self, busy: bool, message: str = "") -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)  # indeterminate until a fraction arrives
        self.status_label.setText(message)

    def show_progress(self, message: str, fraction: float) -> None:
        if fraction < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        if message:
            self.status_label.setText(message)

    def show_loaded(self, description: str) -> None:
        self.set_busy(False, description)

    def show_engine(self, ready: str, engine) -> str:
        """The loaded model's line and, under it, what runs; returns the latter (empty when it says nothing)."""
        self._ready, self._runs = ready, describe_engine(engine)
        self.show_loaded(f"{ready}\n{self._runs}" if self._runs else ready)
        return self._runs

    def follow_stage(self, engine) -> None:
        """A start in stages moves on (quick start, compiling ~N%, full speed), a server comes and goes: show
        where it is now."""
        if not changing_stage(engine) or not self._ready:
            return
        runs = describe_engine(engine)
        if runs != self._runs:
            self.show_engine(self._ready, engine)

    # ----------------------------------------------------------------------------------- browsing

    def browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a diffusers model folder")
        if folder:
            self.set_model(folder)
            self._request()

    def browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a single-file checkpoint", "", "Safetensors checkpoints (*.safetensors);;All files (*)"
        )
        if path:
            self.set_model(path)
            self._request()

    def _on_quality(self, _index: int) -> None:
        custom = self.quality() == "custom"
        self.size_combo.setEnabled(custom)
        if self._loading_values:
            return
        if custom:
            self.show_picked_size(*self._custom_size)
        self.quality_changed.emit(self.quality())

    def _request(self) -> None:
        if self._loading_values:
            return
        if self.quality() == "custom":
            self._custom_size = self.size()
        self.reload_requested.emit()
