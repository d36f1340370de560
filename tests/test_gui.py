"""The Qt window, offscreen, with a fake engine (and one test with the real tiny model).

Every window gets its own temporary settings file, a notifier that records instead of showing
dialogs, and no device discovery, so nothing here depends on the machine's cameras or screens.
"""

import os
import sys
import threading
import types

import cv2
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

from tests.gui_support import FakeFactory, small, until  # noqa: E402

def start_and_wait_frames(qtbot, window, count=3):
    shown = window.preview.frames_shown
    window.session.start()
    until(qtbot, lambda: window.preview.frames_shown >= shown + count)


# ------------------------------------------------------------------------------------ controls


def record_frames(qtbot, window, count):
    """Start the window, start recording, and wait until ``count`` recorded frames were shown."""
    start_and_wait_frames(qtbot, window)
    window.set_recording(True)
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown >= shown + count)


def test_prompt_reaches_the_engine_after_the_debounce(qtbot, open_window):
    window = open_window(small())
    engine = window.session.engine
    window.style_panel.prompt_edit.setPlainText("a marble statue")
    window.style_panel.negative_edit.setText("color")
    assert engine.last("update_prompt") is None or engine.last("update_prompt")[1] != "a marble statue"
    until(qtbot, lambda: engine.last("update_prompt") == ("update_prompt", "a marble statue", "color"), timeout=2000)


def test_live_controls_reach_the_engine(qtbot, open_window, monkeypatch):
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
    monkeypatch.setattr("app.gui.style_panel.random.randint", lambda low, high: 31337)
    window.actions.random_seed.trigger()
    assert panel.seed_spin.value() == 31337 and engine.last("set_seed") == ("set_seed", 31337)
    assert len(window.factory.built) == 1  # none of these needed a new engine


def test_steps_change_builds_a_new_engine_with_the_live_values(qtbot, open_window):
    window = open_window(small())
    window.style_panel.strength_slider.setValue(0.7)
    window.style_panel.steps_spin.setValue(3)
    until(qtbot, lambda: len(window.factory.built) == 2 and window.session.engine is window.factory.built[1])
    new = window.session.engine
    assert len(new.config.t_index_list) == 3
    assert new.last("set_strength") == ("set_strength", pytest.approx(0.7))


def test_keyboard_shortcuts(qtbot, open_window):
    window = open_window(small())
    bound = {s.toString() for act in vars(window.actions).values() if hasattr(act, "shortcuts") for s in act.shortcuts()}
    assert {"Space", "Ctrl+R", "Ctrl+S", "Ctrl+Shift+R", "Ctrl+D", "Ctrl+L", "F11", "Ctrl+Q"} <= bound
    window.preview.setFocus()
    qtbot.keyClick(window.preview, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    until(qtbot, lambda: window.session.running, timeout=2000)
    qtbot.keyClick(window.preview, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert window.focusWidget() is window.style_panel.prompt_edit
    qtbot.keyClick(window.preview, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier)
    assert window.session.engine.last("set_seed") == ("set_seed", window.style_panel.seed_spin.value())
    # Space in the prompt types a space; it does not stop the stream.
    qtbot.keyClick(window.style_panel.prompt_edit, Qt.Key.Key_Space)
    assert window.session.running


# ------------------------------------------------------------------------------------- preview


def test_preview_receives_frames_of_the_engine_size(qtbot, open_window):
    window = open_window(small(view="side"))
    start_and_wait_frames(qtbot, window)
    output, source = window.preview.current_image("output"), window.preview.current_image("input")
    assert (output.width(), output.height(), source.width(), source.height()) == (128, 96, 640, 480)
    first = window.preview.current_array().copy()
    until(qtbot, lambda: not np.array_equal(window.preview.current_array(), first))
    assert not window.preview.grab().toImage().isNull()
    until(qtbot, lambda: "fps" in window.status.stats_label.text(), timeout=2000)


def test_frames_are_coalesced_not_queued(qtbot):
    from app.gui.bridge import FrameBridge

    bridge = FrameBridge()
    received = []
    bridge.frame_ready.connect(lambda packet: received.append(packet.output[0, 0, 0]))
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(50)]
    worker = threading.Thread(target=lambda: [bridge.post_frame(None, f) for f in frames])
    worker.start(), worker.join()
    until(qtbot, lambda: received and received[-1] == 49, timeout=2000)
    assert len(received) < 10  # the GUI saw the newest frame, not a backlog of fifty


# ------------------------------------------------------------------------------------- outputs


def test_virtual_camera_without_a_driver_shows_the_reason(qtbot, open_window):
    from app.outputs import virtualcam_available

    if virtualcam_available()[0]:
        pytest.skip("a virtual camera driver is installed here")
    window = open_window(small())
    label = window.output_panel.vcam_label
    until(qtbot, lambda: "No virtual camera" in label.text() or "pyvirtualcam" in label.text())
    assert not window.output_panel.vcam_check.isEnabled()
    assert sys.platform != "linux" or "modprobe v4l2loopback" in label.text()  # the set-up step for this OS
    # Forcing it on anyway gives a message, not a crash.
    window.session.set_virtual_camera(True)
    until(qtbot, lambda: "No virtual camera" in label.text())
    assert not window.output_panel.vcam_check.isChecked()


def test_record_and_snapshot(qtbot, open_window, tmp_path):
    window = open_window(small(output_dir=str(tmp_path / "out")))
    start_and_wait_frames(qtbot, window)
    window.take_snapshot()
    until(qtbot, lambda: list((tmp_path / "out").glob("*.png")))
    png = cv2.imread(str(next((tmp_path / "out").glob("*.png"))))
    assert png.shape == (96, 128, 3)
    window.actions.record.trigger()
    assert window.output_panel.record_button.isChecked()
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown >= shown + 5)
    window.actions.record.trigger()
    until(qtbot, lambda: "frames)" in window.output_panel.saved_label.text())
    videos = list((tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 1 and ".partial" not in videos[0].name
    assert cv2.VideoCapture(str(videos[0])).read()[0]
    assert not window.output_panel.record_button.isChecked()


def test_a_recording_is_finalized_on_quit(qtbot, open_window, tmp_path):
    window = open_window(small(output_dir=str(tmp_path / "out")))
    record_frames(qtbot, window, 5)
    window.close()
    files = list((tmp_path / "out").glob("*.mp4"))
    assert len(files) == 1 and ".partial" not in files[0].name


def test_a_failing_recording_is_finalized_and_reported(qtbot, open_window, tmp_path, monkeypatch):
    from app.outputs import OutputError, Recorder

    original = Recorder.write

    def write(self, image, timestamp=None):
        if self.frames_written >= 3:
            raise OutputError("The disk is full")
        original(self, image, timestamp)

    monkeypatch.setattr(Recorder, "write", write)
    window = open_window(small(output_dir=str(tmp_path / "out")))
    start_and_wait_frames(qtbot, window)
    window.set_recording(True)
    # The toggle and the error message arrive by separate queued signals: wait for both.
    until(qtbot, lambda: not window.output_panel.record_button.isChecked()
          and any("disk is full" in text for text in window.notifier.texts("error")))
    videos = list((tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 1 and ".partial" not in videos[0].name and window.session.running


def test_stop_finalizes_the_recording(qtbot, open_window, tmp_path):
    window = open_window(small(output_dir=str(tmp_path / "out")))
    record_frames(qtbot, window, 3)
    window.actions.start.trigger()  # stop
    until(qtbot, lambda: "frames)" in window.output_panel.saved_label.text())
    assert not window.output_panel.record_button.isChecked()
    videos = list((tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 1 and ".partial" not in videos[0].name


# ---------------------------------------------------------------------------------------- errors


def test_a_model_that_fails_to_load_keeps_the_old_engine(qtbot, open_window):
    from core.model_errors import ModelLoadError

    factory = FakeFactory({"broken/model": ModelLoadError("The repository broken/model does not exist on the hub")})
    window = open_window(small(), factory=factory)
    old = window.session.engine
    start_and_wait_frames(qtbot, window)
    window.model_panel.set_model("broken/model")
    window.reload_engine()
    until(qtbot, lambda: window.notifier.texts("error"))
    message = window.notifier.texts("error")[0]
    assert "does not exist on the hub" in message and "fake/model" in message
    assert window.session.engine is old
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown > shown + 2)  # still streaming
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
    until(qtbot, lambda: len(factory.built) == 2)
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
    until(qtbot, lambda: window.notifier.texts("error"))
    message = window.notifier.texts("error")[0].lower()
    assert "out of memory" in message and "smaller" in message
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown > shown + 2)  # frames pass through, the app stays up


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
        reads = 0

        def read(self):
            self.reads += 1
            if 5 <= self.reads < 8:
                raise SourceLost("Camera 0 stopped delivering frames (unplugged)")
            return super().read()

    window = open_window(small())
    window.session.pipeline.config.retry_initial_s = 0.05
    window.session.set_source(Flaky(64, 48, fps=60))
    messages = []
    window.status.messageChanged.connect(messages.append)
    window.session.start()
    until(qtbot, lambda: any("retrying" in m for m in messages))
    until(qtbot, lambda: any("is back" in m for m in messages))
    assert window.notifier.texts("error") == []


def test_a_busy_camera_gives_a_message_not_a_crash(qtbot, open_window):
    from app.sources import Camera

    closed = types.SimpleNamespace(isOpened=lambda: False, release=lambda: None)  # what a taken camera gives
    window = open_window(small())
    window.session.set_source(Camera(0, capture_factory=lambda device: closed))
    window.session.start()
    until(qtbot, lambda: window.notifier.texts("error"))
    assert "another program" in window.notifier.texts("error")[0]


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
    from tools.responsiveness import measure, open_streaming_window

    app, window = open_streaming_window(str(tmp_path), 512, 512, gpu_ms=10.0)
    try:
        result = measure(window, app, 1.5)
    finally:
        window.close()
    assert result["frames_painted"] >= 10
    # The target is 16 ms; shared CI machines add scheduler noise, so only gross blocking fails here.
    assert result["max_stall_ms"] < 150, result


def test_fullscreen_preview_hides_the_panels(qtbot, open_window):
    window = open_window(small())
    window.actions.fullscreen.setChecked(True)
    assert not window.side.isVisible() and not window.toolbar.isVisible()
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert not window.actions.fullscreen.isChecked() and window.side.isVisible()
