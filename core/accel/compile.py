"""``compile`` acceleration: Inductor-compiled UNet and VAE, the whole frame step in one CUDA graph.

On the lent machines eager PyTorch is bound by kernel launches (DESIGN.md), so the win comes from two
places: Inductor fuses the UNet's and VAE's small ops, and one captured CUDA graph replays every
kernel of a frame (preprocess, encode, noise, UNet, step math, decode, uint8) with a single launch.
Parameter changes reach the graph because the engine only ever overwrites its state tensors in place.
Host frames go through pinned buffers; one graph is captured per input frame size and output size.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
import traceback
from pathlib import Path

import torch

from core.accel import aoti, fx_threads, precompiled
from core.accel.capture_guard import CAPTURE_GUARD, CaptureBusy
from core.accel.stored import stored_format
from core.accel.parts import AcceleratedParts
from core.cache import cache_root
from core.feature_reuse import unet_split_forward
from core.vae import vae_decode, vae_encode

log = logging.getLogger(__name__)

_CAPTURE_STREAMS: dict = {}


def capture_stream(device) -> "torch.cuda.Stream":
    """A capture stream on ``device``. torch.cuda.graph's own default is one stream, made on whichever GPU was
    current at its first use: a capture for another GPU (several GPUs, core.parallel) must name its own."""
    device = torch.device(device)
    if device not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[device] = torch.cuda.Stream(device)
    return _CAPTURE_STREAMS[device]


def cache_dir() -> Path:
    return cache_root() / "inductor"


def configure_inductor() -> None:
    """Persistent caches (second start is fast) and the tuning flags that measured faster."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor

    fx_threads.install()  # Inductor's traces run on the build thread beside frames and prompt changes
    inductor.conv_1x1_as_mm = True
    # Each engine (model, size, steps, feature reuse's row counts) is a few compiled graphs of the same code; a
    # long session of switching would hit Dynamo's default limit of 8 and silently run eager.
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), 64))
    # Coordinate-descent tuning multiplies the cold compile time; opt in where the wait is worth it.
    inductor.coordinate_descent_tuning = os.environ.get("LIVEDIFFUSION_COORDINATE_DESCENT", "0") == "1"
    # Timing Triton templates against cuBLAS for each matrix product, but not for the convolutions (the whole
    # of max-autotune did not finish the UNet in 9.5 minutes): a speed lever under measurement, off by default.
    inductor.max_autotune_gemm = os.environ.get("LIVEDIFFUSION_AUTOTUNE_GEMM", "0") == "1"


SDPA_SWITCHES = {"flash": "enable_flash_sdp", "cudnn": "enable_cudnn_sdp", "efficient": "enable_mem_efficient_sdp"}


def choose_attention() -> str:
    """LIVEDIFFUSION_SDPA=flash|cudnn|efficient keeps only that fused attention kernel (and the math one as
    the fallback for shapes it refuses); "auto", the default, leaves PyTorch's own order. Compiled graphs
    take the choice when they are traced, so it is set before any build and is part of the stored key."""
    choice = os.environ.get("LIVEDIFFUSION_SDPA", "auto")
    if choice in SDPA_SWITCHES:
        for name, switch in SDPA_SWITCHES.items():
            getattr(torch.backends.cuda, switch)(name == choice)
    return choice


def use_compile(engine, say, staged: bool = False) -> None:
    """Inductor where it works (LIVEDIFFUSION_INDUCTOR=0 skips it), then the frame graph.

    A compiled engine stored for this key (``stored_format``) is loaded and runs at full speed from the first
    frame. Otherwise, ``staged``: the frame graph over the eager kernels now (frames within seconds), and the
    build as ``engine.startup``, a background build the caller starts once the quick path runs; it is
    swapped in between two frames when ready (core.accel.staged).
    """
    prepare_layout(engine)
    inductor = os.environ.get("LIVEDIFFUSION_INDUCTOR", "1") == "1"
    stored = load_stored(engine, say) if inductor else None
    if stored is not None:
        engine.install(**stored, frame_runner=FrameGraph(engine, say))
        return
    if inductor and staged:
        from core.accel.staged import BackgroundBuild, build_key

        quick = FrameGraph(engine, say)
        engine.install(frame_runner=quick)
        engine.acceleration = "graph"
        engine.startup = BackgroundBuild(engine, lambda cancelled: build_compiled(engine, say, cancelled),
                                         build_key(engine))
        return
    if inductor:
        try:
            engine.install(**full_speed_parts(engine, say))
        except Exception as error:  # noqa: BLE001 - the graph alone still removes the launch cost
            log.warning("Inductor failed (%s: %s); capturing eager kernels instead", type(error).__name__, error)
            restore_eager(engine)
    engine.install(frame_runner=FrameGraph(engine, say))


def load_stored(engine, say) -> dict | None:
    """The engine's compiled parts stored by an earlier start, or None (nothing stored, or it was unusable and
    is removed for a rebuild: core.accel.store logs why)."""
    fmt = stored_format()
    if not fmt or (engine.config.feature_reuse and engine.config.denoising_steps > 1):
        return None  # feature reuse runs the split UNet, which is not stored: the staged build compiles it
    configure_inductor()
    if fmt == "precompiled" and engine.conditioning is None:
        engine.prepare("")  # the load's check runs the UNet, which needs the prompt tensors' shapes
    started = time.perf_counter()
    parts = (precompiled if fmt == "precompiled" else aoti).load(engine)
    if parts is None:
        return None
    say(f"loaded the compiled engine from the cache ({time.perf_counter() - started:.1f} s)")
    return {**parts, "unet_split": compiled_split(engine)}


def full_speed_parts(engine, say=None) -> dict:
    """The compiled parts: built and stored for the next start where that works, else ``torch.compile`` in
    this process (the reason is logged)."""
    fmt = stored_format()
    if fmt:
        configure_inductor()
        if engine.conditioning is None:
            engine.prepare("")  # the build's examples need the prompt tensors' shapes
        try:
            # Inductor's autotuning draws random inputs on the device and synchronizes it: no capture beside it
            # (a capture on the GPU thread meanwhile runs its frame eagerly instead, core.accel.capture_guard).
            with CAPTURE_GUARD.work():
                built = precompiled.build_and_use(engine, say) if fmt == "precompiled" else aoti.build_and_load(engine, say)
            return {**built, "unet_split": compiled_split(engine)}
        except Exception as error:  # noqa: BLE001 - torch.compile is as fast, only not stored
            where = traceback.extract_tb(error.__traceback__)[-1]
            log.warning("ahead-of-time compilation failed (%s: %s, at %s:%d); compiling in this process instead",
                        type(error).__name__, error, where.filename, where.lineno)
            log.debug("ahead-of-time compilation failure", exc_info=error)
    return compiled_parts(engine, say)


def compiled_split(engine):
    """Feature reuse's two UNet paths, compiled on first use (a graph per row count and path)."""
    mode = os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default")
    return torch.compile(functools.partial(unet_split_forward, engine.unet), mode=mode, dynamic=False)


def prepare_layout(engine) -> None:
    """Channels-last weights (measured faster, eager and compiled) and cuDNN's algorithm search, set before
    any graph is captured: a graph keeps reading the weights' storage, which a later layout change replaces."""
    # cuDNN's algorithm search ran at every start (1.7 s of a warm start's first UNet call on the lent H100) and
    # the frames were no faster for it (BENCHMARKS.md): off unless asked for.
    torch.backends.cudnn.benchmark = os.environ.get("LIVEDIFFUSION_CUDNN_BENCHMARK", "0") == "1"
    choose_attention()
    engine.unet.to(memory_format=torch.channels_last)
    engine.vae.to(memory_format=torch.channels_last)


def compiled_parts(engine, say=None) -> dict:
    """Inductor-compiled UNet and VAE stages as ``AcceleratedParts`` fields. Nothing the running engine uses
    changes: the UNet is wrapped, not replaced, and the VAE's compiled halves go on a copy (a few MB for
    TAESD), so a build can run in the background while the engine runs its eager kernels."""
    configure_inductor()
    mode = os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default")
    if say is not None:
        say("compiling the UNet and VAE (first start takes minutes; later starts use the cache)")
    unet = torch.compile(engine.unet, mode=mode, fullgraph=True, dynamic=False)
    unet_split = compiled_split(engine)
    vae = copy.deepcopy(engine.vae)
    for name in ("encoder", "decoder"):
        setattr(vae, name, torch.compile(getattr(vae, name), mode=mode, fullgraph=True, dynamic=False))
    vae_dtype, dtype = engine.vae_dtype, engine.dtype
    return dict(
        unet=unet,
        unet_split=unet_split,
        encode_images=lambda images: vae_encode(vae, images, vae_dtype, dtype),
        decode_latents=lambda latents: vae_decode(vae, latents, vae_dtype),
        keep_alive=vae,
    )


def build_compiled(engine, say, cancelled=lambda: False) -> dict:
    """The background half of a staged start: compile, then run the compiled parts on a view with its own
    stream state (loading their kernels, cuDNN's algorithm search) while the engine keeps running its quick
    graph, and hand back what ``engine.offer`` installs between two frames. The frame graph itself is
    recorded by the GPU thread at its first compiled frame, for the input and output it has then (one
    warm-up run and a capture: the slow parts are done here). ``cancelled()`` true: the engine closed; stop
    at the next stage and keep nothing."""
    parts = full_speed_parts(engine)
    shape = _running_input_shape(engine)
    frames = None if shape is None else torch.zeros(shape, dtype=torch.uint8, device=engine.device)
    warm = engine.view(AcceleratedParts(**parts), own_state=True)
    side = torch.cuda.Stream(engine.device)
    # With feature reuse, both kinds of frame: a refresh (every row whole) and a reuse frame (two paths).
    reuse = engine.config.feature_reuse and engine.config.denoising_steps > 1 and parts.get("unet_split") is not None
    kinds = [True, False] if reuse else [None]
    with torch.cuda.stream(side), torch.no_grad():
        for run in range(2):
            for kind in kinds:
                if cancelled():
                    raise BuildCancelled()
                warm.reuse_refresh = kind
                with CAPTURE_GUARD.work():  # Inductor's benchmarks synchronize the device: no capture beside
                    warm.frame_step(frames)
                    side.synchronize()
    return dict(parts, frame_runner=FrameGraph(engine, say, warmup_runs=1), acceleration="compile")


class BuildCancelled(Exception):
    """The engine closed while its full-speed build ran."""


def _running_input_shape(engine):
    """The input shape the engine's frame runner saw last (the model size before any frame)."""
    shape = getattr(engine.accelerated.frame_runner, "last_input_shape", None)
    if shape is None and engine.config.mode == "img2img":
        shape = (engine.config.frame_buffer_size, engine.config.height, engine.config.width, 3)
    return shape


def restore_eager(engine) -> None:
    engine.restore_eager("unet", "unet_split", "encode_images", "decode_latents", "keep_alive", "frame_runner")


class FrameGraph:
    """The engine's frame runner: CUDA-graph replays of ``engine.frame_step``, one graph per input shape."""

    def __init__(self, engine, say, warmup_runs: int = 3):
        self.engine = engine
        self.say = say
        self.warmup_runs = warmup_runs
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.last_input_shape: tuple | None = None  # what a background build warms up on

    @staticmethod
    def key_for(engine, frames_u8) -> tuple:
        """One graph per input shape, output size, fit and kind of feature-reuse frame: all are baked into a
        capture."""
        config = engine.config
        reuse = getattr(engine, "reuse_refresh", None)
        return (None if frames_u8 is None else tuple(frames_u8.shape), config.output_size, config.resize_mode,
                reuse, None if reuse is None else config.feature_reuse_depth)

    def key(self, frames_u8) -> tuple:
        return self.key_for(self.engine, frames_u8)

    def __call__(self, frames_u8):
        self.last_input_shape = None if frames_u8 is None else tuple(frames_u8.shape)
        key = self.key(frames_u8)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(frames_u8)
            except CaptureBusy:  # another thread compiles or loads (maybe for a minute): this frame runs eagerly,
                with CAPTURE_GUARD.work(short=True):  # maybe a first compiled call: no capture may run beside it
                    return self.engine.frame_step(frames_u8)
            except torch.OutOfMemoryError:
                raise  # eager would not fit either; the app reports it with its advice
            except Exception as error:  # noqa: BLE001 - compile errors surface here, at first use
                return self._fall_back(frames_u8, error)
            self.graphs[key] = entry
        graph, static_in, static_out = entry
        if static_in is not None:
            static_in.copy_(frames_u8, non_blocking=True)
        graph.replay()
        return static_out

    def _fall_back(self, frames_u8, error: Exception):
        engine = self.engine
        log.warning("compiled frame step failed (%s: %s); running eager from now on", type(error).__name__, error)
        self.say(f"compilation failed ({type(error).__name__}); running eager")
        engine.restore_stream(self._saved)
        restore_eager(engine)
        engine.acceleration = "none"
        engine.acceleration_note = f"compilation failed: {type(error).__name__}"
        return engine.frame_step(frames_u8)

    def _capture(self, frames_u8):
        engine = self.engine
        # The stream buffer must not advance during warm-up and capture: save and restore it.
        self._saved = saved = engine.snapshot_stream()
        try:
            entry = self._record(frames_u8, warm=engine, record=engine)
        finally:
            engine.restore_stream(saved)
        self.say(f"captured the frame graph for input {None if frames_u8 is None else tuple(frames_u8.shape)}")
        return entry

    def _record(self, frames_u8, warm, record):
        static_in = None if frames_u8 is None else frames_u8.clone()
        graph, static_out = record_graph(lambda: warm.frame_step(static_in), lambda: record.frame_step(static_in),
                                         self.engine.device, self.pool, self.warmup_runs, blocking=False)
        self.pool = graph.pool()
        return graph, static_in, static_out


def record_graph(warm, record, device, pool=None, warmup_runs: int = 3, blocking: bool = True):
    """``warm()`` ``warmup_runs`` times on a side stream (compiles, autotunes, settles allocations), then
    ``record()`` captured into a CUDA graph sharing ``pool``; the graph and what ``record()`` returned.
    ``blocking=False``: ``CaptureBusy`` instead of waiting for another thread's build or load
    (core.accel.capture_guard: it waits a few frames' time at most, for eager frames)."""
    # One capture at a time in the process, and none beside a build's or a load's runs, which synchronize the
    # device: the capture or they would fail.
    with CAPTURE_GUARD.capture(blocking):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for run in range(warmup_runs):
                started = time.perf_counter()
                warm()
                side.synchronize()
                log.info("warm-up run %d took %.1f s", run, time.perf_counter() - started)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the other threads' CUDA calls (frames of a running engine) stay legal meanwhile.
        with torch.cuda.graph(graph, pool=pool, stream=capture_stream(device),
                              capture_error_mode="thread_local"), torch.no_grad():
            out = record()
    return graph, out
