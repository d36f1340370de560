"""Single-file checkpoints (the original Stable Diffusion / ldm layout) through diffusers' ``from_single_file``.

diffusers needs a diffusers-format config to know the architecture of a single file, and by default
downloads it from the hub. Most single files are fine-tunes of SD 1.5, SD 2.x or SDXL, whose
architectures the bundled presets already describe; so we read the few tensor shapes that tell them
apart and hand diffusers the matching preset folder as ``config=``. That keeps single-file loading
offline. A config folder or hub id given by the user always wins.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .loading import cached_first, family_from_unet_config, hub_file, pipeline_class, pipeline_kwargs, quiet_dtype_rename
from .model_errors import ModelLoadError, explain_hub_failure, hub_error_kind, pickle_refused
from .presets import PRESETS, preset_dir, preset_family, preset_tokenizers, read_json

log = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."


def _summarize(keys, shape_of) -> dict:
    summary = {"sdxl": False, "in_channels": None, "width": None, "context_dim": None}
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    for key in keys:
        if key.startswith("conditioner.embedders."):
            summary["sdxl"] = True
        elif key == conv_in:
            shape = shape_of(key)
            summary["width"], summary["in_channels"] = shape[0], shape[1]
        elif summary["context_dim"] is None and key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            summary["context_dim"] = shape_of(key)[1]
    return summary


def checkpoint_summary(path: str) -> dict:
    """The architecture-defining facts of an ldm checkpoint, read without loading its tensors where possible."""
    if path.lower().endswith(SAFE_SUFFIXES):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return _summarize(list(f.keys()), lambda k: tuple(f.get_slice(k).get_shape()))
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return _summarize(list(state.keys()), lambda k: tuple(state[k].shape))


def match_preset(summary: dict) -> str | None:
    """The bundled preset whose architecture has this checkpoint's UNet width and text-context size."""
    for name in PRESETS:
        unet = read_json(preset_dir(name) / "unet" / "config.json")
        if ((preset_family(name) == "sdxl") == summary["sdxl"]
                and unet["block_out_channels"][0] == summary["width"]
                and unet["cross_attention_dim"] == summary["context_dim"]):
            return name
    return None


def _family_of_config(source: str, config) -> str:
    folder = Path(source).expanduser()
    if folder.is_dir():
        unet_path = folder / "unet" / "config.json"
        if not unet_path.is_file():
            raise ModelLoadError(f"The config folder '{source}' is not a diffusers pipeline folder "
                                 "(no unet/config.json).")
        return family_from_unet_config(read_json(unet_path))
    try:
        return family_from_unet_config(read_json(Path(hub_file(source, "unet/config.json", config))))
    except Exception as exc:
        raise explain_hub_failure("model config", source, exc, config.cache_dir) from exc


def load_single_file(spec: str, config, dtype, sf_config: str | None, say):
    """``(pipe, source)`` for a local or hub-URL single-file checkpoint."""
    is_url = spec.startswith(("http://", "https://"))
    lower = spec.split("?")[0].lower()
    if lower.endswith(PICKLE_SUFFIXES):
        if not config.allow_pickle:
            raise pickle_refused(spec)
    elif not lower.endswith(SAFE_SUFFIXES):
        raise ModelLoadError(f"'{spec}' is not a checkpoint this program reads: give a .safetensors file "
                             "(or .ckpt/.pt/.bin with --allow-pickle), a diffusers folder, a hub id or preset:NAME.")
    if not is_url and not Path(spec).is_file():
        raise ModelLoadError(f"The checkpoint file '{spec}' does not exist.")

    extra: dict = {}
    local_only = False
    if sf_config:
        family, cfg, described_by = _family_of_config(sf_config, config), sf_config, sf_config
        local_only = Path(sf_config).expanduser().is_dir()
    else:
        summary = None if is_url else checkpoint_summary(spec)
        if summary is not None and summary["width"] is None:
            raise ModelLoadError(f"'{spec}' is not a full SD / SDXL checkpoint (no {UNET_PREFIX}* weights). If it is "
                                 "one part of a diffusers model, pass the diffusers folder instead.")
        if summary is not None and summary["in_channels"] != 4:
            raise ModelLoadError(f"'{spec}' has a UNet with {summary['in_channels']} input channels (an inpainting "
                                 "or instruct model); the stream engine needs a plain text-to-image model.")
        preset = match_preset(summary) if summary else None
        if preset is not None:
            family, cfg, described_by, local_only = preset_family(preset), str(preset_dir(preset)), preset, True
            extra.update(preset_tokenizers(preset))
            log.info("%s: recognised the %s architecture; using the bundled '%s' configs", spec, family, preset)
            if preset == "sd-turbo":
                log.warning("%s is an SD 2.x checkpoint, taken as epsilon-prediction (SD 2.x-base, sd-turbo). A 768-px "
                            "v-prediction model needs its own config folder and is not supported.", spec)
        else:
            family = "sdxl" if summary and summary["sdxl"] else "sd"
            cfg, described_by = None, "a config from the hub"

    kwargs = pipeline_kwargs(config, family, dtype)
    kwargs.pop("use_safetensors", None)  # the file type was checked above
    say(f"Loading checkpoint {spec} ({'SDXL' if family == 'sdxl' else 'SD'}, described by {described_by})")
    try:
        def load(local: bool):
            with quiet_dtype_rename():
                return pipeline_class(family).from_single_file(spec, config=cfg, local_files_only=local, **kwargs,
                                                                **extra)

        pipe = load(True) if local_only and not is_url else cached_first(load)
    except Exception as exc:
        if hub_error_kind(exc) is not None:
            # Without a config of ours, diffusers fetches its default for the type: SDXL base, else SD 1.5.
            needed = cfg or ("stabilityai/stable-diffusion-xl-base-1.0" if family == "sdxl"
                             else "stable-diffusion-v1-5/stable-diffusion-v1-5")
            err = explain_hub_failure("model config", needed, exc, config.cache_dir, local_alternative=False)
            raise ModelLoadError(
                f"Loading '{spec}' needs its architecture config, which could not be fetched. Pass a local "
                f"diffusers folder of the same architecture as its config (single_file_config).\n{err}") from exc
        raise ModelLoadError(f"Could not load the checkpoint '{spec}' (described by {described_by}): "
                             f"{type(exc).__name__}: {str(exc)[:400]}") from exc
    return pipe, f"file {spec}"
