"""Compiled engines kept on disk: AOTInductor packages of the UNet and the VAE's two halves.

A ``torch.compile`` start traces the model again in every process, even with Inductor's caches warm (14 s for
sd-turbo on the lent H100). An AOTInductor package is the compiled model itself: loading it takes a fraction
of a second, so a warm start runs at full speed from its first frame. One folder per artifact key under
``<cache>/compiled/``: what the compiled code depends on (architecture and weights, sizes, batch, dtypes, GPU,
driver, torch, this project's version). The packages hold code only; the weights are the running modules'
own tensors, handed over at load (``user_managed``), so no copy of the model is stored or loaded twice.

A package that is missing, corrupt or fails to load is rebuilt, with a log line, never a crash.

Opt-in (``LIVEDIFFUSION_AOTI=1``): built and loaded on the CPU by the tests, but on the lent H100 (torch 2.11,
float16, CUDA) the build stopped on an ``AssertionError`` and the engine fell back to torch.compile.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from core.accel import store
from core.accel.examples import example_values
from core.accel.keys import weight_fingerprint
from core.accel.store import artifact_dir
from core.vae import vae_decode, vae_encode

log = logging.getLogger(__name__)

PIECES = ("unet", "encode", "decode")
LOADER_CRASH_FILE = "loader-crashed.json"  # in <cache>/compiled: this torch's loader crashed on our packages
PROBED_FILE = "loads.ok"  # in a package folder: its packages loaded in a process of their own once
# Loads the packages named on its command line, in a process of its own: on the lent H100 (torch 2.11, CUDA)
# torch's loader ended the process with a segmentation fault, which no except clause here could catch.
PROBE = "import sys, torch\nfor path in sys.argv[1:]:\n    torch._inductor.aoti_load_package(path)\n"
PROBE_TIMEOUT_S = 300


def project_version() -> str:
    try:
        return metadata.version("livediffusion")
    except metadata.PackageNotFoundError:
        return "source"


def channels_last(module: nn.Module) -> bool:
    weight = next((p for p in module.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _driver_version() -> str:
    try:
        return str(torch._C._cuda_getDriverVersion())
    except Exception:  # noqa: BLE001 - no CUDA, or a torch without the call: the GPU name still keys
        return "none"


def compiled_code_key(engine) -> dict:
    """What any stored compiled engine depends on besides its module's contents: versions, GPU and driver,
    layout, sizes, batch and dtypes."""
    cfg = engine.config
    cuda = engine.device.type == "cuda"
    return {
        "project": project_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(engine.device) if cuda else "cpu",
        "driver": _driver_version() if cuda else "none",
        "model": cfg.model,
        # Compiled code reads its weights with the strides it was compiled for (prepare_layout makes them
        # channels-last before any build or load).
        "layout": [channels_last(engine.unet), channels_last(engine.vae)],
        "size": [cfg.width, cfg.height],
        "unet_batch": engine.unet_batch_size,
        "frame_buffer": cfg.frame_buffer_size,
        "dtype": str(engine.dtype),
        "vae_dtype": str(engine.vae_dtype),
    }


def artifact_key(engine) -> dict:
    """An AOTInductor package holds its code for these weights: their fingerprint is part of the key."""
    return {**compiled_code_key(engine), "unet": weight_fingerprint(engine.unet), "vae": weight_fingerprint(engine.vae)}


def _runtime() -> dict:
    return {"torch": torch.__version__, "driver": _driver_version()}


def loader_crashed() -> str:
    """Why stored engines are off for this torch and driver (its loader crashed on them before), or ""."""
    marker = store.stored_root() / LOADER_CRASH_FILE
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return ""
    same = {k: recorded.get(k) for k in _runtime()} == _runtime()
    return recorded.get("reason", "its loader crashed") if same else ""


def probe_command(paths) -> list[str]:
    return [sys.executable, "-c", PROBE, *(str(p) for p in paths)]


def load_problem(paths) -> tuple[str, bool]:
    """("", False) when the packages load in a process of their own; else (why not, whether torch crashed)."""
    try:
        done = subprocess.run(probe_command(paths), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"loading them took over {PROBE_TIMEOUT_S} s", False
    if done.returncode == 0:
        return "", False
    if done.returncode < 0:
        return f"torch {torch.__version__}'s package loader crashed (signal {-done.returncode})", True
    lines = done.stderr.strip().splitlines()
    return (lines[-1] if lines else f"the loader exited with {done.returncode}"), False


class UNetCall(nn.Module):
    """The UNet as the engine calls it, with plain tensor inputs and one tensor out (what export needs)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]


class VaeEncode(nn.Module):
    def __init__(self, vae, vae_dtype, dtype):
        super().__init__()
        self.vae, self.vae_dtype, self.dtype = vae, vae_dtype, dtype

    def forward(self, images):
        return vae_encode(self.vae, images, self.vae_dtype, self.dtype)


class VaeDecode(nn.Module):
    def __init__(self, vae, vae_dtype):
        super().__init__()
        self.vae, self.vae_dtype = vae, vae_dtype

    def forward(self, latents):
        return vae_decode(self.vae, latents, self.vae_dtype)


def _modules(engine) -> dict[str, nn.Module]:
    return {"unet": UNetCall(engine.unet), "encode": VaeEncode(engine.vae, engine.vae_dtype, engine.dtype),
            "decode": VaeDecode(engine.vae, engine.vae_dtype)}


def _examples(engine) -> dict[str, tuple]:
    """Inputs of the shapes and dtypes the frame step passes (the prompt must be encoded)."""
    cfg, cond = engine.config, engine.conditioning
    fb = cfg.frame_buffer_size
    latents = example_values((engine.unet_batch_size, *engine.latent_shape), engine.device, engine.dtype)
    unet_args = (latents, engine.batch.unet_timesteps.clone(), cond.encoder_hidden_states.clone())
    if cond.added_cond_kwargs:
        unet_args += ({name: value.clone() for name, value in cond.added_cond_kwargs.items()},)
    images = example_values((fb, 3, cfg.height, cfg.width), engine.device, engine.dtype)
    return {"unet": unet_args, "encode": (images,), "decode": (latents[:fb].clone(),)}


def _inductor_configs() -> dict:
    import torch._inductor.config as inductor

    return {"aot_inductor.package_constants_in_so": False, "conv_1x1_as_mm": inductor.conv_1x1_as_mm,
            "coordinate_descent_tuning": inductor.coordinate_descent_tuning}


def build(engine, say=None) -> Path:
    """Export and compile the three pieces into the key's folder (core.accel.store)."""
    modules, examples = _modules(engine), _examples(engine)

    def writer(piece):
        def write(path: Path) -> None:
            exported = torch.export.export(modules[piece], examples[piece], strict=False)
            torch._inductor.aoti_compile_and_package(exported, package_path=str(path),
                                                      inductor_configs=_inductor_configs())
        return write

    return store.write_folder(artifact_key(engine), {f"{piece}.pt2": writer(piece) for piece in PIECES}, say)


def load(engine, folder: Path | None = None) -> dict | None:
    """The engine's accelerated parts from its key's folder, or None when there is none. A folder that does
    not hold what its key file promises, or whose packages fail to load, is removed (the caller rebuilds)."""
    folder = folder or artifact_dir(artifact_key(engine))
    try:
        files = store.checked_files(folder, [f"{piece}.pt2" for piece in PIECES])
        if files is None:
            return None
        # Once per folder (its key holds the torch version and driver): a warm start must not load twice.
        probed = (folder / PROBED_FILE).exists()
        problem, crashed = ("", False) if probed else load_problem([folder / f"{piece}.pt2" for piece in PIECES])
        if crashed:  # it would crash this process too, and every rebuild the same: off for this torch
            marker = folder.parent / LOADER_CRASH_FILE
            marker.write_text(json.dumps({**_runtime(), "reason": problem}, indent=1))
            log.warning("%s; stored compiled engines are off for this torch and driver (%s)", problem, marker)
        if problem:
            raise RuntimeError(problem)
        (folder / PROBED_FILE).touch()
        loaded = {}
        modules = _modules(engine)
        for piece in PIECES:
            path = folder / f"{piece}.pt2"
            compiled = torch._inductor.aoti_load_package(str(path))
            tensors = dict(modules[piece].named_parameters()) | dict(modules[piece].named_buffers())
            compiled.load_constants({name: tensors[name] for name in compiled.get_constant_fqns()},
                                    check_full_update=True, user_managed=True)
            loaded[piece] = compiled
    except Exception as error:  # noqa: BLE001 - a broken artifact is rebuilt, never fatal
        store.discard(folder, error)
        return None
    unet, encode, decode = loaded["unet"], loaded["encode"], loaded["decode"]

    def unet_call(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        args = (sample, timestep, encoder_hidden_states) + ((added_cond_kwargs,) if added_cond_kwargs else ())
        return (unet(*(arg.contiguous() if isinstance(arg, torch.Tensor) else arg for arg in args)),)

    # A package runs on the strides it was exported with: contiguous (a frame at the model size arrives
    # channels-last from the uint8 permute; the copy costs microseconds).
    return dict(unet=unet_call, encode_images=lambda images: encode(images.contiguous()),
                decode_latents=lambda latents: decode(latents.contiguous()), keep_alive=loaded)


def build_and_load(engine, say=None) -> dict:
    """Build, then load what was built; raises when either fails (the caller falls back to torch.compile)."""
    parts = load(engine, build(engine, say))
    if parts is None:
        raise RuntimeError("the compiled artifacts just built could not be loaded")
    return parts
