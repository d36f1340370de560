"""Where processed frames go: a virtual webcam, a video file, a PNG snapshot.

An output is anything with ``write(image)`` and ``close()`` (see ``Output``); the pipeline calls both
from its postprocess thread. Images are RGB uint8 (H, W, 3). Errors raise ``OutputError`` with a
message for the user; ``close`` never raises and may be called more than once.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
from pathlib import Path

import cv2
import numpy as np


class OutputError(RuntimeError):
    """An output cannot be opened or written; the message says why and what to do."""


class Output:
    """Base class of frame consumers."""

    name: str = "output"

    def write(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources and finalize. Idempotent; never raises."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # A device or a file has one size for its lifetime; a frame of another size (e.g. the engine not
    # loaded yet, so the raw input passes through) is scaled rather than rejected.
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------ virtual camera


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
    """Publishes frames as a webcam through pyvirtualcam, at a fixed size and nominal fps.

    The device is opened by ``open()`` (call it up front to report errors early) or on the first
    ``write``. ``device`` names what other programs see, e.g. /dev/video2 or "OBS Virtual Camera".
    Without a size, the first frame's size is used (the device is then opened by that write).
    """

    name = "Virtual camera"

    def __init__(self, width: int | None, height: int | None, fps: float = 30.0, device: str | None = None,
                 backend: str | None = None):
        self.width, self.height, self.fps = width, height, fps
        self.requested_device, self.backend = device, backend
        self._cam = None
        self.device: str | None = None

    def open(self) -> str:
        """Open the device; returns its name. Raises OutputError with the reason and set-up step."""
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
        return self.device

    def write(self, image: np.ndarray) -> None:
        if self._cam is None:
            if not self.width or not self.height:
                self.height, self.width = image.shape[:2]
            self.open()
        frame = np.ascontiguousarray(_fit(image, self.width, self.height))
        try:
            # No sleep_until_next_frame: pacing comes from the pipeline, and sleeping here would add latency.
            self._cam.send(frame)
        except Exception as exc:
            raise OutputError(f"Writing to the virtual camera {self.device} failed: {exc}") from exc

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()
            except Exception:
                pass


# ----------------------------------------------------------------------------------------- recorder

# Below this much free space the recorder stops with a clear message instead of letting the encoder
# write a truncated file that looks complete (cv2.VideoWriter reports no write errors at all).
MIN_FREE_BYTES = 64 * 1024 * 1024
_DISK_CHECK_EVERY = 30  # frames


class Recorder(Output):
    """Records frames to a video file with cv2.VideoWriter (mp4v by default).

    Frames go to a temporary ``NAME.partial.EXT`` beside the target; ``close()`` finalizes the
    container and renames it to the target. So a finished file is always complete, and a hard crash
    (power loss, kill -9) leaves only the obviously unfinished ``.partial`` file. The pipeline closes
    its outputs on stop, on quit and after an error, so those paths always produce a playable file.
    The size is fixed by the first frame unless given.
    """

    name = "Recorder"

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, fourcc: str = "mp4v",
                 size: tuple[int, int] | None = None):
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 30.0
        self.fourcc = fourcc
        self.size = size
        self.partial_path = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self._writer = None
        self.frames_written = 0
        self.finalized_path: Path | None = None
        self.name = f"Recorder {self.path.name}"
        # The pipeline's postprocess thread writes and may close on an error while the GUI closes too:
        # a second close must wait until the first has renamed the file, not return before it.
        self._lock = threading.Lock()

    def _open(self, width: int, height: int) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise OutputError(f"Cannot record to {self.path}: folder {folder} does not exist")
        self._check_space()
        writer = cv2.VideoWriter(str(self.partial_path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (width, height))
        if not writer.isOpened():
            writer.release()
            raise OutputError(
                f"Cannot record to {self.path}: the encoder {self.fourcc!r} refused it "
                "(unwritable folder, or an extension OpenCV cannot write such as .webm; try .mp4 or .avi)"
            )
        self._writer = writer
        self.size = (width, height)

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < MIN_FREE_BYTES:
            raise OutputError(
                f"The disk holding {self.path.parent} is full ({free // (1024 * 1024)} MB free): "
                "recording stopped; free some space or record elsewhere"
            )

    def write(self, image: np.ndarray) -> None:
        with self._lock:
            self._write(image)

    def _write(self, image: np.ndarray) -> None:
        if self.finalized_path is not None:
            raise OutputError(f"Recording {self.path} is already finished")
        if self._writer is None:
            width, height = self.size or (image.shape[1], image.shape[0])
            self._open(width, height)
        width, height = self.size
        if self.frames_written % _DISK_CHECK_EVERY == _DISK_CHECK_EVERY - 1:
            self._check_space()
        try:
            self._writer.write(cv2.cvtColor(_fit(image, width, height), cv2.COLOR_RGB2BGR))
        except cv2.error as exc:
            raise OutputError(f"Recording to {self.path} failed: {exc}") from exc
        self.frames_written += 1

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.release()
            if self.frames_written:
                os.replace(self.partial_path, self.path)
                self.finalized_path = self.path
            else:
                self.partial_path.unlink(missing_ok=True)
        except OSError as exc:
            # close() must not raise (it runs on error paths); the partial file stays for the user.
            self.close_error = _disk_message(exc, self.path)
        except Exception as exc:  # noqa: BLE001 - same reason
            self.close_error = f"Finishing {self.path} failed: {exc}"

    close_error: str | None = None


def _disk_message(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"The disk is full: {path} could not be finished; free some space"
    return f"Finishing {path} failed: {exc.strerror or exc}"


# ----------------------------------------------------------------------------------------- snapshot


def snapshot(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Save one RGB frame as PNG (or any extension cv2.imwrite knows). Raises OutputError."""
    target = Path(path)
    if not target.parent.is_dir():
        raise OutputError(f"Cannot save {target}: folder {target.parent} does not exist")
    try:
        ok = cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error as exc:
        raise OutputError(f"Cannot save {target}: {exc}") from exc
    if not ok:
        raise OutputError(f"Cannot save {target}: unwritable folder, full disk or unknown extension")
    return target
