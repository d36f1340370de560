"""Recording to a video file that keeps real time and is always either complete or clearly partial."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from app.outputs.base import Output, OutputError, fit_frame
from app.outputs.h264 import VIDEO_EXTENSIONS, EncoderError, H264Writer, VideoInfo, probe_video

MIN_FREE_BYTES = 64 * 1024 * 1024
_DISK_CHECK_EVERY = 30  # frames

TIMINGS = ("clock", "frames")


def video_path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot name a recording judging by the name alone (a folder, an extension that
    cannot hold H.264), or None. Such a problem is the caller's choice of name, not the disk's."""
    target = Path(path)
    if target.is_dir():
        return f"Cannot record to {target}: it is a folder; give a file name such as {target / 'out.mp4'}"
    if target.suffix.lower() not in VIDEO_EXTENSIONS:
        what = f"the extension {target.suffix}" if target.suffix else "a name without an extension"
        return (f"Cannot record to {target}: {what} is not a video format this program can write; "
                f"use one of {', '.join(VIDEO_EXTENSIONS)}")
    return None


class Recorder(Output):
    """Records frames to an H.264 video file (``app.outputs.h264``: NVENC or x264) at a constant ``fps``.

    ``timing`` says how frames map onto the file's time line:

    - ``"clock"`` (live sources; the default): the file follows the frames' capture times, so it plays
      back in real time whatever rate frames really arrive at. A frame captured at ``t`` goes to slot
      ``round((t - t_first) * fps)``; a gap is filled by repeating the previous frame, and a frame whose
      slot is already written is dropped. The file lasts last - first capture time plus one frame.
      A frame written without a timestamp is stamped when it arrives.
    - ``"frames"`` (file-to-file runs that drop nothing): every frame is written once, so at the
      source's own ``fps`` the output lasts exactly as long as the input.

    Frames go to a temporary ``NAME.<unique>.partial.EXT`` beside the target, unique per recording so
    two recordings aimed at one path never write into one file; ``close()`` finalizes the container
    and renames it to the target. So a finished file is always complete, and a hard crash (power
    loss, kill -9) leaves only an obviously unfinished ``.partial`` file. The pipeline closes its
    outputs on stop, on quit and after an error, so those paths always produce a playable file.
    ``preflight()`` finds a bad target before any work is done. The size is fixed by the first frame
    unless given.
    """

    name = "Recorder"

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, size: tuple[int, int] | None = None,
                 timing: str = "clock", encoder: str | None = None):
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 30.0
        self.encoder = encoder  # None: the fastest one that opens here; the chosen one once recording
        self.size = size
        self.timing = timing
        self.partial_path: Path | None = None  # reserved when the first frame arrives
        self._writer = None
        self._first_time: float | None = None
        self._last_frame: np.ndarray | None = None  # repeated to fill gaps in clock timing
        self.frames_written = 0  # frames in the file, repeats included
        self.frames_repeated = 0
        self.frames_dropped = 0
        self.finalized_path: Path | None = None
        self.name = f"Recorder {self.path.name}"
        # The pipeline's postprocess thread writes and may close on an error while the GUI closes too:
        # a second close must wait until the first has renamed the file, not return before it.
        self._lock = threading.Lock()

    def preflight(self) -> None:
        """Check the target before any frame exists (so before a model spends a minute loading): its
        name, its folder, that a file can really be created there, and free space. Raises OutputError."""
        problem = video_path_problem(self.path)
        if problem:
            raise OutputError(problem)
        self._check_folder()
        self._reserve_partial().unlink(missing_ok=True)
        self._check_space()

    def info(self) -> VideoInfo | None:
        """What the finished file really holds (read back from it), or None before it is finished."""
        return probe_video(self.finalized_path) if self.finalized_path is not None else None

    def _check_folder(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise OutputError(f"Cannot record to {self.path}: folder {folder} does not exist")

    def _reserve_partial(self) -> Path:
        # An exclusive create claims the name against every other recorder, in this process or another;
        # the folder is the target's so that the final rename never crosses file systems.
        suffix = self.path.suffix or ".mp4"
        for _ in range(100):
            candidate = self.path.with_name(f"{self.path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{suffix}")
            try:
                fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(
                    f"Cannot record to {self.path}: no file can be created in {self.path.parent} "
                    f"({exc.strerror or exc}); pick a folder you can write to") from exc
            os.close(fd)
            return candidate
        raise OutputError(f"Cannot record to {self.path}: no free temporary name in {self.path.parent}")

    def _open(self, width: int, height: int) -> None:
        self._check_folder()
        self._check_space()
        self.partial_path = self._reserve_partial()
        try:
            self._writer = H264Writer(self.partial_path, width, height, self.fps, self.encoder)
        except (EncoderError, OSError, ValueError) as exc:  # PyAV's errors subclass OSError / ValueError
            self.partial_path.unlink(missing_ok=True)
            raise OutputError(f"Cannot record to {self.path}: {exc}") from exc
        self.encoder = self._writer.encoder
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

    def write(self, image: np.ndarray, timestamp: float | None = None) -> None:
        with self._lock:
            self._write(image, time.perf_counter() if timestamp is None else timestamp)

    def _write(self, image: np.ndarray, timestamp: float) -> None:
        if self.finalized_path is not None:
            raise OutputError(f"Recording {self.path} is already finished")
        if self._writer is None:
            width, height = self.size or (image.shape[1], image.shape[0])
            self._open(width - width % 2, height - height % 2)  # 4:2:0 pixels come in 2x2 blocks
        slot = self._slot(timestamp)
        if slot < self.frames_written:
            self.frames_dropped += 1  # faster than the file's rate: this moment is already in the file
            return
        width, height = self.size
        frame = np.ascontiguousarray(fit_frame(image, width, height))
        while self.frames_written < slot:  # slower than the file's rate: hold the last picture meanwhile
            self._append(self._last_frame)
            self.frames_repeated += 1
        self._append(frame)

    def _slot(self, timestamp: float) -> int:
        """Index in the file the frame belongs at."""
        if self.timing == "frames":
            return self.frames_written
        if self._first_time is None:
            self._first_time = timestamp
        return round((timestamp - self._first_time) * self.fps)

    def _append(self, frame: np.ndarray) -> None:
        if self.frames_written % _DISK_CHECK_EVERY == _DISK_CHECK_EVERY - 1:
            self._check_space()
        try:
            self._writer.write(frame)
        except OSError as exc:
            raise OutputError(_disk_message(exc, self.path, "Recording to")) from exc
        except Exception as exc:  # noqa: BLE001 - any encoder failure ends this recording with a message
            raise OutputError(f"Recording to {self.path} failed: {exc}") from exc
        self.frames_written += 1
        self._last_frame = frame

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        self._last_frame = None
        if writer is None:
            return
        try:
            writer.close()
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


def _disk_message(exc: OSError, path: Path, doing: str = "Finishing") -> str:
    if exc.errno == errno.ENOSPC:
        return f"The disk is full: {path} could not be finished; free some space"
    return f"{doing} {path} failed: {exc.strerror or exc}"
