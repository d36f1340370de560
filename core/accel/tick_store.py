"""The shared ticks' UNet (core.accel.tick_graph) compiled in a process of its own and kept on disk.

Compiled in the server's process, that UNet's build took 163 s on a cold lent H100 and starved the sessions
meanwhile (a frame every few seconds: the build's Python work took the interpreter from the ticks' launches). So
it is built by ``python -m core.accel.tick_store`` beside the server, which goes on with the eager UNet in its
tick graphs, and stored as a torch.compile precompiled function (core.accel.precompiled: Dynamo's bytecode and
guards, Inductor's kernels; the weights are an argument, not part of it) with its rows dimension symbolic: one
artifact for every group of two sessions or more. The server loads it when the build ends, and at later starts
at once. The build process loads the model as the server did (the same config, the same weights layout) and
checks that its UNet has the server's key before it stores anything under it.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from core.accel import precompiled, store
from core.accel.aoti import channels_last
from core.accel.capture_guard import CAPTURE_GUARD
from core.accel.examples import example_values
from core.accel.keys import digest
from core.accel.tick_unets import mark_batch_dynamic

log = logging.getLogger(__name__)

FILE = "tick_unet.bin"
BUILD_TIMEOUT_S = 3600.0  # a cold build took 163 s on the lent H100; far beyond that is a hung process
_children: dict[str, "_BuildProcess"] = {}  # a build per key at a time, whoever asks for it
_children_lock = threading.Lock()


def tick_key(engine) -> dict:
    """The engine's precompiled key (architecture, sizes, versions, device) for the rows-symbolic UNet."""
    return {**precompiled.artifact_key(engine), "format": "precompiled-tick", "rows": "symbolic from 2"}


def example(engine, members: int = 2, mark_rows: bool = False) -> tuple:
    """The UNet's arguments for a tick of ``members`` copies of this engine (``mark_rows``: the rows dimension
    marked symbolic, to trace; never for a call of what was loaded, whose guards refuse a marked tensor)."""
    cond = engine.conditioning
    rows = members * engine.unet_batch_size
    latents = example_values((rows, *engine.latent_shape), engine.device, engine.dtype)
    timesteps = engine.batch.unet_timesteps.repeat(members)
    hidden = cond.encoder_hidden_states.repeat(members, 1, 1)
    added = None if not cond.added_cond_kwargs else {
        name: value.repeat(members, *([1] * (value.dim() - 1))) for name, value in cond.added_cond_kwargs.items()}
    args = (latents, timesteps, hidden, added)
    if mark_rows:
        mark_batch_dynamic(args, {"added_cond_kwargs": added})
    return args


def compile_tick_unet(engine):
    """Trace and compile the UNet for any tick of two rows or more (what the build process stores)."""
    if not precompiled.available():
        raise RuntimeError(f"torch {torch.__version__} cannot precompile")
    mode = os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default")
    options = {**torch._inductor.list_mode_options(mode), "guard_filter_fn": precompiled.savable_guards}
    function = torch.compile(precompiled.unet_forward, fullgraph=True, dynamic=None, options=options)
    with torch.no_grad():
        return function.aot_compile(((engine.unet, *example(engine, mark_rows=True)), {}))


def build(engine) -> Path:
    compiled = compile_tick_unet(engine)
    return store.write_folder(tick_key(engine), {FILE: lambda path: compiled.save_compiled_function(str(path))})


def load(key: dict):
    """The stored function for ``key``, or None when nothing (or nothing intact) is stored there."""
    folder = store.artifact_dir(key)
    import torch._inductor.config as inductor

    precompiled.available()  # sets the flag torch 2.11 needs
    try:
        files = store.checked_files(folder, [FILE])
        if files is None:
            return None
        with inductor.patch(compile_threads=1), open(files[FILE], "rb") as fh:  # nothing compiles: no worker pool
            return torch.compiler.load_compiled_function(fh)
    except Exception as error:  # noqa: BLE001 - a broken artifact is built again, never fatal
        store.discard(folder, error)
        return None


def bound(function, unet):
    """``function`` called as the tick graphs call a UNet (contiguous: it was built for those strides)."""

    def call(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        return (function(unet, sample.contiguous(), timestep.contiguous(), encoder_hidden_states.contiguous(),
                         added_cond_kwargs or None),)

    call.stored = function
    return call


def build_command(engine, key: dict) -> list[str]:
    spec = {"config": dataclasses.asdict(engine.config), "channels_last": channels_last(engine.unet),
            "key": digest(key)}
    return [sys.executable, "-m", "core.accel.tick_store", json.dumps(spec)]


class _BuildProcess:
    """One build process and what it printed, for everyone who waits on that key."""

    def __init__(self, command: list[str]):
        log.info("building the shared ticks' UNet in a process of its own (minutes on a first start)")
        # Below the server's priority, with its compile workers: the sessions' encoding and launches come first.
        lower = {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS} if sys.platform == "win32" else {}
        self.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, **lower)
        self.output = ""
        self.ended = threading.Event()
        threading.Thread(target=self._collect, name="tick-unet-build-process", daemon=True).start()

    def _collect(self) -> None:
        try:
            self.output, _ = self.process.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.output = f"it ran past {BUILD_TIMEOUT_S:.0f} s and was stopped"
        finally:
            self.ended.set()


def build_elsewhere(key: dict, command: list[str]) -> None:
    """Run the build process for ``key`` (or wait for the one already running) until it ends; raises
    RuntimeError with the end of its output when it fails."""
    with _children_lock:
        child = _children.get(digest(key))
        if child is None or child.ended.is_set():
            child = _children[digest(key)] = _BuildProcess(command)
    child.ended.wait()
    if child.process.returncode != 0:
        raise RuntimeError(f"the build process failed (exit {child.process.returncode}): {child.output.strip()[-800:]}")


@atexit.register
def _stop_children() -> None:
    for child in list(_children.values()):
        if child.process.poll() is None:
            child.process.kill()


class StoredTickUNet:
    """``compile_fn`` of core.accel.tick_unets.TickUNets: the stored build for ``engine``'s key, made by the build
    process first when there is none. What it needs of the engine is taken now, on the ticks' thread: the engine
    may close before the build ends."""

    def __init__(self, engine, command: list[str] | None = None):
        self.key = tick_key(engine)
        self.command = command or build_command(engine, self.key)
        self.unet = engine.unet
        self.check_args = example(engine, members=3)  # a row count it was not traced at

    def __call__(self, unet, dynamic_batch: bool = True):
        if not dynamic_batch:
            raise ValueError("the stored tick UNet serves every row count")
        function = self._checked(load(self.key))
        if function is None:
            started = time.perf_counter()
            build_elsewhere(self.key, self.command)
            function = self._checked(load(self.key))
            if function is None:
                raise RuntimeError("the build process ended, but what it stored does not load or run here")
            log.info("the shared ticks' UNet was built in %.0f s", time.perf_counter() - started)
        return bound(function, unet)

    def _checked(self, function):
        """``function`` once it ran (a guard that fails, a stale artifact: removed, for a build)."""
        if function is None:
            return None
        try:
            with CAPTURE_GUARD.work(), torch.no_grad():  # its first call loads kernels and synchronizes the device
                function(self.unet, *self.check_args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - rebuilt, never fatal
            store.discard(store.artifact_dir(self.key), error)
            return None
        return function


def main(argv: list[str] | None = None) -> int:
    """The build process: load the model as the server did, check the key, compile and store."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="tick build: %(message)s")
    spec = json.loads(argv[0])
    if hasattr(os, "nice"):  # POSIX; on Windows the server starts this process below normal priority
        os.nice(10)
    from core.accel.compile import configure_inductor, prepare_layout
    from core.config import LoraSpec, StreamConfig
    from core.models import load_components
    from core.stream import StreamEngine

    fields = spec["config"]
    config = StreamConfig(**{**fields, "loras": tuple(LoraSpec(**lora) for lora in fields.get("loras", ()))})
    engine = StreamEngine(load_components(config), config)
    if spec["channels_last"]:
        prepare_layout(engine)
    engine.prepare("")
    configure_inductor()
    if digest(tick_key(engine)) != spec["key"]:
        print("this process's UNet differs from the server's (weights layout, code or versions): nothing stored",
              file=sys.stderr)
        return 3
    print(build(engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
