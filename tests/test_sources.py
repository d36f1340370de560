import ctypes
import ctypes.util
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from app.sources.camera import _list_v4l2_cameras
from app.pipeline import Pipeline
from app.sources import (
    Camera,
    LimitedSource,
    Screen,
    SourceError,
    SourceLost,
    TestPattern,
    VideoFile,
    parse_source,
)
from tests.pipeline_fakes import FlakyCapture, write_clip

pytestmark = pytest.mark.timeout(60)


def test_test_pattern_moves_and_is_rgb_uint8():
    source = TestPattern(64, 48, fps=None, limit=3)
    with source:
        frames = [source.read() for _ in range(4)]
    assert frames[3] is None
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames[:3])
    assert not np.array_equal(frames[0], frames[1])
    assert frames[0].flags.c_contiguous and not np.shares_memory(frames[0], frames[1])


def test_test_pattern_paces_itself():
    source = TestPattern(32, 24, fps=100)
    start = time.perf_counter()
    for _ in range(21):
        source.read()
    # 20 periods of 10 ms: sleeping guarantees the lower bound; the upper one only catches a pacer that
    # sleeps whole seconds, with room for a loaded machine.
    assert 0.19 < time.perf_counter() - start < 3.0


def test_video_file_reads_rgb_and_loops(tmp_path):
    written = write_clip(tmp_path / "clip.mp4", frames=5)
    once = VideoFile(tmp_path / "clip.mp4", paced=False)
    with once:
        frames = [once.read() for _ in range(6)]
    assert frames[5] is None and once.frame_count == 5 and once.fps == pytest.approx(24)
    # Channel order: the blue-ish quadrant was written as RGB (.., .., 200) and must come back that way.
    assert frames[0][5, 5, 2] > 150 and frames[0][-5, -5, 2] < 60
    assert np.abs(frames[2].astype(int) - written[2]).mean() < 12

    looping = VideoFile(tmp_path / "clip.mp4", loop=True, paced=False)
    with looping:
        assert all(looping.read() is not None for _ in range(12))


def test_unreadable_video_file_says_why(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        VideoFile(tmp_path / "missing.mp4").open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="cannot be decoded"):
        VideoFile(junk).open()


def test_camera_reads_through_opencv(tmp_path):
    # No /dev/video* here: a file through the same cv2.VideoCapture path stands in for a camera.
    write_clip(tmp_path / "clip.mp4", frames=3, size=(64, 48))
    camera = Camera(str(tmp_path / "clip.mp4"))
    with camera:
        frame = camera.read()
        assert frame.shape == (48, 64, 3) and camera.actual_size == (64, 48)
        camera.read(), camera.read()
        with pytest.raises(SourceLost):
            camera.read()  # a camera that stops delivering is "lost", to be retried


def test_missing_camera_gives_a_message():
    class Closed:
        def isOpened(self):
            return False

        def release(self):
            pass

    with pytest.raises(SourceError, match="cannot be opened"):
        Camera(3, capture_factory=lambda device: Closed()).open()


def test_flaky_camera_fails_then_recovers_on_reopen():
    device = FlakyCapture(good_reads=2, down_opens=1)
    camera = Camera(0, capture_factory=device.factory)
    camera.open()
    camera.read(), camera.read()
    with pytest.raises(SourceLost):
        camera.read()
    camera.close()
    with pytest.raises(SourceError):
        camera.open()  # still unplugged
    camera.open()
    assert camera.read() is not None


def test_list_v4l2_cameras_skips_metadata_nodes_and_flags_loopback(tmp_path):
    for name, index, label in (("video0", 0, "HD Webcam"), ("video1", 1, "HD Webcam"), ("video4", 0, "Dummy video device")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index").write_text(f"{index}\n")
        (tmp_path / name / "name").write_text(label + "\n")
    cameras = _list_v4l2_cameras(str(tmp_path))
    assert [(c.index, c.name, c.virtual) for c in cameras] == [(0, "HD Webcam", False), (4, "Dummy video device", True)]


def test_parse_source_specs(tmp_path):
    assert isinstance(parse_source("camera:2"), Camera) and parse_source("camera:2").device == 2
    cam = parse_source("camera:1:1280x720")
    assert (cam.width, cam.height) == (1280, 720)
    screen = parse_source("screen:1:10,20,300,200")
    assert isinstance(screen, Screen) and screen.monitor == 1 and screen.region == (10, 20, 300, 200)
    assert parse_source("screen:2").region is None
    pattern = parse_source("test:320x240", paced=False)
    assert (pattern.width, pattern.height, pattern.live) == (320, 240, False)
    video = parse_source(str(tmp_path / "a.mp4"), loop=True)
    assert isinstance(video, VideoFile) and video.loop
    with pytest.raises(SourceError, match="Bad source"):
        parse_source("screen:1:1,2,3")


def _count(source) -> int:
    count = 0
    while source.read() is not None:
        count += 1
    return count


def test_limited_source_stops_after_frames_or_seconds():
    assert _count(LimitedSource(TestPattern(16, 16, fps=None), frames=4)) == 4
    assert 10 <= _count(LimitedSource(TestPattern(16, 16, fps=100), seconds=0.2)) <= 25


def test_screen_without_a_display_says_why(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    with pytest.raises(SourceError, match="Wayland"):
        Screen(1).open()


# --------------------------------------------------------------------------- real pixels under Xvfb


class _X11:
    """Just enough libX11 to paint the root window and move the pointer (no extra package needed)."""

    def __init__(self, display: str):
        lib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        lib.XOpenDisplay.restype = ctypes.c_void_p
        lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
        lib.XDefaultScreen.argtypes = [ctypes.c_void_p]
        lib.XRootWindow.restype = ctypes.c_ulong
        lib.XRootWindow.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.XDefaultGC.restype = ctypes.c_void_p
        lib.XDefaultGC.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.XSetForeground.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong]
        lib.XFillRectangle.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p] + [ctypes.c_int] * 2 + [ctypes.c_uint] * 2
        lib.XWarpPointer.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong] + [ctypes.c_int] * 2 + [ctypes.c_uint] * 2 + [ctypes.c_int] * 2
        lib.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.dpy = lib.XOpenDisplay(display.encode())
        assert self.dpy, f"cannot open {display}"
        screen = lib.XDefaultScreen(self.dpy)
        self.root = lib.XRootWindow(self.dpy, screen)
        self.gc = lib.XDefaultGC(self.dpy, screen)

    def fill(self, x, y, w, h, rgb):
        self.lib.XSetForeground(self.dpy, self.gc, (rgb[0] << 16) | (rgb[1] << 8) | rgb[2])
        self.lib.XFillRectangle(self.dpy, self.root, self.gc, x, y, w, h)
        self.lib.XSync(self.dpy, 0)

    def warp(self, x, y):
        self.lib.XWarpPointer(self.dpy, 0, self.root, 0, 0, 0, 0, x, y)
        self.lib.XSync(self.dpy, 0)

    def close(self):
        self.lib.XCloseDisplay(self.dpy)


@pytest.fixture(scope="module")
def xvfb():
    binary = shutil.which("Xvfb")
    if binary is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([binary, "-displayfd", str(write_fd), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()  # Xvfb writes the display it chose once it accepts clients
        if not number:
            pytest.skip("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.xvfb
def test_screen_captures_real_pixels(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb)
    x11 = _X11(xvfb)
    try:
        x11.fill(0, 0, 320, 240, (0, 0, 0))
        x11.fill(40, 30, 60, 50, (250, 20, 90))
        whole = Screen(1, fps=None)
        with whole:
            frame = whole.read()
        assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
        assert tuple(frame[55, 70]) == (250, 20, 90) and tuple(frame[10, 10]) == (0, 0, 0)

        region = Screen(1, region=(30, 20, 40, 30), fps=None)
        with region:
            part = region.read()
        assert part.shape == (30, 40, 3)
        assert tuple(part[15, 25]) == (250, 20, 90) and tuple(part[2, 2]) == (0, 0, 0)

        x11.warp(200, 150)
        follow = Screen(1, region=(0, 0, 40, 30), follow_mouse=True, fps=None)
        with follow:
            assert follow.capture_box() == {"left": 180, "top": 135, "width": 40, "height": 30}
            x11.warp(319, 239)  # at the corner the region is clamped to stay on the screen
            assert follow.capture_box() == {"left": 280, "top": 210, "width": 40, "height": 30}
    finally:
        x11.close()


@pytest.mark.xvfb
def test_screen_source_in_the_pipeline(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb)
    frames, errors = [], []
    pipe = Pipeline(None, Screen(1, region=(0, 0, 64, 48), fps=60), on_frame=frames.append,
                    on_error=lambda m, e: errors.append(m))
    pipe.start()
    deadline = time.monotonic() + 10
    while len(frames) < 5 and time.monotonic() < deadline and not errors:
        time.sleep(0.02)
    pipe.stop()
    assert errors == [] and len(frames) >= 5 and frames[0].image.shape == (48, 64, 3)


@pytest.mark.xvfb
def test_missing_monitor_is_reported(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb)
    with pytest.raises(SourceError, match="Screen 5 does not exist"):
        Screen(5).open()
