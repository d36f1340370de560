"""What the GPU could do: the UNet's FLOPs per frame and the measured matrix-multiply peak."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def engine_unet_flops(engine) -> int:
    """FLOPs of one UNet call of the engine's stream batch, counted by torch's flop counter."""
    x_in = torch.randn((engine.unet_batch_size, *engine.latent_shape), device=engine.device, dtype=engine.dtype)
    accelerated = engine.accelerated
    engine.restore_eager("unet")  # count the eager graph
    try:
        with FlopCounterMode(display=False) as counter:
            engine.predict_noise(x_in, engine.batch.unet_timesteps)
    finally:
        engine.install(unet=accelerated.unet)
    return counter.get_total_flops()


@torch.no_grad()
def matmul_peak_tflops(device, dtype=torch.float16, size: int = 8192, repeats: int = 20) -> float:
    """Dense matrix-product rate on random data (never zeros: they run faster than real data)."""
    a = torch.randn((size, size), device=device, dtype=dtype)
    b = torch.randn((size, size), device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e12


@torch.no_grad()
def feature_reuse_savings(engine) -> dict:
    """FLOPs of one UNet row, whole and shallow (core.feature_reuse), and the fraction of a frame's UNet FLOPs
    that a reuse frame skips: the rows past their first step times the deep path's share."""
    from core.feature_reuse import FeatureCache, unet_split_forward

    cond = engine.conditioning
    x = torch.randn((1, *engine.latent_shape), device=engine.device, dtype=engine.dtype)
    args = (x, engine.batch.unet_timesteps[:1], cond.encoder_hidden_states[:1],
            {name: value[:1] for name, value in cond.added_cond_kwargs.items()} if cond.added_cond_kwargs else None)
    depth = engine.config.feature_reuse_depth
    with FlopCounterMode(display=False) as whole:
        _, deep = unet_split_forward(engine.unet, *args, depth=depth)
    with FlopCounterMode(display=False) as shallow:
        unet_split_forward(engine.unet, *args, deep=deep, depth=depth)
    rows = engine.unet_batch_size
    cache = FeatureCache(engine.batch.negative_count, engine.config.batch_size, engine.config.frame_buffer_size)
    shallow_rows = cache.full_and_shallow(torch.empty(rows))[1].numel()
    full_row, shallow_row = whole.get_total_flops(), shallow.get_total_flops()
    return {"row_gflop": full_row / 1e9, "shallow_row_gflop": shallow_row / 1e9,
            "skipped_fraction": shallow_rows * (full_row - shallow_row) / (rows * full_row)}
