"""Prompt conditioning laid out for the stream batch.

The text encoders run through diffusers' own ``encode_prompt``; what is ours is the layout: which
entries of the UNet batch get the negative and which the positive prompt, per cfg type.
"""

from __future__ import annotations

import re
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

    def pairs_with(self, other: "Conditioning") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(this tensor, the other's) for each tensor: what a blend from this conditioning to the other writes."""
        pairs = [(self.encoder_hidden_states, other.encoder_hidden_states)]
        if self.added_cond_kwargs is not None:
            pairs += [(value, other.added_cond_kwargs[key]) for key, value in self.added_cond_kwargs.items()]
        return pairs

    def copy_(self, other: "Conditioning") -> None:
        """Overwrite in place, so that a captured CUDA graph reads the new prompt."""
        self.encoder_hidden_states.copy_(other.encoder_hidden_states)
        if self.added_cond_kwargs is not None:
            for key, value in self.added_cond_kwargs.items():
                value.copy_(other.added_cond_kwargs[key])


_WEIGHT = re.compile(r"^(?P<text>.*?):\s*(?P<weight>[0-9]*\.?[0-9]+)\s*$", re.S)


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """``"oil painting:0.7 | anime:0.3"`` -> ``[("oil painting", 0.7), ("anime", 0.3)]``, weights summing to 1.

    Without a ``|`` the prompt is one part with weight 1, whatever colons it holds ("style: noir" stays as
    it is). A part without a weight counts 1 before normalising; parts of weight 0 drop out.
    """
    if "|" not in prompt:
        return [(prompt, 1.0)]
    parts = []
    for piece in prompt.split("|"):
        match = _WEIGHT.match(piece.strip())
        text, weight = (match["text"].strip(), float(match["weight"])) if match else (piece.strip(), 1.0)
        if text and weight > 0:
            parts.append((text, weight))
    total = sum(weight for _, weight in parts)
    return [(text, weight / total) for text, weight in parts] if parts else [("", 1.0)]


def _encode_one(components, prompt: str, negative_prompt: str, device):
    """(positive, negative, pooled, negative pooled) from diffusers' own encoder; pooled only for SDXL."""
    pipe = components.pipe
    if components.family == "sdxl":
        return pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=True, negative_prompt=negative_prompt)
    positive, negative = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative_prompt)
    return positive, negative, None, None


@torch.no_grad()
def encode_conditioning(
    components, prompt: str, negative_prompt: str, layout: list[int], width: int, height: int, device, dtype
) -> Conditioning:
    """The UNet's conditioning rows for ``layout``; a weighted prompt (``a:0.7 | b:0.3``) blends the
    parts' text embeddings (and SDXL's pooled ones) by weight."""
    index = torch.tensor(layout, device=device)
    positive = pooled = None
    for text, weight in parse_weighted_prompt(prompt):
        part, negative, part_pooled, negative_pooled = _encode_one(components, text, negative_prompt, device)
        positive = weight * part if positive is None else positive + weight * part
        if part_pooled is not None:
            pooled = weight * part_pooled if pooled is None else pooled + weight * part_pooled
    added = None
    if components.family == "sdxl":
        # Micro-conditioning of SDXL: original size, crop offset, target size.
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
        pooled_pair = torch.cat([negative_pooled, pooled]).to(dtype)
        added = {
            "text_embeds": pooled_pair.index_select(0, index),
            "time_ids": time_ids.expand(len(layout), -1).contiguous(),
        }
    pair = torch.cat([negative, positive]).to(dtype)
    return Conditioning(pair.index_select(0, index).contiguous(), added)
