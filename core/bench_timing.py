"""The bench's timing and its table: per-call latencies, their summary and the markdown rows (core.bench)."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import torch


@dataclass
class BenchResult:
    name: str
    steps: int
    frames: int
    fps: float
    median_ms: float
    p95_ms: float
    peak_gpu_mib: float | None
    extra: dict = field(default_factory=dict)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def time_calls(fn, inputs, warmup: int, device) -> tuple[list[float], float]:
    """Per-call latency (ms) of ``fn`` over ``inputs`` after ``warmup`` calls, and the wall time."""
    for frame in inputs[:warmup]:
        fn(frame)
    _sync(device)
    latencies = []
    start = time.perf_counter()
    for frame in inputs[warmup:]:
        t0 = time.perf_counter()
        fn(frame)  # host numpy in, host numpy out: the call has synchronised when it returns
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return latencies, time.perf_counter() - start


def summarize(name, steps, latencies, wall, device, **extra) -> BenchResult:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return BenchResult(
        name, steps, len(latencies), len(latencies) / wall, statistics.median(latencies), p95, _peak_mib(device), extra
    )


def print_table(results: list[BenchResult], baselines: dict[int, BenchResult], file=sys.stdout) -> None:
    header = "| setting | fps | median ms | p95 ms | peak GPU MiB | x diffusers (full VAE) | x diffusers (tiny VAE) |"
    print(header, file=file)
    print("| --- | --- | --- | --- | --- | --- | --- |", file=file)
    for r in results:
        full = baselines.get((r.steps, False))
        tiny = baselines.get((r.steps, True))
        speedup_full = f"{r.fps / full.fps:.2f}" if full and not r.name.startswith("diffusers") else ""
        speedup_tiny = f"{r.fps / tiny.fps:.2f}" if tiny and not r.name.startswith("diffusers") else ""
        peak = f"{r.peak_gpu_mib:.0f}" if r.peak_gpu_mib is not None else "-"
        print(f"| {r.name} | {r.fps:.1f} | {r.median_ms:.2f} | {r.p95_ms:.2f} | {peak} | {speedup_full} | "
              f"{speedup_tiny} |", file=file)


def time_overlapped(engine, frames, warmup: int) -> tuple[list[float], float]:
    """Frames through OverlappedRunner; a frame's latency runs from its submit to its output."""
    from core.accel.overlap import OverlappedRunner

    runner = OverlappedRunner(engine)
    for frame in frames[:warmup]:
        runner.submit(frame)
    runner.flush()
    starts, latencies = [], []
    start = time.perf_counter()
    for frame in frames[warmup:]:
        starts.append(time.perf_counter())
        if runner.submit(frame) is not None and len(starts) > 1:
            latencies.append((time.perf_counter() - starts[-2]) * 1000.0)
    runner.flush()
    latencies.append((time.perf_counter() - starts[-1]) * 1000.0)
    return latencies, time.perf_counter() - start
