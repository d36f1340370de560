"""Prompt conditioning laid out for the stream batch.

The text encoders run through diffusers' own ``encode_prompt``; what is ours is the layout: which
entries of the UNet batch get the negative and which the positive prompt, per cfg type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.guidance import GuidanceRule

NEGATIVE, POSITIVE = 0, 1


def conditioning_layout(rule: GuidanceRule, denoising_steps: int, frame_buffer_size: int) -> list[int]:
    """For each UNet input of one frame: NEGATIVE or POSITIVE (the rule's negative inputs come first)."""
    batch = denoising_steps * frame_buffer_size
    return [NEGATIVE] * rule.negative_count(batch, frame_buffer_size) + [POSITIVE] * batch


@dataclass
class Conditioning:
    """Tensors the UNet takes besides latents and timesteps, one row per UNet input."""

    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None

    def copy_(self, other: "Conditioning") -> None:
        """Overwrite in place, so that a captured CUDA graph reads the new prompt."""
        self.encoder_hidden_states.copy_(other.encoder_hidden_states)
        if self.added_cond_kwargs is not None:
            for key, value in self.added_cond_kwargs.items():
                value.copy_(other.added_cond_kwargs[key])


@torch.no_grad()
def encode_conditioning(
    components, prompt: str, negative_prompt: str, layout: list[int], width: int, height: int, device, dtype
) -> Conditioning:
    pipe = components.pipe
    index = torch.tensor(layout, device=device)
    if components.family == "sdxl":
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompt,
        )
        # Micro-conditioning of SDXL: original size, crop offset, target size.
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
        pooled_pair = torch.cat([negative_pooled, pooled]).to(dtype)
        added = {
            "text_embeds": pooled_pair.index_select(0, index),
            "time_ids": time_ids.expand(len(layout), -1).contiguous(),
        }
    else:
        positive, negative = pipe.encode_prompt(
            prompt, device, 1, True, negative_prompt=negative_prompt
        )
        added = None
    pair = torch.cat([negative, positive]).to(dtype)
    return Conditioning(pair.index_select(0, index).contiguous(), added)
