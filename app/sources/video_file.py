"""A video file read through OpenCV, paced at its own rate or as fast as the consumer asks."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from app.sources.base import Pacer, Source, SourceError


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
        self._pacer = Pacer(None)
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
        self._pacer = Pacer(self._fps if self.paced else None)
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
