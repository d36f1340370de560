"""Host <-> device copies of uint8 frames through pinned staging buffers, one per shape and direction.

A pinned buffer makes each copy a DMA the GPU runs without the CPU in the loop; on the CPU (or for a
frame already on the device) the copies are plain ``.to``.
"""

from __future__ import annotations

import numpy as np
import torch


class PinnedCopies:
    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[tuple, torch.Tensor] = {}

    def _buffer(self, direction: str, shape) -> torch.Tensor:
        key = (direction, tuple(shape))
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        return buffer

    def upload(self, frames: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda" or frames.is_cuda:
            return frames.to(self.device)
        pinned = self._buffer("in", frames.shape)
        pinned.copy_(frames)
        return pinned.to(self.device, non_blocking=True)

    def download(self, output: torch.Tensor) -> np.ndarray:
        if output.device.type != "cuda":
            return output.numpy().copy()  # callers may keep or edit it; the engine keeps its own
        pinned = self._buffer("out", output.shape)
        pinned.copy_(output, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return pinned.numpy().copy()
