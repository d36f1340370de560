"""Engine options shared by the headless commands (``run``, ``bench``): one argparse definition, one
translation into a validated StreamConfig. Lives in core so that core/bench.py can use it without
importing the desktop app."""

from __future__ import annotations

import argparse
import math

from core.sizes import QUALITIES, generation_size
from core.config import (
    ACCELERATIONS,
    CFG_TYPES,
    DEFAULT_MODEL,
    DTYPES,
    MODES,
    PARALLEL_MODES,
    RESIZE_MODES,
    ConfigError,
    LoraSpec,
    StreamConfig,
)

_DEFAULTS = StreamConfig()


def positive_float(text: str) -> float:
    """argparse type: a finite number above zero (float() alone also accepts nan, inf and negatives)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


class TextOption(argparse.Action):
    """Stores a text option, refusing text that cannot be encoded: on Linux a non-UTF-8 byte in argv
    arrives as a lone surrogate, which would otherwise fail much later inside the tokenizer."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            values.encode("utf-8")
        except UnicodeEncodeError:
            parser.error(f"{option_string} contains bytes that are not UTF-8 text; "
                         "retype it, or set the terminal's encoding to UTF-8")
        setattr(namespace, self.dest, values)


def add_engine_arguments(parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL) -> None:
    """Add the engine options (model, size, steps, guidance, filter, acceleration, prompts) to ``parser``."""
    d = _DEFAULTS
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=default_model,
                   help="hub id, local diffusers folder, .safetensors file or preset:NAME (default: %(default)s)")
    g.add_argument("--mode", choices=MODES, default=d.mode, help="default: %(default)s")
    g.add_argument("--tiny-vae", action=argparse.BooleanOptionalAction, default=d.use_tiny_vae,
                   help="use TAESD instead of the full VAE (much faster; default: on)")
    g.add_argument("--tiny-vae-model", default=None, metavar="FOLDER_OR_HUB_ID",
                   help="which tiny VAE (default: TAESD or TAESDXL, matching the model)")
    g.add_argument("--lora", action="append", default=[], metavar="SPEC[:SCALE]",
                   help="fuse a LoRA (hub id, folder or .safetensors), optionally with a scale; repeatable")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow loading .ckpt / .bin pickle files (they can run code: only for files you trust)")
    g.add_argument("--cache-dir", default=None, help="model cache folder (default: the Hugging Face cache)")
    g.add_argument("--model-config", default=None, metavar="FOLDER_OR_HUB_ID",
                   help="diffusers config for a single-file model whose architecture is not recognised")

    g = parser.add_argument_group("generation")
    g.add_argument("--prompt", default="", action=TextOption, help="what the output should look like")
    g.add_argument("--negative-prompt", default="", action=TextOption,
                   help="what to steer away from (cfg types full / initialize / self)")
    g.add_argument("--width", type=int, default=None,
                   help="generated width, multiple of 8 (default: from the source's shape and --quality)")
    g.add_argument("--height", type=int, default=None,
                   help="generated height, multiple of 8 (default: from the source's shape and --quality)")
    g.add_argument("--quality", choices=QUALITIES, default=None,
                   help="pick the generated size from the source's shape: fast (16:9 640x360), balanced "
                        "(768x432) or high (1024x576); default: balanced unless --width/--height are given")
    g.add_argument("--steps", type=int, default=None, choices=(1, 2, 3, 4),
                   help="denoising steps per frame (default: 1, or the length of --t-index-list)")
    g.add_argument("--strength", type=float, default=None,
                   help="0..1, how much the input changes (sets the schedule indices; exclusive with --t-index-list)")
    g.add_argument("--t-index-list", default=None, metavar="I,J,...",
                   help=f"schedule indices, one per step, increasing (default: {','.join(map(str, d.t_index_list))})")
    g.add_argument("--num-inference-steps", type=int, default=d.num_inference_steps,
                   help="length of the schedule the indices point into (default: %(default)s)")
    g.add_argument("--cfg-type", choices=CFG_TYPES, default=d.cfg_type, help="guidance variant (default: %(default)s)")
    g.add_argument("--guidance", type=float, default=d.guidance_scale, help="guidance scale (default: %(default)s)")
    g.add_argument("--delta", type=float, default=d.delta, help="residual-noise weight for RCFG (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="noise seed (default: %(default)s)")
    g.add_argument("--frame-buffer", type=int, default=d.frame_buffer_size,
                   help="frames per engine call: more throughput, more latency (default: %(default)s)")
    g.add_argument("--resize", choices=RESIZE_MODES, default=d.resize_mode,
                   help="fit the input to the generated size, and that to the output size, by centre crop or "
                        "letterbox (default: %(default)s)")
    g.add_argument("--output-size", type=_output_size, default=(d.output_width, d.output_height), metavar="WxH",
                   help="size of the frames handed out (preview, file, virtual camera), upscaled on the GPU, "
                        "e.g. 1280x720 (default: the generated size)")
    g.add_argument("--smoothing", type=float, default=d.smoothing,
                   help="0 to 0.95: blend the last output into the next input for steadier frames (default: off)")
    g.add_argument("--transition", type=float, default=None, metavar="SECONDS",
                   help="prompt and seed changes blend in over this time (default: at once)")

    g = parser.add_argument_group("similarity filter")
    g.add_argument("--similarity-filter", action="store_true", help="skip frames nearly identical to the last one")
    g.add_argument("--similarity-threshold", type=float, default=d.similarity_threshold, help="default: %(default)s")
    g.add_argument("--max-skip", type=int, default=d.max_skip_frames,
                   help="never skip more frames than this in a row (default: %(default)s)")

    g = parser.add_argument_group("device")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    g.add_argument("--dtype", choices=("auto",) + DTYPES, default=d.dtype, help="default: auto (float16 on GPU)")
    g.add_argument("--acceleration", choices=ACCELERATIONS, default=d.acceleration,
                   help="none, compile (torch.compile / CUDA graphs) or tensorrt (default: %(default)s)")
    g.add_argument("--feature-reuse", action=argparse.BooleanOptionalAction, default=d.feature_reuse,
                   help="steps past the first run the UNet's shallow path on the deep features their frame made at "
                        "its first step (DeepCache in the stream batch; eager engine only so far; default: off)")
    g.add_argument("--feature-reuse-interval", type=int, default=d.feature_reuse_interval, metavar="N",
                   help="with --feature-reuse: refresh every row's deep features every N frames (0: only after a "
                        "change; default: %(default)s)")
    g.add_argument("--feature-reuse-depth", choices=("block", "layer"), default=d.feature_reuse_depth,
                   help="with --feature-reuse: keep only the last up layer fresh (layer: skips most) or the "
                        "full-resolution blocks (block: moves the picture less; default: %(default)s)")
    g.add_argument("--gpus", type=int, default=d.gpus, metavar="N",
                   help="spread the work over N GPUs of this machine (default: %(default)s)")
    g.add_argument("--parallel", choices=PARALLEL_MODES, default=d.parallel,
                   help="with --gpus: frames (one engine per GPU, frames dealt in turn), asyncdiff (the UNet's "
                        "stages on the GPUs side by side) or auto (frames at 1 step, asyncdiff at more)")
    g.add_argument("--split-at", type=parse_index_list, default=d.split_at, metavar="I,J,...",
                   help="with asyncdiff: the first UNet unit of each stage after the first (default: balanced by "
                        "FLOPs; `doctor` lists the units)")
    g.add_argument("--quick-start", action=argparse.BooleanOptionalAction, default=d.quick_start,
                   help="compile: frames within seconds on a CUDA graph of the eager kernels while the compiled "
                        "engine builds in the background, swapped in between two frames (default: on)")


def parse_lora(spec: str) -> LoraSpec:
    """``SPEC[:SCALE]``; the scale is split off only when it parses as a number, so Windows drive
    letters and hub ids survive."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return LoraSpec(head, float(tail))
        except ValueError:
            pass
    return LoraSpec(spec)


def parse_index_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ConfigError("t_index_list", f"give comma-separated integers such as 32,45; got {text!r}") from None


def generated_size(args: argparse.Namespace, source_size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) to generate at: --width/--height as given (one alone keeps the default other side),
    else picked from the source's shape and --quality (balanced by default); without a known source
    shape, the default square."""
    if args.width is not None or args.height is not None:
        if args.quality is not None:
            raise ConfigError("quality", "give --quality or --width/--height, not both")
        return args.width or _DEFAULTS.width, args.height or _DEFAULTS.height
    if source_size is None:
        return _DEFAULTS.width, _DEFAULTS.height
    return generation_size(*source_size, args.quality or "balanced")


def transition_frames(seconds: float | None, fps: float | None) -> int:
    """--transition SECONDS as a frame count at the source's rate (30 fps when it is unknown)."""
    if seconds is None:
        return _DEFAULTS.transition_frames
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError("transition", f"must be 0 or more seconds, got {seconds}")
    return round(seconds * (fps if fps and fps > 0 else 30.0))


def config_from_args(args: argparse.Namespace, source_size: tuple[int, int] | None = None,
                     source_fps: float | None = None) -> StreamConfig:
    """A validated StreamConfig from parsed engine options and, where known, the source's (width,
    height) and frame rate. Raises ConfigError naming the bad option."""
    nis = args.num_inference_steps
    width, height = generated_size(args, source_size)
    if args.t_index_list is not None and args.strength is not None:
        raise ConfigError("t_index_list", "give either --t-index-list or --strength, not both")
    if args.t_index_list is not None:
        t_index_list = parse_index_list(args.t_index_list)
        if args.steps is not None and args.steps != len(t_index_list):
            raise ConfigError("steps", f"--steps {args.steps} does not match the {len(t_index_list)} indices given")
    elif args.strength is not None or args.steps is not None:
        from core.schedule import strength_to_t_index_list, t_index_list_to_strength

        # Only --steps given: keep the default config's first index, so adding steps refines the same look.
        strength = args.strength
        if strength is None:
            strength = t_index_list_to_strength(_DEFAULTS.t_index_list, _DEFAULTS.num_inference_steps)
        if not 0.0 <= strength <= 1.0:
            raise ConfigError("strength", f"must be a number from 0 to 1, got {strength}")
        t_index_list = strength_to_t_index_list(strength, args.steps or 1, nis)
    else:
        t_index_list = _DEFAULTS.t_index_list
    return StreamConfig(
        model=args.model,
        mode=args.mode,
        width=width,
        height=height,
        t_index_list=t_index_list,
        num_inference_steps=nis,
        frame_buffer_size=args.frame_buffer,
        cfg_type=args.cfg_type,
        guidance_scale=args.guidance,
        delta=args.delta,
        seed=args.seed,
        use_tiny_vae=args.tiny_vae,
        tiny_vae=args.tiny_vae_model,
        loras=tuple(parse_lora(spec) for spec in args.lora),
        similarity_filter=args.similarity_filter,
        similarity_threshold=args.similarity_threshold,
        max_skip_frames=args.max_skip,
        device=args.device,
        dtype=args.dtype,
        acceleration=args.acceleration,
        quick_start=args.quick_start,
        gpus=args.gpus,
        parallel=args.parallel,
        split_at=tuple(args.split_at),
        feature_reuse=args.feature_reuse,
        feature_reuse_interval=args.feature_reuse_interval,
        feature_reuse_depth=args.feature_reuse_depth,
        resize_mode=args.resize,
        output_width=args.output_size[0],
        output_height=args.output_size[1],
        smoothing=args.smoothing,
        transition_frames=transition_frames(args.transition, source_fps),
        allow_pickle=args.allow_pickle,
        cache_dir=args.cache_dir,
        single_file_config=args.model_config,
    )


def _output_size(text: str) -> tuple[int, int]:
    from core.sizes import parse_size

    if text.strip().lower() in ("0", "0x0", "generated"):
        return 0, 0
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
