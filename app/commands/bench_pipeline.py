"""``python main.py bench-pipeline``: what the frame pipeline itself costs, with an identity engine.

Latency here is capture timestamp to "all outputs written", so with an engine that returns its input
it is exactly the pipeline's own overhead (thread hand-overs, bookkeeping, the output loop). Frames come
from a pool made up front, so the source's cost is not counted either.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from app.outputs import Output
from app.pipeline import OutputFrame, Pipeline, PipelineConfig
from app.pipeline.stats import percentile
from app.sources.base import Source, Pacer


class IdentityEngine:
    """Returns its input: the pipeline's overhead is all that remains to measure."""

    last_frame_skipped = False
    skipped_frames = 0
    last_gpu_ms = 0.0

    def process(self, frame: np.ndarray) -> np.ndarray:
        return frame


class PoolSource(Source):
    """Cycles through pre-made frames at a fixed rate (or as fast as asked), ``count`` frames in all."""

    def __init__(self, pool: list[np.ndarray], count: int, fps: float | None):
        self.pool, self.count = pool, count
        self.live = bool(fps)
        self.name = f"pool at {fps:g} fps" if fps else "pool, unpaced"
        self._pacer = Pacer(fps)
        self._served = 0

    def read(self) -> np.ndarray | None:
        if self._served >= self.count:
            return None
        self._pacer.wait()
        frame = self.pool[self._served % len(self.pool)]
        self._served += 1
        return frame


class NullOutput(Output):
    name = "null"

    def write(self, image: np.ndarray, timestamp: float | None = None) -> None:
        pass


@dataclass
class BenchRow:
    setting: str
    frames_in: int
    frames_out: int
    dropped: int
    output_fps: float
    latency_median_ms: float
    latency_p95_ms: float
    latency_max_ms: float


def make_pool(width: int, height: int, size: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(size)]


def measure(pool, frames: int, fps: float | None, lossless: bool) -> BenchRow:
    delivered: list[OutputFrame] = []
    errors: list[str] = []
    pipe = Pipeline(IdentityEngine(), PoolSource(pool, frames, fps), PipelineConfig(lossless=lossless),
                    on_frame=delivered.append, on_error=lambda message, exc: errors.append(message))
    pipe.add_output(NullOutput())
    pipe.start()
    finished = pipe.wait(timeout=frames / (fps or 1000) + 60)
    pipe.stop()
    if errors or not finished:
        raise RuntimeError(errors[0] if errors else "the pipeline did not finish")
    stats = pipe.stats()
    latencies = [f.latency_ms for f in delivered]
    span = delivered[-1].output_time - delivered[0].output_time if len(delivered) > 1 else 0.0
    mode = "lossless" if lossless else "lossy"
    return BenchRow(
        setting=f"source {fps:g} fps, {mode}" if fps else f"source unpaced, {mode}",
        frames_in=stats.frames_in,
        frames_out=len(delivered),
        dropped=stats.dropped_frames,
        output_fps=(len(delivered) - 1) / span if span > 0 else 0.0,
        latency_median_ms=statistics.median(latencies),
        latency_p95_ms=percentile(latencies, 0.95),
        latency_max_ms=max(latencies),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="main.py bench-pipeline", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--frames", type=int, default=1200, help="frames per setting (default: %(default)s)")
    parser.add_argument("--fps", default="30,60,240", help="paced source rates to try, comma-separated (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    pool = make_pool(args.width, args.height)
    settings = [(float(f), False) for f in args.fps.split(",") if f] + [(None, False), (None, True)]
    rows = []
    print(f"pipeline with an identity engine, {args.width}x{args.height} RGB frames, {args.frames} frames per setting",
          file=sys.stderr)
    for fps, lossless in settings:
        # Paced runs are capped at ~10 s so a low rate does not make the benchmark crawl.
        count = min(args.frames, int(fps * 10)) if fps else args.frames
        rows.append(measure(pool, count, fps, lossless))
        time.sleep(0.2)  # let the previous run's threads and memory settle before the next one
    print("| setting | in | out | dropped | out fps | latency median ms | p95 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r.setting} | {r.frames_in} | {r.frames_out} | {r.dropped} | {r.output_fps:.1f} | "
              f"{r.latency_median_ms:.3f} | {r.latency_p95_ms:.3f} | {r.latency_max_ms:.3f} |")
    paced = [r for r, (fps, _) in zip(rows, settings) if fps]
    worst = max(paced, key=lambda r: r.latency_p95_ms) if paced else None
    best_rate = max(r.output_fps for r in rows if "lossless" in r.setting)
    if worst is not None:
        print(f"\nlatency added by the pipeline: median {worst.latency_median_ms:.2f} ms, p95 {worst.latency_p95_ms:.2f} ms "
              f"(worst paced setting: {worst.setting}); max sustained rate (lossless, every frame): {best_rate:.0f} fps")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)
    return 0
