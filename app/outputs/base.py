"""What every output is: ``write(image, timestamp=None)`` and ``close()``, called by the pipeline's
postprocess thread. Images are RGB uint8 (H, W, 3); the timestamp is the frame's capture time
(perf_counter seconds). Errors raise ``OutputError`` with a message for the user; ``close`` never raises
and may be called more than once."""

from __future__ import annotations

import cv2
import numpy as np


class OutputError(RuntimeError):
    """An output cannot be opened or written; the message says why and what to do."""


class Output:
    """Base class of frame consumers."""

    name: str = "output"

    def write(self, image: np.ndarray, timestamp: float | None = None) -> None:
        """Consume one frame; ``timestamp`` is its capture time (perf_counter seconds) when known."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources and finalize. Idempotent; never raises."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # A device or a file has one size for its lifetime; a frame of another size (e.g. the engine not
    # loaded yet, so the raw input passes through) is scaled rather than rejected.
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
