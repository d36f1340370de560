"""Where a batched tick of the engine server spends its time, without the network: N engines on one model, each
frame run alone (their own compiled graphs) against core.multi_stream.process_together (the shared eager UNet),
and the parts of a shared tick (fronts, the UNet call, backs) timed with CUDA syncs.

    python -m tools.multi_stream_probe --streams 4 --frames 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.config import StreamConfig
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="preset:sd-turbo")
    parser.add_argument("--acceleration", default="compile")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    size = 64 if args.model == "preset:tiny" else 512
    config = StreamConfig(model=args.model, width=size, height=size, t_index_list=(32,), acceleration=args.acceleration,
                          quick_start=False)
    first = StreamEngine.from_config(config)
    engines = [first] + [StreamEngine.from_config(config, components=first.components) for _ in range(args.streams - 1)]
    for i, engine in enumerate(engines):
        engine.prepare(f"style {i}", "blurry")
    frames = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(args.streams)]
    for engine, frame in zip(engines, frames):
        engine.process(frame)
    process_together(engines, frames)
    alone = timed(lambda: [e.process(f) for e, f in zip(engines, frames)], args.frames)
    together = timed(lambda: process_together(engines, frames), args.frames)
    batches = [torch.from_numpy(f)[None].to(first.device) for f in frames]
    with torch.no_grad():
        inputs = [e.frame_front(b) for e, b in zip(engines, batches)]
        hidden, added = concat_conditioning(engines)
        timesteps = torch.cat([e.batch.unet_timesteps for e in engines])
        x = torch.cat(inputs)
        noise = first.unet(x, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
        parts = noise.split([len(i) for i in inputs])
        for engine, part in zip(engines, parts):
            engine.frame_back(part)

        def front_and_back():
            for engine, batch, part in zip(engines, batches, parts):
                engine.frame_front(batch)
                engine.frame_back(part)

        ends = timed(front_and_back, args.frames)
        unet = timed(lambda: first.unet(x, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added,
                                        return_dict=False), args.frames)
    print(f"{args.streams} streams, {args.acceleration}, ms per tick of one frame each:")
    print(f"| each alone (own graphs) | shared tick | its fronts and backs | its eager UNet (batch {len(x)}) |")
    print("| --- | --- | --- | --- |")
    print(f"| {alone:.2f} | {together:.2f} | {ends:.2f} | {unet:.2f} |")

if __name__ == "__main__":
    main()
