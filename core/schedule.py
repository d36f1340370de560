"""The scalar math of stream diffusion, as pure functions.

Notation (DESIGN.md): ``a_t = sqrt(alphas_cumprod[t])``, ``b_t = sqrt(1 - alphas_cumprod[t])``.
Coefficient tensors are shaped (batch, 1, 1, 1) so that they broadcast over latents; the batch is laid
out step-major: ``[step 0 x frame_buffer_size, step 1 x frame_buffer_size, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def lcm_timesteps(scheduler, num_inference_steps: int) -> list[int]:
    """The LCM schedule of ``num_inference_steps`` timesteps, from the diffusers scheduler itself."""
    scheduler.set_timesteps(num_inference_steps)
    return [int(t) for t in scheduler.timesteps]


def sub_timesteps(timesteps: list[int], t_index_list) -> list[int]:
    return [timesteps[i] for i in t_index_list]


def strength_to_t_index_list(strength: float, steps: int, num_inference_steps: int = 50) -> tuple[int, ...]:
    """Map a 0..1 strength to ``steps`` increasing schedule indices.

    Strength 1 starts from the first (noisiest) timestep and so repaints the input entirely; strength 0
    starts at the last index, keeping almost all of it. The remaining steps are spread evenly between
    the first index and the end of the schedule, as a sequential sampler would visit them.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be from 0 to 1, got {strength}")
    if not 1 <= steps <= 4:
        raise ValueError(f"steps must be from 1 to 4, got {steps}")
    last = num_inference_steps - 1
    # Leave room for the later steps after the first index.
    first = min(int(round((1.0 - strength) * last)), last - (steps - 1))
    span = num_inference_steps - first
    indices = [first + (k * span) // steps for k in range(steps)]
    return tuple(indices)


def t_index_list_to_strength(t_index_list, num_inference_steps: int = 50) -> float:
    """Inverse of ``strength_to_t_index_list`` for the first index (for showing a slider position)."""
    return 1.0 - t_index_list[0] / max(1, num_inference_steps - 1)


@dataclass
class StepCoefficients:
    """Per-element constants of one stream batch (shape (batch,) or (batch, 1, 1, 1))."""

    timesteps: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor


def step_coefficients(scheduler, t_list: list[int], frame_buffer_size: int) -> StepCoefficients:
    """Coefficients for the stream batch; computed in float64 on the CPU, once per schedule change."""
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    per_step = []
    for t in t_list:
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        a = alphas_cumprod[t]
        per_step.append((t, a.sqrt().item(), (1 - a).sqrt().item(), float(c_skip), float(c_out)))
    columns = list(zip(*per_step))

    def expand(values, dtype=torch.float64):
        return torch.tensor(values, dtype=dtype).repeat_interleave(frame_buffer_size)

    shape = (-1, 1, 1, 1)
    return StepCoefficients(
        timesteps=expand(columns[0], torch.long),
        alpha=expand(columns[1]).view(shape),
        beta=expand(columns[2]).view(shape),
        c_skip=expand(columns[3]).view(shape),
        c_out=expand(columns[4]).view(shape),
    )


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Forward diffusion to a timestep: ``x_t = a_t * x0 + b_t * noise``."""
    return alpha * x0 + beta * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``x0 = (x_t - b_t * eps) / a_t``."""
    return (x_t - beta * eps) / alpha


def lcm_denoise(x_t, eps, alpha, beta, c_skip, c_out) -> torch.Tensor:
    """LCM boundary condition: ``denoised = c_out * x0 + c_skip * x_t``."""
    return c_out * predict_x0(x_t, eps, alpha, beta) + c_skip * x_t


def guided_noise(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale) -> torch.Tensor:
    """Classifier-free guidance: ``eps_uc + g * (eps_c - eps_uc)``."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def residual_noise(x_t: torch.Tensor, anchor: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """RCFG's virtual residual noise (paper eq. 7): the noise that takes ``anchor`` to ``x_t``.

    ``eps' = (x_t - a_t * anchor) / b_t``. With the input image latent as the anchor this is the
    self-negative residual; with the negative prompt's x0 prediction from the first step it is the
    onetime-negative one. At the first step of a new frame it equals the noise that was added (self)
    or the negative prediction itself (onetime), and at later steps it carries that residual forward.
    """
    return (x_t - alpha * anchor) / beta
