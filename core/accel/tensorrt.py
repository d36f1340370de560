"""``tensorrt`` acceleration: TensorRT engines for the UNet and the VAE halves, cached on disk.

Per network: export to ONNX at the engine's static shapes (core.accel.onnx_export), build an engine
(core.accel.trt_runtime), keep the plan under ``~/.cache/livediffusion/tensorrt`` (or
``$LIVEDIFFUSION_CACHE/tensorrt``) keyed by everything the plan depends on, and swap in drop-in callables:

- the UNet: same signature and result as the diffusers UNet call the engine makes;
- ``encode_images`` / ``decode_latents``: what the engine's methods of those names compute, so the
  engine's ``frame_step`` calls the TensorRT engines without knowing (tiny or full VAE alike).
All three go in through ``engine.install`` (core.accel.parts.AcceleratedParts).

The UNet is the point of the exercise: if it fails, ``use_tensorrt`` raises and the caller falls back
to ``compile``. A VAE engine that fails only leaves that half in PyTorch. Afterwards the whole frame step
is captured in a CUDA graph (TensorRT's enqueue is capturable), via compile's FrameGraph.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import traceback
from pathlib import Path

import torch

from core.accel import onnx_export
from core.accel.capture_guard import empty_cache
from core.accel.trt_runtime import (EngineRunner, TensorRTBuildError, TensorRTUnavailable, build_plan,
                                    import_tensorrt)
from core.accel.keys import config_digest, digest, weight_fingerprint
from core.cache import cache_root

log = logging.getLogger(__name__)

__all__ = ["use_tensorrt", "install", "engine_cache_key", "TensorRTBuildError", "TensorRTUnavailable"]

# Bump when the export wrappers or the build settings change what a plan computes.
CACHE_FORMAT = 1
LABELS = {"unet": "UNet", "vae_encoder": "VAE encoder", "vae_decoder": "VAE decoder"}


def cache_dir() -> Path:
    return cache_root() / "tensorrt"


# ----- cache keys --------------------------------------------------------------------------------------


def engine_cache_key(*, kind: str, model: str, module_config: str, weights: str, inputs: dict, batch: int,
                     gpu_name: str, trt_version: str, dtype: str, opset: int = onnx_export.OPSET) -> str:
    """What a plan depends on, hashed: a change of any part builds a new engine, none reuses the old one."""
    return digest({
        "format": CACHE_FORMAT, "kind": kind, "model": model, "module_config": module_config, "weights": weights,
        "inputs": {name: list(shape) for name, shape in inputs.items()}, "batch": batch, "gpu": gpu_name,
        "tensorrt": trt_version, "dtype": dtype, "opset": opset,
    })[:24]


def _model_identity(engine, kind: str) -> str:
    cfg = engine.config
    if kind == "unet":
        loras = [(lora.source, lora.scale, lora.weight_name) for lora in cfg.loras]
        return json.dumps([cfg.model, loras, cfg.use_lcm_lora, cfg.lcm_lora], default=str)
    vae = type(engine.vae).__name__
    return json.dumps([cfg.model, vae, cfg.use_tiny_vae, cfg.tiny_vae], default=str)


# ----- one network: cache hit, or export + build -------------------------------------------------------


class _Builder:
    """Shared per ``use_tensorrt`` call: TensorRT module, GPU name, cache folder, progress callback."""

    def __init__(self, trt, device: torch.device, say):
        self.trt = trt
        self.device = device
        self.say = say
        self.gpu_name = torch.cuda.get_device_name(device)
        self.root = cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        tag = digest([self.gpu_name, trt.__version__])[:12]
        self.timing_cache = self.root / f"timing-{tag}.cache"

    def runner(self, engine, kind: str, spec: onnx_export.ExportSpec, module: torch.nn.Module) -> EngineRunner:
        label = LABELS[kind]
        key = engine_cache_key(
            kind=kind, model=_model_identity(engine, kind), module_config=config_digest(module.config),
            weights=weight_fingerprint(module), inputs=spec.input_shapes(),
            batch=next(iter(spec.inputs.values())).shape[0], gpu_name=self.gpu_name,
            trt_version=self.trt.__version__, dtype=str(spec.dtype),
        )
        folder = self.root / f"{kind}-{key}"
        plan_path = folder / "engine.plan"
        if plan_path.is_file():
            try:
                runner = EngineRunner(self.trt, plan_path.read_bytes(), self.device, label)
                self.say(f"TensorRT {label}: using the cached engine {folder.name}")
                return runner
            except Exception as error:  # noqa: BLE001 - a plan that will not load is rebuilt
                log.warning("cached TensorRT engine %s does not load (%s); rebuilding", plan_path, error)
        self.build(spec, folder, label)
        try:
            return EngineRunner(self.trt, plan_path.read_bytes(), self.device, label)
        except Exception as error:  # noqa: BLE001
            raise TensorRTBuildError("load", label, f"{type(error).__name__}: {error}", folder / "build.log") from error

    def build(self, spec: onnx_export.ExportSpec, folder: Path, label: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "build.log"
        (folder / "meta.json").write_text(json.dumps(
            {"label": label, "gpu": self.gpu_name, "tensorrt": self.trt.__version__, "dtype": str(spec.dtype),
             "inputs": spec.input_shapes(), "outputs": list(spec.outputs)}, indent=1))
        onnx_dir = folder / "onnx"
        try:
            onnx_path = export_stage(spec, onnx_dir, label, log_path, self.say)
            _release_cached_memory()  # the builder times tactics in whatever memory is free
            try:
                build_plan(self.trt, onnx_path, folder / "engine.plan", label=label, dtype=spec.dtype,
                           log_path=log_path, timing_cache_path=self.timing_cache,
                           workspace_bytes=_workspace_bytes(self.device), say=self.say)
            except TensorRTBuildError:
                raise
            except Exception as error:  # noqa: BLE001 - anything else TensorRT raises is a build failure
                _append_traceback(log_path)
                raise TensorRTBuildError("build", label, f"{type(error).__name__}: {error}", log_path) from error
        finally:
            if os.environ.get("LIVEDIFFUSION_KEEP_ONNX") != "1":  # the SDXL UNet's ONNX alone is ~5 GB
                shutil.rmtree(onnx_dir, ignore_errors=True)


def export_stage(spec: onnx_export.ExportSpec, onnx_dir: Path, label: str, log_path: Path, say) -> Path:
    """Export to ``onnx_dir/model.onnx``; any failure becomes a TensorRTBuildError of stage 'export'."""
    say(f"TensorRT {label}: exporting to ONNX")
    shutil.rmtree(onnx_dir, ignore_errors=True)  # leftovers of an interrupted export would mix in
    try:
        return onnx_export.export_onnx(spec, onnx_dir / "model.onnx")
    except Exception as error:  # noqa: BLE001
        _append_traceback(log_path)
        raise TensorRTBuildError("export", label, f"{type(error).__name__}: {error}", log_path) from error


def _append_traceback(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(traceback.format_exc())


def _release_cached_memory() -> None:
    gc.collect()
    empty_cache()


def _workspace_bytes(device: torch.device) -> int:
    wanted = os.environ.get("LIVEDIFFUSION_TRT_WORKSPACE_GB")
    if wanted:
        return int(float(wanted) * 2**30)
    free, _total = torch.cuda.mem_get_info(device)
    return int(min(8 * 2**30, free * 0.75))


# ----- drop-in callables -------------------------------------------------------------------------------


class TensorRTUNet:
    """Stands in for ``engine.unet`` in ``engine.predict_noise``: same call, ``(noise,)`` back."""

    def __init__(self, runner):
        self.runner = runner
        self.sdxl = "text_embeds" in runner.inputs

    def __call__(self, sample, timesteps, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False,
                 **_unused):
        timesteps = torch.as_tensor(timesteps, device=sample.device)
        feeds = {
            "sample": sample,
            "timestep": timesteps.reshape(-1).expand(sample.shape[0]),
            "encoder_hidden_states": encoder_hidden_states,
        }
        if self.sdxl:
            if not added_cond_kwargs:
                raise ValueError("this UNet engine needs added_cond_kwargs text_embeds and time_ids (SDXL)")
            feeds["text_embeds"] = added_cond_kwargs["text_embeds"]
            feeds["time_ids"] = added_cond_kwargs["time_ids"]
        noise = self.runner(feeds)["noise"]
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=noise)
        return (noise,)


class TensorRTEncode:
    """Stands in for ``engine.encode_images``: images in [-1, 1] to scaled latents in the engine dtype."""

    def __init__(self, runner, dtype: torch.dtype):
        self.runner = runner
        self.dtype = dtype

    def __call__(self, images):
        return self.runner({"images": images})["latents"].to(self.dtype)


class TensorRTDecode:
    """Stands in for ``engine.decode_latents``: scaled latents to images in [-1, 1]."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, latents):
        return self.runner({"latents": latents})["images"]


def _frame_graph_class():
    from core.accel.compile import FrameGraph

    class TensorRTFrameGraph(FrameGraph):
        """compile's FrameGraph, except that a failed capture gives up only the graph: the TensorRT engines
        stay (FrameGraph's own fallback would put the whole engine back to eager PyTorch)."""

        failed = False

        def __call__(self, frames_u8):
            if self.failed:
                return self.engine.frame_step(frames_u8)
            saved = None
            if self.key(frames_u8) not in self.graphs:  # warm-up and capture advance the stream buffer; undo that on failure
                saved = self.engine.snapshot_stream()
            try:
                return super().__call__(frames_u8)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - capture problems surface at the first frame
                return self._fall_back(frames_u8, error, saved)

        def _fall_back(self, frames_u8, error, saved=None):
            self.failed = True
            saved = saved if saved is not None else getattr(self, "_saved", None)
            if saved is not None:
                self.engine.restore_stream(saved)
            log.warning("CUDA graph capture with TensorRT engines failed (%s: %s); running uncaptured",
                        type(error).__name__, error)
            self.say("CUDA graph capture failed; the TensorRT engines run without it")
            return self.engine.frame_step(frames_u8)

    return TensorRTFrameGraph


def install(engine, runners: dict, say, graph: bool = True) -> None:
    """Swap the runners into ``engine``; ``runners`` maps unet / vae_encoder / vae_decoder to callables
    that take and return dicts of named tensors (EngineRunner, or a stand-in in tests)."""
    engine.install(
        unet=TensorRTUNet(runners["unet"]),
        encode_images=TensorRTEncode(runners["vae_encoder"], engine.dtype) if "vae_encoder" in runners else None,
        decode_latents=TensorRTDecode(runners["vae_decoder"]) if "vae_decoder" in runners else None,
        frame_runner=_frame_graph_class()(engine, say) if graph else None,
        keep_alive=runners,  # the engines and contexts must live as long as the stream engine
    )


def uninstall(engine) -> None:
    """Back to the PyTorch networks."""
    engine.restore_eager()


# ----- entry point -------------------------------------------------------------------------------------


def use_tensorrt(engine, say) -> None:
    trt = import_tensorrt()
    if engine.device.type != "cuda":
        raise TensorRTUnavailable(f"TensorRT needs a CUDA device; the engine runs on {engine.device}")
    builder = _Builder(trt, engine.device, say)
    specs = onnx_export.engine_specs(engine)
    say(f"TensorRT {trt.__version__} on {builder.gpu_name}; engines cached in {builder.root}")
    runners = {"unet": builder.runner(engine, "unet", specs["unet"], engine.unet)}
    for kind in ("vae_encoder", "vae_decoder"):
        if kind not in specs:
            continue
        try:
            runners[kind] = builder.runner(engine, kind, specs[kind], engine.vae)
        except Exception as error:  # noqa: BLE001 - the UNet engine alone is most of the gain
            log.warning("TensorRT %s unavailable: %s", LABELS[kind], error)
            say(f"{error}; the {LABELS[kind]} stays in PyTorch")
    del specs
    _release_cached_memory()
    install(engine, runners, say, graph=os.environ.get("LIVEDIFFUSION_TRT_GRAPH", "1") == "1")
