"""The virtual webcam (pyvirtualcam): how to tell whether one exists, and the output that feeds it."""

from __future__ import annotations

import sys
import threading

import numpy as np

from app.outputs.base import Output, OutputError, fit_frame


def virtualcam_setup_hint() -> str:
    """The one-time set-up step that makes a virtual camera device exist on this OS."""
    if sys.platform.startswith("linux"):
        return (
            "Install v4l2loopback (Debian/Ubuntu: sudo apt install v4l2loopback-dkms), then run "
            "'sudo modprobe v4l2loopback devices=1 exclusive_caps=1'"
        )
    if sys.platform == "darwin":
        return "Install OBS Studio, start its virtual camera once (Start Virtual Camera), then stop it"
    return "Install OBS Studio and start its virtual camera once (Start Virtual Camera), then stop it"


def _explain_virtualcam_error(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".")
    lowered = text.lower()
    if "busy" in lowered or "in use" in lowered or "ebusy" in lowered or "already" in lowered:
        return (
            f"The virtual camera is busy: another program is already writing to it ({text}). "
            "Close that program (or OBS's own virtual camera) and try again."
        )
    return f"No virtual camera is available: {text}. To set one up: {virtualcam_setup_hint()}."


def virtualcam_available(width: int = 64, height: int = 64, fps: float = 30.0) -> tuple[bool, str]:
    """Try to open the virtual camera briefly. Returns (True, device) or (False, reason with set-up step)."""
    try:
        import pyvirtualcam
    except Exception as exc:  # a broken native library is as much "unavailable" as a missing driver
        return False, f"pyvirtualcam cannot be imported ({exc}); install it with pip install pyvirtualcam"
    try:
        with pyvirtualcam.Camera(width=width, height=height, fps=fps, fmt=pyvirtualcam.PixelFormat.RGB) as cam:
            return True, cam.device
    except Exception as exc:
        return False, _explain_virtualcam_error(exc)


class VirtualCamera(Output):
    """Publishes frames as a webcam through pyvirtualcam, at a size and nominal fps.

    The device is opened by ``open()`` (call it up front to report errors early) or on the first
    ``write``. ``device`` names what other programs see, e.g. /dev/video2 or "OBS Virtual Camera".
    Without a size, the first frame's size is used (the device is then opened by that write).
    ``resize()`` changes the size from any thread: the next write closes the device and opens it again
    at the new size, so the pipeline, the engine and the source keep running. A frame of another size
    (the source before a model is loaded) is cropped or letterboxed to the camera's size, never stretched.
    """

    name = "Virtual camera"

    def __init__(self, width: int | None, height: int | None, fps: float = 30.0, device: str | None = None,
                 backend: str | None = None, letterbox: bool = False):
        self.width, self.height, self.fps, self.letterbox = width, height, fps, letterbox
        self.requested_device, self.backend = device, backend
        self._cam = None
        self._opened_size: tuple[int, int] | None = None
        self._lock = threading.Lock()  # resize() from the GUI thread, write() from the postprocess thread
        self.device: str | None = None
        self.opens = 0  # how many times the device was opened (1 + reopens after a resize)

    def resize(self, width: int, height: int, letterbox: bool | None = None) -> None:
        """Use this size from the next frame on (the device reopens then; a no-op at the same size)."""
        with self._lock:
            self.width, self.height = width, height
            if letterbox is not None:
                self.letterbox = letterbox

    def open(self) -> str:
        """Open the device; returns its name. Raises OutputError with the reason and set-up step."""
        with self._lock:
            return self._open()

    def _open(self) -> str:
        if self._cam is not None:
            return self.device or ""
        if not self.width or not self.height:
            raise OutputError("The virtual camera needs a size before it can open")
        try:
            import pyvirtualcam
        except Exception as exc:
            raise OutputError(f"pyvirtualcam cannot be imported ({exc}); install it with pip install pyvirtualcam") from exc
        try:
            self._cam = pyvirtualcam.Camera(
                width=self.width, height=self.height, fps=self.fps,
                fmt=pyvirtualcam.PixelFormat.RGB, device=self.requested_device, backend=self.backend,
            )
        except Exception as exc:
            raise OutputError(_explain_virtualcam_error(exc)) from exc
        self.device = self._cam.device
        self._opened_size = (self.width, self.height)
        self.opens += 1
        return self.device

    def write(self, image: np.ndarray, timestamp: float | None = None) -> None:
        # The timestamp is not needed: a virtual camera shows each frame the moment it arrives.
        with self._lock:
            if self._cam is not None and self._opened_size != (self.width, self.height):
                self._close()  # resized: a device's size is fixed while it is open
            if self._cam is None:
                if not self.width or not self.height:
                    self.height, self.width = image.shape[:2]
                self._open()
            self._send(image)

    def _send(self, image: np.ndarray) -> None:
        frame = np.ascontiguousarray(fit_frame(image, self.width, self.height, self.letterbox))
        try:
            # No sleep_until_next_frame: pacing comes from the pipeline, and sleeping here would add latency.
            self._cam.send(frame)
        except Exception as exc:
            raise OutputError(f"Writing to the virtual camera {self.device} failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()
            except Exception:
                pass
