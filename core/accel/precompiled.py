"""Compiled engines kept on disk as torch.compile's own precompiled functions (``aot_compile``).

A torch.compile start traces the model again in every process, even with Inductor's caches warm. A
precompiled function holds what tracing and compiling produced (Dynamo's bytecode and guards, Inductor's
kernels), so loading one skips both. The weights are not in it: the module is the function's first
argument and its tensors are graph inputs, so one artifact serves every checkpoint of an architecture (a
fused LoRA, another fine-tune). The key is therefore the architecture, not the weights (core.accel.aoti's
key otherwise: sizes, batch, dtypes, layout, GPU, driver, torch, this project's version).

The pieces are the UNet at the engine's batch and the VAE's two halves, each a plain function of its module.
A folder that is missing, corrupt or fails to load is rebuilt, with a log line, never a crash
(core.accel.store). PyTorch marks the API experimental; a torch without it compiles in-process as before.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from core.accel import store
from core.accel.capture_guard import CAPTURE_GUARD
from core.accel.examples import example_values
from core.accel.aoti import compiled_code_key
from core.accel.keys import config_digest
from core.vae import vae_decode, vae_encode

log = logging.getLogger(__name__)

PIECES = ("unet", "encode", "decode")
FILES = [f"{piece}.bin" for piece in PIECES]
# Guards that name a live object (its id) or a global cannot be written; the artifact is only ever called
# with the module it was built for, whose architecture the key holds, so they are dropped.
UNSAVABLE_GUARDS = {"ID_MATCH", "CLOSURE_MATCH", "WEAKREF_ALIVE", "DICT_VERSION", "NN_MODULE", "FUNCTION_MATCH",
                    "CLASS_MATCH", "MODULE_MATCH"}


@functools.cache
def available() -> bool:
    """This torch can precompile and load (checked on 2.11 and 2.13). torch 2.11 offers ``aot_compile`` only
    behind a Dynamo flag (later versions always do): it is set here, for the process, not patched and restored,
    since another thread may be building or loading meanwhile."""
    if not hasattr(torch.compiler, "load_compiled_function"):
        return False
    import torch._dynamo.config as dynamo

    if hasattr(dynamo, "enable_aot_compile"):
        dynamo.enable_aot_compile = True
    return hasattr(torch.compile(_identity), "aot_compile")


def _identity(x):
    return x


def savable_guards(entries) -> list[bool]:
    return [not (getattr(entry, "is_global", False) or entry.guard_type in UNSAVABLE_GUARDS
                 or UNSAVABLE_GUARDS & set(getattr(entry, "derived_guard_types", None) or ()))
            for entry in entries]


def unet_forward(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
    return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]


FORWARDS = {"unet": unet_forward, "encode": vae_encode, "decode": vae_decode}


@torch.no_grad()
def structure_fingerprint(module: torch.nn.Module) -> str:
    """What compiled code depends on: the config, and every tensor's name, shape, dtype and layout."""
    hasher = hashlib.sha256(config_digest(getattr(module, "config", {})).encode())
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        hasher.update(f"{name}:{tuple(tensor.shape)}:{tuple(tensor.stride())}:{tensor.dtype};".encode())
        if is_traceable_wrapper_subclass(tensor):  # quantized weights (tensor subclasses) compile differently
            hasher.update(type(tensor).__name__.encode())
    return hasher.hexdigest()[:16]


def _source_digest(engine) -> str:
    """The code the stored bytecode embodies: diffusers' UNet and VAE modules, this module and core.vae (their
    identity guards cannot be stored, so a changed source must change the key)."""
    import inspect
    import sys

    import core.vae

    hasher = hashlib.sha256()
    for module in (sys.modules[type(engine.unet).__module__], sys.modules[type(engine.vae).__module__],
                   sys.modules[__name__], core.vae):
        try:
            hasher.update(Path(inspect.getsourcefile(module)).read_bytes())
        except (OSError, TypeError):
            hasher.update(module.__name__.encode())
    return hasher.hexdigest()[:16]


def _versions() -> dict:
    import platform

    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"python": platform.python_version(), "diffusers": diffusers.__version__, "triton": triton_version}


def artifact_key(engine) -> dict:
    import torch._inductor.config as inductor

    return {**compiled_code_key(engine), **_versions(), "source": _source_digest(engine),
            "device": str(engine.device), "format": "precompiled", "unet": structure_fingerprint(engine.unet),
            "vae": structure_fingerprint(engine.vae), "mode": os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default"),
            "inductor": [inductor.conv_1x1_as_mm, inductor.coordinate_descent_tuning, inductor.max_autotune_gemm],
            "attention": os.environ.get("LIVEDIFFUSION_SDPA", "auto")}


def _arguments(engine) -> dict[str, tuple]:
    """Each piece's arguments after its module, shaped as the frame step passes them (contiguous: the
    callers below make them so, since a precompiled function runs only on the strides it was built for)."""
    cfg, cond = engine.config, engine.conditioning
    fb = cfg.frame_buffer_size
    latents = example_values((engine.unet_batch_size, *engine.latent_shape), engine.device, engine.dtype)
    added = {name: value.clone() for name, value in cond.added_cond_kwargs.items()} if cond.added_cond_kwargs else None
    images = example_values((fb, 3, cfg.height, cfg.width), engine.device, engine.dtype)
    return {"unet": (latents, engine.batch.unet_timesteps.clone(), cond.encoder_hidden_states.clone(), added),
            "encode": (images, engine.vae_dtype, engine.dtype), "decode": (latents[:fb].clone(), engine.vae_dtype)}


def _modules(engine) -> dict:
    return {"unet": engine.unet, "encode": engine.vae, "decode": engine.vae}


def storable_options() -> dict:
    """torch.compile's options for a function that will be stored: the compile mode's own options (it takes a
    mode or options, not both) and the guard filter. Raises where nothing can be stored."""
    import torch._inductor.config as inductor

    if not available():
        raise RuntimeError(f"torch {torch.__version__} cannot precompile")
    if inductor.force_disable_caches:
        raise RuntimeError("Inductor's caches are off (TORCHINDUCTOR_FORCE_DISABLE_CACHES); nothing can be stored")
    mode = os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default")
    return {**torch._inductor.list_mode_options(mode), "guard_filter_fn": savable_guards}


def compile_pieces(engine, say=None) -> dict:
    """Trace and compile the three pieces now (what torch.compile would do at their first call)."""
    options = storable_options()
    if engine.conditioning is None:
        engine.prepare("")  # the UNet's example needs the prompt tensors' shapes
    arguments, modules, compiled = _arguments(engine), _modules(engine), {}
    with torch.no_grad():
        for piece in PIECES:
            if say is not None:
                say(f"compiling the {piece} ahead of time")
            function = torch.compile(FORWARDS[piece], fullgraph=True, dynamic=False, options=options)
            compiled[piece] = function.aot_compile(((modules[piece], *arguments[piece]), {}))
    return compiled


def build(engine, say=None) -> tuple[Path | None, dict]:
    """Compile the pieces and store them under the engine's key (taken before compiling: the engine may
    change or close meanwhile); the compiled functions come back too. A failed write (a full disk) is logged
    and loses only the stored copy: (None, compiled)."""
    key = artifact_key(engine)
    compiled = compile_pieces(engine, say)
    writers = {f"{piece}.bin": (lambda path, fn=compiled[piece]: fn.save_compiled_function(str(path)))
               for piece in PIECES}
    try:
        return store.write_folder(key, writers), compiled
    except OSError as error:
        log.warning("the compiled engine could not be stored (%s: %s); the next start compiles again",
                    type(error).__name__, error)
        return None, compiled


def load(engine, folder: Path | None = None) -> dict | None:
    """The engine's accelerated parts from its key's folder, or None when nothing is stored. A folder whose
    files do not match their checksums, fail to load or fail their first run is removed (the caller rebuilds)."""
    folder = folder or store.artifact_dir(artifact_key(engine))
    import torch._inductor.config as inductor

    # Nothing is compiled here, so Inductor's pool of compile workers must not start: its processes starting up
    # beside the first frames made them 2.5x slower on the lent H100 (BENCHMARKS.md). A later build starts it.
    available()  # sets the flag torch 2.11 needs
    with inductor.patch(compile_threads=1):
        return _load(engine, folder)


def read_functions(folder: Path, names: list[str]) -> dict | None:
    """The precompiled functions stored in ``folder`` under ``names`` (their checksums checked), or None when
    nothing is stored there; raises for a file that is broken or does not load. Call it with Inductor's compile
    workers held off (``compile_threads=1``): nothing is compiled."""
    files = store.checked_files(folder, names)
    if files is None:
        return None
    functions = {}
    for name in names:
        with open(files[name], "rb") as fh:
            functions[name] = torch.compiler.load_compiled_function(fh)
    return functions


def _load(engine, folder: Path) -> dict | None:
    try:
        started = time.perf_counter()
        read = read_functions(folder, FILES)
        if read is None:
            return None
        compiled = {piece: read[f"{piece}.bin"] for piece in PIECES}
        read_s = time.perf_counter() - started
        _check(engine, compiled)
        log.info("stored engine: %.2f s to read, %.2f s for its check run", read_s,
                 time.perf_counter() - started - read_s)
        parts = as_parts(engine, compiled)
    except torch.OutOfMemoryError:
        raise  # nothing wrong with the artifact; the app reports it with its advice
    except Exception as error:  # noqa: BLE001 - a broken or stale artifact is rebuilt, never fatal
        store.discard(folder, error)
        return None
    return parts


def _check(engine, compiled: dict) -> None:
    """One call of each piece as loaded, on example inputs: a guard that no longer holds (a stale artifact)
    fails the load here, so that it is rebuilt, rather than compiling in-process at the first frame."""
    arguments, modules = _arguments(engine), _modules(engine)
    with CAPTURE_GUARD.work(), torch.no_grad():  # a first call may load kernels and synchronize the device
        for piece in PIECES:
            compiled[piece](modules[piece], *arguments[piece])


class Guarded:
    """A precompiled piece that turns into torch.compile of the same function, for good, the first time its
    guards refuse a call (inputs it was not built for): a slower start for that piece, never a failed frame."""

    def __init__(self, piece: str, compiled):
        self.piece, self.compiled, self.fallback = piece, compiled, None

    def __call__(self, *args):
        if self.fallback is None:
            try:
                return self.compiled(*args)
            except RuntimeError as error:
                if "GuardManager check failed" not in str(error):
                    raise
                log.warning("the stored %s does not fit this call (%s); compiling it in this process", self.piece,
                            str(error).splitlines()[0][:200])
                mode = os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default")
                self.fallback = torch.compile(FORWARDS[self.piece], fullgraph=True, dynamic=False, mode=mode)
        return self.fallback(*args)


def as_unet(run_unet, unet):
    """A stored UNet function (``unet_forward``'s arguments) called as diffusers calls a UNet; contiguous inputs,
    since a precompiled function runs only on the strides it was built for."""

    def unet_call(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        return (run_unet(unet, sample.contiguous(), timestep.contiguous(), encoder_hidden_states.contiguous(),
                         added_cond_kwargs or None),)

    return unet_call


def as_parts(engine, compiled: dict) -> dict:
    """The compiled pieces as ``AcceleratedParts`` fields, bound to this engine's modules."""
    unet, vae = engine.unet, engine.vae
    vae_dtype, dtype = engine.vae_dtype, engine.dtype
    run_unet, run_encode, run_decode = (Guarded(piece, compiled[piece]) for piece in PIECES)
    return dict(unet=as_unet(run_unet, unet),
                encode_images=lambda images: run_encode(vae, images.contiguous(), vae_dtype, dtype),
                decode_latents=lambda latents: run_decode(vae, latents.contiguous(), vae_dtype),
                keep_alive=compiled)


def build_and_use(engine, say=None) -> dict:
    """Build and store, and hand back the parts this process runs (the functions just compiled)."""
    _, compiled = build(engine, say)
    return as_parts(engine, compiled)
