"""Several streams, one UNet call: the engine server's sessions on one GPU (issue 12).

Each stream is its own ``StreamEngine`` (its own stream batch, noise, prompt, similarity filter and settings) on
one shared model. Per tick, every stream that has a frame runs its part before the UNet (``frame_front``), the
UNet runs once over all their rows (each row with its own timestep and prompt), and each stream runs its part
after (``frame_back``) on its own slice of the noise. A UNet row depends only on its own inputs, so each stream's
output equals what its engine alone would give, to float tolerance (batched kernels may sum in another order).

Streams can share a call when they share the UNet, the latent size, dtype and device. A stream whose similarity
filter skips the frame keeps its last output and is left out; one reusing deep features, or whose frame runner
runs its own UNet (AsyncDiff), runs alone. The shared call uses the eager UNet: a compiled or captured one is
built for one batch size, and a session coming or going would mean a new build mid-stream.
"""

from __future__ import annotations

import numpy as np
import torch

from core import imageops


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
    """The frames (device uint8, one batch per engine) of engines with one ``share_key``, through one UNet call;
    each engine's output (device uint8)."""
    inputs = [engine.frame_front(frames) for engine, frames in zip(engines, frames_u8)]
    hidden, added = concat_conditioning(engines)
    timesteps = torch.cat([engine.batch.unet_timesteps for engine in engines])
    noise = engines[0].unet(torch.cat(inputs), timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added,
                            return_dict=False)[0]
    return [engine.frame_back(part) for engine, part in zip(engines, noise.split([len(x) for x in inputs]))]


@torch.no_grad()
def process_together(engines, frames: list[np.ndarray]) -> list[np.ndarray]:
    """One host uint8 frame (HxWx3) per engine in, each engine's output frame out, as ``engine.process`` would
    give it; the engines that can share a UNet call share one."""
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
        group = [engines[i] for i, _ in members]
        if len(members) == 1:
            results = [group[0].run_frame_step(members[0][1])]
        else:
            results = run_shared(group, [batch for _, batch in members])
        for (i, _), engine, result in zip(members, group, results):
            outputs[i] = engine.end_step(result.clone())  # an accelerator's output buffer is reused next frame
    return [output[0].cpu().numpy() for output in outputs]
