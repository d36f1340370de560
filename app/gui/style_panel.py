"""The controls that shape the picture: preset, prompt, strength, steps, seed, filter, advanced.

The panel knows nothing about engines. It emits one signal per kind of change; the window decides
which changes are live setters and which need a new engine. The prompt is debounced, so that typing
re-encodes the prompt once per pause rather than once per key.
"""

from __future__ import annotations

import random

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui import icons
from app.gui.presets import StylePreset
from app.gui.widgets import CollapsibleSection, ValueSlider
from app.gui.settings import AppSettings
from core.config import CFG_TYPES, MAX_SMOOTHING

PROMPT_DEBOUNCE_MS = 300
MAX_SEED = 2**31 - 1  # QSpinBox is 32-bit; larger seeds from the CLI are clamped for display


class StylePanel(QWidget):
    prompt_changed = Signal(str, str)  # prompt, negative prompt (after the debounce)
    strength_changed = Signal(float)
    seed_changed = Signal(int)
    guidance_changed = Signal(float, float)  # guidance scale, delta
    filter_changed = Signal(bool, float)  # enabled, threshold
    smoothing_changed = Signal(float)
    feature_reuse_changed = Signal(bool)
    transition_changed = Signal(float)  # seconds
    rebuild_needed = Signal()  # steps or cfg type: these change shapes, so a new engine
    preset_chosen = Signal(object)  # StylePreset
    save_preset_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._loading = False
        self._applying_preset = False
        self._presets: list[StylePreset] = []
        self._debounce = QTimer(self, singleShot=True, interval=PROMPT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._emit_prompt)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._build_prompt_box())
        layout.addWidget(self._build_strength_box())

    # ------------------------------------------------------------------------------------ building

    def _build_prompt_box(self) -> QGroupBox:
        box = QGroupBox("Style")
        form = QFormLayout(box)
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip("Style presets: shipped ones and those you saved")
        self.preset_combo.activated.connect(self._on_preset_activated)
        self.save_preset_button = QToolButton(text="Save…")
        self.save_preset_button.setToolTip("Save the current prompt, strength and guidance as a preset")
        self.save_preset_button.clicked.connect(self.save_preset_requested)
        row = QHBoxLayout()
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.save_preset_button)
        form.addRow("Preset", row)

        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("Describe the look, e.g. 'an oil painting, thick brush strokes'")
        self.prompt_edit.setFixedHeight(72)
        self.prompt_edit.setTabChangesFocus(True)
        self.prompt_edit.textChanged.connect(self._schedule_prompt)
        form.addRow("Prompt", self.prompt_edit)
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("What to avoid (used by cfg types full / initialize / self)")
        self.negative_edit.textChanged.connect(self._schedule_prompt)
        form.addRow("Negative", self.negative_edit)
        return box

    def _build_strength_box(self) -> QGroupBox:
        box = QGroupBox("Transformation")
        form = QFormLayout(box)
        self.strength_slider = ValueSlider(0.0, 1.0, resolution=100, decimals=2)
        self.strength_slider.setToolTip("How far the output departs from the input: 0 keeps it, 1 repaints it")
        self.strength_slider.valueChanged.connect(self._on_strength)
        form.addRow("Strength", self.strength_slider)

        self.steps_spin = QSpinBox(minimum=1, maximum=4)
        self.steps_spin.setToolTip("Denoising steps per frame: more is finer and slower (reloads the engine)")
        self.steps_spin.valueChanged.connect(self._on_rebuild)
        form.addRow("Steps", self.steps_spin)
        self.reuse_check = QCheckBox("Reuse deep features")
        self.reuse_check.setToolTip("Faster at 2-4 steps: steps after the first reuse the deep features their frame "
                                    "made at its first step (DeepCache); the picture moves a little from the full "
                                    "computation")
        self.reuse_check.toggled.connect(self._on_reuse)
        form.addRow("", self.reuse_check)

        self.seed_spin = QSpinBox(minimum=0, maximum=MAX_SEED)
        self.seed_spin.setToolTip("The noise seed: the same seed gives the same look for the same input")
        self.seed_spin.valueChanged.connect(self._on_seed)
        self.dice_button = QToolButton(icon=icons.dice())
        self.dice_button.setToolTip("Random seed (Ctrl+D)")
        self.dice_button.clicked.connect(self.randomize_seed)
        row = QHBoxLayout()
        row.addWidget(self.seed_spin, 1)
        row.addWidget(self.dice_button)
        form.addRow("Seed", row)

        self.smoothing_slider = ValueSlider(0.0, MAX_SMOOTHING, resolution=100, decimals=2)
        self.smoothing_slider.setToolTip("Temporal smoothing: blends the last picture into the next one, so a "
                                         "still scene stops flickering; higher follows motion more slowly (0: off)")
        self.smoothing_slider.valueChanged.connect(self._on_smoothing)
        form.addRow("Steadiness", self.smoothing_slider)
        self.transition_spin = QDoubleSpinBox(minimum=0.0, maximum=10.0, singleStep=0.25, decimals=2, suffix=" s")
        self.transition_spin.setToolTip("A new prompt, preset or seed blends in over this time (0: at once)")
        self.transition_spin.valueChanged.connect(self._on_transition)
        form.addRow("Transition", self.transition_spin)

        self.filter_check = QCheckBox("Skip near-identical frames")
        self.filter_check.setToolTip("Similarity filter: saves GPU time when the picture hardly changes")
        self.filter_check.toggled.connect(self._on_filter)
        self.threshold_spin = QDoubleSpinBox(minimum=0.5, maximum=1.0, singleStep=0.005, decimals=3)
        self.threshold_spin.setToolTip("Similarity above which frames may be skipped")
        self.threshold_spin.valueChanged.connect(self._on_filter)
        form.addRow("Filter", self.filter_check)
        form.addRow("Threshold", self.threshold_spin)

        advanced = QWidget()
        advanced_form = QFormLayout(advanced)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        self.cfg_combo = QComboBox()
        self.cfg_combo.addItems(CFG_TYPES)
        self.cfg_combo.setToolTip(
            "Guidance variant: none (fastest), self / initialize (residual CFG), full (classic, slowest). "
            "Changing it reloads the engine."
        )
        self.cfg_combo.currentTextChanged.connect(self._on_rebuild)
        advanced_form.addRow("CFG type", self.cfg_combo)
        self.guidance_spin = QDoubleSpinBox(minimum=0.0, maximum=20.0, singleStep=0.1, decimals=2)
        self.guidance_spin.setToolTip("Guidance scale: how strongly the prompt is followed (not used with cfg none)")
        self.guidance_spin.valueChanged.connect(self._on_guidance)
        advanced_form.addRow("Guidance", self.guidance_spin)
        self.delta_spin = QDoubleSpinBox(minimum=0.0, maximum=5.0, singleStep=0.1, decimals=2)
        self.delta_spin.setToolTip("Residual noise scale for cfg type self / initialize")
        self.delta_spin.valueChanged.connect(self._on_guidance)
        advanced_form.addRow("Delta", self.delta_spin)
        self.advanced = CollapsibleSection("Advanced", advanced)
        form.addRow(self.advanced)
        return box

    # ----------------------------------------------------------------------------------- presets

    def set_presets(self, presets: list[StylePreset], current: str = "") -> None:
        self._presets = list(presets)
        self.preset_combo.blockSignals(True)
        self.preset_combo.clear()
        self.preset_combo.addItem("Custom")
        for preset in self._presets:
            self.preset_combo.addItem(preset.name + ("  (yours)" if preset.user else ""))
        names = [p.name for p in self._presets]
        self.preset_combo.setCurrentIndex(names.index(current) + 1 if current in names else 0)
        self.preset_combo.blockSignals(False)

    def current_preset_name(self) -> str:
        index = self.preset_combo.currentIndex() - 1
        return self._presets[index].name if 0 <= index < len(self._presets) else ""

    def apply_preset(self, preset: StylePreset) -> None:
        """Fill the controls from a preset; the normal change signals carry it to the engine."""
        self._applying_preset = True
        try:
            self._fill_from(preset)
        finally:
            self._applying_preset = False
        self.flush_prompt()

    def _fill_from(self, preset: StylePreset) -> None:
        self.prompt_edit.setPlainText(preset.prompt)
        self.negative_edit.setText(preset.negative_prompt)
        self.negative_edit.setCursorPosition(0)
        self.strength_slider.setValue(preset.strength)
        self.guidance_spin.setValue(preset.guidance)
        names = [p.name for p in self._presets]
        if preset.name in names:
            self.preset_combo.setCurrentIndex(names.index(preset.name) + 1)

    def _on_preset_activated(self, index: int) -> None:
        if 1 <= index <= len(self._presets):
            preset = self._presets[index - 1]
            self.apply_preset(preset)
            self.preset_chosen.emit(preset)

    def as_preset(self, name: str) -> StylePreset:
        return StylePreset(
            name=name,
            prompt=self.prompt(),
            negative_prompt=self.negative_prompt(),
            strength=round(self.strength_slider.value(), 3),
            guidance=round(self.guidance_spin.value(), 3),
            user=True,
        )

    # ------------------------------------------------------------------------------------- values

    def prompt(self) -> str:
        return self.prompt_edit.toPlainText().strip()

    def negative_prompt(self) -> str:
        return self.negative_edit.text().strip()

    def load(self, settings: AppSettings) -> None:
        """Show saved settings without emitting change signals (the engine is configured separately)."""
        self._loading = True
        try:
            self.prompt_edit.setPlainText(settings.prompt)
            self.negative_edit.setText(settings.negative_prompt)
            self.negative_edit.setCursorPosition(0)  # show the start of a long text, not its end
            self.strength_slider.setValue(settings.strength)
            self.steps_spin.setValue(settings.steps)
            self.reuse_check.setChecked(settings.feature_reuse)
            self.reuse_check.setEnabled(settings.steps > 1)
            self.seed_spin.setValue(min(settings.seed, MAX_SEED))
            self.filter_check.setChecked(settings.similarity_filter)
            self.threshold_spin.setValue(max(0.5, settings.similarity_threshold))
            self.cfg_combo.setCurrentText(settings.cfg_type)
            self.guidance_spin.setValue(settings.guidance)
            self.delta_spin.setValue(settings.delta)
            self.smoothing_slider.setValue(settings.smoothing)
            self.transition_spin.setValue(settings.transition_s)
            self.advanced.set_expanded(settings.advanced_open)
            self._debounce.stop()
        finally:
            self._loading = False

    def store(self, settings: AppSettings) -> None:
        settings.prompt = self.prompt_edit.toPlainText()
        settings.negative_prompt = self.negative_edit.text()
        settings.strength = round(self.strength_slider.value(), 4)
        settings.steps = self.steps_spin.value()
        settings.feature_reuse = self.reuse_check.isChecked()
        settings.seed = self.seed_spin.value()
        settings.similarity_filter = self.filter_check.isChecked()
        settings.similarity_threshold = round(self.threshold_spin.value(), 4)
        settings.cfg_type = self.cfg_combo.currentText()
        settings.guidance = round(self.guidance_spin.value(), 4)
        settings.delta = round(self.delta_spin.value(), 4)
        settings.smoothing = round(self.smoothing_slider.value(), 4)
        settings.transition_s = round(self.transition_spin.value(), 4)
        settings.advanced_open = self.advanced.is_expanded()
        settings.preset = self.current_preset_name()

    def randomize_seed(self) -> None:
        self.seed_spin.setValue(random.randint(0, MAX_SEED))

    def focus_prompt(self) -> None:
        self.prompt_edit.setFocus()
        self.prompt_edit.selectAll()

    def flush_prompt(self) -> None:
        """Apply a pending prompt edit now (a preset was picked, or the window closes)."""
        if self._debounce.isActive():
            self._debounce.stop()
            self._emit_prompt()

    # ----------------------------------------------------------------------------------- handlers

    def _schedule_prompt(self) -> None:
        if self._loading:
            return
        if not self._applying_preset and self.preset_combo.currentIndex() > 0:
            # Edited by hand: the text no longer is the preset's, so stop claiming it is.
            self.preset_combo.setCurrentIndex(0)
        self._debounce.start()

    def _emit_prompt(self) -> None:
        self.prompt_changed.emit(self.prompt(), self.negative_prompt())

    def _on_strength(self, value: float) -> None:
        if not self._loading:
            self.strength_changed.emit(value)

    def _on_seed(self, value: int) -> None:
        if not self._loading:
            self.seed_changed.emit(value)

    def _on_guidance(self, *_args) -> None:
        if not self._loading:
            self.guidance_changed.emit(self.guidance_spin.value(), self.delta_spin.value())

    def _on_smoothing(self, value: float) -> None:
        if not self._loading:
            self.smoothing_changed.emit(value)

    def _on_transition(self, value: float) -> None:
        if not self._loading:
            self.transition_changed.emit(value)

    def _on_filter(self, *_args) -> None:
        self.threshold_spin.setEnabled(self.filter_check.isChecked())
        if not self._loading:
            self.filter_changed.emit(self.filter_check.isChecked(), self.threshold_spin.value())

    def _on_reuse(self, enabled: bool) -> None:
        if not self._loading:
            self.feature_reuse_changed.emit(enabled)

    def _on_rebuild(self, *_args) -> None:
        self.reuse_check.setEnabled(self.steps_spin.value() > 1)  # one step: every row is a new frame
        if not self._loading:
            self.rebuild_needed.emit()
