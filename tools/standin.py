"""An engine-shaped stand-in for when no model should or can run: the responsiveness measurement,
the README screenshot and the GUI tests. It has StreamEngine's methods, records each setter call,
and its ``process`` crops and resizes like the real engine, inverts the picture (so input and output
differ visibly) and takes about ``gpu_ms``, like a GPU would.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from app.outputs.base import fit_frame


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

    def set_smoothing(self, smoothing):
        self._record("set_smoothing", smoothing)

    def set_transition_frames(self, frames):
        self._record("set_transition_frames", frames)

    def set_feature_reuse(self, enabled, interval=None, depth=None):
        self._record("set_feature_reuse", enabled)

    def set_resize_mode(self, mode):
        self._record("set_resize_mode", mode)
        self.config = self.config.replace(resize_mode=mode)

    def set_output_size(self, width, height):
        self._record("set_output_size", width, height)
        self.config = self.config.replace(output_width=width, output_height=height)

    def fit(self, frame: np.ndarray) -> np.ndarray:
        """The source fitted to the generated size, as the real engine does (crop or letterbox)."""
        return fit_frame(frame, self.config.width, self.config.height, self.config.resize_mode == "letterbox")

    def to_output(self, image: np.ndarray) -> np.ndarray:
        """A generated-size image at the output size, as the real engine upscales on the GPU."""
        out_h, out_w = self.config.output_size
        return fit_frame(image, out_w, out_h, self.config.resize_mode == "letterbox")

    def process(self, frame: np.ndarray) -> np.ndarray:
        if self.fail_with is not None:
            raise self.fail_with
        started = time.perf_counter()
        out = self.to_output(255 - self.fit(frame))
        left = self.gpu_ms / 1000.0 - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        self.frames_processed += 1
        self.last_gpu_ms = (time.perf_counter() - started) * 1000.0
        return out
