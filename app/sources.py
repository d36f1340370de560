"""Frame sources: webcam, screen, video file and a moving test pattern; the one import for all of them.

Camera lives in app/camera.py and Screen in app/screen.py; both are re-exported here.

The contract every source keeps (RGB uint8 HxWx3, which errors mean what) is in app/source_base.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from app.camera import COMMON_FPS, COMMON_RESOLUTIONS, Camera, CameraInfo, list_cameras
from app.screen import Screen, list_monitors
from app.source_base import Source, SourceError, SourceLost, _Pacer

__all__ = [
    "Source", "SourceError", "SourceLost", "Camera", "CameraInfo", "list_cameras", "COMMON_RESOLUTIONS",
    "COMMON_FPS", "Screen", "list_monitors", "VideoFile", "TestPattern", "LimitedSource", "parse_source",
    "default_source",
]


# ----------------------------------------------------------------------------------------- video file


class VideoFile(Source):
    """A video file through cv2.VideoCapture.

    ``loop`` restarts at the end instead of ending. ``paced`` plays at the file's frame rate (preview,
    virtual camera); unpaced reads as fast as asked, for file-to-file runs where nothing may be dropped.
    """

    def __init__(self, path: str | os.PathLike, loop: bool = False, paced: bool = True):
        self.path = Path(path)
        self.loop = loop
        self.paced = paced
        self.live = paced
        self.name = f"File {self.path.name}"
        self._cap = None
        self._fps: float | None = None
        self._pacer = _Pacer(None)
        self.frame_count: int | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if self._cap is not None:
            return
        if not self.path.is_file():
            raise SourceError(f"Video file {self.path} does not exist")
        if not os.access(self.path, os.R_OK):
            raise SourceError(f"Video file {self.path} is not readable (permissions)")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"Video file {self.path} cannot be decoded: not a video, or an unsupported codec")
        reported = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(reported) if reported and 0 < reported < 1000 else 30.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self._pacer = _Pacer(self._fps if self.paced else None)
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            self.open()
        self._pacer.wait()
        ok, bgr = self._cap.read()
        if not ok and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
            if not ok:
                # Seeking is unreliable for some containers; reopening always works.
                self.close()
                self.open()
                ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


# --------------------------------------------------------------------------------------- test pattern


class TestPattern(Source):
    """A moving colour pattern made with numpy: the default when no camera is found, and the source of
    tests and benchmarks. Each frame is a fresh array (a slice of a precomputed strip plus a moving box),
    so generating one costs about one memory copy."""

    __test__ = False  # not a pytest class despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: float | None = 30.0, limit: int | None = None):
        self.width, self.height = width, height
        self._fps = fps
        self.live = bool(fps)
        self.limit = limit
        self.name = f"Test pattern {width}x{height}"
        self._pacer = _Pacer(fps)
        self._count = 0
        self._strip: np.ndarray | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if self._strip is not None:
            return
        # Two periods wide so that any horizontal offset is a plain slice, no wrap-around copy.
        xs = np.arange(2 * self.width, dtype=np.float32) * (2 * np.pi / self.width)
        ys = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None]
        strip = np.empty((self.height, 2 * self.width, 3), dtype=np.uint8)
        strip[..., 0] = (127.5 + 127.5 * np.sin(xs))[None, :]
        strip[..., 1] = (255 * ys).astype(np.uint8)
        strip[..., 2] = (127.5 + 127.5 * np.cos(xs * 0.5))[None, :] * (1 - ys) + 40 * ys
        self._strip = strip
        self._count = 0

    def read(self) -> np.ndarray | None:
        if self._strip is None:
            self.open()
        if self.limit is not None and self._count >= self.limit:
            return None
        self._pacer.wait()
        shift = (self._count * 4) % self.width
        frame = self._strip[:, shift : shift + self.width].copy()
        box = max(8, min(self.width, self.height) // 6)
        bx = (self._count * 7) % max(1, self.width - box)
        by = (self.height - box) // 2
        frame[by : by + box, bx : bx + box] = 255
        self._count += 1
        return frame

    def close(self) -> None:
        self._strip = None


# ------------------------------------------------------------------------------------------- parsing


class LimitedSource(Source):
    """Ends another source after ``frames`` frames or ``seconds`` seconds (live sources in headless runs)."""

    def __init__(self, inner: Source, frames: int | None = None, seconds: float | None = None):
        self.inner = inner
        self.frames, self.seconds = frames, seconds
        self.name, self.live = inner.name, inner.live
        self._count = 0
        self._start: float | None = None

    @property
    def fps(self) -> float | None:
        return self.inner.fps

    def open(self) -> None:
        self.inner.open()

    def read(self) -> np.ndarray | None:
        if self._start is None:
            self._start = time.perf_counter()
        if self.frames is not None and self._count >= self.frames:
            return None
        if self.seconds is not None and time.perf_counter() - self._start >= self.seconds:
            return None
        frame = self.inner.read()
        if frame is not None:
            self._count += 1
        return frame

    def close(self) -> None:
        self.inner.close()


def parse_source(spec: str, *, loop: bool = False, paced: bool = True, fps: float | None = None) -> Source:
    """Build a source from a command-line spec: ``camera:N``, ``camera:N:WxH``, ``screen:N``,
    ``screen:N:x,y,w,h``, ``test``, ``test:WxH`` or a video file path. Raises SourceError."""
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    try:
        if kind == "camera":
            index_text, _, size = rest.partition(":")
            device = _parse_camera_device(index_text)
            width, height = _parse_size(size) if size else (None, None)
            return Camera(device, width, height, fps=fps)
        if kind == "screen":
            monitor_text, _, region_text = rest.partition(":")
            monitor = int(monitor_text) if monitor_text else 1
            region = None
            if region_text:
                parts = [int(p) for p in region_text.split(",")]
                if len(parts) != 4 or parts[2] <= 0 or parts[3] <= 0:
                    raise ValueError("region must be x,y,w,h with positive w and h")
                region = tuple(parts)
            return Screen(monitor, region, fps=fps or 30.0)
        if kind == "test":
            width, height = _parse_size(rest) if rest else (640, 480)
            return TestPattern(width, height, fps=(fps or 30.0) if paced else None)
    except ValueError as exc:
        raise SourceError(f"Bad source {spec!r}: {exc}") from exc
    return VideoFile(spec, loop=loop, paced=paced)


#: The largest frame a source may be asked for (8K UHD, either way round): far beyond any camera, and
#: a bigger test pattern would only exhaust memory.
MAX_SIDE, MAX_PIXELS = 7680, 7680 * 4320


def _parse_camera_device(text: str) -> int | str:
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    if Path(text).exists():
        return text  # a device node such as /dev/video2
    raise ValueError("a camera is an index such as camera:0 or an existing device path such as /dev/video2 "
                     "(main.py doctor lists the cameras found)")


def _parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError("size must be WIDTHxHEIGHT")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(f"{width}x{height} is larger than the largest size allowed ({MAX_SIDE}x{MAX_PIXELS // MAX_SIDE})")
    return width, height


def default_source() -> Source:
    """The first real camera, else the test pattern, so the app always shows something."""
    for info in list_cameras():
        if not info.virtual:
            return Camera(info.index)
    return TestPattern()
