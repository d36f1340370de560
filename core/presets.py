"""Offline architecture presets: the real SD / SDXL architectures with seeded random weights.

Each preset is a folder under ``resources/models/<name>/`` laid out like a diffusers pipeline, holding
only configs (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` [``text_encoder_2/``],
``scheduler/``, ``tokenizer/`` [``tokenizer_2/``] settings, and ``taesd/`` for the tiny VAE). The same
folders double as the offline ``config=`` for single-file checkpoints of the matching architecture.

Where the numbers come from (checked against the published diffusers/transformers config.json files):

- ``sd-turbo``: stabilityai/sd-turbo is the SD 2.1-base architecture at 512 px. UNet and VAE as in
  stabilityai/stable-diffusion-2-1-base (``attention_head_dim`` [5, 10, 20, 20], ``cross_attention_dim``
  1024, ``use_linear_projection`` true); text encoder OpenCLIP ViT-H/14 as ``CLIPTextModel`` (hidden 1024,
  23 layers, i.e. the penultimate layer of the 24, 16 heads, 4096 intermediate, gelu); scheduler as
  sd-turbo ships it (Euler, trailing spacing).
- ``sd15``: runwayml/stable-diffusion-v1-5 (``cross_attention_dim`` 768, ``attention_head_dim`` 8; CLIP
  ViT-L/14 text encoder: hidden 768, 12 layers, 12 heads, quick_gelu; PNDM scheduler config).
- ``sdxl-turbo``: the SDXL base UNet (``block_out_channels`` [320, 640, 1280], ``transformer_layers_per_block``
  [1, 2, 10], ``attention_head_dim`` [5, 10, 20], ``cross_attention_dim`` 2048, ``text_time`` addition
  embedding 256 / 2816) at ``sample_size`` 64 as sdxl-turbo ships it; text_encoder CLIP ViT-L,
  text_encoder_2 OpenCLIP bigG as ``CLIPTextModelWithProjection`` (hidden 1280, 32 layers, 20 heads, 5120,
  projection 1280, gelu); SDXL VAE with ``scaling_factor`` 0.13025; Euler ancestral, trailing.
- ``taesd``: diffusers' ``AutoencoderTiny`` defaults, which is the TAESD / TAESDXL architecture.
- ``tiny`` / ``tiny-sdxl``: the same two families shrunk to a few million parameters for CPU tests. Their
  VAEs keep four blocks so that latents stay 1/8 of the image, as in the real models.

All schedulers share the SD training schedule (scaled_linear, 0.00085 to 0.012, 1000 steps, epsilon), which
is what the engine's LCM scheduler is derived from.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from .accel.capture_guard import CAPTURE_GUARD
from .clip_tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

PRESETS = ("sd-turbo", "sdxl-turbo", "sd15", "tiny", "tiny-sdxl")
PRESET_ROOT = Path(__file__).resolve().parent.parent / "resources" / "models"
# Weights depend on this constant and the device only, never on the stream seed: two runs of a
# benchmark must compare the same network.
PRESET_WEIGHT_SEED = 1234

_SCHEDULERS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "PNDMScheduler", "LCMScheduler",
               "DDIMScheduler")


def stand_in_preset(model: str) -> str | None:
    """The random-weight preset of the architecture ``model`` most likely has (``preset:NAME``), to try
    the program without its weights; None when ``model`` is a preset already. Guessed from the name,
    because the point is that the model itself could not be read."""
    text = (model or "").strip().lower()
    if text.startswith("preset:"):
        return None
    if "xl" in text:
        return "preset:sdxl-turbo"
    if any(hint in text for hint in ("v1-5", "v1.5", "sd15", "sd-1.5", "sd1.5", "stable-diffusion-v1")):
        return "preset:sd15"
    return "preset:sd-turbo"


def preset_dir(name: str) -> Path:
    if name not in PRESETS:
        raise KeyError(name)
    return PRESET_ROOT / name


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def preset_family(name: str) -> str:
    index = read_json(preset_dir(name) / "model_index.json")
    return "sdxl" if "XL" in index["_class_name"] else "sd"


def preset_tokenizers(name: str) -> dict:
    """The tokenizer objects a pipeline of this preset needs, keyed by component name."""
    folder = preset_dir(name)
    out = {}
    for component in ("tokenizer", "tokenizer_2"):
        settings = folder / component / "tokenizer_config.json"
        if settings.is_file():
            cfg = read_json(settings)
            out[component] = build_clip_tokenizer(cfg["pad_token"], cfg.get("model_max_length", 77))
    return out


def _scheduler(folder: Path):
    import diffusers

    cfg = read_json(folder / "scheduler" / "scheduler_config.json")
    name = cfg["_class_name"]
    if name not in _SCHEDULERS:
        raise ValueError(f"unexpected scheduler {name} in {folder}")
    return getattr(diffusers, name).from_config(cfg)


def _text_encoder(folder: Path, component: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = read_json(folder / component / "config.json")
    with_projection = cfg.get("architectures", ["CLIPTextModel"])[0] == "CLIPTextModelWithProjection"
    config = CLIPTextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_preset(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 with_tiny_vae: bool = True):
    """Build ``(pipe, tiny_vae)`` for a preset with seeded random weights.

    Parameters are created directly on ``device`` (initialising 2.5 B SDXL parameters on a CPU takes
    minutes, on a GPU seconds), so the weights are deterministic per device type, not across devices.
    ``device="meta"`` builds the structure without memory, for parameter counts.
    """
    from diffusers import (AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    folder = preset_dir(name)
    family = preset_family(name)
    device = torch.device(device)
    log.warning(
        "MODEL PRESET %r: building the %s architecture with RANDOM weights. Speed figures are real; "
        "the images are noise and say nothing about quality.", name, family.upper())
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    # Forking the GPU's generator resets its offset, which a capture on another thread (a running engine) reads.
    guard = CAPTURE_GUARD.work() if rng_devices else contextlib.nullcontext()
    with guard, torch.random.fork_rng(devices=rng_devices, device_type="cuda" if rng_devices else "cpu"):
        torch.manual_seed(PRESET_WEIGHT_SEED)
        with device if device.type != "cpu" else contextlib.nullcontext():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            text_encoder = _text_encoder(folder, "text_encoder")
            text_encoder_2 = _text_encoder(folder, "text_encoder_2") if family == "sdxl" else None
            tiny_vae = None
            if with_tiny_vae:
                tiny_vae = AutoencoderTiny.from_config(AutoencoderTiny.load_config(folder / "taesd"))
    tokenizers = preset_tokenizers(name)
    scheduler = _scheduler(folder)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=True, **tokenizers)
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, unet=unet, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, **tokenizers)
    if device.type != "meta" and dtype != torch.float32:
        # Plain Module.to: diffusers' own override warns about fp32-pinned modules, which these have none of.
        for module in [*pipe.components.values(), tiny_vae]:
            if isinstance(module, torch.nn.Module):
                torch.nn.Module.to(module, dtype=dtype)
    return pipe, tiny_vae


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
