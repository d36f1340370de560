"""Model loading: hub id, local diffusers folder, single-file checkpoint or offline architecture preset.

Everything goes through diffusers' own pipeline classes and loaders, so that the engine always receives
a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` with the usual components. Remote code is
never trusted; pickle files load only after an explicit opt-in.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .accel.capture_guard import empty_cache
from .config import StreamConfig
from .logs import route_library_logs
from .model_errors import (ModelLoadError, explain_hub_failure, is_out_of_memory, out_of_memory,
                           pickle_refused)
from .loading import cached_first, family_from_unet_config, hub_file, pipeline_class, pipeline_kwargs, quiet_dtype_rename
from .presets import PRESETS, build_preset, read_json
from .single_file import SAFE_SUFFIXES, PICKLE_SUFFIXES, load_single_file

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny, DiffusionPipeline

__all__ = ["ModelComponents", "ModelLoadError", "PRESETS", "load_components", "parse_model_spec"]

log = logging.getLogger(__name__)

TINY_VAE_REPOS = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
LCM_LORA_REPOS = {"sd": "latent-consistency/lcm-lora-sdv1-5", "sdxl": "latent-consistency/lcm-lora-sdxl"}
# Names that say a UNet is already distilled for few steps; an LCM-LoRA on top would hurt it.
_DISTILLED_HINTS = ("turbo", "lcm", "lightning", "hyper", "dmd")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ModelComponents:
    family: str  # "sd" (SD 1.x / 2.x, incl. sd-turbo) or "sdxl"
    pipe: "DiffusionPipeline"
    tiny_vae: "AutoencoderTiny | None"
    source: str
    random_weights: bool


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Classify a model spec as ``("preset"|"hub"|"folder"|"file", value)``.

    Existing paths win over hub ids, so a local folder named like ``owner/name`` is used as a folder.
    Paths come back absolute; an unknown preset raises ModelLoadError listing the valid ones.
    """
    text = (spec or "").strip()
    if not text:
        raise ModelLoadError("No model given: pass a hub id, a local diffusers folder, a .safetensors file "
                             "or preset:NAME.")
    if text.lower().startswith("preset:"):
        name = text.split(":", 1)[1].strip().lower()
        if name not in PRESETS:
            raise ModelLoadError(f"Unknown model preset '{name}'. Valid presets: "
                                 f"{', '.join('preset:' + p for p in PRESETS)}.")
        return "preset", name
    if text.startswith(("http://", "https://")):
        return "file", text
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", str(path.resolve())
    if path.is_file() or text.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES):
        return "file", str(path.resolve())
    looks_like_path = (text.startswith((".", "/", "~")) or "\\" in text or re.match(r"^[A-Za-z]:", text)
                       or text.count("/") > 1)
    if looks_like_path or not _HUB_ID.match(text):
        return "folder", str(path.resolve())
    return "hub", text


def load_components(config: StreamConfig, progress: Callable[[str], None] | None = None, *,
                    single_file_config: str | None = None) -> ModelComponents:
    """Load (or build) the model that ``config.model`` names, ready on the configured device and dtype.

    ``single_file_config`` (or ``config.single_file_config``) is the diffusers config
    folder or hub id that describes a single-file checkpoint; without it the architecture is recognised
    from the checkpoint and described by the bundled preset configs, so no download is needed.
    """
    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    kind, value = parse_model_spec(config.model)
    device, dtype = config.resolved_device(), config.resolved_dtype()
    route_library_logs()
    try:
        if kind == "preset":
            say(f"Building preset {value} (random weights) on {device}")
            pipe, tiny_vae = build_preset(value, device=device, dtype=dtype,
                                          with_tiny_vae=config.use_tiny_vae and not config.tiny_vae)
            source, random_weights = f"preset:{value} (random weights)", True
        else:
            random_weights, tiny_vae = False, None
            if kind == "file":
                sf_config = single_file_config or config.single_file_config
                pipe, source = load_single_file(value, config, dtype, sf_config, say)
            else:
                pipe, source = _load_pretrained(kind, value, config, dtype, say)
    except ModelLoadError:
        raise
    except Exception as exc:  # anything diffusers raised that the loaders did not explain
        if is_out_of_memory(exc):
            raise out_of_memory(config.model, device, exc) from exc
        raise ModelLoadError(f"Could not load the model '{config.model}': {type(exc).__name__}: {exc}") from exc

    family = "sdxl" if "XL" in type(pipe).__name__ else "sd"
    _check_prediction_type(pipe, source)
    if config.use_tiny_vae and tiny_vae is None:
        tiny_vae = _load_tiny_vae(config, family, dtype, say)
    _move(pipe, tiny_vae, device, dtype, source, say)
    _fuse_loras(pipe, config, family, kind, source, say)
    for module in [*_modules(pipe), tiny_vae]:
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    say(f"Model ready: {source} ({family}, {device}, {str(dtype).replace('torch.', '')})")
    return ModelComponents(family=family, pipe=pipe, tiny_vae=tiny_vae, source=source,
                           random_weights=random_weights)


def _modules(pipe):
    import torch

    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _read_index(kind: str, value: str, config: StreamConfig) -> tuple[dict, dict]:
    """model_index.json and unet/config.json of a folder or hub repo; explains what is missing."""
    if kind == "folder":
        folder = Path(value)
        if not folder.is_dir():
            raise ModelLoadError(f"The model folder '{value}' does not exist. Give a diffusers folder (with "
                                 "model_index.json), a .safetensors file, a hub id or preset:NAME.")
        if not (folder / "model_index.json").is_file():
            checkpoints = sorted(p.name for p in folder.glob("*.safetensors"))
            hint = (f" It holds {', '.join(checkpoints[:3])}: pass that file itself as the model." if checkpoints
                    else " Give the folder that contains model_index.json, unet/, vae/ and text_encoder/.")
            raise ModelLoadError(f"'{value}' is not a diffusers pipeline folder (no model_index.json).{hint}")
        index_path, unet_path = folder / "model_index.json", folder / "unet" / "config.json"
    else:
        try:
            index_path = hub_file(value, "model_index.json", config)
            unet_path = hub_file(value, "unet/config.json", config)
        except Exception as exc:
            raise explain_hub_failure("model", value, exc, config.cache_dir) from exc
    index = read_json(Path(index_path))
    if "unet" not in index or not Path(unet_path).is_file():
        raise ModelLoadError(f"'{value}' is a {index.get('_class_name', 'diffusers')} pipeline without a UNet; "
                             "this program runs SD 1.x, SD 2.x and SDXL models (including the turbo ones).")
    return index, read_json(Path(unet_path))


def _load_pretrained(kind: str, value: str, config: StreamConfig, dtype, say):
    import torch

    index, unet_config = _read_index(kind, value, config)
    family = family_from_unet_config(unet_config)
    cls = pipeline_class(family)
    kwargs = pipeline_kwargs(config, family, dtype)
    # Hub repos of the common models carry half-size fp16 files; fetch those when running in fp16.
    variants = ["fp16", None] if kind == "hub" and dtype == torch.float16 else [None]
    say(f"Loading {value} ({'SDXL' if family == 'sdxl' else 'SD'} pipeline)")

    def attempt(local_only: bool):
        for variant in variants:
            try:
                with quiet_dtype_rename():
                    return cls.from_pretrained(value, variant=variant, local_files_only=local_only, **kwargs)
            except Exception as exc:
                if variant is None or "variant" not in str(exc).lower():
                    raise
                log.info("no %s variant of %s, trying the default weights", variant, value)

    try:
        pipe = cached_first(attempt) if kind == "hub" else attempt(False)
    except Exception as exc:
        text = str(exc).lower()
        missing = "no file named" in text or "could not find the necessary" in text
        if missing and "safetensors" in text and not config.allow_pickle:
            raise ModelLoadError(
                f"'{value}' has no .safetensors weights, only pickle files, which can run code when "
                "loaded. If you trust its source, opt in with --allow-pickle.") from exc
        if kind == "hub":
            raise explain_hub_failure("model", value, exc, config.cache_dir) from exc
        raise
    return pipe, (f"hub {value}" if kind == "hub" else f"folder {value}")


def _check_prediction_type(pipe, source: str) -> None:
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLoadError(
            f"'{source}' is a {prediction} model (e.g. SD 2.x at 768 px); the stream engine runs epsilon-prediction "
            "models only: SD 1.5, SD 2.x-base, sd-turbo, SDXL, sdxl-turbo and their fine-tunes.")


def _load_source(kind_hint: str, value: str, what: str, config: StreamConfig, loader):
    """Run ``loader(path_or_id)`` for a hub id or a local folder, with errors explained."""
    path = Path(value).expanduser()
    if path.exists():
        return loader(str(path))
    if kind_hint == "path" or not _HUB_ID.match(value):
        raise ModelLoadError(f"The {what} '{value}' does not exist (neither a file, a folder nor a hub id).")
    try:
        return loader(value)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise explain_hub_failure(what, value, exc, config.cache_dir) from exc


def _load_tiny_vae(config: StreamConfig, family: str, dtype, say):
    from diffusers import AutoencoderTiny

    source = config.tiny_vae or TINY_VAE_REPOS[family]
    say(f"Loading tiny VAE {source}")
    kwargs = {"torch_dtype": dtype, "cache_dir": config.cache_dir}
    if not config.allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        with quiet_dtype_rename():
            return _load_source("any", source, "tiny VAE", config, lambda where: cached_first(
                lambda local_only: AutoencoderTiny.from_pretrained(where, local_files_only=local_only, **kwargs)))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}\nOr run with the full VAE instead: --no-tiny-vae (use_tiny_vae=False).") from exc


def _move(pipe, tiny_vae, device: str, dtype, source: str, say) -> None:
    import torch

    target = torch.device(device)
    modules = [m for m in [*_modules(pipe), tiny_vae] if m is not None]
    if all(m.device.type == target.type and target.index in (None, m.device.index) and m.dtype == dtype
           for m in modules):
        return
    say(f"Moving the model to {device}")
    cast = any(m.dtype != dtype for m in modules)
    try:
        if cast:
            pipe.to(device, dtype)
        else:
            pipe.to(device)
        if tiny_vae is not None:
            tiny_vae.to(device, dtype)
    except Exception as exc:
        if is_out_of_memory(exc):
            empty_cache()
            raise out_of_memory(source, device, exc) from exc
        raise ModelLoadError(f"Could not move the model to '{device}': {exc}. Check the --device setting "
                             "(cuda needs an NVIDIA GPU and a CUDA build of PyTorch).") from exc


def wants_lcm_lora(config: StreamConfig, pipe, family: str, kind: str, source: str) -> bool:
    """The rule for ``use_lcm_lora=None``: on for plain SD 1.5 checkpoints, off for everything else."""
    if config.use_lcm_lora is not None:
        return config.use_lcm_lora
    if kind == "preset" or family != "sd":
        return False
    unet = pipe.unet.config
    if unet.get("cross_attention_dim") != 768 or unet.get("time_cond_proj_dim"):
        return False
    return not any(hint in source.lower() for hint in _DISTILLED_HINTS)


def _fuse_loras(pipe, config: StreamConfig, family: str, kind: str, source: str, say) -> None:
    specs = []
    if wants_lcm_lora(config, pipe, family, kind, source):
        if family == "sd" and pipe.unet.config.get("cross_attention_dim") != 768 and not config.lcm_lora:
            raise ModelLoadError("There is no standard LCM-LoRA for SD 2.x models; set lcm_lora to one that "
                                 "fits, or turn use_lcm_lora off.")
        specs.append(("LCM-LoRA", config.lcm_lora or LCM_LORA_REPOS[family], 1.0, None))
    specs += [(f"LoRA {i + 1}", s.source, s.scale, s.weight_name) for i, s in enumerate(config.loras)]
    for index, (label, lora_source, scale, weight_name) in enumerate(specs):
        say(f"Fusing {label} {lora_source} (scale {scale:g})")
        path = Path(lora_source).expanduser()
        if path.suffix.lower() in PICKLE_SUFFIXES and not config.allow_pickle:
            raise pickle_refused(lora_source, "LoRA")
        kwargs = {"adapter_name": f"fused_{index}", "cache_dir": config.cache_dir}
        if weight_name:
            kwargs["weight_name"] = weight_name
        if not config.allow_pickle:
            kwargs["use_safetensors"] = True

        def fuse(where: str) -> None:
            try:
                cached_first(lambda local_only: pipe.load_lora_weights(where, local_files_only=local_only, **kwargs))
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ModelLoadError(f"The {label} '{lora_source}' does not fit the model '{source}' "
                                     f"({family}): {str(exc)[:300]}") from exc
            pipe.fuse_lora(lora_scale=scale, adapter_names=[kwargs["adapter_name"]])
            # Fused weights stay; the adapter layers go, so compiled graphs see plain Linear modules.
            pipe.unload_lora_weights()

        _load_source("path" if path.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES else "any", lora_source, label,
                     config, fuse)
