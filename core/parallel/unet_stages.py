"""The UNet as a chain of stages, for AsyncDiff-style model parallelism (core.parallel.asyncdiff).

The UNet's outermost pieces, in order, are its *units*: ``in`` (conv_in), each down block, the middle block,
each up block and ``out`` (norm, activation, conv_out). A unit maps a hand-off, the hidden state followed by
the stack of skip features still to be consumed, to the next hand-off. A stage is a run of consecutive
units on one device; it computes the time and text embeddings itself (a few small layers), so that only the
hand-off crosses between devices. The chain of all stages is diffusers' ``UNet2DConditionModel.forward``
for what the presets use (a test holds it equal).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch

from core.feature_reuse import attend, unet_embeddings, up_block_layers


@dataclass(frozen=True)
class Unit:
    kind: str  # "in", "down", "mid", "up" or "out"
    index: int = 0  # the block's index for "down" and "up"
    layer: int = 0  # the layer (resnet and its attention) within that block

    def __str__(self) -> str:
        return f"{self.kind}{self.index}.{self.layer}" if self.kind in ("down", "up") else self.kind


def unet_units(unet) -> list[Unit]:
    """Layer by layer: a cut may fall inside a block, where the time is (the full-resolution blocks)."""
    units = [Unit("in")]
    units += [Unit("down", i, l) for i, block in enumerate(unet.down_blocks) for l in range(len(block.resnets))]
    if unet.mid_block is not None:
        units.append(Unit("mid"))
    units += [Unit("up", i, l) for i, block in enumerate(unet.up_blocks) for l in range(len(block.resnets))]
    return units + [Unit("out")]


def describe_units(run, units) -> str:
    """``in+down0+down1.0`` for a ``run`` of ``units`` (all of the UNet's): whole blocks by name, part of a block by
    its layers."""
    sizes: dict[tuple, int] = {}
    for unit in units:
        sizes[unit.kind, unit.index] = sizes.get((unit.kind, unit.index), 0) + 1
    names, i = [], 0
    while i < len(run):
        unit = run[i]
        j = i + 1
        if unit.kind in ("down", "up"):
            while j < len(run) and (run[j].kind, run[j].index) == (unit.kind, unit.index):
                j += 1
        if unit.kind in ("down", "up") and j - i < sizes[unit.kind, unit.index]:
            first, last = run[i].layer, run[j - 1].layer
            names.append(f"{unit.kind}{unit.index}.{first}" + (f"-{last}" if last != first else ""))
        else:
            names.append(f"{unit.kind}{unit.index}" if unit.kind in ("down", "up") else str(unit))
        i = j
    return "+".join(names)


def run_unit(unet, unit: Unit, hidden, res: tuple, emb, encoder_hidden_states, needs_size: bool):
    """One unit: (hidden, skip stack) in, (hidden, skip stack) out; diffusers' block forwards re-stated per
    layer (what the presets use: no adapters, no FreeU)."""
    if unit.kind == "in":
        if unet.config.center_input_sample:
            hidden = 2 * hidden - 1.0
        hidden = unet.conv_in(hidden)
        return hidden, (hidden,)
    if unit.kind == "down":
        block = unet.down_blocks[unit.index]
        hidden = attend(block, unit.layer, block.resnets[unit.layer](hidden, emb), encoder_hidden_states)
        res = res + (hidden,)
        if unit.layer == len(block.resnets) - 1 and block.downsamplers is not None:
            for downsampler in block.downsamplers:
                hidden = downsampler(hidden)
            res = res + (hidden,)
        return hidden, res
    if unit.kind == "mid":
        if getattr(unet.mid_block, "has_cross_attention", False):
            return unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states), res
        return unet.mid_block(hidden, emb), res
    if unit.kind == "up":
        block = unet.up_blocks[unit.index]
        hidden, res = up_block_layers(block, hidden, emb, res, encoder_hidden_states, [unit.layer])
        if unit.layer == len(block.resnets) - 1 and block.upsamplers is not None:
            last = unit.index == len(unet.up_blocks) - 1
            size = res[-1].shape[2:] if needs_size and not last else None
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, size)
        return hidden, res
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden), ()


class UNetStage:
    """Consecutive units of ``unet`` (the copy on this stage's device): ``stage(handoff, timestep,
    encoder_hidden_states, added_cond_kwargs)`` takes the hand-off tuple (the latents alone for the first
    stage) and returns the next one (the noise alone after the last)."""

    def __init__(self, unet, units: list[Unit], latent_hw: tuple[int, int]):
        self.unet, self.units = unet, list(units)
        self.all_units = unet_units(unet)
        factor = 2 ** unet.num_upsamplers
        self.needs_size = any(dim % factor for dim in latent_hw)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def __call__(self, handoff: tuple, timestep, encoder_hidden_states, added_cond_kwargs=None) -> tuple:
        hidden, res = handoff[0], tuple(handoff[1:])
        emb, encoder_hidden_states = unet_embeddings(self.unet, hidden, timestep, encoder_hidden_states,
                                                     added_cond_kwargs)
        for unit in self.units:
            hidden, res = run_unit(self.unet, unit, hidden, res, emb, encoder_hidden_states, self.needs_size)
        return (hidden, *res)

    def __str__(self) -> str:
        return describe_units(self.units, self.all_units)


def unit_modules(unet, unit: Unit) -> list[torch.nn.Module]:
    """The modules ``run_unit`` calls for ``unit``."""
    if unit.kind == "in":
        return [unet.conv_in]
    if unit.kind == "mid":
        return [unet.mid_block]
    if unit.kind == "out":
        return [m for m in (unet.conv_norm_out, unet.conv_act, unet.conv_out) if m is not None]
    block = (unet.down_blocks if unit.kind == "down" else unet.up_blocks)[unit.index]
    modules = [block.resnets[unit.layer]]
    if getattr(block, "attentions", None) is not None:
        modules.append(block.attentions[unit.layer])
    samplers = block.downsamplers if unit.kind == "down" else block.upsamplers
    if unit.layer == len(block.resnets) - 1 and samplers is not None:
        modules.append(samplers)
    return modules


def stage_copy(unet, units: list[Unit]):
    """A copy of ``unet`` that holds only what ``units`` run (the embedding layers too): every other unit's
    modules become ``Identity`` placeholders, never copied, so another GPU gets its share of the weights only."""
    keep = {id(module) for unit in units for module in unit_modules(unet, unit)}
    memo = {id(module): torch.nn.Identity() for unit in unet_units(unet) for module in unit_modules(unet, unit)
            if id(module) not in keep}
    return copy.deepcopy(unet, memo)


def split_units(units: list, starts: tuple[int, ...]) -> list[list]:
    """``units`` cut before each index in ``starts`` (the first unit of every stage after the first)."""
    bounds = [0, *starts, len(units)]
    return [units[a:b] for a, b in zip(bounds, bounds[1:])]


def balanced_starts(costs: list[float], parts: int, first_extra: float = 0.0) -> tuple[int, ...]:
    """Where to cut ``costs`` (one per unit) into ``parts`` runs so that the largest run costs least; the first
    run also carries ``first_extra`` (the work the first device does besides its stage: VAE, step math)."""
    if not 1 <= parts <= len(costs):
        raise ValueError(f"cannot split {len(costs)} UNet units into {parts} stages")
    best, best_cost = None, float("inf")
    for starts in itertools.combinations(range(1, len(costs)), parts - 1):
        runs = [sum(run) for run in split_units(costs, starts)]
        runs[0] += first_extra
        if max(runs) < best_cost:
            best, best_cost = starts, max(runs)
    return tuple(best)


@torch.no_grad()
def unit_flops(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs=None) -> list[float]:
    """Floating-point operations per unit for one call on these inputs (torch's own counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    stage = UNetStage(unet, [], tuple(sample.shape[-2:]))
    emb, ehs = unet_embeddings(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
    hidden, res, costs = sample, (), []
    for unit in unet_units(unet):
        counter = FlopCounterMode(display=False)
        with counter:
            hidden, res = run_unit(unet, unit, hidden, res, emb, ehs, stage.needs_size)
        costs.append(float(counter.get_total_flops()))
    return costs
