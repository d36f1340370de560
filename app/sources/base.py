"""Base class and error types shared by all frame sources.

Every source yields RGB uint8 arrays of shape (H, W, 3). The pipeline calls ``open``, ``read`` and
``close`` from its capture thread only, because some back ends (mss on Windows and X11, some camera
drivers) bind their handles to the thread that created them.

Failure contract, which the pipeline relies on:
- ``open`` raises ``SourceError`` with a sentence a user can act on.
- ``read`` returns ``None`` at the end of a finite source, and raises ``SourceLost`` when a device went
  away and may come back (the pipeline retries with back-off), or ``SourceError`` when it cannot work.
"""

from __future__ import annotations

import time

import numpy as np


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message is meant for the user."""


class SourceLost(SourceError):
    """A device stopped delivering frames but may come back (unplugged camera, driver hiccup)."""


class Source:
    """Base class: a producer of RGB uint8 frames."""

    #: Short human-readable description, e.g. "Camera 0" or "Screen 1 (100,100 640x480)".
    name: str = "source"
    #: True when frames arrive in real time (camera, screen, paced pattern); False for a file read as
    #: fast as the consumer wants, which is what file-to-file runs need.
    live: bool = True

    def open(self) -> None:
        """Acquire the device. Idempotent. Raises SourceError."""

    def read(self) -> np.ndarray | None:
        """Block until the next frame; None at the end of a finite source."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device. Idempotent; never raises."""

    @property
    def fps(self) -> float | None:
        """Nominal frame rate when known (for pacing recorders), else None."""
        return None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class Pacer:
    """Sleeps to hold a frame rate without drifting; a late frame does not cause a burst after it."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self._next = 0.0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.perf_counter()
        if self._next > now:
            time.sleep(self._next - now)
            now = self._next
        # Falling behind by more than a frame resets the schedule instead of catching up.
        self._next = max(self._next + self.period, now) if self._next else now + self.period
