"""The bench's camera-like input frames, and what it measures besides speed: how steady the output of a still, noisy scene is (smoothing), and what
deep-feature reuse skips and changes. Random weights show the mechanisms, not the look."""

from __future__ import annotations

import sys

import numpy as np
import torch

BENCH_PROMPT = "oil painting of a person in a room, cinematic light"
BENCH_NEGATIVE = "blurry, low quality"


def synthetic_frames(count: int, height: int, width: int, seed: int = 0, static: bool = False,
                     noise: float | None = None) -> list[np.ndarray]:
    """Smooth moving gradients with fresh Gaussian noise (``noise`` levels; 4, or 2 when ``static``) in every
    frame, like a camera: no two frames alike unless ``static``."""
    rng = np.random.default_rng(seed)
    sigma = (2 if static else 4) if noise is None else noise
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        phase = 0.0 if static else i * 0.15
        base = 127 + 100 * np.sin(xs / 37.0 + phase)[..., None] * np.cos(ys / 53.0 - phase)[..., None]
        frame = base + np.array([0, 40, -40], dtype=np.float32) + rng.normal(0, sigma, (height, width, 3))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def mean_frame_difference(frames) -> float:
    """Mean absolute difference between consecutive uint8 frames, in levels."""
    diffs = [np.abs(b.astype(np.int16) - a.astype(np.int16)).mean() for a, b in zip(frames, frames[1:])]
    return float(np.mean(diffs))


def steadiness(engine, frames, warmup: int, smoothings=(0.0, 0.5)) -> dict[str, float]:
    """The mean frame-to-frame difference of the input ``frames`` (a still, noisy scene) and, at each
    smoothing, of ``engine``'s uint8 output and of its denoised latents (the engine's own smoothing is put
    back afterwards). Random weights can decode to a nearly constant picture; the latents still show how
    much of the input's noise reaches the output."""
    result = {"input frames, levels": mean_frame_difference(frames[warmup:])}
    kept = engine.config.smoothing
    for smoothing in smoothings:
        engine.set_smoothing(smoothing)
        engine.prepare(BENCH_PROMPT, BENCH_NEGATIVE)
        outputs, latents = [], []
        for frame in frames:
            outputs.append(engine.process(frame))
            latents.append(engine.batch.feedback.to("cpu", torch.float32, copy=True))  # this frame's denoised latent
        result[f"output, smoothing {smoothing}, levels"] = mean_frame_difference(outputs[warmup:])
        steps = [(b - a).abs().mean().item() for a, b in zip(latents[warmup:], latents[warmup + 1:])]
        result[f"denoised latent, smoothing {smoothing}"] = float(np.mean(steps))
    engine.set_smoothing(kept)
    return result


def reuse_deviation(engine, frames, warmup: int, interval: int = 0, depth: str = "layer") -> dict[str, float]:
    """What deep-feature reuse skips and changes: the fraction of the UNet's FLOPs a reuse frame skips, and the
    mean absolute difference of the uint8 output from the whole computation on the same frames."""
    from core.roofline import feature_reuse_savings

    outputs = {}
    for reuse in (False, True):
        engine.set_feature_reuse(reuse, interval, depth)
        engine.prepare(BENCH_PROMPT, BENCH_NEGATIVE)
        outputs[reuse] = [engine.process(frame).astype(np.int16) for frame in frames]
    engine.set_feature_reuse(False)
    deviation = float(np.mean([np.abs(a - b).mean() for a, b in zip(outputs[False][warmup:], outputs[True][warmup:])]))
    return {"skipped UNet FLOP fraction": feature_reuse_savings(engine)["skipped_fraction"],
            "mean abs deviation, levels": deviation}


def print_steadiness(steady: dict, random_weights: bool, file=sys.stdout) -> None:
    print("\nsteadiness: still scene, fresh sensor noise (sigma 4) each frame, 1 step; mean absolute "
          "frame-to-frame difference of the uint8 frames (levels) and of the denoised latents"
          + (" (random weights: this shows the mechanism, not the look)" if random_weights else ""), file=file)
    for name, value in steady.items():
        print(f"| {name} | {value:.4g} |", file=file)
