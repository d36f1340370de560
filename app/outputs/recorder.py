"""Recording to a video file that keeps real time and is always either complete or clearly partial."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.outputs.base import Output, OutputError, fit_frame

MIN_FREE_BYTES = 64 * 1024 * 1024
_DISK_CHECK_EVERY = 30  # frames

#: Containers OpenCV's FFmpeg back end writes with the mp4v codec (.webm, for one, needs VP8/VP9).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
TIMINGS = ("clock", "frames")


def video_path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot name a recording judging by the name alone (a folder, an extension OpenCV
    cannot write), or None. Such a problem is the caller's choice of name, not the disk's."""
    target = Path(path)
    if target.is_dir():
        return f"Cannot record to {target}: it is a folder; give a file name such as {target / 'out.mp4'}"
    if target.suffix.lower() not in VIDEO_EXTENSIONS:
        what = f"the extension {target.suffix}" if target.suffix else "a name without an extension"
        return (f"Cannot record to {target}: {what} is not a video format this program can write; "
                f"use one of {', '.join(VIDEO_EXTENSIONS)}")
    return None


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as read back from the file itself."""

    frames: int
    width: int
    height: int
    fps: float

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo | None:
    """Frame count, size and rate from the container's header; None when OpenCV cannot open it."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        return VideoInfo(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0))
    finally:
        cap.release()


class Recorder(Output):
    """Records frames to a video file with cv2.VideoWriter (mp4v by default), at a constant ``fps``.

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

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, fourcc: str = "mp4v",
                 size: tuple[int, int] | None = None, timing: str = "clock"):
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 30.0
        self.fourcc = fourcc
        self.size = size
        self.timing = timing
        self.partial_path: Path | None = None  # reserved when the first frame arrives
        self._writer = None
        self._first_time: float | None = None
        self._last_frame: np.ndarray | None = None  # BGR, repeated to fill gaps in clock timing
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
        writer = cv2.VideoWriter(str(self.partial_path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (width, height))
        if not writer.isOpened():
            writer.release()
            self.partial_path.unlink(missing_ok=True)
            raise OutputError(
                f"Cannot record to {self.path}: the encoder {self.fourcc!r} refused it "
                f"(use one of {', '.join(VIDEO_EXTENSIONS)})"
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

    def write(self, image: np.ndarray, timestamp: float | None = None) -> None:
        with self._lock:
            self._write(image, time.perf_counter() if timestamp is None else timestamp)

    def _write(self, image: np.ndarray, timestamp: float) -> None:
        if self.finalized_path is not None:
            raise OutputError(f"Recording {self.path} is already finished")
        if self._writer is None:
            width, height = self.size or (image.shape[1], image.shape[0])
            self._open(width, height)
        slot = self._slot(timestamp)
        if slot < self.frames_written:
            self.frames_dropped += 1  # faster than the file's rate: this moment is already in the file
            return
        width, height = self.size
        frame = cv2.cvtColor(fit_frame(image, width, height), cv2.COLOR_RGB2BGR)
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
        except cv2.error as exc:
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
