"""Where a batched tick of the engine server spends its time, without the network: N engines on one model, each
frame run alone (their own compiled graphs) against core.multi_stream.process_together: the shared eager UNet,
the same tick replayed from one CUDA graph (core.accel.tick_graph, the server's with LIVEDIFFUSION_TICK_GRAPHS=1),
and that graph with the
UNet compiled for the tick's batch; then the parts of an eager shared tick (fronts, the UNet call, backs), timed
with CUDA syncs. Host frames in and out in every row.

    python -m tools.multi_stream_probe --streams 4,8 --frames 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.config import StreamConfig
from core.accel.tick_graph import TickGraphs
from core.multi_stream import concat_conditioning, process_together
from core.stream import StreamEngine


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, frames: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(frames):
        fn()
    sync()
    return (time.perf_counter() - start) * 1000.0 / frames


def probe(args, streams: int) -> list[str]:
    size = 64 if args.model == "preset:tiny" else 512
    config = StreamConfig(model=args.model, width=size, height=size, t_index_list=(32,), acceleration=args.acceleration,
                          quick_start=False)
    first = StreamEngine.from_config(config)
    engines = [first] + [StreamEngine.from_config(config, components=first.components) for _ in range(streams - 1)]
    for i, engine in enumerate(engines):
        engine.prepare(f"style {i}", "blurry")
    frames = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(streams)]
    for engine, frame in zip(engines, frames):
        engine.process(frame)
    graphs = TickGraphs()
    rows = {"each alone (own graphs)": lambda: [e.process(f) for e, f in zip(engines, frames)],
            "shared tick, eager": lambda: process_together(engines, frames),
            "shared tick, one CUDA graph (eager UNet)": lambda: process_together(engines, frames, graphs=graphs)}
    if args.acceleration == "compile":
        compiled = torch.compile(first.unet, fullgraph=True, dynamic=False)
        compiled_graphs = TickGraphs()
        rows["shared tick, one CUDA graph (UNet compiled for the batch)"] = lambda: process_together(
            engines, frames, graphs=compiled_graphs, unet=compiled)
    lines = []
    for name, fn in rows.items():
        started = time.perf_counter()
        fn()  # the first tick captures (and compiles)
        first_s = time.perf_counter() - started
        ms = timed(fn, args.frames)
        lines.append(f"| {streams} | {name} | {ms:.2f} | {1000.0 / ms * streams:.1f} | {first_s:.1f} |")
    batches = [torch.from_numpy(f)[None].to(first.device) for f in frames]
    with torch.no_grad():
        inputs = [e.frame_front(b) for e, b in zip(engines, batches)]
        hidden, added = concat_conditioning(engines)
        timesteps = torch.cat([e.batch.unet_timesteps for e in engines])
        x = torch.cat(inputs)
        noise = first.unet(x, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
        parts = noise.split([len(i) for i in inputs])

        def front_and_back():
            for engine, batch, part in zip(engines, batches, parts):
                engine.frame_front(batch)
                engine.frame_back(part)

        ends = timed(front_and_back, args.frames)
        unet = timed(lambda: first.unet(x, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added,
                                        return_dict=False), args.frames)
    lines.append(f"| {streams} | eager tick's fronts and backs / its eager UNet (batch {len(x)}) | {ends:.2f} / "
                 f"{unet:.2f} | | |")
    for engine in engines:
        engine.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="preset:sd-turbo")
    parser.add_argument("--acceleration", default="compile")
    parser.add_argument("--streams", default="4", help="stream counts, comma-separated")
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    lines = []
    for streams in [int(n) for n in args.streams.split(",")]:
        lines += probe(args, streams)
        print("\n".join(lines[-5:]), flush=True)
    print(f"\n{args.model}, {args.acceleration}, one frame per stream per tick, host frames in and out")
    print("| streams | how | ms per tick | frames/s (all streams) | first tick s |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
