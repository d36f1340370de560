"""Sources from a command-line spec (``camera:0``, ``screen:1:0,0,640,480``, ``test:640x480``, a file),
the limit on a run's frames or seconds, and the default source of the window."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from app.sources.base import Source, SourceError
from app.sources.camera import Camera, list_cameras
from app.sources.screen import Screen
from app.sources.test_pattern import TestPattern
from app.sources.video_file import VideoFile


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
