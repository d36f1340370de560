"""``bench --gpus 1,2,4``: the same setting on one GPU and spread over several (core.parallel), host uint8 to
host uint8. Frame-parallel engines are timed through ``submit`` (frames in flight on every GPU; a frame's
latency runs from its submit to its output), AsyncDiff engines like any engine; their rows carry the split
and each device's share of a frame replayed alone (the balance)."""

from __future__ import annotations

import sys
import time

from core.bench_timing import print_table, summarize, time_calls, time_overlapped
from core.parallel import parallel_mode


def time_submitted(engine, frames, warmup: int) -> tuple[list[float], float]:
    for frame in frames[:warmup]:
        engine.submit(frame)
    engine.flush()
    submitted, latencies = {}, []

    def collect(outputs):
        now = time.perf_counter()
        latencies.extend((now - submitted.pop(out.tag)) * 1000.0 for out in outputs)

    start = time.perf_counter()
    for i, frame in enumerate(frames[warmup:]):
        submitted[i] = time.perf_counter()
        collect(engine.submit(frame, tag=i))
    collect(engine.flush())
    return latencies, time.perf_counter() - start


def bench_parallel_engine(components, config, frames, warmup: int, overlap: bool = False):
    """One row: ``config`` (gpus > 1) built over its GPUs and timed; ``overlap``: an AsyncDiff engine's host
    copies overlapped with its frames (core.accel.overlap, one frame more latency), as ``bench --overlap``."""
    from core.stream import StreamEngine

    started = time.perf_counter()
    engine = StreamEngine.from_config(config, components=components)
    engine.prepare("a portrait, oil painting", "blurry")
    engine.process(frames[0])
    first_frame_s = time.perf_counter() - started
    extra = {}
    if hasattr(engine, "submit"):
        latencies, wall = time_submitted(engine, frames, warmup)
    elif overlap and engine.device.type == "cuda":
        latencies, wall = time_overlapped(engine, frames, warmup)
        extra["overlapped"] = True
    else:
        latencies, wall = time_calls(engine.process, frames, warmup, config.resolved_device())
        parts = engine.accelerated.frame_runner.part_times_ms(_device_frame(engine, frames[0]))
        extra["parts_ms"] = {name: round(ms, 2) for name, ms in parts.items()}
    name = _name(engine, config) + (", overlapped" if extra.get("overlapped") else "")
    result = summarize(name, config.denoising_steps, latencies, wall, config.resolved_device(),
                       cfg_type=config.cfg_type, acceleration=engine.acceleration, parallel=engine.parallel,
                       first_frame_s=round(first_frame_s, 2), **extra)
    engine.close()
    return result


def _name(engine, config) -> str:
    mode = "frame-parallel" if hasattr(engine, "submit") else "asyncdiff"
    return (f"ours {config.denoising_steps} step, cfg {config.cfg_type}, {engine.acceleration}, {mode} on "
            f"{config.gpus} GPUs")


def _device_frame(engine, frame):
    from core import imageops

    frames = imageops.as_uint8_tensor(frame)
    return (frames if frames.ndim == 4 else frames[None]).to(engine.device)


def parallel_rows(components, config, gpu_counts, mode: str, frames, warmup: int, results: list,
                  overlap: bool = False, split_at: tuple[int, ...] = ()) -> None:
    """A row per GPU count above one (the one-GPU row is the setting's own); with ``overlap``, AsyncDiff
    engines get a second row with overlapped host copies; ``split_at`` is used for the count it fits."""
    for count in gpu_counts:
        for overlapped in ((False, True) if overlap else (False,)):
            cuts = split_at if len(split_at) == count - 1 else ()
            wanted = config.replace(gpus=count, parallel=mode, split_at=cuts)
            cuda = wanted.resolved_device().startswith("cuda")
            if count < 2 or (overlapped and (parallel_mode(wanted) == "frames" or not cuda)):
                continue
            results.append(bench_parallel_engine(components, wanted, frames, warmup, overlap=overlapped))
            print_table(results[-1:], {}, file=sys.stderr)
            for name, ms in results[-1].extra.get("parts_ms", {}).items():
                print(f"  {name}: {ms} ms", file=sys.stderr)
