"""Host <-> device copies of uint8 frames through pinned staging buffers, one per shape and direction.

A pinned buffer makes each copy a DMA the GPU runs without the CPU in the loop; on the CPU (or for a
frame already on the device) the copies are plain ``.to``.

The copies between the caller's memory and the pinned buffers go through ``torch``'s ``copy_``, which
splits a large frame over the intra-op threads, where numpy's ``copy`` uses one. Uploads land in one
persistent device buffer per shape, so no frame allocates.
"""

from __future__ import annotations

import numpy as np
import torch


class PinnedCopies:
    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[tuple, torch.Tensor] = {}

    def _buffer(self, direction: str, shape, device=None) -> torch.Tensor:
        key = (direction, tuple(shape))
        buffer = self._buffers.get(key)
        if buffer is None:
            if device is None:
                buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            else:
                buffer = torch.empty(shape, dtype=torch.uint8, device=device)
            self._buffers[key] = buffer
        return buffer

    def upload(self, frames: torch.Tensor) -> torch.Tensor:
        """The frames on the device. The result is this object's buffer, overwritten by the next upload of
        the same shape (after the work queued on it, which runs on the same stream)."""
        if self.device.type != "cuda" or frames.is_cuda:
            return frames.to(self.device)
        pinned = self._buffer("in", frames.shape)
        pinned.copy_(frames)  # the last upload from it has finished: process() synchronises every frame
        device = self._buffer("device", frames.shape, self.device)
        device.copy_(pinned, non_blocking=True)
        return device

    def download(self, output: torch.Tensor) -> np.ndarray:
        """A new host array the caller may keep or edit (the engine keeps its own)."""
        if output.device.type != "cuda":
            return output.numpy().copy()
        pinned = self._buffer("out", output.shape)
        pinned.copy_(output, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host_copy(pinned)


def host_copy(pinned: torch.Tensor) -> np.ndarray:
    """A fresh numpy copy of a host tensor, made by torch's threaded copy rather than numpy's single thread."""
    out = np.empty_like(pinned.numpy())
    torch.from_numpy(out).copy_(pinned)
    return out
