"""An engine-shaped stand-in for when no model should or can run: the responsiveness measurement,
the README screenshot and the GUI tests. It has StreamEngine's methods, records each setter call,
and its ``process`` crops and resizes like the real engine, inverts the picture (so input and output
differ visibly) and takes about ``gpu_ms``, like a GPU would.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np


class StandInEngine:
    def __init__(self, config, gpu_ms: float = 0.0, fail_with: BaseException | None = None):
        self.config = config
        self.gpu_ms = gpu_ms
        self.fail_with = fail_with
        self.calls: list[tuple] = []
        self._lock = threading.Lock()
        self.last_frame_skipped = False
        self.skipped_frames = 0
        self.frames_processed = 0
        self.last_gpu_ms = 0.0

    def _record(self, *call) -> None:
        with self._lock:
            self.calls.append(call)

    def last(self, name: str) -> tuple | None:
        """The latest call of setter ``name`` with its arguments, or None."""
        with self._lock:
            found = [call for call in self.calls if call[0] == name]
        return found[-1] if found else None

    def prepare(self, prompt, negative_prompt=""):
        self._record("prepare", prompt, negative_prompt)

    def update_prompt(self, prompt, negative_prompt=None):
        self._record("update_prompt", prompt, negative_prompt)

    def set_seed(self, seed):
        self._record("set_seed", seed)

    def set_strength(self, strength):
        self._record("set_strength", strength)

    def set_guidance(self, guidance_scale=None, delta=None):
        self._record("set_guidance", guidance_scale, delta)

    def set_similarity_filter(self, enabled, threshold=None, max_skip_frames=None):
        self._record("set_similarity_filter", enabled, threshold)

    def fit(self, frame: np.ndarray) -> np.ndarray:
        """Centre-crop to the engine's aspect ratio and resize, as the real engine's "crop" mode does."""
        height, width = frame.shape[:2]
        want = self.config.width / self.config.height
        if width / height > want:
            keep = int(round(height * want))
            frame = frame[:, (width - keep) // 2:(width - keep) // 2 + keep]
        else:
            keep = int(round(width / want))
            frame = frame[(height - keep) // 2:(height - keep) // 2 + keep]
        return cv2.resize(frame, (self.config.width, self.config.height), interpolation=cv2.INTER_AREA)

    def process(self, frame: np.ndarray) -> np.ndarray:
        if self.fail_with is not None:
            raise self.fail_with
        started = time.perf_counter()
        out = 255 - self.fit(frame)
        left = self.gpu_ms / 1000.0 - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        self.frames_processed += 1
        self.last_gpu_ms = (time.perf_counter() - started) * 1000.0
        return out
