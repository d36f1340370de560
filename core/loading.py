"""What every way of loading a model shares: the pipeline class of a family, its load arguments, and
files from the hub cache-first. ``core.models`` (folders, hub ids, presets) and ``core.single_file``
(checkpoints) both build on it."""

from __future__ import annotations

import contextlib
import logging
import warnings

from .config import StreamConfig
from .hub import hub_reachable
from .model_errors import hub_error_kind

log = logging.getLogger(__name__)


def pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


@contextlib.contextmanager
def quiet_dtype_rename():
    """Newer diffusers call ``torch_dtype`` ``dtype`` and warn on every component; the old name is the one
    every supported version (0.30 on) understands, so we keep it and drop the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        yield


def pipeline_kwargs(config: StreamConfig, family: str, dtype) -> dict:
    """Arguments shared by every pipeline load: dtype, cache, no safety checker, safetensors unless opted out."""
    kwargs = {"torch_dtype": dtype, "cache_dir": config.cache_dir, "feature_extractor": None, "image_encoder": None}
    if not config.allow_pickle:
        kwargs["use_safetensors"] = True
    if family == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return kwargs


def family_from_unet_config(unet_config: dict) -> str:
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"


def cached_first(call):
    """``call(local_files_only)`` from the local cache, then, if anything was missing, from the hub.

    A cached model then starts without touching the network, which on a machine without internet
    would otherwise cost a round of connection retries per file.
    """
    try:
        return call(True)
    except Exception as exc:
        # Only a cache miss is worth a second, online try; any other failure would just repeat.
        if hub_error_kind(exc) is None and not isinstance(exc, OSError):
            raise
        log.debug("not complete in the local cache (%s), asking the hub", exc)
        if not hub_reachable():
            raise  # the cache miss, explained by the caller as "not downloaded, hub unreachable"
    return call(False)


def hub_file(repo_id: str, filename: str, config: StreamConfig) -> str:
    from huggingface_hub import hf_hub_download

    return cached_first(lambda local_only: hf_hub_download(repo_id, filename, cache_dir=config.cache_dir,
                                                           local_files_only=local_only))
