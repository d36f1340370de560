"""What every output is: ``write(image, timestamp=None)`` and ``close()``, called by the pipeline's
postprocess thread. Images are RGB uint8 (H, W, 3); the timestamp is the frame's capture time
(perf_counter seconds). Errors raise ``OutputError`` with a message for the user; ``close`` never raises
and may be called more than once."""

from __future__ import annotations

import cv2
import numpy as np

from core.sizes import crop_box, letterbox_box


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


def fit_frame(image: np.ndarray, width: int, height: int, letterbox: bool = False) -> np.ndarray:
    """``image`` at width x height without stretching: centre-cropped to the target's shape, or scaled
    whole into it with black bars (letterbox). The CPU counterpart of core.imageops.fit, for frames that
    do not pass through the engine (no model yet, bypass) and for an output whose size is fixed while a
    frame of another size arrives."""
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (width, height):
        return image
    if letterbox:
        top, left, h, w = letterbox_box(src_h, src_w, height, width)
        out = np.zeros((height, width, 3), np.uint8)
        out[top : top + h, left : left + w] = _resize(image, w, h)
        return out
    top, left, h, w = crop_box(src_h, src_w, height, width)
    return _resize(image[top : top + h, left : left + w], width, height)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = image.shape[1] > width or image.shape[0] > height
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
