"""Where a batched tick of the engine server spends its time, without the network: N engines on one model, each
frame run alone (their own compiled graphs) against core.multi_stream.process_together: the shared eager UNet,
and the tick from graphs of parts (core.accel.tick_graph: each session's front and back, the UNet per row count)
with the eager UNet, with the UNet compiled for the row count, compiled once for any row count, built in a process
of its own and stored (core.accel.tick_store; the first tick's time includes that build), and with the group
changing at every tick (all streams, then all but one in turn, as frames arrive in the server); then the parts of an eager shared tick
(fronts, the UNet call, backs), timed with CUDA syncs. Host frames in and out in every row.

    python -m tools.multi_stream_probe --streams 4,8 --frames 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.config import StreamConfig
from core.accel.tick_graph import TickGraphs, stored_unets
from core.accel.tick_unets import TickUNets
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
    eager_unet = TickGraphs(unets_for=None)
    rows = {"each alone (own graphs)": lambda: [e.process(f) for e, f in zip(engines, frames)],
            "shared tick, eager": lambda: process_together(engines, frames),
            "shared tick, graphs of parts, eager UNet": lambda: process_together(engines, frames, graphs=eager_unet)}
    groups = [list(range(streams))] + [[j for j in range(streams) if j != i] for i in range(streams)]
    turn = iter(range(10 ** 9))

    def changing(graphs):
        members = groups[next(turn) % len(groups)]
        return process_together([engines[j] for j in members], [frames[j] for j in members], graphs=graphs)

    builds = {}  # name -> TickGraphs whose UNet builds are awaited before timing
    wanted = args.builds.split(",") if args.acceleration == "compile" else []
    if "rows" in wanted:
        builds["per rows"] = TickGraphs(unets_for=lambda engine: TickUNets(engine.unet))
        rows["shared tick, graphs of parts, UNet compiled for the rows"] = lambda: process_together(
            engines, frames, graphs=builds["per rows"])
    if "dynamic" in wanted:
        builds["dynamic"] = TickGraphs(unets_for=lambda engine: TickUNets(engine.unet, dynamic_batch=True))
        rows["shared tick, graphs of parts, UNet compiled once for any rows (dynamic)"] = lambda: process_together(
            engines, frames, graphs=builds["dynamic"])
    if "stored" in wanted:
        builds["stored"] = TickGraphs(unets_for=stored_unets)
        rows["shared tick, graphs of parts, UNet built in its own process and stored"] = lambda: process_together(
            engines, frames, graphs=builds["stored"])
    changing_graphs = builds.get("stored", builds.get("dynamic", eager_unet))
    rows["the same, group changing every tick (all, then all but one)"] = lambda: changing(changing_graphs)
    lines = []
    for name, fn in rows.items():
        ticks = len(groups) if "changing" in name else 1
        started = time.perf_counter()
        for _ in range(ticks):
            fn()  # the first ticks capture (and start the UNet builds)
        if "graphs" in name or "changing" in name:
            for graphs in builds.values():
                for unets in graphs.unets.values():
                    unets.wait(args.compile_wait_s)  # a compiled UNet is used from the tick after its build
            for _ in range(ticks):
                fn()
        first_s = time.perf_counter() - started
        ms = timed(fn, args.frames)
        each = streams * streams / (streams + 1) if "changing" in name else streams
        lines.append(f"| {streams} | {name} | {ms:.2f} | {1000.0 / ms * each:.1f} | {first_s:.1f} |")
        print(lines[-1], flush=True)  # a call cut short keeps what it measured
    for name, graphs in [("eager UNet", eager_unet), *builds.items()]:
        lines.append(f"| {streams} | captures ({name}): {graphs.session_captures} sessions' fronts and backs, "
                     f"{graphs.unet_captures} UNets | | | |")
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
    parser.add_argument("--builds", default="rows,dynamic,stored",
                        help="compiled tick UNets to time: rows (one per row count), dynamic, stored (comma-separated)")
    parser.add_argument("--compile-wait-s", type=float, default=300.0, help="the longest wait for a UNet build")
    args = parser.parse_args()
    lines = []
    for streams in [int(n) for n in args.streams.split(",")]:
        lines += probe(args, streams)
    print(f"\n{args.model}, {args.acceleration}, one frame per stream per tick, host frames in and out")
    print("| streams | how | ms per tick | frames/s (all streams) | first tick s |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
