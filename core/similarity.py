"""Stochastic Similarity Filter: skip the diffusion of frames that barely differ from the last one."""

from __future__ import annotations

import random

import torch

from core import imageops


def skip_probability(similarity: float, threshold: float) -> float:
    """``max(0, 1 - (1 - s) / (1 - threshold))``; a threshold of 1 never skips."""
    if threshold >= 1.0:
        return 0.0
    return max(0.0, 1.0 - (1.0 - similarity) / (1.0 - threshold))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.reshape(-1).float()
    b = b.reshape(-1).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=0)


class SimilarityFilter:
    """Decides per frame whether to re-emit the last output instead of running the model.

    The draw is random rather than a hard cut so that a slowly drifting scene still gets refreshed
    now and then; ``max_skip_frames`` bounds how stale the output can get.
    """

    def __init__(self, threshold: float = 0.98, max_skip_frames: int = 10, seed: int = 0):
        self.threshold = threshold
        self.max_skip_frames = max_skip_frames
        self._rng = random.Random(seed)
        self._reference: torch.Tensor | None = None
        self._skips_in_a_row = 0
        self.last_similarity: float | None = None

    def reset(self) -> None:
        self._reference = None
        self._skips_in_a_row = 0
        self.last_similarity = None

    def should_skip(self, frame: torch.Tensor) -> bool:
        """True to skip ``frame``; a processed frame becomes the reference for the next comparison."""
        if self._reference is None or self._reference.shape != frame.shape:
            self._accept(frame)
            return False
        # .item() synchronises with the GPU: the decision has to be known on the host anyway.
        similarity = float(cosine_similarity(frame, self._reference).item())
        self.last_similarity = similarity
        if self._skips_in_a_row < self.max_skip_frames and self._rng.random() < skip_probability(
            similarity, self.threshold
        ):
            self._skips_in_a_row += 1
            return True
        self._accept(frame)
        return False

    def should_skip_frames(self, frames_u8: torch.Tensor) -> bool:
        """``should_skip`` for uint8 frames of any size, judged on a small copy (far cheaper than the model)."""
        return self.should_skip(imageops.to_model_input(frames_u8, 64, 64, torch.float32))

    def _accept(self, frame: torch.Tensor) -> None:
        if self._reference is None or self._reference.shape != frame.shape:
            self._reference = frame.detach().clone()
        else:
            self._reference.copy_(frame)
        self._skips_in_a_row = 0
