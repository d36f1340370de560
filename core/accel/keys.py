"""Cache keys shared by the accelerators that store built engines (TensorRT plans, AOTInductor packages): a
stable hash of a payload, of a diffusers module config, and a cheap fingerprint of a module's weights."""

from __future__ import annotations

import hashlib
import json

import torch


def digest(payload) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_digest(config) -> str:
    """A diffusers module config (a FrozenDict) reduced to a stable hash."""
    return digest({key: value for key, value in dict(config).items() if not key.startswith("_")})[:16]


@torch.no_grad()
def weight_fingerprint(module: torch.nn.Module, samples: int = 16) -> str:
    """A few evenly spaced values of every tensor: cheap, yet a fused LoRA or another checkpoint changes it."""
    hasher = hashlib.sha256()
    picks = []
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0 or not tensor.is_floating_point():
            continue
        # float64: float32 positions round past the end of a tensor of over 2**24 values (a CUDA assert)
        index = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), dtype=torch.float64).long()
        index = index.clamp_(max=flat.numel() - 1).to(flat.device)
        picks.append(flat.index_select(0, index).float())
    if picks:  # one device-to-host copy for the whole model
        hasher.update(torch.cat(picks).cpu().numpy().tobytes())
    return hasher.hexdigest()[:16]
