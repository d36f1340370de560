"""Benchmark: our engine against diffusers' own img2img pipeline, host uint8 frames in and out.

``python main.py bench`` builds the chosen architecture (random weights for ``preset:``; speed only,
never image quality), pushes N frames through each setting and prints a table of fps, median and p95
latency, peak GPU memory and the speed-up over diffusers' img2img at the same number of UNet steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from core.bench_timing import (BenchResult, print_table, reset_peak_memory, summarize, time_calls,
                               time_overlapped)
from core.cli_options import parse_index_list
from core.config import StreamConfig
from core.logs import configure_logging
from core.schedule import strength_to_t_index_list
from core.bench_probes import (BENCH_NEGATIVE, BENCH_PROMPT, print_steadiness, reuse_deviation, steadiness,
                               synthetic_frames)
from core.sizes import parse_size

log = logging.getLogger(__name__)


def build_engine(components, config: StreamConfig, progress=None):
    """An engine with the config's acceleration installed (compiling happens at its first frame)."""
    from core.stream import StreamEngine

    engine = StreamEngine(components, config)
    if config.acceleration != "none":
        from core.accel import accelerate

        accelerate(engine, progress)
    return engine


def bench_engine(
    components, config: StreamConfig, frames, warmup, name=None, progress=None, overlap=False, roofline=False,
    change_every: int = 0, engine=None,
) -> BenchResult:
    """Times ``engine`` (built from ``config`` when None) on ``frames``. A given engine is first set to the
    config's live settings (output size, fit, smoothing, transitions), so one compiled model serves every
    row of a setting; ``first_frame_s`` then counts only the new graph's capture.

    ``change_every`` > 0: a new prompt and seed every that many frames, so a transition is always under way
    when ``config.transition_frames`` is as long."""
    reset_peak_memory(config.resolved_device())
    extra = {}
    started = time.perf_counter()
    if engine is None:
        engine = build_engine(components, config, progress)
    else:
        engine.set_output_size(config.output_width, config.output_height)
        engine.set_resize_mode(config.resize_mode)
        engine.set_smoothing(config.smoothing)
        engine.set_transition_frames(config.transition_frames)
        engine.set_feature_reuse(config.feature_reuse, config.feature_reuse_interval, config.feature_reuse_depth)
    engine.prepare(BENCH_PROMPT, BENCH_NEGATIVE)
    engine.process(frames[0])
    first_frame_s = time.perf_counter() - started
    if roofline:
        from core.roofline import engine_unet_flops

        extra["unet_gflop_per_frame"] = round(engine_unet_flops(engine) / 1e9, 1)
    if overlap and engine.device.type == "cuda":
        latencies, wall = time_overlapped(engine, frames, warmup)
    else:
        latencies, wall = time_calls(_with_changes(engine, change_every), frames, warmup, config.resolved_device())
    label = name or f"ours {config.denoising_steps} step, cfg {config.cfg_type}, {engine.acceleration}" + (
        ", overlapped" if overlap else "") + _variant(config, frames[0], change_every)
    result = summarize(
        label,
        config.denoising_steps,
        latencies,
        wall,
        config.resolved_device(),
        cfg_type=config.cfg_type,
        acceleration=engine.acceleration,
        tiny_vae=config.use_tiny_vae,
        skipped=engine.skipped_frames,
        first_frame_s=round(first_frame_s, 2),
        **extra,
    )
    if "unet_gflop_per_frame" in extra:
        result.extra["achieved_tflops"] = round(extra["unet_gflop_per_frame"] / result.median_ms, 1)
    return result


def _with_changes(engine, every: int):
    if every <= 0:
        return engine.process
    prompts = (BENCH_PROMPT, "anime portrait, soft colours")
    count = 0

    def process(frame):
        nonlocal count
        count += 1
        if count % every == 0:
            engine.update_prompt(prompts[(count // every) % 2])
            engine.set_seed(count)
        return engine.process(frame)

    return process


def _variant(config: StreamConfig, frame, change_every: int) -> str:
    """What a row does beyond the plain setting: input and output sizes, smoothing, transitions."""
    parts = []
    in_h, in_w = frame.shape[-3:-1]
    if (in_h, in_w) != (config.height, config.width) or config.output_width:
        out_h, out_w = config.output_size
        parts.append(f"{in_w}x{in_h} -> {config.width}x{config.height} -> {out_w}x{out_h}")
    if config.smoothing:
        parts.append(f"smoothing {config.smoothing}")
    if config.feature_reuse:
        parts.append(f"feature reuse ({config.feature_reuse_depth})" + (f" every {config.feature_reuse_interval}" if config.feature_reuse_interval
                                        else ""))
    if change_every:
        parts.append(f"prompt+seed change every {change_every} frames, {config.transition_frames}-frame transitions")
    return "".join(", " + part for part in parts)


def bench_diffusers(components, config: StreamConfig, steps: int, tiny_vae: bool, frames, warmup) -> BenchResult:
    """diffusers' own img2img pipeline with the same weights, PIL in and out as its users call it."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    device = config.resolved_device()
    pipe = components.pipe
    parts = dict(pipe.components)
    if tiny_vae:
        parts["vae"] = components.tiny_vae
    cls = StableDiffusionXLImg2ImgPipeline if components.family == "sdxl" else StableDiffusionImg2ImgPipeline
    parts = {k: v for k, v in parts.items() if k in cls._get_signature_keys(cls)[0] or k in cls._optional_components}
    img2img = cls(**parts)
    img2img.set_progress_bar_config(disable=True)
    generator = torch.Generator(device).manual_seed(0)
    prompt = BENCH_PROMPT
    # strength 0.5 of 2k inference steps runs exactly k UNet steps.

    def call(frame):
        image = Image.fromarray(frame)
        out = img2img(prompt, image=image, num_inference_steps=2 * steps, strength=0.5, guidance_scale=0.0,
                      generator=generator, output_type="pil").images[0]
        return np.asarray(out)

    reset_peak_memory(device)
    latencies, wall = time_calls(call, frames, warmup, device)
    name = f"diffusers img2img {steps} step, {'tiny VAE' if tiny_vae else 'full VAE'}"
    return summarize(name, steps, latencies, wall, device, tiny_vae=tiny_vae)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="main.py bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preset:sd-turbo", help="hub id, folder, .safetensors or preset:NAME")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--settings", default="1:none,2:none,4:self",
                        help="comma-separated STEPS:CFG_TYPE pairs to time (default: 1:none,2:none,4:self)")
    parser.add_argument("--input-size", metavar="WxH", help="size of the source frames (default: the generated size)")
    parser.add_argument("--output-size", metavar="WxH[,WxH...]",
                        help="size(s) of the frames handed out, a row each (default: the generated size)")
    parser.add_argument("--smoothing", type=float, default=0.0, help="also time with this latent-feedback smoothing")
    parser.add_argument("--transition", type=int, default=0, metavar="N",
                        help="also time with a prompt and seed change every N frames, each blended over N frames")
    parser.add_argument("--frame-buffer", type=int, default=1)
    parser.add_argument("--acceleration", default="compile", choices=("none", "compile", "tensorrt"))
    parser.add_argument("--no-tiny-vae", action="store_true", help="use the full VAE in our engine")
    parser.add_argument("--roofline", action="store_true", help="count UNet FLOPs and measure the matmul peak")
    parser.add_argument("--overlap", action="store_true", help="also time overlapped copies (one frame of latency)")
    parser.add_argument("--frames", type=int, default=100, help="timed frames per setting")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--diffusers", default="full,tiny", help="diffusers baselines to run: full,tiny or none")
    parser.add_argument("--similarity", action="store_true", help="also time the similarity filter on a static scene")
    parser.add_argument("--steadiness", action="store_true",
                        help="also measure the output's frame-to-frame change on a still scene with sensor noise "
                             "(sigma 4), smoothing 0 and 0.5 (or --smoothing), on the first 1-step setting")
    parser.add_argument("--feature-reuse", action="store_true",
                        help="also time each setting with deep-feature reuse, and report the FLOPs it skips and how "
                             "far its output moves from the whole computation")
    parser.add_argument("--feature-reuse-depth", default="layer", metavar="layer,block",
                        help="with --feature-reuse: the reuse depths to time, a row each")
    parser.add_argument("--feature-reuse-interval", type=int, default=0, metavar="N",
                        help="with --feature-reuse: refresh every row every N frames (0: only after a change)")
    parser.add_argument("--startup", action="store_true",
                        help="time the start instead: process start to model ready, first stylized frame and "
                             "full speed (quick start while compiling), then a steps change; run twice with "
                             "one cache folder for the warm start")
    parser.add_argument("--switch-steps", type=int, default=2, metavar="N",
                        help="with --startup: the step count of the steps change (0: none)")
    parser.add_argument("--no-quick-start", action="store_true",
                        help="with --startup: build the compiled engine before the first frame, as before")
    parser.add_argument("--gpus", default="1", metavar="N[,N...]",
                        help="also time each setting spread over N GPUs (core.parallel), a row per count")
    parser.add_argument("--parallel", default="auto", choices=("auto", "frames", "asyncdiff"), help="with --gpus")
    parser.add_argument("--split-at", default="", metavar="I[,J...]",
                        help="with --gpus: AsyncDiff's cuts for the GPU count they fit (others balance by FLOPs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tiny-vae-model", default=None, metavar="FOLDER_OR_HUB_ID",
                        help="which tiny VAE (default: TAESD or TAESDXL, matching the model)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    handler = configure_logging(logging.INFO)
    from core.models import load_components

    settings = [(int(s.split(":")[0]), s.split(":")[1]) for s in args.settings.split(",") if s]
    base = StreamConfig(
        model=args.model, width=args.width, height=args.height, frame_buffer_size=args.frame_buffer,
        acceleration=args.acceleration, use_tiny_vae=True, device=args.device, dtype=args.dtype,
        tiny_vae=args.tiny_vae_model,
    )
    output_sizes = [parse_size(size) for size in args.output_size.split(",")] if args.output_size else [(0, 0)]
    in_w, in_h = parse_size(args.input_size) if args.input_size else (args.width, args.height)
    if args.startup:
        from core.startup_bench import main_from_bench_args, stamp_log_lines

        stamp_log_lines(handler)
        return main_from_bench_args(args, base, settings, output_sizes[0], (in_w, in_h))
    components = load_components(base, progress=lambda msg: print(msg, file=sys.stderr))
    single_frames = synthetic_frames(args.frames + args.warmup, in_h, in_w)
    frames = single_frames
    if args.frame_buffer > 1:
        frames = [np.stack(single_frames[i : i + args.frame_buffer]) for i in range(0, len(single_frames), args.frame_buffer)]
    results, baselines = [], {}
    steady = None
    reuse: dict[str, dict] = {}
    for steps, cfg_type in settings:
        config = base.replace(
            t_index_list=strength_to_t_index_list(0.5, steps), cfg_type=cfg_type, use_tiny_vae=not args.no_tiny_vae,
        )
        engine = build_engine(components, config)  # one compile per setting, shared by its rows

        def timed(config, **options):
            results.append(bench_engine(components, config, frames, args.warmup, engine=engine, **options))
            print_table(results[-1:], {}, file=sys.stderr)

        for out_w, out_h in output_sizes:
            sized = config.replace(output_width=out_w, output_height=out_h)
            timed(sized, roofline=args.roofline)
            if args.overlap and args.frame_buffer == 1:
                timed(sized, overlap=True)
            if args.smoothing:
                timed(sized.replace(smoothing=args.smoothing))
            for depth in args.feature_reuse_depth.split(",") if args.feature_reuse else ():
                timed(sized.replace(feature_reuse=True, feature_reuse_interval=args.feature_reuse_interval,
                                    feature_reuse_depth=depth))
            if args.transition:  # the same changes at once and blended: the difference is the transitions' cost
                for frames_each in (0, args.transition):
                    timed(sized.replace(transition_frames=frames_each), change_every=args.transition)
        if args.steadiness and steady is None and steps == 1 and args.frame_buffer == 1:
            out_w, out_h = output_sizes[0]
            engine.set_output_size(out_w, out_h)
            noisy = synthetic_frames(args.frames + args.warmup, in_h, in_w, static=True, noise=4.0)
            steady = steadiness(engine, noisy, args.warmup, (0.0, args.smoothing or 0.5))
        for depth in args.feature_reuse_depth.split(",") if args.feature_reuse and steps > 1 else ():
            reuse[f"{steps} steps, cfg {cfg_type}, depth {depth}"] = reuse_deviation(
                engine, frames[: min(len(frames), 60)], min(args.warmup, 10), args.feature_reuse_interval, depth)
        engine.close()
        del engine
        from core.bench_parallel import parallel_rows

        parallel_rows(components, config, [int(n) for n in args.gpus.split(",")], args.parallel, frames,
                      args.warmup, results, overlap=args.overlap, split_at=parse_index_list(args.split_at))
    if args.similarity:
        static = synthetic_frames(args.frames + args.warmup, args.height, args.width, static=True)
        config = base.replace(t_index_list=(32,), similarity_filter=True, similarity_threshold=0.98)
        results.append(bench_engine(components, config, static, args.warmup, name="ours 1 step, filter on, static scene"))
        config = config.replace(similarity_filter=False)
        results.append(bench_engine(components, config, static, args.warmup, name="ours 1 step, filter off, static scene"))
    if args.steadiness and steady is None:
        print("steadiness is measured on a 1-step setting with one frame per call; --settings has none",
              file=sys.stderr)
    diffusers_runs = [] if args.diffusers == "none" else args.diffusers.split(",")
    model_sized = single_frames  # diffusers' pipeline runs at the size of the image it gets
    if diffusers_runs and (in_w, in_h) != (args.width, args.height):
        model_sized = synthetic_frames(args.frames + args.warmup, args.height, args.width)
    for steps in sorted({s for s, _ in settings}):
        for kind in diffusers_runs:
            if kind == "tiny" and components.tiny_vae is None:
                continue
            result = bench_diffusers(components, base, steps, kind == "tiny", model_sized, args.warmup)
            baselines[(steps, kind == "tiny")] = result
            results.append(result)
            print_table(results[-1:], {}, file=sys.stderr)
    device = torch.device(base.resolved_device())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nmodel {args.model} (random weights: speed only)" if args.model.startswith("preset:") else f"\nmodel {args.model}")
    print(f"device {gpu}, torch {torch.__version__}, generated {args.width}x{args.height}, input {in_w}x{in_h}, "
          f"{args.frames} frames after {args.warmup} warm-up")
    print_table(results, baselines)
    if args.roofline and device.type == "cuda":
        from core.roofline import matmul_peak_tflops

        peaks = {name: matmul_peak_tflops(device, getattr(torch, name)) for name in ("float16", "bfloat16")}
        print("\nmatmul peak (8192^3, random data): " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in peaks.items()))
        for r in results:
            if "achieved_tflops" in r.extra:
                print(f"{r.name}: UNet {r.extra['unet_gflop_per_frame']} GFLOP/frame, {r.extra['achieved_tflops']} TFLOP/s achieved over the whole frame")
    if steady is not None:
        print_steadiness(steady, args.model.startswith("preset:"))
    for name, figures in reuse.items():
        print(f"\nfeature reuse, {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
              + (" (random weights: the mechanism, not the look)" if args.model.startswith("preset:") else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": gpu, "torch": torch.__version__, "results": [asdict(r) for r in results],
                       "steadiness": steady, "feature_reuse": reuse}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
