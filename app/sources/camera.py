"""Webcams through OpenCV, tuned for low latency, and the list of cameras present."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from app.sources.base import Source, SourceError, SourceLost


@dataclass(frozen=True)
class CameraInfo:
    index: int
    name: str
    #: True for loopback devices such as our own virtual camera: reading one would feed back.
    virtual: bool = False

    def label(self) -> str:
        return f"{self.index}: {self.name}" + (" (virtual)" if self.virtual else "")


#: Offered in the GUI; OpenCV cannot enumerate a camera's modes portably, so the camera picks the
#: nearest one it supports and ``Camera.actual_size`` reports what it chose.
COMMON_RESOLUTIONS = ((640, 480), (800, 600), (1280, 720), (1920, 1080))
COMMON_FPS = (15, 24, 30, 60)

_VIRTUAL_MARKERS = ("loopback", "dummy video", "virtual", "obs")


def list_cameras(max_probe: int = 6) -> list[CameraInfo]:
    """Cameras present now. On Linux read from sysfs (instant, no device is opened); elsewhere probe
    indices 0..max_probe-1 with OpenCV, which opens each one briefly."""
    if sys.platform.startswith("linux"):
        return _list_v4l2_cameras()
    found = []
    for index in range(max_probe):
        with quiet_opencv():
            cap = cv2.VideoCapture(index, _default_backend())
        try:
            if cap.isOpened():
                found.append(CameraInfo(index, f"Camera {index}"))
        finally:
            cap.release()
    return found


def _list_v4l2_cameras(root: str = "/sys/class/video4linux") -> list[CameraInfo]:
    cameras = []
    base = Path(root)
    if not base.is_dir():
        return cameras
    for entry in sorted(base.glob("video*"), key=lambda p: int(p.name[5:] or 0)):
        try:
            # A capture device exposes extra nodes for metadata; only "index 0" carries pictures.
            if (entry / "index").exists() and (entry / "index").read_text().strip() != "0":
                continue
            name = (entry / "name").read_text().strip() if (entry / "name").exists() else entry.name
            index = int(entry.name[5:])
        except (OSError, ValueError):
            continue
        virtual = any(marker in name.lower() for marker in _VIRTUAL_MARKERS)
        cameras.append(CameraInfo(index, name, virtual))
    return cameras


@contextmanager
def quiet_opencv():
    """Silence OpenCV's own warnings while probing devices: a missing camera is reported by us, in words."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    previous = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging_api.setLogLevel(previous)


def _default_backend() -> int:
    # The platform-native back ends open faster and honour buffer-size and MJPG requests; CAP_ANY may
    # pick GStreamer on Linux, which adds its own buffering.
    if sys.platform.startswith("win"):
        return cv2.CAP_DSHOW
    if sys.platform == "darwin":
        return cv2.CAP_AVFOUNDATION
    if sys.platform.startswith("linux"):
        return cv2.CAP_V4L2
    return cv2.CAP_ANY


class Camera(Source):
    """A webcam through OpenCV, set up for low latency (one-frame driver buffer, MJPG where offered).

    ``device`` is an index or a path / URL that cv2.VideoCapture accepts. ``capture_factory`` replaces
    cv2.VideoCapture (tests pass a fake; a video path through the default factory also works).
    """

    live = True

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        mjpg: bool = True,
        capture_factory: Callable[..., object] | None = None,
    ):
        self.device = device
        self.width, self.height, self.requested_fps = width, height, fps
        self.mjpg = mjpg
        self._factory = capture_factory
        self._cap = None
        self.name = f"Camera {device}"
        #: (width, height) the driver actually delivers, known after open().
        self.actual_size: tuple[int, int] | None = None
        self._actual_fps: float | None = None

    @property
    def fps(self) -> float | None:
        return self._actual_fps or self.requested_fps

    def open(self) -> None:
        if self._cap is not None:
            return
        with quiet_opencv():
            if self._factory is not None:
                cap = self._factory(self.device)
            elif isinstance(self.device, int):
                cap = cv2.VideoCapture(self.device, _default_backend())
            else:
                cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"{self.name} cannot be opened: it is missing, or another program is using it. "
                "Close other video programs or pick another camera."
            )
        # The driver buffer is what makes a webcam lag: one slot means we always read a fresh frame.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.mjpg:
            # V4L2 applies the pixel format before the size; set it first so large sizes keep their fps.
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.requested_fps:
            cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        reported = cap.get(cv2.CAP_PROP_FPS)
        self._actual_fps = float(reported) if reported and 0 < reported < 1000 else None
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            self.open()
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceLost(f"{self.name} stopped delivering frames (unplugged or taken by another program)")
        if bgr.ndim == 2:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self.actual_size = (rgb.shape[1], rgb.shape[0])
        return rgb

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            try:
                cap.release()
            except Exception:  # a vanished device may fail to release; nothing else to do
                pass
