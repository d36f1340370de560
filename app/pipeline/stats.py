"""Rolling pipeline statistics over a short time window, cheap enough to update on every frame."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineStats:
    input_fps: float = 0.0
    output_fps: float = 0.0
    #: Capture to output (all outputs written, listeners called), over the recent window.
    latency_ms: float = 0.0
    latency_p95_ms: float = 0.0
    #: GPU time per processed frame as the engine reports it (0 when it does not).
    gpu_ms: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    #: Frames replaced in a slot before anyone took them (a slower stage downstream).
    dropped_frames: int = 0
    #: Frames the engine's similarity filter answered by re-emitting the last output.
    skipped_frames: int = 0
    #: Memory this process holds on the GPU (torch's reserved pool), None without CUDA.
    gpu_memory_mb: float | None = None

    def summary(self) -> str:
        text = (
            f"in {self.input_fps:.1f} fps, out {self.output_fps:.1f} fps, latency {self.latency_ms:.1f} ms "
            f"(p95 {self.latency_p95_ms:.1f}), GPU {self.gpu_ms:.1f} ms/frame, "
            f"{self.dropped_frames} dropped, {self.skipped_frames} skipped"
        )
        if self.gpu_memory_mb is not None:
            text += f", GPU memory {self.gpu_memory_mb:.0f} MB"
        return text


def percentile(values, fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def gpu_memory_mb() -> float | None:
    # Never import torch from here: a pipeline without an engine (tests, pass-through) must not pay for it,
    # and an uninitialised CUDA context must not be created just to read a statistic.
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.memory_reserved() / 2**20
    except Exception:
        return None
    return None


class StatsCollector:
    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._inputs: deque[float] = deque()
        self._outputs: deque[tuple[float, float, float]] = deque()  # (output time, latency, gpu ms)
        self.frames_in = 0
        self.frames_out = 0

    def reset(self) -> None:
        with self._lock:
            self._inputs.clear()
            self._outputs.clear()
            self.frames_in = self.frames_out = 0

    def _trim(self, now: float) -> None:
        # The last two events always stay, however old: a slow stream (a CPU engine at one frame every
        # few seconds) still has a rate and a latency instead of reading 0 while its frames show.
        horizon = now - self.window_s
        while len(self._inputs) > 2 and self._inputs[0] < horizon:
            self._inputs.popleft()
        while len(self._outputs) > 2 and self._outputs[0][0] < horizon:
            self._outputs.popleft()

    def record_input(self, when: float) -> None:
        with self._lock:
            self.frames_in += 1
            self._inputs.append(when)
            self._trim(when)

    def record_output(self, when: float, latency_s: float, gpu_ms: float) -> None:
        with self._lock:
            self.frames_out += 1
            self._outputs.append((when, latency_s, gpu_ms))
            self._trim(when)

    def snapshot(self, dropped: int, skipped: int, now: float | None = None) -> PipelineStats:
        now = time.perf_counter() if now is None else now
        with self._lock:
            self._trim(now)
            inputs = list(self._inputs)
            outputs = list(self._outputs)
            frames_in, frames_out = self.frames_in, self.frames_out
        latencies = [o[1] * 1000 for o in outputs]
        gpu = [o[2] for o in outputs if o[2]]
        return PipelineStats(
            input_fps=_rate(inputs, now),
            output_fps=_rate([o[0] for o in outputs], now),
            latency_ms=percentile(latencies, 0.5),
            latency_p95_ms=percentile(latencies, 0.95),
            gpu_ms=percentile(gpu, 0.5),
            frames_in=frames_in,
            frames_out=frames_out,
            dropped_frames=dropped,
            skipped_frames=skipped,
            gpu_memory_mb=gpu_memory_mb(),
        )


def _rate(times: list[float], now: float) -> float:
    if len(times) < 2:
        return 0.0
    span = max(times[-1] - times[0], 1e-6)
    # A stalled stream should read as slowing down, not as holding its last rate.
    if now - times[-1] > span / (len(times) - 1) * 2:
        span = now - times[0]
    return (len(times) - 1) / span
