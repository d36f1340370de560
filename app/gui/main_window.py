"""The main window: the preview on the left, the control panels on the right, stats at the bottom.

It wires panels to the session: live settings go straight to the running engine, settings that change
shapes (model, size, steps, acceleration, cfg type) start a background load while the old engine keeps
running. The process around it (QApplication, signals, quitting) is app/gui/launch.py.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QInputDialog, QMainWindow, QScrollArea, QSplitter, QVBoxLayout, QWidget

from app.gui.actions import build_actions, build_toolbar, set_running_look, set_stopping_look
from core.model_errors import OOM_ADVICE, is_out_of_memory
from app.gui.engine_control import EngineControl
from app.gui.model_panel import ModelPanel
from app.gui.notifier import Notifier
from app.gui.output_panel import OutputPanel
from app.gui.picture import PictureControls
from app.gui.presets import load_presets, save_preset
from app.gui.preview import PreviewWidget
from app.gui.region_picker import RegionPickerDialog, grab_monitor
from app.gui.session import Session
from app.pipeline.live_params import LiveParams
from app.gui.source_panel import SourcePanel, build_source, discover_devices
from app.gui.status import StatusBar
from app.gui.style_panel import StylePanel
from app.gui.widgets import guard_wheel
from app.pipeline.engine_policy import engine_device
from app.gui.settings import AppSettings, SettingsStore, StartOverrides
from core.config import StreamConfig

log = logging.getLogger(__name__)

RELOAD_DEBOUNCE_MS = 400
STATS_INTERVAL_MS = 500


class MainWindow(QMainWindow):
    def __init__(self, store: SettingsStore, engine_factory=None, notifier: Notifier | None = None,
                 discover=discover_devices, autoload: bool = True, ask_text=None,
                 overrides: dict | None = None, engine_options: dict | None = None):
        """``overrides``: settings given on the command line, for this start only (see
        app/window_options.py); ``engine_options``: StreamConfig fields for every engine of this start."""
        super().__init__()
        self.setWindowTitle("Live Diffusion")
        self.store = store
        self.notifier = notifier or Notifier(self)
        self.notifier.parent = self
        self._ask_text = ask_text or (lambda title, label: QInputDialog.getText(self, title, label))
        self.settings = store.load()
        self.overrides = StartOverrides(overrides or {}, self.settings)
        self.engine_options = dict(engine_options or {})
        self.session = Session(engine_factory, self)
        self.engine_control = EngineControl(self)
        self._region_dialog: RegionPickerDialog | None = None
        self._shut_down = False

        self.preview = PreviewWidget()
        self.style_panel = StylePanel()
        self.model_panel = ModelPanel()
        self.source_panel = SourcePanel(discover=discover)
        self.output_panel = OutputPanel()
        self._build_layout()
        self.actions = build_actions(self)
        self.toolbar = build_toolbar(self, self.actions)
        self.status = StatusBar(self)
        self.setStatusBar(self.status)

        self._reload_timer = QTimer(self, singleShot=True, interval=RELOAD_DEBOUNCE_MS)
        self._reload_timer.timeout.connect(self.reload_engine)
        self._stats_timer = QTimer(self, interval=STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self.update_stats)
        self._stats_timer.start()

        self.picture = PictureControls(self)
        self._load_settings(self.settings)
        self._connect()
        set_running_look(self.actions, False)
        self.session.set_source(build_source(self.source_panel.choice()))
        self.picture.show_generated_size()  # the source may declare its size before its first frame
        self.session.probe_virtual_camera()
        for warning in store.warnings:
            self.notifier.warning("Settings were reset", warning)
        if autoload:
            self.reload_engine()
        # Import-time objects never die; freezing them keeps full collections short (see above).
        gc.freeze()

    # ------------------------------------------------------------------------------------ building

    def _build_layout(self) -> None:
        panels = QWidget()
        column = QVBoxLayout(panels)
        column.setContentsMargins(10, 4, 10, 10)
        column.setSpacing(6)
        for panel in (self.style_panel, self.model_panel, self.source_panel, self.output_panel):
            column.addWidget(panel)
        column.addStretch(1)
        self.side = QScrollArea()
        self.side.setObjectName("controls")
        self.side.setWidgetResizable(True)
        self.side.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.side.setWidget(panels)
        self.side.setMinimumWidth(340)
        self._wheel_guard = guard_wheel(panels)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.preview)
        self.splitter.addWidget(self.side)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)
        self.resize(1240, 760)
        self.splitter.setSizes([860, 380])

    def _connect(self) -> None:
        session, style = self.session, self.style_panel
        session.bridge.display_target = lambda: self.preview.display_target
        session.bridge.frame_ready.connect(self.preview.show_packet)
        session.bridge.error.connect(self._on_pipeline_error)
        session.bridge.status.connect(self.status.show_note)
        session.running_changed.connect(self._on_running_changed)
        session.stopping.connect(self._on_stopping)
        session.engine_ready.connect(self.engine_control.on_ready)
        session.engine_failed.connect(self.engine_control.on_failed)
        session.loader.progress.connect(self.model_panel.show_progress)
        session.recording_changed.connect(self._on_recording_changed)
        session.virtual_camera_probed.connect(self.output_panel.show_virtual_camera_probe)
        session.virtual_camera_changed.connect(self.output_panel.show_virtual_camera)
        session.virtual_camera_changed.connect(lambda _on, text: text and self.status.show_note(text))
        session.snapshot_saved.connect(self._on_snapshot_saved)

        style.prompt_changed.connect(session.set_prompt)
        style.strength_changed.connect(session.set_strength)
        style.seed_changed.connect(session.set_seed)
        style.guidance_changed.connect(session.set_guidance)
        style.filter_changed.connect(session.set_filter)
        style.rebuild_needed.connect(self._reload_timer.start)
        style.save_preset_requested.connect(self.ask_preset_name)
        self.model_panel.reload_requested.connect(self._reload_timer.start)
        self.model_panel.cancel_requested.connect(self.engine_control.cancel)
        self.source_panel.source_changed.connect(lambda choice: session.set_source(build_source(choice)))
        self.source_panel.pick_region_requested.connect(self.pick_region)
        self.output_panel.view_changed.connect(self.preview.set_view)
        self.output_panel.mirror_changed.connect(self.preview.set_mirror)
        self.output_panel.virtual_camera_toggled.connect(session.set_virtual_camera)
        self.output_panel.record_toggled.connect(self.set_recording)
        self.output_panel.snapshot_requested.connect(self.take_snapshot)
        self.preview.double_clicked.connect(self.actions.fullscreen.toggle)

        self.actions.start.triggered.connect(session.toggle)
        self.actions.snapshot.triggered.connect(self.take_snapshot)
        self.actions.record.triggered.connect(self.set_recording)
        self.actions.random_seed.triggered.connect(style.randomize_seed)
        self.actions.focus_prompt.triggered.connect(style.focus_prompt)
        self.actions.fullscreen.toggled.connect(self.set_fullscreen_preview)
        self.actions.quit.triggered.connect(self.close)

    # ------------------------------------------------------------------------------------ settings

    def _load_settings(self, settings: AppSettings) -> None:
        self.style_panel.load(settings)
        self.model_panel.load(settings)
        self.source_panel.load(settings)
        self.output_panel.load(settings)
        self.preview.set_view(settings.view)
        self.preview.set_mirror(settings.mirror)
        self.reload_presets(settings.preset)
        self.session.params = LiveParams(
            settings.prompt.strip(), settings.negative_prompt.strip(), settings.strength, settings.seed,
            settings.guidance, settings.delta, settings.similarity_filter, settings.similarity_threshold,
        )
        self.picture.apply_settings(settings)
        self._want_vcam = settings.virtual_camera
        if not settings.geometry.isEmpty():
            self.restoreGeometry(settings.geometry)
        if not settings.splitter.isEmpty():
            self.splitter.restoreState(settings.splitter)

    def current_settings(self) -> AppSettings:
        settings = AppSettings()
        for panel in (self.style_panel, self.model_panel, self.source_panel, self.output_panel):
            panel.store(settings)
        settings.geometry = self.saveGeometry()
        settings.splitter = self.splitter.saveState()
        self.overrides.keep_saved_values(settings)
        return settings

    def save_settings(self) -> None:
        self.store.save(self.current_settings())

    # ------------------------------------------------------------------------------------- presets

    def reload_presets(self, current: str = "") -> None:
        problems: list[str] = []
        folder = Path(self.store.config_dir) / "presets"
        self.presets = load_presets(folder, problems=problems)
        self.style_panel.set_presets(self.presets, current or self.style_panel.current_preset_name())
        if problems:
            self.notifier.warning("Some style presets were skipped",
                                  f"These files in {folder} could not be used and were left out:\n"
                                  + "\n".join(problems))

    def ask_preset_name(self) -> None:
        name, ok = self._ask_text("Save style preset", "Name of the new preset:")
        if ok and name.strip():
            self.save_current_as_preset(name.strip())

    def save_current_as_preset(self, name: str) -> Path | None:
        try:
            path = save_preset(self.style_panel.as_preset(name), Path(self.store.config_dir) / "presets")
        except OSError as exc:
            self.notifier.error("Preset not saved", f"The preset could not be written: {exc.strerror or exc}")
            return None
        self.reload_presets(name)
        self.status.show_note(f"Saved preset “{name}” to {path}")
        return path

    # --------------------------------------------------------------------------------------- engine

    def requested_config(self) -> StreamConfig:
        return self.engine_control.requested_config()

    def request_reload(self) -> None:
        """Reload after a short pause (settings that change together cost one load)."""
        self._reload_timer.start()

    def reload_engine(self) -> None:
        self._reload_timer.stop()
        self.engine_control.reload()

    def try_without_weights(self, preset: str) -> None:
        self.engine_control.try_without_weights(preset)

    # -------------------------------------------------------------------------------- run / outputs

    def _on_stopping(self) -> None:
        set_stopping_look(self.actions)
        self.update_stats()

    def _on_running_changed(self, running: bool) -> None:
        set_running_look(self.actions, running)
        self.update_stats()
        if running and self._want_vcam and self.output_panel.vcam_check.isEnabled():
            self._want_vcam = False
            self.output_panel.vcam_check.setChecked(True)
        if not running:
            self.preview.set_placeholder("Stopped — press Start (Space)")

    def set_recording(self, on: bool) -> None:
        if on and not self.session.running:
            self.status.show_note("Start the stream first, then record")
            on = False
        if on:
            self.session.start_recording(self.output_panel.output_dir())
        else:
            self.session.stop_recording()
        self._show_recording(on)

    def _show_recording(self, on: bool) -> None:
        self.output_panel.set_recording(on)
        self.actions.record.setChecked(on)

    def _on_recording_changed(self, recording: bool, message: str) -> None:
        self._show_recording(recording)
        self.output_panel.show_saved(message)
        self.status.show_note(message)

    def take_snapshot(self) -> None:
        self.session.take_snapshot(self.output_panel.output_dir(), self.preview.current_array())

    def _on_snapshot_saved(self, message: str) -> None:
        self.output_panel.show_saved(message)
        self.status.show_note(message)

    def _on_pipeline_error(self, message: str, exc) -> None:
        if is_out_of_memory(exc) and "smaller" not in message:
            message = f"{message} {OOM_ADVICE}"
        self.status.show_error(message)
        self.notifier.error("Live Diffusion", message)

    def update_stats(self) -> None:
        engine = self.session.engine
        device = None if engine is None else engine_device(engine)
        if engine is not None:
            self.engine_control.follow(engine)
        self.status.show_stats(self.session.pipeline.stats(), self.session.running, device, self.session.is_stopping)

    # ------------------------------------------------------------------------------------- screens

    def pick_region(self, monitor: int) -> None:
        try:
            screenshot = grab_monitor(monitor or 1)
        except Exception as exc:  # noqa: BLE001 - SourceError carries the reason and a hint
            self.notifier.error("No screenshot", str(exc))
            return
        dialog = RegionPickerDialog(screenshot, self.source_panel.choice().region, self)
        dialog.accepted.connect(lambda: dialog.region() and self.source_panel.set_region(monitor or 1, dialog.region()))
        self._region_dialog = dialog
        dialog.open()

    def set_fullscreen_preview(self, on: bool) -> None:
        for widget in (self.side, self.toolbar, self.status):
            widget.setVisible(not on)
        self.showFullScreen() if on else self.showNormal()

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape and self.actions.fullscreen.isChecked():
            self.actions.fullscreen.setChecked(False)
            return
        super().keyPressEvent(event)

    # ---------------------------------------------------------------------------------------- close

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Save the settings and stop everything (finalizing a recording). Safe to call twice: both
        closing the window and the application quitting (logout, Ctrl+C) call it."""
        if self._shut_down:
            return
        self._shut_down = True
        self.style_panel.flush_prompt()
        try:
            self.save_settings()
        except Exception:  # noqa: BLE001 - failing to save must not stop the recording being finalized
            log.exception("saving settings failed")
        self._stats_timer.stop()
        self.session.shutdown()
