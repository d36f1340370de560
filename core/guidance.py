"""The guidance variants (cfg types) as one table, read by the engine and by the prompt layout.

Each variant answers three questions: which stream-batch elements get an extra UNet input with the
negative prompt (always a prefix of the batch, placed before the positive inputs), where the
unconditional noise of the guidance comes from, and what anchors RCFG's residual. A new variant is one
new row here; ``core/stream.py`` and ``core/prompts.py`` hold no per-variant branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NegativeInputs = Literal["none", "every_element", "new_frames"]
Unconditional = Literal["none", "negative_inputs", "residual"]


@dataclass(frozen=True)
class GuidanceRule:
    negative_inputs: NegativeInputs
    """none: no negative UNet inputs; every_element: a negative copy of each batch element (2n inputs);
    new_frames: one for each new frame at the first step only (n + frame_buffer_size inputs)."""
    unconditional: Unconditional
    """none: the positive prediction is used as is; negative_inputs: classic CFG against the negative
    inputs; residual: RCFG's virtual residual noise (``delta * (x_t - a * anchor) / b``)."""
    anchor_from_negative: bool = False
    """residual only: the new frames' anchor is the negative input's x0 prediction (onetime-negative)
    rather than the clean input latent (self-negative)."""

    def negative_count(self, batch_size: int, frame_buffer_size: int) -> int:
        """How many negative UNet inputs precede the ``batch_size`` positive ones."""
        return {"none": 0, "every_element": batch_size, "new_frames": frame_buffer_size}[self.negative_inputs]

    def unet_rows(self, batch_size: int, frame_buffer_size: int) -> list[int]:
        """Which stream-batch element each UNet input denoises (negative inputs first)."""
        return list(range(self.negative_count(batch_size, frame_buffer_size))) + list(range(batch_size))


GUIDANCE_RULES: dict[str, GuidanceRule] = {
    "none": GuidanceRule("none", "none"),
    "full": GuidanceRule("every_element", "negative_inputs"),
    "self": GuidanceRule("none", "residual"),
    "initialize": GuidanceRule("new_frames", "residual", anchor_from_negative=True),
}
