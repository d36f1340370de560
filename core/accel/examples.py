"""Example inputs for a compiled piece's check or warm-up runs."""

from __future__ import annotations

import math

import torch


def example_values(shape, device, dtype) -> torch.Tensor:
    """Values in [-1, 1] made on the device without its random generator. Another thread may be capturing a CUDA
    graph (an engine loading or building beside a running one), and the device's default generator must not move
    then ("Offset increment outside graph capture"); a kernel on this thread's own stream is allowed."""
    return (torch.arange(math.prod(shape), device=device, dtype=torch.float32).remainder(17.0) / 8.0 - 1.0).reshape(shape).to(dtype)
