"""The settings an engine takes between frames, kept apart from any engine so that a newly loaded one (or a
server's new session) gets them too."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import StreamConfig


@dataclass
class LiveParams:
    """Settings an engine takes between frames, applied to each new engine by ``apply_to``."""

    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 0.5
    seed: int = StreamConfig.seed
    guidance: float = StreamConfig.guidance_scale
    delta: float = StreamConfig.delta
    similarity_filter: bool = False
    similarity_threshold: float = StreamConfig.similarity_threshold
    output_width: int = 0  # 0 x 0: the generated size
    output_height: int = 0
    smoothing: float = StreamConfig.smoothing
    feature_reuse: bool = StreamConfig.feature_reuse
    transition_frames: int = StreamConfig.transition_frames
    resize_mode: str = StreamConfig.resize_mode

    def apply_to(self, engine) -> None:
        engine.set_strength(self.strength)
        engine.set_seed(self.seed)
        engine.set_guidance(guidance_scale=self.guidance, delta=self.delta)
        engine.set_similarity_filter(self.similarity_filter, threshold=self.similarity_threshold)
        engine.set_output_size(self.output_width, self.output_height)
        engine.set_smoothing(self.smoothing)
        engine.set_feature_reuse(self.feature_reuse)
        engine.set_transition_frames(self.transition_frames)
        engine.set_resize_mode(self.resize_mode)
