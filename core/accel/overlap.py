"""Host frames in and out with the copies overlapping the compute.

``OverlappedRunner.submit(frame)`` queues frame k and returns the output of frame k-1: while the GPU
computes frame k, a copy stream uploads nothing else and downloads frame k-1's result, and the host
prepares frame k+1 in a pinned buffer. Throughput is then set by the GPU, at one frame of latency.
"""

from __future__ import annotations

import numpy as np
import torch

from core import imageops
from core.host_copies import host_copy


class _Slot:
    def __init__(self):
        self.pinned_in: torch.Tensor | None = None
        self.device_in: torch.Tensor | None = None
        self.device_out: torch.Tensor | None = None
        self.pinned_out: torch.Tensor | None = None
        self.uploaded = torch.cuda.Event()
        self.computed = torch.cuda.Event()
        self.downloaded = torch.cuda.Event()
        self.busy = False


class OverlappedRunner:
    def __init__(self, engine):
        if engine.device.type != "cuda":
            raise RuntimeError("overlapped copies need a CUDA device")
        self.engine = engine
        self.compute = torch.cuda.current_stream(engine.device)
        self.copy = torch.cuda.Stream(engine.device)
        self.slots = [_Slot(), _Slot()]
        self.index = 0

    @torch.no_grad()
    def submit(self, frame: np.ndarray) -> np.ndarray | None:
        """Queue ``frame``; return the previous frame's output (None for the very first call)."""
        engine = self.engine
        slot = self.slots[self.index]
        previous = self.slots[1 - self.index]
        self.index = 1 - self.index
        frames = imageops.as_uint8_tensor(frame)
        if slot.busy:
            slot.uploaded.synchronize()  # its pinned input may still be read by the last upload
        if slot.pinned_in is None or slot.pinned_in.shape != frames.shape:
            slot.pinned_in = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            slot.device_in = torch.empty(frames.shape, dtype=torch.uint8, device=engine.device)
        slot.pinned_in.copy_(frames)
        with torch.cuda.stream(self.copy):
            slot.device_in.copy_(slot.pinned_in, non_blocking=True)
            slot.uploaded.record(self.copy)
        self.compute.wait_event(slot.uploaded)
        output = engine.step(slot.device_in)  # a skipped frame gives the last output again
        if slot.device_out is None or slot.device_out.shape != output.shape:
            slot.device_out = torch.empty_like(output)
            slot.pinned_out = torch.empty(output.shape, dtype=torch.uint8, pin_memory=True)
        # A device copy frees the accelerator's output buffer for the next frame at once.
        slot.device_out.copy_(output)
        slot.computed.record(self.compute)
        with torch.cuda.stream(self.copy):
            self.copy.wait_event(slot.computed)
            slot.pinned_out.copy_(slot.device_out, non_blocking=True)
            slot.downloaded.record(self.copy)
        slot.busy = True
        return self._collect(previous) if previous.busy else None

    def flush(self) -> np.ndarray | None:
        """The output of the last submitted frame."""
        slot = self.slots[1 - self.index]
        return self._collect(slot) if slot.busy else None

    def _collect(self, slot: _Slot) -> np.ndarray:
        slot.busy = False
        slot.downloaded.synchronize()
        return host_copy(slot.pinned_out[0])
