"""``compile`` acceleration: Inductor-compiled UNet and VAE, the whole frame step in one CUDA graph.

On the lent machines eager PyTorch is bound by kernel launches (DESIGN.md), so the win comes from two
places: Inductor fuses the UNet's and VAE's small ops, and one captured CUDA graph replays every
kernel of a frame (preprocess, encode, noise, UNet, step math, decode, uint8) with a single launch.
Parameter changes reach the graph because the engine only ever overwrites its state tensors in place.
Host frames go through pinned buffers; one graph is captured per input frame size and output size.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from core.cache import cache_root

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return cache_root() / "inductor"


def configure_inductor() -> None:
    """Persistent caches (second start is fast) and the tuning flags that measured faster."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True
    # Coordinate-descent tuning multiplies the cold compile time; opt in where the wait is worth it.
    inductor.coordinate_descent_tuning = os.environ.get("LIVEDIFFUSION_COORDINATE_DESCENT", "0") == "1"


def use_compile(engine, say) -> None:
    """Inductor where it works (LIVEDIFFUSION_INDUCTOR=0 skips it), then the frame graph."""
    if os.environ.get("LIVEDIFFUSION_INDUCTOR", "1") == "1":
        try:
            compile_modules(engine, say)
        except Exception as error:  # noqa: BLE001 - the graph alone still removes the launch cost
            log.warning("Inductor failed (%s: %s); capturing eager kernels instead", type(error).__name__, error)
            restore_eager(engine)
    engine.install(frame_runner=FrameGraph(engine, say))


def compile_modules(engine, say) -> None:
    configure_inductor()
    # Static shapes: let cuDNN time its convolution algorithms once and keep the fastest.
    torch.backends.cudnn.benchmark = os.environ.get("LIVEDIFFUSION_CUDNN_BENCHMARK", "1") == "1"
    engine.unet.to(memory_format=torch.channels_last)
    engine.vae.to(memory_format=torch.channels_last)
    mode = os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default")
    say("compiling the UNet and VAE (first start takes minutes; later starts use the cache)")
    engine.install(unet=torch.compile(engine.unet, mode=mode, fullgraph=True, dynamic=False))
    for name in ("encoder", "decoder"):
        part = getattr(engine.vae, name)
        if not hasattr(part, "_orig_mod"):  # engines sharing one model compile its VAE once
            setattr(engine.vae, name, torch.compile(part, mode=mode, fullgraph=True, dynamic=False))


def restore_eager(engine) -> None:
    for name in ("encoder", "decoder"):
        part = getattr(engine.vae, name)
        if hasattr(part, "_orig_mod"):
            setattr(engine.vae, name, part._orig_mod)
    engine.restore_eager("unet", "frame_runner")


class FrameGraph:
    """The engine's frame runner: CUDA-graph replays of ``engine.frame_step``, one graph per input shape."""

    def __init__(self, engine, say, warmup_runs: int = 3):
        self.engine = engine
        self.say = say
        self.warmup_runs = warmup_runs
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def key(self, frames_u8) -> tuple:
        """One graph per input shape, output size and fit: all three are baked into a capture."""
        config = self.engine.config
        return (None if frames_u8 is None else tuple(frames_u8.shape), config.output_size, config.resize_mode)

    def __call__(self, frames_u8):
        key = self.key(frames_u8)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(frames_u8)
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
        self.say(f"capturing the frame graph for input {None if frames_u8 is None else tuple(frames_u8.shape)}")
        static_in = None if frames_u8 is None else frames_u8.clone()
        side = torch.cuda.Stream(engine.device)
        side.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(side), torch.no_grad():
            for run in range(self.warmup_runs):  # compiles, autotunes, and settles allocations
                started = time.perf_counter()
                engine.frame_step(static_in)
                torch.cuda.synchronize(engine.device)
                log.info("warm-up run %d took %.1f s", run, time.perf_counter() - started)
        torch.cuda.current_stream(engine.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad():
            static_out = engine.frame_step(static_in)
        self.pool = graph.pool()
        engine.restore_stream(saved)
        return graph, static_in, static_out
