"""Changes that blend in over several frames instead of jumping in one: a new prompt's embeddings are
interpolated linearly, a new seed's noise spherically (a straight line between two Gaussian draws
passes through vectors of too small a norm: the midpoint of two independent draws has variance 1/2).

Each blend writes into the tensors the engine (or its captured graph) reads, once per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation per sample (first dimension): ``sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b``.

    Nearly parallel samples fall back to the straight line, where the formula divides by ~0.
    """
    a32, b32 = a.float().flatten(1), b.float().flatten(1)
    cos = (a32 * b32).sum(1) / (a32.norm(dim=1) * b32.norm(dim=1)).clamp_min(eps)
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin.abs() < eps
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * theta) / safe)
    wb = torch.where(parallel, torch.full_like(sin, t), torch.sin(t * theta) / safe)
    shape = (-1,) + (1,) * (a.dim() - 1)
    return (wa.view(shape) * a.float() + wb.view(shape) * b.float()).to(a.dtype)


@dataclass
class Blend:
    """Takes ``targets`` (destination tensor -> its final value) there over ``frames`` frames."""

    targets: list[tuple[torch.Tensor, torch.Tensor]]
    frames: int
    spherical: bool = False
    done: int = 0
    starts: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = [destination.clone() for destination, _ in self.targets]

    def advance(self) -> bool:
        """Write the next frame's values; True once the targets are reached (exactly, on the last frame)."""
        self.done += 1
        t = self.done / self.frames
        for (destination, target), start in zip(self.targets, self.starts):
            if self.done >= self.frames:
                destination.copy_(target)
            elif self.spherical:
                destination.copy_(slerp(start, target, t))
            else:
                destination.copy_(torch.lerp(start.float(), target.float(), t))
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
