"""Stand-ins for the engine and for cv2.VideoCapture, shared by the pipeline, source and output tests."""

from __future__ import annotations

import threading
import time
import types

import numpy as np


class FakeEngine:
    """Has the members of core.stream.StreamEngine that the pipeline uses; inverts the frame."""

    def __init__(self, width: int = 32, height: int = 24, delay_s: float = 0.0, frame_buffer_size: int = 1):
        self.config = types.SimpleNamespace(width=width, height=height, frame_buffer_size=frame_buffer_size,
                                            t_index_list=(32,))
        self.delay_s = delay_s
        self.calls = 0
        self.closed = False
        self.in_process = False
        self.last_frame_skipped = False
        self.skipped_frames = 0
        self.last_gpu_ms = 0.0
        self.fail_with: BaseException | None = None
        self.closed_mid_frame = False

    def process(self, frame: np.ndarray) -> np.ndarray:
        self.in_process = True
        try:
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            if self.delay_s:
                time.sleep(self.delay_s)
            self.last_gpu_ms = self.delay_s * 1000
            shape = frame.shape[:-3] + (self.config.height, self.config.width, 3)
            out = np.empty(shape, np.uint8)
            out[...] = 255 - frame[..., : self.config.height, : self.config.width, :].mean().astype(np.uint8)
            return out
        finally:
            self.in_process = False

    def close(self) -> None:
        self.closed_mid_frame = self.closed_mid_frame or self.in_process
        self.closed = True


class FlakyCapture:
    """Behaves like cv2.VideoCapture of a camera that is unplugged after ``good_reads`` frames and plugged
    back in after ``down_opens`` failed re-open attempts. Shared state survives re-creation, as a device does."""

    def __init__(self, good_reads: int = 5, down_opens: int = 2, size=(40, 30)):
        self.good_reads, self.down_opens, self.size = good_reads, down_opens, size
        self.reads = 0
        self.opens = 0
        self.unplugged = False
        self.lock = threading.Lock()

    def factory(self, device):
        return _FlakyHandle(self)


class _FlakyHandle:
    def __init__(self, device: FlakyCapture):
        self.device = device
        with device.lock:
            device.opens += 1
            self.ok = True
            if device.unplugged:
                if device.down_opens > 0:
                    device.down_opens -= 1
                    self.ok = False
                else:
                    device.unplugged = False  # plugged back in

    def isOpened(self):
        return self.ok

    def set(self, prop, value):
        return True

    def get(self, prop):
        return 30.0

    def read(self):
        d = self.device
        with d.lock:
            if not self.ok or d.unplugged:
                return False, None
            d.reads += 1
            if d.reads == d.good_reads:
                d.unplugged = True
            w, h = d.size
            return True, np.full((h, w, 3), d.reads % 256, np.uint8)

    def release(self):
        self.ok = False


def write_clip(path, frames: int = 12, size=(64, 48), fps: float = 24.0) -> list[np.ndarray]:
    """A small mp4 whose frames differ; returns the RGB frames written."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    written = []
    for i in range(frames):
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[..., 0] = (i * 20) % 256
        rgb[..., 1] = 128
        rgb[: height // 2, : width // 2, 2] = 200
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        written.append(rgb)
    writer.release()
    return written


def pipeline_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("pipeline-"))
