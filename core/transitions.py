"""Changes that blend in over several frames instead of jumping in one: a new prompt's embeddings are
interpolated linearly, a new seed's noise spherically (a straight line between two Gaussian draws
passes through vectors of too small a norm: the midpoint of two independent draws has variance 1/2).

Each blend writes into the tensors the engine (or its captured graph) reads, once per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import torch


def angle_between(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> float:
    """The angle θ between two tensors taken as vectors (one device sync)."""
    a32, b32 = a.float().flatten(), b.float().flatten()
    cos = float((a32 @ b32) / (a32.norm() * b32.norm()).clamp_min(eps))
    return math.acos(max(-1.0, min(1.0, cos)))


def slerp_weights(theta: float, t: float, eps: float = 1e-6) -> tuple[float, float]:
    """(wa, wb) with ``slerp = wa * a + wb * b``: ``sin((1-t)θ)/sin θ`` and ``sin(tθ)/sin θ``; nearly
    parallel tensors (sin θ ~ 0) take the straight line."""
    if math.sin(theta) < eps:
        return 1.0 - t, t
    return math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two tensors (as vectors)."""
    wa, wb = slerp_weights(angle_between(a, b), t)
    return (a.float() * wa + b.float() * wb).to(a.dtype)


@dataclass
class Blend:
    """Takes ``targets`` (destination tensor -> its final value) there over ``frames`` frames."""

    targets: list[tuple[torch.Tensor, torch.Tensor]]
    frames: int
    spherical: bool = False
    done: int = 0
    starts: list[torch.Tensor] = field(default_factory=list)

    thetas: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = [destination.clone() for destination, _ in self.targets]
        if self.spherical:  # measured once, at the change; each frame is then two kernels, no sync
            self.thetas = [angle_between(start, target) for start, (_, target) in zip(self.starts, self.targets)]

    def advance(self) -> bool:
        """Write the next frame's values; True once the targets are reached (exactly, on the last frame)."""
        self.done += 1
        t = self.done / self.frames
        for i, ((destination, target), start) in enumerate(zip(self.targets, self.starts)):
            if self.done >= self.frames:
                destination.copy_(target)
            elif self.spherical:
                wa, wb = slerp_weights(self.thetas[i], t)
                torch.mul(start, wa, out=destination).add_(target, alpha=wb)
            else:
                torch.lerp(start, target.to(start.dtype), t, out=destination)
        return self.done >= self.frames


class Transitions:
    """The blends under way, by name ("prompt", "seed"); a new one of a name starts from where the old
    one had got to, so a change mid-transition stays smooth."""

    def __init__(self) -> None:
        self.active: dict[str, Blend] = {}

    def start(self, name: str, targets: list[tuple[torch.Tensor, torch.Tensor]], frames: int,
              spherical: bool = False) -> None:
        if frames <= 0:
            for destination, target in targets:
                destination.copy_(target)
            self.active.pop(name, None)
            return
        self.active[name] = Blend(targets, frames, spherical)

    def advance(self) -> None:
        for name in [name for name, blend in self.active.items() if blend.advance()]:
            del self.active[name]

    def clear(self) -> None:
        self.active.clear()
