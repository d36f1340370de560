"""Headless ``run`` under real-world abuse: recordings that keep real time, signals, long runs, bad
targets and bad options refused before a model loads."""

import gc
import hashlib
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

import app.outputs.recorder as outputs
import app.commands.run as run_command
from app.commands.cli import main
from app.outputs import Recorder
from app.pipeline import Pipeline
from app.sources import TestPattern
from tests.pipeline_fakes import FakeEngine, write_clip

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


def _exit_code(argv) -> int:
    """main(argv) in this process; argparse's usage errors come back as their exit code."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _video(path) -> tuple[int, float]:
    """(frame count, fps) as OpenCV reads them back from the file: the test trusts the file, not the code."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} cannot be read back"
    count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return count, fps


def _duration(path) -> float:
    count, fps = _video(path)
    return count / fps


@pytest.fixture
def no_engine_load(monkeypatch):
    """Replaces the engine loader; the test checks that it was never called."""
    calls = []

    def load_engine(*args, **kwargs):
        calls.append(args)
        return None, "the engine loader was called"

    monkeypatch.setattr(run_command, "load_engine", load_engine)
    return calls


# ------------------------------------------------------------------------------------- real time


def test_clock_recording_of_a_slow_engine_lasts_as_long_as_the_capture(tmp_path):
    # A 30 fps source through a 5 fps engine: the file must still last as long as the recording did.
    target = tmp_path / "slow.mp4"
    recorder = Recorder(target, fps=30, timing="clock")
    delivered = []
    pipe = Pipeline(FakeEngine(delay_s=0.2), TestPattern(64, 48, fps=30),
                    on_frame=lambda f: delivered.append((f.capture_time, f.output_time)))
    pipe.add_output(recorder)
    pipe.start()
    time.sleep(2.2)
    pipe.stop()
    assert len(delivered) >= 5
    captured = delivered[-1][0] - delivered[0][0]
    wall = delivered[-1][1] - delivered[0][1]
    duration = _duration(target)
    # The file is on the capture clock, to a frame; the output clock differs from it only by latency
    # jitter, given room for a loaded machine. Without clock timing the file would last about 0.4 s.
    assert abs(duration - captured) < 0.1, (duration, captured)
    assert abs(duration - wall) < 0.6, (duration, wall)


def test_clock_timing_repeats_frames_over_gaps_and_drops_frames_in_a_taken_slot(tmp_path):
    recorder = Recorder(tmp_path / "gaps.avi", fps=10, timing="clock")
    frame = np.zeros((16, 16, 3), np.uint8)
    for t in (100.0, 100.1, 100.5, 100.52, 100.6):  # slots 0, 1, 5, 5 (taken), 6
        recorder.write(frame, timestamp=t)
    recorder.close()
    assert (recorder.frames_written, recorder.frames_repeated, recorder.frames_dropped) == (7, 3, 1)
    count, fps = _video(tmp_path / "gaps.avi")
    assert count == 7 and fps == pytest.approx(10, abs=0.01)


def test_gui_recording_is_placed_on_the_clock_at_the_source_rate(tmp_path):
    # Not at an output rate measured once when recording starts: that drifts as soon as the rate changes.
    pytest.importorskip("PySide6")
    from app.gui.session import Session

    session = Session()
    session.pipeline.set_source(TestPattern(32, 24, fps=24))
    session.start_recording(str(tmp_path))
    recorder = session.pipeline.outputs[0]
    session.pipeline.remove_output(recorder)
    assert (recorder.timing, recorder.fps) == ("clock", 24)


def test_file_to_file_run_keeps_the_input_duration_whatever_fps_says(tmp_path, capsys):
    # --fps is for live sources: a video file processed frame by frame keeps its own rate and length.
    write_clip(tmp_path / "in.mp4", frames=24, size=(64, 48), fps=12)
    rc = main(["run", "--source", str(tmp_path / "in.mp4"), "--output", str(tmp_path / "out.mp4"), "--no-engine",
               "--fps", "30", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    (in_frames, in_fps), (out_frames, out_fps) = _video(tmp_path / "in.mp4"), _video(tmp_path / "out.mp4")
    assert out_frames == in_frames == 24
    assert out_fps == pytest.approx(in_fps, abs=0.01)
    assert "--fps applies to live sources" in err


def test_run_seconds_records_real_time_when_frames_arrive_slower_than_announced(tmp_path, monkeypatch, capsys):
    # Like a webcam that says 30 fps but delivers about 8 in dim light: 2 s of run, 2 s of video.
    class SlowPattern(TestPattern):
        def read(self):
            time.sleep(0.12)
            return super().read()

    monkeypatch.setattr(run_command, "parse_source", lambda *a, **k: SlowPattern(64, 48, fps=30))
    started = time.perf_counter()
    rc = main(["run", "--source", "test:64x48", "--fps", "30", "--seconds", "2", "--output",
               str(tmp_path / "two.mp4"), "--no-engine", "--quiet"])
    wall = time.perf_counter() - started
    assert rc == 0, capsys.readouterr().err
    duration = _duration(tmp_path / "two.mp4")
    assert abs(duration - 2.0) < 0.4 and duration <= wall + 0.1, (duration, wall)


# ---------------------------------------------------------------------------------------- signals


def _start_recording_run(tmp_path) -> tuple[subprocess.Popen, Path]:
    target = tmp_path / "X.mp4"
    env = dict(os.environ, HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "run", "--source", "test:64x48", "--fps", "30", "--output", str(target),
         "--no-engine"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob("*.partial.mp4")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # let the recording grow past its header
    return proc, target


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_finishes_the_recording_like_ctrl_c(tmp_path, signame):
    signum = getattr(signal, signame)
    if signal.getsignal(signum) is signal.SIG_IGN:
        pytest.skip(f"{signame} is ignored here (nohup?), and a run honours that")
    proc, target = _start_recording_run(tmp_path)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signum, err
    assert "interrupted: finishing the outputs" in err and f"wrote {target}" in err
    cap = cv2.VideoCapture(str(target))
    assert cap.read()[0], "the recording is not playable"
    cap.release()
    assert not list(tmp_path.glob("*partial*"))


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX signals")
def test_a_signal_while_the_model_loads_ends_the_run_with_a_message(monkeypatch, capsys):
    class Outside(Exception):
        pass

    def outside_handler(signum, frame):  # what SIGTERM does here when run() installs nothing
        raise Outside()

    def load_engine(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here
        return None, "loaded despite the signal"

    monkeypatch.setattr(run_command, "load_engine", load_engine)
    previous = signal.signal(signal.SIGTERM, outside_handler)
    try:
        rc = main(["run", "--source", "test:64x48", "--frames", "3", "--model", "preset:tiny", "--quiet"])
        assert signal.getsignal(signal.SIGTERM) is outside_handler, "run() must restore the previous handler"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert rc == 128 + signal.SIGTERM
    assert "interrupted before any frame was processed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ memory


def test_a_long_run_does_not_keep_the_frames_it_delivered(monkeypatch, capsys):
    class TrackedPattern(TestPattern):
        def __init__(self):
            super().__init__(64, 48, fps=None)
            self.refs = []
            self.alive_at_check = None

        def read(self):
            if len(self.refs) == 200:  # late in the run, while it is still going
                gc.collect()
                self.alive_at_check = sum(ref() is not None for ref in self.refs)
            frame = super().read()
            if frame is not None:
                self.refs.append(weakref.ref(frame))
            return frame

    source = TrackedPattern()
    monkeypatch.setattr(run_command, "parse_source", lambda *a, **k: source)
    rc = main(["run", "--source", "test:64x48", "--frames", "250", "--lossless", "--no-engine", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert source.alive_at_check is not None and source.alive_at_check <= 8, source.alive_at_check


# ------------------------------------------------------------------------------------ same target


def test_output_equal_to_the_source_is_refused_and_the_source_untouched(tmp_path, monkeypatch, capsys):
    write_clip(tmp_path / "v.mp4", frames=5)
    before = hashlib.sha256((tmp_path / "v.mp4").read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    for output in ("v.mp4", str(tmp_path / "v.mp4"), f"../{tmp_path.name}/v.mp4"):
        rc = main(["run", "--source", "v.mp4", "--output", output, "--no-engine", "--quiet"])
        assert rc == 2
        assert "is the --source file" in capsys.readouterr().err
    assert hashlib.sha256((tmp_path / "v.mp4").read_bytes()).hexdigest() == before


def test_two_recordings_to_one_path_use_their_own_partial_files_and_report_the_file(tmp_path, capsys):
    target = tmp_path / "same.mp4"
    first = Recorder(target, fps=10, timing="frames")
    second = Recorder(target, fps=25, timing="frames")
    for i in range(15):
        first.write(np.full((240, 320, 3), i, np.uint8))
        if i < 10:
            second.write(np.full((48, 64, 3), i, np.uint8))
    assert first.partial_path != second.partial_path
    assert first.partial_path.parent == second.partial_path.parent == tmp_path
    assert ".partial" in first.partial_path.name and first.partial_path.suffix == ".mp4"
    second.close()
    first.close()  # the last to finish owns the name
    errors = []
    run_command._report_recording(second, errors)
    err = capsys.readouterr().err
    # The second recording's report says what the file holds now: the first one's 15 frames at 320x240.
    assert "(15 frames, 320x240, 10 fps" in err and not errors
    assert not list(tmp_path.glob("*partial*"))


# ------------------------------------------------------------------------------- early refusals


def _refusal_cases(tmp_path):
    out = str(tmp_path / "out.mp4")
    return {
        "directory output": (["--source", "test:64x48", "--output", str(tmp_path)], 2, "is a folder"),
        "txt output": (["--source", "test:64x48", "--output", str(tmp_path / "o.txt")], 2, ".mp4, .mov, .mkv, .avi"),
        "webm output": (["--source", "test:64x48", "--output", str(tmp_path / "o.webm")], 2, ".mp4, .mov, .mkv, .avi"),
        "camera name": (["--source", "camera:abc", "--output", out], 2, "a camera is an index"),
        "huge test": (["--source", "test:100000x100000", "--output", out], 2, "larger than the largest size"),
        "fps nan": (["--source", "test:64x48", "--fps", "nan"], 2, "--fps"),
        "fps negative": (["--source", "test:64x48", "--fps", "-5"], 2, "--fps"),
        "frames negative": (["--source", "test:64x48", "--frames", "-1"], 2, "--frames"),
        "seconds negative": (["--source", "test:64x48", "--seconds", "-1"], 2, "--seconds"),
        "prompt bytes": (["--source", "test:64x48", "--prompt", "cat \udcff"], 2,
                         "--prompt contains bytes that are not UTF-8 text"),
        "negative prompt bytes": (["--source", "test:64x48", "--negative-prompt", "\udcfe"], 2,
                                  "--negative-prompt contains bytes that are not UTF-8 text"),
    }


@pytest.mark.parametrize("case", ["directory output", "txt output", "webm output", "camera name", "huge test",
                                  "fps nan", "fps negative", "frames negative", "seconds negative", "prompt bytes",
                                  "negative prompt bytes"])
def test_bad_targets_and_options_are_refused_before_the_model_loads(case, tmp_path, no_engine_load, capsys):
    argv, code, message = _refusal_cases(tmp_path)[case]
    rc = _exit_code(["run", *argv, "--model", "preset:tiny", "--quiet"])
    err = capsys.readouterr().err
    assert rc == code, err
    assert message in err and "error" in err
    assert no_engine_load == [] and "loading" not in err
    assert not list(tmp_path.glob("*partial*"))


def test_an_unwritable_folder_is_refused_before_the_model_loads(no_engine_load, capsys):
    folder = Path("/sys") if Path("/sys").is_dir() else Path("/proc")
    probe = folder / f"livediffusion-probe-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        pass
    else:
        probe.unlink()
        pytest.skip(f"{folder} is writable here")
    rc = _exit_code(["run", "--source", "test:64x48", "--output", str(folder / "out.mp4"), "--model", "preset:tiny"])
    err = capsys.readouterr().err
    assert rc == 1 and "no file can be created" in err and no_engine_load == []


def test_a_full_disk_is_refused_before_the_model_loads(tmp_path, monkeypatch, no_engine_load, capsys):
    monkeypatch.setattr(outputs, "MIN_FREE_BYTES", 1 << 62)
    rc = _exit_code(["run", "--source", "test:64x48", "--output", str(tmp_path / "o.mp4"), "--model", "preset:tiny"])
    err = capsys.readouterr().err
    assert rc == 1 and "full" in err and no_engine_load == []
    assert list(tmp_path.iterdir()) == []


def test_offline_hint_for_a_checkpoint_url_is_a_real_command(monkeypatch):
    import core.loading as loading
    import core.single_file as single_file
    from core.config import StreamConfig
    from core.model_errors import ModelLoadError
    from core.single_file import load_single_file

    class Offline:
        @staticmethod
        def from_single_file(*args, **kwargs):
            raise OSError("offline: cannot find the requested files in the local cache")

    monkeypatch.setattr(single_file, "pipeline_class", lambda family: Offline)
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    with pytest.raises(ModelLoadError) as info:
        load_single_file("https://example.org/model.safetensors", StreamConfig(), None, None, lambda m: None)
    message = str(info.value)
    assert "`hf download stable-diffusion-v1-5/stable-diffusion-v1-5`" in message
    assert "the default config of this model type" not in message


def test_run_says_when_the_engine_reaches_full_speed(monkeypatch, capsys):
    from tools.standin import StandInEngine

    class Startup:
        def __init__(self, engine):
            self.engine = engine

        def stage(self):
            return "full speed" if self.engine.frames_processed >= 15 else "quick start, compiling ~40%"

    class StagedEngine(StandInEngine):
        acceleration = "graph"

        def __init__(self, config):
            super().__init__(config, gpu_ms=25)
            self.startup = Startup(self)

        @property
        def stage(self):
            return self.startup.stage()

    monkeypatch.setattr(run_command, "load_engine", lambda config, *args: (StagedEngine(config), None))
    rc = main(["run", "--source", "test:64x48", "--frames", "40", "--model", "preset:tiny", "--lossless"])
    err = capsys.readouterr().err
    assert rc == 0
    quick, full = err.find("engine: quick start, compiling ~40%"), err.find("engine: full speed")
    assert 0 <= quick < full, err


def test_run_tells_the_engine_the_sources_size(monkeypatch):
    seen = []

    def load_engine(config, *args):
        seen.append(config)
        return None, "stop here"

    monkeypatch.setattr(run_command, "load_engine", load_engine)
    main(["run", "--source", "test:320x180", "--frames", "2", "--model", "preset:tiny", "--width", "128",
          "--height", "128", "--quiet"])
    assert (seen[0].source_width, seen[0].source_height) == (320, 180) and seen[0].width == 128
