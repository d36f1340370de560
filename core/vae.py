"""The VAE stages as functions of the VAE they run on, full or tiny: the engine calls them on its own VAE,
and the compiled path on a copy whose halves are compiled (core.accel.compile)."""

from __future__ import annotations

import torch


def vae_encode(vae, images: torch.Tensor, vae_dtype: torch.dtype, dtype: torch.dtype) -> torch.Tensor:
    """Images in [-1, 1] to scaled latents in ``dtype``, through the full or the tiny VAE."""
    latents = vae.encode(images.to(vae_dtype), return_dict=False)[0]
    if not isinstance(latents, torch.Tensor):  # the full VAE returns a distribution; the tiny one latents
        latents = latents.mode()
    return (latents * vae.config.scaling_factor).to(dtype)


def vae_decode(vae, latents: torch.Tensor, vae_dtype: torch.dtype) -> torch.Tensor:
    """Scaled latents to images in [-1, 1]."""
    return vae.decode((latents / vae.config.scaling_factor).to(vae_dtype), return_dict=False)[0]
