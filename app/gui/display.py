"""Scaling frames to the preview's size off the GUI thread.

Scaling a 512x512 frame to a large window with bilinear filtering costs the GUI thread several
milliseconds per frame in QPainter (more at full screen). OpenCV does the same on the pipeline's
postprocess thread without holding the GIL, so the preview receives a frame of exactly the size it
paints and only copies it. The preview publishes where it will paint as an immutable ``DisplayTarget``
that worker threads read without locking (replacing an attribute is atomic in Python).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DisplayTarget:
    """Pane sizes in device pixels ((0, 0) when the pane is not shown) and the mirror flag."""

    input_pane: tuple[int, int] = (0, 0)
    output_pane: tuple[int, int] = (0, 0)
    mirror: bool = False


@dataclass
class FramePacket:
    """One pipeline frame on its way to the GUI: the full RGB frames and display-sized BGRA copies."""

    input: np.ndarray | None
    output: np.ndarray | None
    shown_input: np.ndarray | None = None
    shown_output: np.ndarray | None = None
    #: False when no model ran: the output is the input passed through unchanged.
    processed: bool = True


def fit_size(width: int, height: int, pane: tuple[int, int]) -> tuple[int, int]:
    """The largest (w, h) of the frame's aspect ratio inside ``pane``; matches ``preview.fit_rect``."""
    pane_w, pane_h = pane
    if width <= 0 or height <= 0 or pane_w <= 0 or pane_h <= 0:
        return 0, 0
    # Same rounding as QSize.scaled(KeepAspectRatio), so the painter finds the size it expects.
    scaled_w = pane_h * width // height
    if scaled_w <= pane_w:
        return max(1, scaled_w), pane_h
    return pane_w, max(1, pane_w * height // width)


def for_display(frame: np.ndarray | None, pane: tuple[int, int], mirror: bool) -> np.ndarray | None:
    if frame is None or pane == (0, 0):
        return None
    height, width = frame.shape[:2]
    size = fit_size(width, height, pane)
    if size == (0, 0):
        return None
    if size != (width, height):
        shrinking = size[0] < width
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if mirror:
        frame = cv2.flip(frame, 1)
    # BGRA is QImage's native RGB32 layout on little-endian machines: painting it is a memcpy.
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGRA)


def make_packet(input_frame, output_frame, target: DisplayTarget | None, processed: bool = True) -> FramePacket:
    if target is None:
        return FramePacket(input_frame, output_frame, processed=processed)
    return FramePacket(
        input_frame,
        output_frame,
        for_display(input_frame, target.input_pane, target.mirror),
        for_display(output_frame, target.output_pane, target.mirror),
        processed,
    )
