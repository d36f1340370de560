"""The contract between the engine and its accelerators: what an accelerator may swap in, and the saved
stream state that lets it undo a throwaway run. ``StreamEngine.install`` / ``snapshot_stream`` use these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class AcceleratedParts:
    """What an accelerator runs in place of the engine's eager PyTorch; None keeps the eager part.

    ``unet`` takes and returns what the diffusers UNet call in ``predict_noise`` does; ``unet_split`` what
    ``core.feature_reuse.unet_split_forward`` does after its ``unet`` argument (feature reuse); ``encode_images``
    and ``decode_latents`` what the engine's methods of those names do; ``frame_runner`` replaces the
    whole ``frame_step`` (a captured graph); ``keep_alive`` holds what must live as long as the engine.
    """

    unet: Callable | None = None
    unet_split: Callable | None = None
    encode_images: Callable | None = None
    decode_latents: Callable | None = None
    frame_runner: Callable | None = None
    keep_alive: object = None


@dataclass(frozen=True)
class StreamSnapshot:
    """The frames in flight (latents and RCFG anchors), the latent feedback and the deep-feature cache, saved
    so that a throwaway run (warm-up, graph capture) can be undone."""

    latents: torch.Tensor
    anchors: torch.Tensor
    feedback: torch.Tensor
    has_feedback: torch.Tensor
    features: tuple = (None, 0, True, 0, "layer")  # the deep-feature cache (core.feature_reuse.FeatureCache.state)
