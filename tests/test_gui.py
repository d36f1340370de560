"""The Qt window, offscreen, with a fake engine (and one test with the real tiny model).

Every window gets its own temporary settings file, a notifier that records instead of showing
dialogs, and no device discovery, so nothing here depends on the machine's cameras or screens.
"""

import os
import threading
import time

import cv2
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QStandardPaths, Qt  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.notifier import RecordingNotifier  # noqa: E402
from app.settings import AppSettings, SettingsStore  # noqa: E402

QStandardPaths.setTestModeEnabled(True)
WAIT_MS = 8000


class FakeEngine:
    """Engine-shaped stand-in: records every setter call; process() inverts and resizes the frame."""

    def __init__(self, config, fail_with: BaseException | None = None):
        self.config = config
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.fail_with = fail_with
        self.last_frame_skipped = False
        self.skipped_frames = 0
        self.last_gpu_ms = 1.5

    def _record(self, *call):
        with self.lock:
            self.calls.append(call)

    def last(self, name):
        with self.lock:
            found = [c for c in self.calls if c[0] == name]
        return found[-1] if found else None

    def prepare(self, prompt, negative_prompt=""):
        self._record("prepare", prompt, negative_prompt)

    def update_prompt(self, prompt, negative_prompt=None):
        self._record("update_prompt", prompt, negative_prompt)

    def set_seed(self, seed):
        self._record("set_seed", seed)

    def set_strength(self, strength):
        self._record("set_strength", strength)

    def set_guidance(self, guidance_scale=None, delta=None):
        self._record("set_guidance", guidance_scale, delta)

    def set_similarity_filter(self, enabled, threshold=None, max_skip_frames=None):
        self._record("set_similarity_filter", enabled, threshold)

    def process(self, frame):
        if self.fail_with is not None:
            raise self.fail_with
        return 255 - cv2.resize(frame, (self.config.width, self.config.height))


class FakeFactory:
    """Builds FakeEngines; a model named in ``failures`` raises that exception instead."""

    def __init__(self, failures=None, gate: threading.Event | None = None):
        self.failures = failures or {}
        self.gate = gate
        self.built: list[FakeEngine] = []

    def __call__(self, config, progress=None):
        if progress is not None:
            progress(f"Loading {config.model}")
        if self.gate is not None and config.model == "slow/model":
            self.gate.wait(10)
        if config.model in self.failures:
            raise self.failures[config.model]
        engine = FakeEngine(config)
        self.built.append(engine)
        return engine


def until(qtbot, condition, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def no_devices():
    return [], [], "not listed in tests"


@pytest.fixture
def open_window(qtbot, tmp_path):
    def make(settings: AppSettings | None = None, factory=None, settings_file="settings.ini", wait_engine=True):
        store = SettingsStore(str(tmp_path / settings_file))
        if settings is not None:
            store.save(settings)
            store = SettingsStore(str(tmp_path / settings_file))
        factory = factory or FakeFactory()
        window = MainWindow(store, engine_factory=factory, notifier=RecordingNotifier(), discover=no_devices)
        window.factory = factory
        qtbot.addWidget(window)
        window.show()
        if wait_engine:
            until(qtbot, lambda: window.session.engine is not None, timeout=WAIT_MS)
        return window

    return make


def small(**changes) -> AppSettings:
    """Settings for a fast window: the test pattern and a small engine size."""
    values = dict(source_kind="test", width=128, height=96, model="fake/model")
    values.update(changes)
    return AppSettings(**values)


def start_and_wait_frames(qtbot, window, count=3):
    shown = window.preview.frames_shown
    window.session.start()
    until(qtbot, lambda: window.preview.frames_shown >= shown + count, timeout=WAIT_MS)


# ------------------------------------------------------------------------------------ controls


def test_prompt_reaches_the_engine_after_the_debounce(qtbot, open_window):
    window = open_window(small())
    engine = window.session.engine
    window.style_panel.prompt_edit.setPlainText("a marble statue")
    window.style_panel.negative_edit.setText("color")
    assert engine.last("update_prompt") is None or engine.last("update_prompt")[1] != "a marble statue"
    until(qtbot, lambda: engine.last("update_prompt") == ("update_prompt", "a marble statue", "color"), timeout=2000)


def test_live_controls_reach_the_engine(qtbot, open_window):
    window = open_window(small())
    engine, panel = window.session.engine, window.style_panel
    panel.strength_slider.setValue(0.8)
    assert engine.last("set_strength") == ("set_strength", pytest.approx(0.8))
    panel.seed_spin.setValue(4242)
    assert engine.last("set_seed") == ("set_seed", 4242)
    panel.threshold_spin.setValue(0.95)
    panel.filter_check.setChecked(True)
    assert engine.last("set_similarity_filter") == ("set_similarity_filter", True, pytest.approx(0.95))
    panel.guidance_spin.setValue(2.5)
    assert engine.last("set_guidance") == ("set_guidance", pytest.approx(2.5), pytest.approx(1.0))
    before = panel.seed_spin.value()
    window.actions.random_seed.trigger()
    assert panel.seed_spin.value() != before or engine.last("set_seed")[1] == before
    assert engine.last("set_seed") == ("set_seed", panel.seed_spin.value())
    assert len(window.factory.built) == 1  # none of these needed a new engine


def test_steps_change_builds_a_new_engine_with_the_live_values(qtbot, open_window):
    window = open_window(small())
    window.style_panel.strength_slider.setValue(0.7)
    window.style_panel.steps_spin.setValue(3)
    until(qtbot, lambda: len(window.factory.built) == 2 and window.session.engine is window.factory.built[1],
                    timeout=WAIT_MS)
    new = window.session.engine
    assert len(new.config.t_index_list) == 3
    assert new.last("set_strength") == ("set_strength", pytest.approx(0.7))


def test_keyboard_shortcuts(qtbot, open_window):
    window = open_window(small())
    bound = {act: [s.toString() for s in act.shortcuts()] for act in window.actions.__dict__.values()
             if hasattr(act, "shortcuts")}
    flat = {key for keys in bound.values() for key in keys}
    for key in ("Space", "Ctrl+R", "Ctrl+S", "Ctrl+Shift+R", "Ctrl+D", "Ctrl+L", "F11", "Ctrl+Q"):
        assert key in flat, key
    window.activateWindow()
    window.preview.setFocus()
    qtbot.keyClick(window.preview, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    until(qtbot, lambda: window.session.running, timeout=2000)
    qtbot.keyClick(window.preview, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert window.focusWidget() is window.style_panel.prompt_edit
    seed = window.style_panel.seed_spin.value()
    qtbot.keyClick(window.preview, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    assert window.session.engine.last("set_seed") == ("set_seed", window.style_panel.seed_spin.value()) or (
        window.style_panel.seed_spin.value() == seed)
    # Space in the prompt types a space; it does not stop the stream.
    qtbot.keyClick(window.style_panel.prompt_edit, Qt.Key.Key_Space)
    assert window.session.running


# ------------------------------------------------------------------------------------- preview


def test_preview_receives_frames_of_the_engine_size(qtbot, open_window):
    window = open_window(small(view="side"))
    start_and_wait_frames(qtbot, window)
    output = window.preview.current_image("output")
    assert (output.width(), output.height()) == (128, 96)
    source = window.preview.current_image("input")
    assert (source.width(), source.height()) == (640, 480)
    first = window.preview.current_array().copy()
    until(qtbot, lambda: not np.array_equal(window.preview.current_array(), first), timeout=WAIT_MS)
    picture = window.preview.grab().toImage()
    assert not picture.isNull()
    stats = window.session.pipeline.stats()
    until(qtbot, lambda: "fps" in window.status.stats_label.text(), timeout=2000)
    assert stats.frames_out > 0


def test_frames_are_coalesced_not_queued(qtbot):
    from app.gui.bridge import FrameBridge

    bridge = FrameBridge()
    received = []
    bridge.frame_ready.connect(lambda packet: received.append(packet.output[0, 0, 0]))
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(50)]
    worker = threading.Thread(target=lambda: [bridge.post_frame(None, f) for f in frames])
    worker.start()
    worker.join()
    until(qtbot, lambda: received and received[-1] == 49, timeout=2000)
    assert len(received) < 10  # the GUI saw the newest frame, not a backlog of fifty


# ------------------------------------------------------------------------------------- outputs


def test_virtual_camera_without_a_driver_shows_the_reason(qtbot, open_window):
    from app.outputs import virtualcam_available

    if virtualcam_available()[0]:
        pytest.skip("a virtual camera driver is installed here")
    window = open_window(small())
    label = window.output_panel.vcam_label
    until(qtbot, lambda: "No virtual camera" in label.text() or "pyvirtualcam" in label.text(), timeout=WAIT_MS)
    assert not window.output_panel.vcam_check.isEnabled()
    if os.name == "posix" and "linux" in os.uname().sysname.lower():
        assert "modprobe v4l2loopback" in label.text()  # the set-up step for this OS
    # Forcing it on anyway gives a message, not a crash.
    window.session.set_virtual_camera(True)
    until(qtbot, lambda: "No virtual camera" in label.text(), timeout=WAIT_MS)
    assert not window.output_panel.vcam_check.isChecked()


def test_record_and_snapshot(qtbot, open_window, tmp_path):
    window = open_window(small(output_dir=str(tmp_path / "out")))
    start_and_wait_frames(qtbot, window)
    window.take_snapshot()
    until(qtbot, lambda: list((tmp_path / "out").glob("*.png")), timeout=WAIT_MS)
    png = cv2.imread(str(next((tmp_path / "out").glob("*.png"))))
    assert png.shape == (96, 128, 3)
    window.actions.record.trigger()
    assert window.output_panel.record_button.isChecked()
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown >= shown + 5, timeout=WAIT_MS)
    window.actions.record.trigger()
    until(qtbot, lambda: "frames)" in window.output_panel.saved_label.text(), timeout=WAIT_MS)
    videos = list((tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 1 and ".partial" not in videos[0].name
    assert cv2.VideoCapture(str(videos[0])).read()[0]
    assert not window.output_panel.record_button.isChecked()


def test_a_recording_is_finalized_on_quit(qtbot, open_window, tmp_path):
    window = open_window(small(output_dir=str(tmp_path / "out")))
    start_and_wait_frames(qtbot, window)
    window.set_recording(True)
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown >= shown + 5, timeout=WAIT_MS)
    window.close()
    files = list((tmp_path / "out").glob("*.mp4"))
    assert len(files) == 1 and ".partial" not in files[0].name


def test_stop_finalizes_the_recording(qtbot, open_window, tmp_path):
    window = open_window(small(output_dir=str(tmp_path / "out")))
    start_and_wait_frames(qtbot, window)
    window.set_recording(True)
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown >= shown + 3, timeout=WAIT_MS)
    window.actions.start.trigger()  # stop
    until(qtbot, lambda: "frames)" in window.output_panel.saved_label.text(), timeout=WAIT_MS)
    assert not window.output_panel.record_button.isChecked()
    videos = list((tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 1 and ".partial" not in videos[0].name


# ------------------------------------------------------------------------------------ settings


def test_settings_round_trip_through_the_window(qtbot, open_window):
    window = open_window(small())
    window.style_panel.prompt_edit.setPlainText("a pencil sketch, cross hatching")
    window.style_panel.strength_slider.setValue(0.35)
    window.style_panel.seed_spin.setValue(77)
    window.style_panel.steps_spin.setValue(2)
    window.style_panel.filter_check.setChecked(True)
    window.style_panel.advanced.set_expanded(True)
    window.style_panel.cfg_combo.setCurrentText("self")
    window.model_panel.set_model("preset:tiny")
    window.model_panel.set_size(256, 256)
    window.output_panel.set_view("input")
    window.output_panel.mirror_check.setChecked(True)
    window.close()

    again = open_window(wait_engine=False)
    panel = again.style_panel
    assert panel.prompt() == "a pencil sketch, cross hatching"
    assert panel.strength_slider.value() == pytest.approx(0.35)
    assert panel.seed_spin.value() == 77 and panel.steps_spin.value() == 2
    assert panel.filter_check.isChecked() and panel.advanced.is_expanded()
    assert panel.cfg_combo.currentText() == "self"
    assert again.model_panel.model() == "preset:tiny" and again.model_panel.size() == (256, 256)
    assert again.output_panel.current_view() == "input" and again.preview.view() == "input"
    assert again.output_panel.mirror_check.isChecked()
    assert again.notifier.messages == []
    # The new window's engine is built from the restored values.
    until(qtbot, lambda: again.session.engine is not None, timeout=WAIT_MS)
    config = again.session.engine.config
    assert (config.model, config.width, len(config.t_index_list), config.cfg_type) == ("preset:tiny", 256, 2, "self")
    assert again.session.engine.last("set_seed") == ("set_seed", 77)


def test_corrupt_settings_are_reset_with_a_warning(qtbot, open_window, tmp_path):
    (tmp_path / "settings.ini").write_text("[General]\nstrength=loud\nsteps=twelve\nprompt=still here\n")
    window = open_window(wait_engine=False)
    warnings = window.notifier.texts("warning")
    assert len(warnings) == 1 and "strength" in warnings[0] and "steps" in warnings[0]
    assert window.style_panel.strength_slider.value() == pytest.approx(AppSettings().strength)
    assert window.style_panel.prompt() == "still here"

    (tmp_path / "binary.ini").write_bytes(b"\x00\x01\x02 not settings \xff")
    broken = open_window(settings_file="binary.ini", wait_engine=False)
    assert any("could not be read" in text for text in broken.notifier.texts("warning"))
    assert broken.style_panel.prompt() == AppSettings().prompt


def test_presets_apply_and_user_presets_are_saved(qtbot, open_window, tmp_path):
    window = open_window(small())
    engine = window.session.engine
    combo = window.style_panel.preset_combo
    index = combo.findText("Pixel art")
    assert index > 0 and combo.count() >= 9
    combo.setCurrentIndex(index)
    combo.activated.emit(index)
    preset = next(p for p in window.presets if p.name == "Pixel art")
    assert window.style_panel.prompt() == preset.prompt
    assert engine.last("update_prompt")[1] == preset.prompt  # applied at once, no debounce
    assert engine.last("set_strength") == ("set_strength", pytest.approx(preset.strength))

    window.style_panel.prompt_edit.setPlainText("my own style")
    window._ask_text = lambda title, label: ("Mine", True)
    window.style_panel.save_preset_button.click()
    assert (tmp_path / "presets" / "mine.json").exists()
    assert window.style_panel.preset_combo.findText("Mine  (yours)") > 0


# ---------------------------------------------------------------------------------------- errors


def test_a_model_that_fails_to_load_keeps_the_old_engine(qtbot, open_window):
    from core.model_errors import ModelLoadError

    factory = FakeFactory({"broken/model": ModelLoadError("The repository broken/model does not exist on the hub")})
    window = open_window(small(), factory=factory)
    old = window.session.engine
    start_and_wait_frames(qtbot, window)
    window.model_panel.set_model("broken/model")
    window.reload_engine()
    until(qtbot, lambda: window.notifier.texts("error"), timeout=WAIT_MS)
    message = window.notifier.texts("error")[0]
    assert "does not exist on the hub" in message and "fake/model" in message
    assert window.session.engine is old
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown > shown + 2, timeout=WAIT_MS)  # still streaming
    assert "failed" in window.model_panel.status_label.text()


def test_cancelling_a_load_discards_its_result(qtbot, open_window):
    gate = threading.Event()
    factory = FakeFactory(gate=gate)
    window = open_window(small(), factory=factory)
    old = window.session.engine
    window.model_panel.set_model("slow/model")
    window.reload_engine()
    assert window.model_panel.cancel_button.isVisibleTo(window)
    window.model_panel.cancel_button.click()
    gate.set()
    until(qtbot, lambda: len(factory.built) == 2, timeout=WAIT_MS)
    qtbot.wait(200)
    assert window.session.engine is old
    assert not window.model_panel.cancel_button.isVisibleTo(window)


def test_out_of_memory_suggests_a_smaller_size_and_the_app_stays_up(qtbot, open_window):
    import torch

    class Oom(FakeFactory):
        def __call__(self, config, progress=None):
            engine = super().__call__(config, progress)
            if config.width >= 512:
                engine.fail_with = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return engine

    window = open_window(small(width=512, height=512), factory=Oom())
    window.session.start()
    until(qtbot, lambda: window.notifier.texts("error"), timeout=WAIT_MS)
    message = window.notifier.texts("error")[0].lower()
    assert "out of memory" in message and "smaller" in message
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown > shown + 2, timeout=WAIT_MS)  # frames pass through
    assert window.isVisible()


def test_an_exception_in_a_thread_reaches_the_window(qtbot, open_window):
    from app.gui import excepthook

    window = open_window(small())
    excepthook.install(window.session.bridge.post_error)
    try:
        worker = threading.Thread(target=lambda: 1 / 0, name="boom")
        worker.start()
        worker.join()
        until(qtbot, lambda: window.notifier.texts("error"), timeout=2000)
    finally:
        excepthook.uninstall()
    assert "ZeroDivisionError" in window.notifier.texts("error")[0]
    assert "ZeroDivisionError" in window.status.currentMessage()


def test_an_unplugged_camera_shows_a_status_while_retrying(qtbot, open_window):
    from app.sources import SourceLost, TestPattern

    class Flaky(TestPattern):
        def __init__(self):
            super().__init__(64, 48, fps=60)
            self.reads = 0

        def read(self):
            self.reads += 1
            if 5 <= self.reads < 8:
                raise SourceLost("Camera 0 stopped delivering frames (unplugged)")
            return super().read()

    window = open_window(small())
    window.session.pipeline.config.retry_initial_s = 0.05
    window.session.set_source(Flaky())
    messages = []
    window.status.messageChanged.connect(messages.append)
    window.session.start()
    until(qtbot, lambda: any("retrying" in m for m in messages), timeout=WAIT_MS)
    until(qtbot, lambda: any("is back" in m for m in messages), timeout=WAIT_MS)
    assert window.notifier.texts("error") == []


def test_a_busy_camera_gives_a_message_not_a_crash(qtbot, open_window):
    from app.sources import Camera

    class Closed:
        def isOpened(self):
            return False

        def release(self):
            pass

    window = open_window(small())
    window.session.set_source(Camera(0, capture_factory=lambda device: Closed()))
    window.session.start()
    until(qtbot, lambda: window.notifier.texts("error"), timeout=WAIT_MS)
    assert "another program" in window.notifier.texts("error")[0]
    assert window.isVisible()


# ----------------------------------------------------------------------------------- real engine


def test_the_real_tiny_engine_streams_into_the_preview(qtbot, open_window):
    pytest.importorskip("diffusers")
    from app.gui.loader import default_engine_factory

    window = open_window(small(model="preset:tiny", width=64, height=64, steps=1), factory=default_engine_factory,
                         wait_engine=False)
    until(qtbot, lambda: window.session.engine is not None, timeout=60000)
    assert type(window.session.engine).__name__ == "StreamEngine"
    window.style_panel.strength_slider.setValue(0.6)
    window.style_panel.seed_spin.setValue(5)
    start_and_wait_frames(qtbot, window, count=2)
    until(qtbot, lambda: window.preview.current_image("output").width() == 64, timeout=60000)
    assert window.session.engine.frames_processed > 0
    assert window.notifier.texts("error") == []


def test_the_gui_thread_does_not_stall_while_frames_flow(tmp_path):
    from app.gui.responsiveness import measure, open_streaming_window

    app, window = open_streaming_window(str(tmp_path), 512, 512, gpu_ms=10.0)
    try:
        result = measure(window, app, 1.5)
    finally:
        window.close()
    assert result["frames_painted"] >= 10
    # The target is 16 ms; shared CI machines add scheduler noise, so only gross blocking fails here.
    assert result["max_stall_ms"] < 150, result


# ------------------------------------------------------------------------------------- sources


def test_source_panel_lists_devices_and_restores_the_choice(qtbot):
    from app.camera import CameraInfo
    from app.gui.source_panel import SourcePanel, build_source
    from app.sources import Camera, Screen

    monitors = [{"left": 0, "top": 0, "width": 3840, "height": 1080},
                {"left": 0, "top": 0, "width": 1920, "height": 1080},
                {"left": 1920, "top": 0, "width": 1920, "height": 1080}]
    panel = SourcePanel(discover=lambda: ([CameraInfo(0, "Built-in"), CameraInfo(2, "USB cam")], monitors, ""))
    qtbot.addWidget(panel)
    texts = [panel.kind_combo.itemText(i) for i in range(panel.kind_combo.count())]
    assert texts[:2] == ["Camera 0: Built-in", "Camera 2: USB cam"]
    assert "All screens (3840×1080)" in texts and "Screen 2 (1920×1080)" in texts and "Screen region…" in texts

    panel.load(AppSettings(source_kind="camera", camera_index=2))
    assert panel.kind_combo.currentText() == "Camera 2: USB cam"
    assert isinstance(build_source(panel.choice()), Camera) and panel.choice().camera_index == 2

    panel.load(AppSettings(source_kind="region", monitor=2, region="10,20,640,360", follow_mouse=True))
    choice = panel.choice()
    assert (choice.kind, choice.monitor, choice.region, choice.follow_mouse) == ("region", 2, (10, 20, 640, 360), True)
    screen = build_source(choice)
    assert isinstance(screen, Screen) and screen.region == (10, 20, 640, 360) and screen.follow_mouse
    assert panel.region_edit.isVisibleTo(panel)

    chosen = []
    panel.source_changed.connect(chosen.append)
    panel.set_region(1, (0, 0, 320, 240))  # what the region picker does on OK
    assert chosen[-1].region == (0, 0, 320, 240) and chosen[-1].monitor == 1

    panel.load(AppSettings(source_kind="camera", camera_index=5))  # unplugged since: fall back, do not fail
    assert panel.choice().kind == "test"


def test_region_picker_maps_a_drag_to_screen_pixels(qtbot):
    from app.gui.region_picker import RegionPickerDialog

    screenshot = np.zeros((1080, 1920, 3), np.uint8)
    dialog = RegionPickerDialog(screenshot)
    qtbot.addWidget(dialog)
    dialog.resize(1000, 700)
    dialog.show()
    canvas = dialog.canvas
    target = canvas._target()
    start = target.topLeft() + (target.bottomRight() - target.topLeft()) / 4
    end = target.topLeft() + (target.bottomRight() - target.topLeft()) * 3 / 4
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(canvas, end)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=end)
    x, y, w, h = dialog.region()
    assert abs(x - 480) < 8 and abs(y - 270) < 8 and abs(w - 960) < 12 and abs(h - 540) < 12


def test_model_sizes_are_not_duplicated(qtbot):
    from app.gui.model_panel import ModelPanel

    panel = ModelPanel()
    qtbot.addWidget(panel)
    count = panel.size_combo.count()
    panel.set_size(512, 512)
    panel.set_size(512, 512)
    assert panel.size_combo.count() == count and panel.size() == (512, 512)
    panel.set_size(320, 240)
    assert panel.size_combo.count() == count + 1 and panel.size() == (320, 240)


def test_run_gui_opens_and_quits(tmp_path):
    """In a child process: QApplication.exec() and quit() leave a process unfit for further Qt tests."""
    import subprocess
    import sys

    settings = tmp_path / "run" / "settings.ini"
    SettingsStore(str(settings)).save(AppSettings(model=str(tmp_path / "no-such-model"), prompt="from the file"))
    script = (
        "import sys\n"
        "from PySide6.QtCore import QTimer\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication(['livediffusion'])\n"
        "from app.gui.main_window import MainWindow, run_gui\n"
        "def quit_():\n"
        "    windows = [w for w in app.topLevelWidgets() if isinstance(w, MainWindow)]\n"
        "    print('prompt:', windows[0].style_panel.prompt())\n"
        "    windows[0].actions.quit.trigger()\n"
        "QTimer.singleShot(1500, quit_)\n"
        f"sys.exit(run_gui(['--settings', {str(settings)!r}]))\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prompt: from the file" in done.stdout
    assert "geometry" in settings.read_text()  # saved on quit


def test_fullscreen_preview_hides_the_panels(qtbot, open_window):
    window = open_window(small())
    window.actions.fullscreen.setChecked(True)
    assert not window.side.isVisible() and not window.toolbar.isVisible()
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert not window.actions.fullscreen.isChecked() and window.side.isVisible()
