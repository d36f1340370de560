"""Several GPUs in one machine: frame parallelism (``frame_parallel``) and AsyncDiff's model parallelism
(``asyncdiff`` over ``unet_stages``).

``build_parallel_engine(StreamEngine, config)`` is what ``StreamEngine.from_config`` calls when ``config.gpus > 1``. The mode
``auto`` takes frames for one denoising step (every frame is independent: near-linear) and asyncdiff for
2-4 steps (one engine's stream batch, its UNet spread over the GPUs). With ``device="cpu"`` the same code
runs with every "GPU" on the CPU: no speed, but the exact data flow (the tests use it).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os

import torch

log = logging.getLogger(__name__)


def parallel_devices(config) -> list[torch.device]:
    """The devices ``config.gpus`` asks for: consecutive GPUs from the configured one. Fewer GPUs than asked
    gives the ones there are, with a warning (never an error at start)."""
    wanted = config.gpus
    device = torch.device(config.resolved_device())
    if device.type != "cuda":
        return [device] * wanted
    first = device.index or 0
    present = torch.cuda.device_count()
    if first + wanted > present:
        log.warning("%d GPUs asked for from cuda:%d, but this machine has %d; using %d", wanted, first, present,
                    max(1, present - first))
        wanted = max(1, present - first)
    return [torch.device("cuda", first + i) for i in range(wanted)]


def parallel_mode(config) -> str:
    if config.parallel != "auto":
        return config.parallel
    return "frames" if config.denoising_steps == 1 and config.frame_buffer_size == 1 else "asyncdiff"


def components_on(components, device: torch.device):
    """A copy of the model (same weights, bit for bit) on ``device``."""
    if device == torch.device(components.pipe.device):
        return components
    pipe = copy.deepcopy(components.pipe).to(device)
    tiny = None if components.tiny_vae is None else copy.deepcopy(components.tiny_vae).to(device)
    return dataclasses.replace(components, pipe=pipe, tiny_vae=tiny)


def build_parallel_engine(engine_class, config, progress=None, components=None):
    """An engine over ``config.gpus`` devices (see the module's docstring) from engines of ``engine_class``
    (``StreamEngine``, whose ``from_config`` calls this)."""
    from core.models import load_components

    say = progress or (lambda message: log.info(message))
    devices = parallel_devices(config)
    mode = parallel_mode(config)
    components = components or load_components(config.replace(gpus=1, split_at=()), progress)
    if mode == "frames":
        from core.parallel.frame_parallel import ChainedBuilds, FrameParallelEngine

        engines = []
        for device in devices:
            say(f"frame-parallel: engine on {device}")
            engine_config = config.replace(gpus=1, split_at=(), device=str(device))
            engines.append(_accelerated(engine_class(components_on(components, device), engine_config), progress))
        parallel = FrameParallelEngine(engines)
        # Quick start on every GPU at once; their compiles one after another (two at once would share the CPU).
        builds = [engine.startup for engine in engines if engine.startup is not None]
        if builds:
            parallel.startup = ChainedBuilds(builds)
            parallel.startup.start()
        return parallel
    # The first stage's device by its index: one GPU spelled two ways ("cuda", "cuda:0") must not look like two.
    engine = engine_class(components, config.replace(gpus=1, split_at=(), feature_reuse=False,
                                                     device=str(devices[0])))
    if config.feature_reuse:
        log.info("feature reuse is off under asyncdiff: the stages already run on features one step old")
    split_at = config.split_at
    if split_at and len(split_at) != len(devices) - 1:
        log.warning("--split-at names %d cuts for %d GPUs, but %d are here: balancing by FLOPs instead",
                    len(split_at), config.gpus, len(devices))
        split_at = ()
    use_asyncdiff(engine, devices, split_at, say)
    engine.warm_up()
    return engine


def _accelerated(engine, progress):
    """``engine`` accelerated and warmed up; with quick start, its full-speed build left in ``engine.startup``,
    not started."""
    if engine.config.acceleration != "none":
        from core.accel import accelerate

        if accelerate(engine, progress, staged=engine.config.quick_start) != "none":
            engine.warm_up()
    return engine


def use_asyncdiff(engine, devices, split_at=(), say=log.info) -> None:
    """Install the AsyncDiff frame runner on ``engine`` (whose device is the first stage's): stages balanced by
    FLOPs unless ``split_at`` names the first unit of each later stage. On CUDA every device's share is a
    captured graph: of compiled kernels with ``compile`` (where Inductor works), of the eager ones otherwise."""
    from core.parallel.asyncdiff import AsyncDiffRunner
    from core.parallel.unet_stages import balanced_starts, unet_units

    if engine.conditioning is None:
        engine.prepare("")
    cuda = engine.device.type == "cuda"
    wanted = engine.config.acceleration
    if wanted == "tensorrt":
        say("TensorRT has no AsyncDiff stages yet: compiling the stages instead")
        engine.acceleration_note = "TensorRT has no AsyncDiff stages; compiled instead"
        wanted = "compile"
    starts = tuple(split_at) or balanced_starts(*split_costs(engine, len(devices)))
    units = unet_units(engine.unet)
    if len(starts) != len(devices) - 1 or list(starts) != sorted(set(starts)) or not all(0 < s < len(units)
                                                                                          for s in starts):
        raise ValueError(f"split_at needs {len(devices) - 1} increasing unit indices from 1 to {len(units) - 1} "
                         f"(units: {', '.join(f'{i} {u}' for i, u in enumerate(units))}); got {list(starts)}")
    compile_stages = False
    if cuda and wanted != "none":
        from core.accel.compile import compiled_parts, prepare_layout

        prepare_layout(engine)  # before the copies to the other devices, which keep the layout
        if wanted == "compile" and os.environ.get("LIVEDIFFUSION_INDUCTOR", "1") == "1":
            parts = compiled_parts(engine, say)
            engine.install(encode_images=parts["encode_images"], decode_latents=parts["decode_latents"],
                           keep_alive=parts["keep_alive"])
            compile_stages = True
    elif not cuda and wanted != "none":
        engine.acceleration_note = f"{wanted} needs a CUDA GPU"
    runner = AsyncDiffRunner(engine, devices, starts, graphs=cuda and wanted != "none", compile_stages=compile_stages)
    engine.install(frame_runner=runner)
    engine.acceleration = ("compile" if compile_stages else "graph") if runner.graphs_wanted else "none"
    engine.parallel = f"asyncdiff over {len(devices)} devices: {runner.describe()}"
    say(engine.parallel)


@torch.no_grad()
def split_costs(engine, parts: int) -> tuple[list[float], int, float]:
    """``balanced_starts``' arguments: the UNet units' FLOPs at the engine's batch, and the first device's own
    work (VAE encode and decode) in FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from core.parallel.unet_stages import unit_flops

    cfg, cond = engine.config, engine.conditioning
    rows = engine.unet_batch_size
    sample = torch.zeros((rows, *engine.latent_shape), device=engine.device, dtype=engine.dtype)
    costs = unit_flops(engine.unet, sample, engine.batch.unet_timesteps, cond.encoder_hidden_states,
                       cond.added_cond_kwargs)
    counter = FlopCounterMode(display=False)
    with counter:
        if cfg.mode == "img2img":
            engine.encode_images(torch.zeros((cfg.frame_buffer_size, 3, cfg.height, cfg.width), device=engine.device,
                                             dtype=engine.dtype))
        engine.decode_latents(sample[: cfg.frame_buffer_size])
    return costs, parts, float(counter.get_total_flops())


def split_plan(preset: str = "sd-turbo", gpus: int = 2, rows: int = 4, size: int = 512) -> str:
    """The FLOP-balanced AsyncDiff split of a preset's UNet (``rows`` UNet rows, ``size`` square), worked out on
    the meta device (no memory, no weights): what ``doctor`` shows for the GPUs it sees."""
    from diffusers import UNet2DConditionModel

    from core.parallel.unet_stages import balanced_starts, describe_units, split_units, unet_units, unit_flops
    from core.presets import preset_dir

    folder = preset_dir(preset) / "unet"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder)).half()
    latent = size // 8
    sample = torch.zeros((rows, unet.config.in_channels, latent, latent), device="meta", dtype=torch.float16)
    context = torch.zeros((rows, 77, unet.config.cross_attention_dim), device="meta", dtype=torch.float16)
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.zeros((rows, 1280), device="meta", dtype=torch.float16),
                 "time_ids": torch.zeros((rows, 6), device="meta", dtype=torch.float16)}
    costs = unit_flops(unet, sample, torch.zeros(rows, device="meta", dtype=torch.long), context, added)
    units = unet_units(unet)
    starts = balanced_starts(costs, gpus)
    runs = split_units(list(range(len(units))), starts)
    total = sum(costs)
    return " | ".join(f"{describe_units([units[i] for i in run], units)} ({sum(costs[i] for i in run) / total:.0%})"
                      for run in runs)
