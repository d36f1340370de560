"""The engine's live settings: what a user changes while frames flow (prompt, seed, strength, guidance, filter,
smoothing, feature reuse, transitions, output size, fit). Each setter validates in the caller's thread and
queues the change; ``StreamEngine.apply_pending`` applies them all between two frames."""

from __future__ import annotations

from core import schedule


class LiveSettings:
    """Mixed into ``StreamEngine``, which owns ``_lock``, ``_pending_config``, ``_pending_prompt`` and ``config``."""

    def update_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        with self._lock:
            current = self._pending_prompt or (self.prompt, self.negative_prompt)
            self._pending_prompt = (prompt, current[1] if negative_prompt is None else negative_prompt)

    def set_seed(self, seed: int) -> None:
        self._queue(seed=int(seed))

    def set_strength(self, strength: float) -> None:
        steps = self.config.denoising_steps
        self.set_t_index_list(schedule.strength_to_t_index_list(strength, steps, self.config.num_inference_steps))

    def set_t_index_list(self, t_index_list) -> None:
        if len(t_index_list) != self.config.denoising_steps:
            raise ValueError("a new step count needs a new engine (the stream batch changes shape)")
        self._queue(t_index_list=tuple(t_index_list))

    def set_guidance(self, guidance_scale: float | None = None, delta: float | None = None) -> None:
        self._queue(**_given(guidance_scale=guidance_scale, delta=delta))

    def set_similarity_filter(self, enabled: bool, threshold: float | None = None, max_skip_frames: int | None = None):
        self._queue(**_given(similarity_filter=bool(enabled), similarity_threshold=threshold,
                             max_skip_frames=max_skip_frames))

    def set_smoothing(self, smoothing: float) -> None:
        """Latent feedback, 0 (off) to 0.95: steadier frames on a still scene, slower to follow motion."""
        self._queue(smoothing=float(smoothing))

    def set_feature_reuse(self, enabled: bool, interval: int | None = None, depth: str | None = None) -> None:
        """Deep-feature reuse on or off (core.feature_reuse), how often every row refreshes (0: only after a
        change), and how deep the reused features start ("block" or "layer")."""
        self._queue(**_given(feature_reuse=bool(enabled), feature_reuse_interval=interval, feature_reuse_depth=depth))

    def set_transition_frames(self, frames: int) -> None:
        """Prompt and seed changes blend in over ``frames`` frames (0: at once)."""
        self._queue(transition_frames=int(frames))

    def set_output_size(self, width: int, height: int) -> None:
        """The size of the frames handed out (0, 0: the generated size); an accelerated engine captures a
        graph for the new size at the next frame, the model stays."""
        self._queue(output_width=int(width), output_height=int(height))

    def set_resize_mode(self, mode: str) -> None:
        """How the source fits the generated size and that the output size: "crop" or "letterbox"."""
        self._queue(resize_mode=mode)

    def _queue(self, **changes) -> None:
        """Validate now, in the caller's thread (a bad value raises here, not later in the GPU thread),
        then keep the change for the next frame. Changes queued before that frame add up."""
        with self._lock:
            merged = {**self._pending_config, **changes}
            self.config.replace(**merged)  # raises ConfigError naming the field
            self._pending_config = merged


def _given(**values) -> dict:
    """The arguments a caller actually passed (None means keep the current value)."""
    return {name: value for name, value in values.items() if value is not None}
