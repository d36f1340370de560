"""What the outputs get: the output size with crop or letterbox, bypass, mirror, the virtual camera's
size and reopening, the generated size that follows the source, and the same through ``run``."""

import argparse
import time

import numpy as np
import pytest

from app.commands.cli import main
from app.outputs import VirtualCamera
from app.outputs.base import fit_frame
from app.pipeline import OutputShape, Pipeline, PipelineConfig
from app.sources import Source, TestPattern
from core.cli_options import add_engine_arguments, config_from_args
from tests.gui_support import small, until
from tests.pipeline_fakes import FakeEngine, write_clip

pytestmark = pytest.mark.timeout(120)


def _wide_pattern() -> np.ndarray:
    """16:9, bright everywhere, with a distinct left and right edge band and a red left half."""
    image = np.full((90, 160, 3), 200, np.uint8)
    image[:, :80, 1:] = 40  # left half red
    image[:, :35] = 10  # the bands a centre crop to a square cuts away
    image[:, 125:] = 250
    return image


class StillSource(Source):
    name = "still"

    def __init__(self, image, limit=None):
        self.image, self.limit, self.count = image, limit, 0

    def read(self):
        self.count += 1
        if self.limit is not None and self.count > self.limit:
            return None
        time.sleep(0.005)
        return self.image


def test_letterbox_puts_black_bars_exactly_where_the_shapes_differ():
    out = fit_frame(_wide_pattern(), 64, 64, letterbox=True)
    # 160x90 scaled into 64x64 is 64x36, centred: rows 14..49 carry the picture, the rest is bars.
    assert out.shape == (64, 64, 3)
    assert not out[:14].any() and not out[50:].any()
    assert (out[14:50].max(axis=2) > 0).all()


def test_crop_keeps_the_centre_and_cuts_the_edges():
    out = fit_frame(_wide_pattern(), 64, 64, letterbox=False)
    assert out.shape == (64, 64, 3)
    # The crop keeps columns 35..124 of the source: neither edge band survives.
    assert out.min() >= 30 and (out < 245).all()
    assert out[:, :28, 2].max() <= 45 and out[:, 36:, 2].min() >= 190  # red half left, bright half right


def _collect(pipe, count=5):
    got = []
    pipe.add_output(type("Collect", (), {"write": lambda self, image, timestamp=None: got.append(image.copy()),
                                         "close": lambda self: None, "name": "collect"})())
    return got


def test_bypass_sends_the_source_at_the_output_size_and_keeps_the_engine():
    engine = FakeEngine(64, 36)
    pipe = Pipeline(engine, StillSource(_wide_pattern()), PipelineConfig(lossless=True))
    got = _collect(pipe)
    pipe.set_output_shape(OutputShape(64, 36, letterbox=False))
    pipe.set_bypass(True)
    pipe.start()
    deadline = time.monotonic() + 5
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    calls = engine.calls
    pipe.set_bypass(False)
    deadline = time.monotonic() + 5
    while engine.calls == calls and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    expected = fit_frame(_wide_pattern(), 64, 36)
    assert calls == 0 and engine.calls > 0 and pipe.engine is engine  # the engine waited, loaded
    assert all(frame.shape == (36, 64, 3) for frame in got[:5])
    assert all(np.array_equal(frame, expected) for frame in got[:5])  # the scaled input, not the engine's


def test_output_mirror_flips_the_outputs_but_not_the_preview():
    seen = []
    pipe = Pipeline(None, StillSource(_wide_pattern(), limit=3), PipelineConfig(lossless=True),
                    on_frame=lambda item: seen.append(item.image))
    got = _collect(pipe)
    pipe.set_output_mirror(True)
    pipe.start()
    assert pipe.wait(5)
    pipe.stop()
    assert len(got) == 3 and np.array_equal(got[0], _wide_pattern()[:, ::-1])
    assert np.array_equal(seen[0], _wide_pattern())


def test_the_virtual_camera_reopens_at_a_new_size_while_frames_flow(fake_pyvirtualcam):
    camera = VirtualCamera(64, 36, fps=24)
    camera.write(np.zeros((36, 64, 3), np.uint8))
    camera.resize(128, 72)
    camera.write(np.zeros((72, 128, 3), np.uint8))
    camera.write(np.zeros((72, 128, 3), np.uint8))
    camera.close()
    assert fake_pyvirtualcam.opened == [(64, 36, 24), (128, 72, 24)] and camera.opens == 2
    assert [frame.shape for frame in fake_pyvirtualcam.sent] == [(36, 64, 3), (72, 128, 3), (72, 128, 3)]


# ------------------------------------------------------------------------------------- the window


def test_an_output_size_change_reaches_the_engine_and_reopens_the_virtual_camera(open_window, qtbot,
                                                                                   fake_pyvirtualcam):
    window = open_window(small(output_size="1280x720"))
    engine = window.session.engine
    assert engine.last("set_output_size") == ("set_output_size", 1280, 720)
    until(qtbot, lambda: window.output_panel.vcam_check.isEnabled())
    window.output_panel.vcam_check.setChecked(True)
    until(qtbot, lambda: "Writing to" in window.output_panel.vcam_label.text())
    window.session.start()
    until(qtbot, lambda: fake_pyvirtualcam.sent)
    assert fake_pyvirtualcam.opened[-1][:2] == (1280, 720) and fake_pyvirtualcam.sent[-1].shape == (720, 1280, 3)
    window.output_panel.set_output_size("640x360")
    assert engine.last("set_output_size") == ("set_output_size", 640, 360)
    until(qtbot, lambda: fake_pyvirtualcam.opened[-1][:2] == (640, 360) and fake_pyvirtualcam.sent[-1].shape == (360, 640, 3))
    # Nothing stopped: the same engine, the stream running, no second model load.
    assert window.session.running and window.session.engine is engine and len(window.factory.built) == 1
    assert "640×360" in window.output_panel.vcam_label.text()


def test_the_generated_size_follows_the_source_shape(open_window, qtbot):
    window = open_window(small(quality="balanced"))
    # The window's test pattern is 640x480 (4:3): balanced is 640x480.
    assert (window.session.engine_config.width, window.session.engine_config.height) == (640, 480)
    window.session.start()
    window.session.set_source(TestPattern(320, 180, fps=30))
    until(qtbot, lambda: window.session.engine_config.width == 768)
    assert window.session.engine_config.height == 432 and len(window.factory.built) == 2
    # The reload was told the size frames arrive at, so it captures its graph for them.
    built = window.factory.built[-1].config
    assert (built.source_width, built.source_height) == (320, 180)
    assert window.model_panel.size() == (768, 432) and not window.model_panel.size_combo.isEnabled()
    window.model_panel.quality_combo.setCurrentIndex(window.model_panel.quality_combo.findData("fast"))
    until(qtbot, lambda: window.session.engine_config.width == 640)
    assert window.session.engine_config.height == 360


def test_steadiness_and_transition_controls_reach_the_engine(open_window):
    window = open_window(small())
    engine = window.session.engine
    window.style_panel.smoothing_slider.setValue(0.4)
    window.style_panel.transition_spin.setValue(1.0)
    assert engine.last("set_smoothing") == ("set_smoothing", pytest.approx(0.4))
    assert engine.last("set_transition_frames") == ("set_transition_frames", 30)  # 1 s of the 30 fps pattern


# ------------------------------------------------------------------------------------- headless


def _engine_args(*argv):
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def test_quality_and_transition_follow_the_source():
    config = config_from_args(_engine_args("--quality", "high", "--transition", "0.5"), (1920, 1080), 60.0)
    assert (config.width, config.height, config.transition_frames) == (1024, 576, 30)
    assert (config_from_args(_engine_args(), (480, 640)).width, config_from_args(_engine_args(), (480, 640)).height) == (480, 640)
    assert (config_from_args(_engine_args("--width", "256"), (1920, 1080)).width) == 256


def test_run_picks_the_size_from_the_source_and_opens_the_virtual_camera_at_the_output_size(fake_pyvirtualcam, capsys):
    rc = main(["run", "--source", "test:320x180", "--fps", "24", "--frames", "3", "--output", "virtualcam",
               "--model", "preset:tiny", "--quality", "fast", "--output-size", "1280x720", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "at 640x360, output 1280x720" in err
    assert fake_pyvirtualcam.opened == [(1280, 720, 24)]
    assert fake_pyvirtualcam.sent and all(frame.shape == (720, 1280, 3) for frame in fake_pyvirtualcam.sent)


def test_run_mirror_flips_the_recording(tmp_path):
    import av

    frames = write_clip(tmp_path / "in.mp4", frames=3, size=(64, 48))
    rc = main(["run", "--source", str(tmp_path / "in.mp4"), "--output", str(tmp_path / "out.mp4"), "--no-engine",
               "--mirror", "--quiet"])
    assert rc == 0
    with av.open(str(tmp_path / "out.mp4")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    source = frames[0].astype(int)
    # Compared after a lossy encode: the mirrored source is much closer than the source itself.
    assert np.abs(first - source[:, ::-1]).mean() < np.abs(first - source).mean() / 3


def test_crop_or_letterbox_changes_live_in_the_engine(tiny_components, tiny_config):
    from core.stream import StreamEngine

    engine = StreamEngine(tiny_components, tiny_config.replace(output_width=192, output_height=108))
    engine.prepare("a test")
    frame = _wide_pattern()
    cropped = engine.process(frame)
    engine.set_resize_mode("letterbox")
    boxed = engine.process(frame)
    # The square generated picture scaled into 192x108 is 108x108 at columns 42..149: black bars either side.
    assert cropped.shape == boxed.shape == (108, 192, 3)
    assert not boxed[:, :42].any() and not boxed[:, 150:].any() and boxed[:, 42:150].any()
    assert cropped[:, :42].any() and cropped[:, 150:].any()


def test_the_window_switches_crop_and_letterbox_without_a_reload(open_window, qtbot):
    window = open_window(small())
    engine = window.session.engine
    window.output_panel.fit_combo.setCurrentIndex(window.output_panel.fit_combo.findData("letterbox"))
    assert engine.last("set_resize_mode") == ("set_resize_mode", "letterbox")
    assert window.session.pipeline.output_shape.letterbox
    qtbot.wait(600)  # longer than the reload debounce: no load may follow
    assert len(window.factory.built) == 1 and window.session.engine is engine
