import re
import sys
import time
import types

import cv2
import numpy as np
import pytest

import app.outputs.recorder as outputs
from app.outputs import Output, OutputError, Recorder, VirtualCamera, snapshot, virtualcam_available
from app.pipeline import Pipeline, PipelineConfig
from app.sources import Source, SourceError, TestPattern
from tests.pipeline_fakes import FakeEngine

pytestmark = pytest.mark.timeout(60)


def _frame_count(path) -> int:
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count


def test_recorder_writes_to_a_partial_name_and_renames_on_close(tmp_path):
    target = tmp_path / "out.mp4"
    recorder = Recorder(target, fps=25, timing="frames")
    for i in range(10):
        recorder.write(np.full((48, 64, 3), i * 20, np.uint8))
    assert not target.exists() and recorder.partial_path.exists()
    recorder.close()
    recorder.close()  # idempotent
    assert target.exists() and not recorder.partial_path.exists()
    assert _frame_count(target) == 10 and recorder.finalized_path == target
    cap = cv2.VideoCapture(str(target))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    cap.release()


def test_recorder_scales_frames_of_another_size(tmp_path):
    recorder = Recorder(tmp_path / "out.avi", size=(32, 32), timing="frames")
    recorder.write(np.zeros((48, 64, 3), np.uint8))
    recorder.write(np.zeros((32, 32, 3), np.uint8))
    recorder.close()
    assert _frame_count(tmp_path / "out.avi") == 2


def test_recorder_without_frames_leaves_nothing(tmp_path):
    recorder = Recorder(tmp_path / "out.mp4")
    recorder.close()
    assert list(tmp_path.iterdir()) == []


def test_recorder_reports_bad_folder_and_full_disk(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="does not exist"):
        Recorder(tmp_path / "nope" / "out.mp4").write(np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setattr(outputs, "MIN_FREE_BYTES", 1 << 62)
    with pytest.raises(OutputError, match="full"):
        Recorder(tmp_path / "out.mp4").write(np.zeros((8, 8, 3), np.uint8))


def test_recorder_is_finalized_when_the_pipeline_stops(tmp_path):
    recorder = Recorder(tmp_path / "live.mp4", fps=30)
    pipe = Pipeline(FakeEngine(), TestPattern(64, 48, fps=100))
    pipe.add_output(recorder)
    pipe.start()
    time.sleep(0.3)
    pipe.stop()
    assert recorder.finalized_path == tmp_path / "live.mp4"
    assert _frame_count(tmp_path / "live.mp4") == recorder.frames_written > 5


def test_recorder_is_finalized_when_the_disk_fills_mid_recording(tmp_path, monkeypatch):
    errors = []
    recorder = Recorder(tmp_path / "full.mp4", timing="frames")
    pipe = Pipeline(FakeEngine(), TestPattern(64, 48, fps=None, limit=200), PipelineConfig(lossless=True),
                    on_error=lambda m, e: errors.append(m))
    pipe.add_output(recorder)
    real_usage = outputs.shutil.disk_usage
    calls = []

    def usage(path):
        calls.append(path)
        free = 0 if len(calls) > 1 else real_usage(path).free  # fine when opening, full at the next check
        return types.SimpleNamespace(total=1, used=1, free=free)

    monkeypatch.setattr(outputs.shutil, "disk_usage", usage)
    pipe.start()
    pipe.wait(10)
    pipe.stop()
    assert errors and "full" in errors[0]
    assert recorder.finalized_path is not None and _frame_count(recorder.finalized_path) == recorder.frames_written
    assert 0 < recorder.frames_written < 200


def test_recorder_is_finalized_after_a_source_error(tmp_path):
    class DiesAfterFive(Source):
        name = "dying"

        def __init__(self):
            self.n = 0

        def read(self):
            self.n += 1
            if self.n > 5:
                raise SourceError("the capture card vanished")
            time.sleep(0.01)
            return np.zeros((48, 64, 3), np.uint8)

    errors = []
    recorder = Recorder(tmp_path / "cut.mp4", timing="frames")
    pipe = Pipeline(None, DiesAfterFive(), PipelineConfig(lossless=True), on_error=lambda m, e: errors.append(m))
    pipe.add_output(recorder)
    pipe.start()
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    assert "vanished" in errors[0]
    assert _frame_count(tmp_path / "cut.mp4") == 5


def test_virtual_camera_without_a_driver_gives_the_reason_and_the_setup_step():
    ok, detail = virtualcam_available()
    if ok:
        pytest.skip(f"a virtual camera exists here ({detail})")
    with pytest.raises(OutputError) as info:
        VirtualCamera(64, 48).open()
    message = str(info.value)
    assert "No virtual camera" in message
    if sys.platform.startswith("linux"):
        assert "modprobe v4l2loopback devices=1 exclusive_caps=1" in message
    else:
        assert "OBS" in message


def test_virtual_camera_reports_its_device_and_scales_frames(fake_pyvirtualcam):
    camera = VirtualCamera(64, 48, fps=30)
    assert camera.open() == "/dev/video7" and camera.device == "/dev/video7"
    camera.write(np.zeros((48, 64, 3), np.uint8))
    camera.write(np.zeros((100, 100, 3), np.uint8))
    camera.close()
    assert [frame.shape for frame in fake_pyvirtualcam.sent] == [(48, 64, 3), (48, 64, 3)]


def test_busy_virtual_camera_is_a_message(fake_pyvirtualcam):
    fake_pyvirtualcam.fail = "Device or resource busy"
    with pytest.raises(OutputError, match="busy: another program"):
        VirtualCamera(64, 48).open()


def test_snapshot_writes_png_in_rgb_order(tmp_path):
    image = np.zeros((10, 12, 3), np.uint8)
    image[..., 0] = 255  # red
    path = snapshot(image, tmp_path / "shot.png")
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, image)
    with pytest.raises(OutputError, match="does not exist"):
        snapshot(image, tmp_path / "missing" / "shot.png")


def test_a_second_close_waits_for_the_first_to_finish_the_file(tmp_path, monkeypatch):
    import threading
    import time

    import numpy as np

    from app.outputs import Recorder

    recorder = Recorder(tmp_path / "clip.mp4", fps=10)
    recorder.write(np.zeros((32, 32, 3), dtype=np.uint8))
    real_replace = __import__("os").replace
    renaming = threading.Event()

    def slow_replace(src, dst):
        renaming.set()
        time.sleep(0.3)  # the first close is still renaming when the second one starts
        real_replace(src, dst)

    monkeypatch.setattr("app.outputs.recorder.os.replace", slow_replace)
    first = threading.Thread(target=recorder.close)
    first.start()
    assert renaming.wait(2)
    recorder.close()
    # The second close returned only once the file was complete under its final name.
    assert recorder.finalized_path == tmp_path / "clip.mp4" and (tmp_path / "clip.mp4").exists()
    assert not list(tmp_path.glob("*.partial*"))
    first.join()


def test_outputs_get_the_capture_time():
    class Timed(Output):
        def __init__(self):
            self.got = []

        def write(self, image, timestamp=None):
            self.got.append(timestamp)

    timed = Timed()
    pipe = Pipeline(None, TestPattern(32, 24, fps=None, limit=5), PipelineConfig(lossless=True))
    pipe.add_output(timed)
    pipe.start()
    assert pipe.wait(5)
    pipe.stop()
    assert len(timed.got) == 5
    assert all(isinstance(t, float) for t in timed.got) and timed.got == sorted(timed.got)


def test_preflight_refuses_bad_targets_without_leaving_files(tmp_path, monkeypatch):
    for name, message in (("o.webm", ".mp4, .mov, .mkv, .avi"), ("o.txt", ".mp4, .mov, .mkv, .avi"),
                          ("missing/o.mp4", "does not exist")):
        with pytest.raises(OutputError, match=re.escape(message)):
            Recorder(tmp_path / name).preflight()
    with pytest.raises(OutputError, match="is a folder"):
        Recorder(tmp_path).preflight()
    Recorder(tmp_path / "fine.mkv").preflight()
    assert list(tmp_path.iterdir()) == []
