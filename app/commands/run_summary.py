"""The end-of-run summary of ``run``, gathered in bounded memory while frames are delivered."""

from __future__ import annotations

import random
import statistics

from app.pipeline import OutputFrame, Pipeline


class RunSummary:
    """What the end-of-run summary needs from the delivered frames, in bounded memory: a run may last
    for hours, so no frame is kept, only counts, the first and last output times, and a fixed-size
    uniform sample of the latencies and engine times (reservoir sampling), whose median and p95 stand
    for the whole run."""

    SAMPLE_SIZE = 4096

    def __init__(self) -> None:
        self.count = 0
        self.first_output: float | None = None
        self.last_output: float | None = None
        self.latencies_ms: list[float] = []
        self.engine_ms: list[float] = []
        self._engine_count = 0
        self._random = random.Random(0)

    def add(self, frame: OutputFrame) -> None:
        """The pipeline's on_frame listener (its postprocess thread; read only after the run)."""
        self.count += 1
        if self.first_output is None:
            self.first_output = frame.output_time
        self.last_output = frame.output_time
        self._sample(self.latencies_ms, frame.latency_ms, self.count)
        if frame.processed and frame.gpu_ms:
            self._engine_count += 1
            self._sample(self.engine_ms, frame.gpu_ms, self._engine_count)

    def _sample(self, values: list[float], value: float, seen: int) -> None:
        if len(values) < self.SAMPLE_SIZE:
            values.append(value)
            return
        slot = self._random.randrange(seen)  # keeps each of the ``seen`` values with equal chance
        if slot < self.SAMPLE_SIZE:
            values[slot] = value

    @property
    def output_fps(self) -> float:
        span = (self.last_output or 0.0) - (self.first_output or 0.0)
        return (self.count - 1) / span if self.count > 1 and span > 0 else 0.0


def summary_text(delivered: RunSummary, elapsed: float, pipe: Pipeline) -> str:
    stats = pipe.stats()
    lines = [f"frames: {stats.frames_in} in, {stats.frames_out} out, {stats.dropped_frames} dropped, "
             f"{stats.skipped_frames} skipped by the similarity filter"]
    if delivered.count:
        latencies = sorted(delivered.latencies_ms)
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
        lines.append(f"output: {delivered.output_fps:.1f} fps over {elapsed:.1f} s; latency capture to output median "
                     f"{statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms")
        if delivered.engine_ms:
            lines.append(f"engine: {statistics.median(delivered.engine_ms):.1f} ms per frame (median)")
    if stats.gpu_memory_mb is not None:
        lines.append(f"GPU memory held: {stats.gpu_memory_mb:.0f} MB")
    return "\n".join(lines)
