"""Several streams, one UNet call: the engine server's sessions on one GPU (issue 12).

Each stream is its own ``StreamEngine`` (its own stream batch, noise, prompt, similarity filter and settings) on
one shared model. Per tick, every stream that has a frame runs its part before the UNet (``frame_front``), the
UNet runs once over all their rows (each row with its own timestep and prompt), and each stream runs its part
after (``frame_back``) on its own slice of the noise. A UNet row depends only on its own inputs, so each stream's
output equals what its engine alone would give, to float tolerance (batched kernels may sum in another order).

Streams can share a call when they share the UNet, the latent size, dtype and device. A stream whose similarity
filter skips the frame keeps its last output and is left out; one reusing deep features, or whose frame runner
runs its own UNet (AsyncDiff), runs alone. The shared call uses the eager UNet; on a GPU, ``graphs``
(core.accel.tick_graph) replays each member's front and back and the UNet over the tick's rows from CUDA graphs
(with the UNet compiled for that row count once built), captured once per session and per row count.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from core import imageops
from core.accel.capture_guard import CAPTURE_GUARD, CaptureBusy, empty_cache

log = logging.getLogger(__name__)


def share_key(engine) -> tuple | None:
    """What must match for two engines' rows to share one UNet call; None: this engine runs alone this frame."""
    if engine.reuse_refresh is not None or getattr(engine.accelerated.frame_runner, "runs_its_own_unet", False):
        return None
    return id(engine.unet), engine.latent_shape, engine.dtype, engine.device


def concat_conditioning(engines) -> tuple[torch.Tensor, dict | None]:
    conds = [engine.conditioning for engine in engines]
    hidden = torch.cat([c.encoder_hidden_states for c in conds])
    if conds[0].added_cond_kwargs is None:
        return hidden, None
    return hidden, {key: torch.cat([c.added_cond_kwargs[key] for c in conds]) for key in conds[0].added_cond_kwargs}


@torch.no_grad()
def run_shared(engines, frames_u8: list[torch.Tensor]) -> list[torch.Tensor]:
    """The frames (device uint8, one batch per engine) of engines with one ``share_key``, through one call of
    their eager UNet; each engine's output (device uint8)."""
    inputs = [engine.frame_front(frames) for engine, frames in zip(engines, frames_u8)]
    hidden, added = concat_conditioning(engines)
    timesteps = torch.cat([engine.batch.unet_timesteps for engine in engines])
    noise = engines[0].unet(torch.cat(inputs), timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added,
                 return_dict=False)[0]
    return [engine.frame_back(part) for engine, part in zip(engines, noise.split([len(x) for x in inputs]))]


def _run_group(group, batches, graphs) -> list[torch.Tensor]:
    if graphs is None or graphs.disabled or not graphs.supports(group[0].device):
        return run_shared(group, batches)
    try:
        return graphs.run(group, batches)
    except CaptureBusy:  # another thread builds or loads: no capture beside it; this tick runs eagerly
        with CAPTURE_GUARD.work(short=True):
            return run_shared(group, batches)
    except torch.OutOfMemoryError as exc:  # a graph's own memory pool; eager may still fit (else it raises)
        empty_cache()
        graphs.disabled = f"out of GPU memory while capturing ({exc})"
        log.warning("capturing a shared tick ran out of GPU memory; shared ticks run eagerly from now on")
        return run_shared(group, batches)
    except Exception as exc:  # noqa: BLE001 - the eager tick gives the same frames, only slower
        graphs.disabled = f"{type(exc).__name__}: {exc}"
        log.warning("capturing a shared tick failed (%s); shared ticks run eagerly from now on", graphs.disabled)
        return run_shared(group, batches)


@torch.no_grad()
def process_together(engines, frames: list[np.ndarray], graphs=None) -> list[np.ndarray]:
    """One host uint8 frame (HxWx3) per engine in, each engine's output frame out, as ``engine.process`` would
    give it; the engines that can share a UNet call share one, replayed from ``graphs`` (a
    ``core.accel.tick_graph.TickGraphs``) on a GPU."""
    for engine in engines:  # before any engine's state moves
        if engine.closed or engine.conditioning is None or engine.config.frame_buffer_size != 1:
            raise RuntimeError("every engine must be open, prepared, and take one frame per call")
    outputs: list = [None] * len(engines)
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, (engine, frame) in enumerate(zip(engines, frames)):
        batch = imageops.as_uint8_tensor(frame).to(engine.device)  # 1xHxWx3
        if engine.begin_step(batch):
            outputs[i] = engine.last_output
            continue
        key = share_key(engine)
        groups.setdefault(key if key is not None else ("alone", i), []).append((i, batch))
    for members in groups.values():
        # The same sessions in any order of arrival are one group (one tick graph), not one per order.
        members.sort(key=lambda member: id(engines[member[0]]))
        group = [engines[i] for i, _ in members]
        if len(members) == 1:
            results = [group[0].run_frame_step(members[0][1])]
        else:
            results = _run_group(group, [batch for _, batch in members], graphs)
        for (i, _), engine, result in zip(members, group, results):
            outputs[i] = engine.end_step(result.clone())  # an accelerator's output buffer is reused next frame
    return [output[0].cpu().numpy() for output in outputs]
