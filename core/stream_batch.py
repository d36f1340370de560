"""The Stream Batch: its state and its step, apart from the networks.

The batch holds the new frames at step 0 and the frames still in flight at steps 1..n-1. All of its
state lives in persistent tensors that changes overwrite in place (noise, the per-step coefficients,
guidance, the frames in flight and their RCFG anchors, the latent feedback of smoothing), so that a
captured CUDA graph or a TensorRT engine keeps reading the right values.
"""

from __future__ import annotations

import copy

import torch

from core import schedule
from core.accel.parts import StreamSnapshot
from core.config import StreamConfig
from core.feature_reuse import FeatureCache
from core.guidance import GuidanceRule


def seeded_noise(shape, seed: int) -> torch.Tensor:
    """Standard normal noise drawn on the CPU, so that a seed gives the same noise on every device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


class StreamBatch:
    def __init__(self, scheduler, timesteps, config: StreamConfig, rule: GuidanceRule, latent_shape, device, dtype):
        self.scheduler, self.timesteps, self.rule = scheduler, timesteps, rule
        batch, fb = config.batch_size, config.frame_buffer_size
        self.frame_buffer_size = fb
        self.negative_count = rule.negative_count(batch, fb)
        self.unet_rows = rule.unet_rows(batch, fb)
        self.noise = seeded_noise((batch, *latent_shape), config.seed).to(device, dtype)
        coef = self._coefficients(config.t_index_list)
        self.alpha, self.beta, self.c_skip, self.c_out = (
            getattr(coef, name).to(device, dtype) for name in ("alpha", "beta", "c_skip", "c_out"))
        self.unet_timesteps = coef.timesteps[self.unet_rows].to(device)
        self.guidance = torch.tensor(float(config.guidance_scale), device=device, dtype=dtype)
        self.delta = torch.tensor(float(config.delta), device=device, dtype=dtype)
        self.smoothing = torch.tensor(float(config.smoothing), device=device, dtype=dtype)
        # Latents and RCFG anchors of the frames still in flight (steps 1..n-1).
        self.latents = torch.zeros((batch - fb, *latent_shape), device=device, dtype=dtype)
        self.anchors = torch.zeros_like(self.latents)
        # The last frames' denoised latents, and whether there are any yet (1) or not (0).
        self.feedback = torch.zeros((fb, *latent_shape), device=device, dtype=dtype)
        self.has_feedback = torch.zeros((), device=device, dtype=dtype)
        # Deep features per UNet row, for feature reuse (allocated at the first frame that uses it).
        self.features = FeatureCache(self.negative_count, batch, fb, config.feature_reuse_interval)
        # Counts the changes after which features carried from earlier frames belong to old conditions
        # (a prompt, seed, strength or stream reset): feature reuse and AsyncDiff's hand-offs start afresh.
        self.epoch = 0
        self._begun: tuple | None = None

    def _coefficients(self, t_index_list) -> schedule.StepCoefficients:
        sub_timesteps = schedule.sub_timesteps(self.timesteps, t_index_list)
        return schedule.step_coefficients(self.scheduler, sub_timesteps, self.frame_buffer_size)

    # ----- changes, all in place ------------------------------------------------------------------

    def set_schedule(self, t_index_list) -> None:
        coef = self._coefficients(t_index_list)
        for name in ("alpha", "beta", "c_skip", "c_out"):
            getattr(self, name).copy_(getattr(coef, name))
        self.unet_timesteps.copy_(coef.timesteps[self.unet_rows])

    def noise_for(self, seed: int) -> torch.Tensor:
        return seeded_noise(self.noise.shape, seed).to(self.noise.device, self.noise.dtype)

    def set_scalars(self, config: StreamConfig) -> None:
        self.guidance.fill_(config.guidance_scale)
        self.delta.fill_(config.delta)
        self.smoothing.fill_(config.smoothing)

    def reset(self) -> None:
        """Empty the frames in flight and forget the feedback (a new prompt from scratch, a new source)."""
        for tensor in (self.latents, self.anchors, self.feedback, self.has_feedback):
            tensor.zero_()
        self.conditions_changed()

    def conditions_changed(self) -> None:
        """Features carried from earlier frames are stale from the next frame on."""
        self.features.invalidate()
        self.epoch += 1

    def snapshot(self) -> StreamSnapshot:
        return StreamSnapshot(self.latents.clone(), self.anchors.clone(), self.feedback.clone(),
                              self.has_feedback.clone(), self.features.state())

    def scratch(self) -> "StreamBatch":
        """A batch that shares everything read-only (noise, coefficients, guidance) but has its own frames in
        flight and feedback: throwaway runs on it (a background compile's warm-ups) leave this one alone."""
        twin = copy.copy(self)
        for name in ("latents", "anchors", "feedback", "has_feedback"):
            setattr(twin, name, getattr(self, name).clone())
        twin.features = self.features.copy()
        return twin

    def restore(self, snapshot: StreamSnapshot) -> None:
        self.latents.copy_(snapshot.latents)
        self.anchors.copy_(snapshot.anchors)
        self.feedback.copy_(snapshot.feedback)
        self.has_feedback.copy_(snapshot.has_feedback)
        self.features.restore(snapshot.features)

    # ----- the step -------------------------------------------------------------------------------

    def smooth(self, x_new: torch.Tensor) -> torch.Tensor:
        """Latent feedback: ``x_new + s * (last_output - x_new)``, s = smoothing once there is an output.

        With s = 0 the lerp returns ``x_new`` exactly, so smoothing off costs one tiny kernel and changes
        nothing; the weight is a tensor so that a captured graph follows the control.
        """
        return torch.lerp(x_new, self.feedback, self.smoothing * self.has_feedback)

    def step(self, x_new: torch.Tensor, predict_noise, txt2img: bool = False) -> torch.Tensor:
        """New frames' clean latents (fb) in, the fully denoised latents of the frames leaving (fb) out.

        ``predict_noise(x_in, timesteps)`` is one UNet call over ``x_in``: the rule's negative inputs
        (the first ``negative_count`` elements again) followed by the whole batch.
        """
        return self.finish(predict_noise(self.begin(x_new, txt2img), self.unet_timesteps))

    def begin(self, x_new: torch.Tensor, txt2img: bool = False) -> torch.Tensor:
        """The first half of ``step``: the UNet's input rows for this frame (kept for ``finish``). A pipeline
        that computes the noise elsewhere (on other GPUs, core.parallel) runs the halves apart."""
        fb, a, b = self.frame_buffer_size, self.alpha, self.beta
        if not txt2img:
            x_new = self.smooth(x_new)
        x_t_new = self.noise[:fb] if txt2img else schedule.add_noise(x_new, self.noise[:fb], a[:fb], b[:fb])
        x_t = torch.cat([x_t_new, self.latents])
        self._begun = (x_t, torch.cat([x_new, self.anchors]))
        k = self.negative_count
        # A slice and cat only: an index tensor built from a list would be a host copy inside a graph.
        return torch.cat([x_t[:k], x_t]) if k else x_t

    @property
    def pending(self) -> tuple | None:
        """What ``begin`` keeps for ``finish`` (this frame's noisy latents and anchors; None after ``finish``):
        a runner that captures the halves as separate graphs hands it from one to the other."""
        return self._begun

    @pending.setter
    def pending(self, begun: tuple | None) -> None:
        self._begun = begun

    def finish(self, eps: torch.Tensor) -> torch.Tensor:
        """The second half of ``step``: the UNet's noise for the rows ``begin`` gave in, the denoised latents of
        the frames leaving out; the frames in flight move one step on."""
        (x_t, anchors), self._begun = self._begun, None
        fb, a, b = self.frame_buffer_size, self.alpha, self.beta
        k, rule = self.negative_count, self.rule
        eps_negative, eps = eps[:k], eps[k:]
        if rule.unconditional == "none":
            guided = eps
        elif rule.unconditional == "negative_inputs":
            guided = schedule.guided_noise(eps, eps_negative, self.guidance)
        else:
            if rule.anchor_from_negative:
                # The negative prompt's x0 at the first step anchors the residual of this frame.
                negative_x0 = schedule.predict_x0(x_t[:k], eps_negative, a[:k], b[:k])
                anchors = torch.cat([negative_x0, self.anchors])
            eps_uncond = self.delta * schedule.residual_noise(x_t, anchors, a, b)
            guided = schedule.guided_noise(eps, eps_uncond, self.guidance)
        denoised = schedule.lcm_denoise(x_t, guided, a, b, self.c_skip, self.c_out)

        if x_t.shape[0] > fb:
            self.latents.copy_(schedule.add_noise(denoised[:-fb], self.noise[fb:], a[fb:], b[fb:]))
            self.anchors.copy_(anchors[:-fb])
        out = denoised[-fb:]
        self.feedback.copy_(out)
        self.has_feedback.fill_(1.0)
        return out
