"""The shared ticks' UNet (core.accel.tick_graph) compiled in a process of its own and kept on disk.

Compiled in the server's process, that UNet's build took 163 s on a cold lent H100 and starved the sessions
meanwhile (a frame every few seconds: the build's Python work took the interpreter from the ticks' launches). So
it is built by ``python -m core.accel.tick_store`` beside the server (core.accel.build_process: below its
priority, ended with it, failures kept), which goes on with the eager UNet in its tick graphs. It is stored as a
torch.compile precompiled function (core.accel.precompiled: Dynamo's bytecode and guards, Inductor's kernels;
the weights are an argument, not part of it) with its rows dimension symbolic: one artifact for every group of
two sessions or more. The server loads it when the build ends, and at later starts at once. The build process
loads the model as the server did (the same config, the same weights layout) and checks that its UNet has the
server's key before it stores anything under it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from core.accel import build_process, precompiled, store
from core.accel.aoti import channels_last
from core.accel.capture_guard import CAPTURE_GUARD
from core.accel.examples import example_values
from core.accel.tick_unets import mark_batch_dynamic

log = logging.getLogger(__name__)

FILE = "tick_unet.bin"


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
    options = precompiled.storable_options()
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
        with inductor.patch(compile_threads=1):  # nothing compiles: no worker pool
            read = precompiled.read_functions(folder, [FILE])
        return None if read is None else read[FILE]
    except Exception as error:  # noqa: BLE001 - a broken artifact is built again, never fatal
        store.discard(folder, error)
        return None


def bound(function, unet):
    """``function`` called as the tick graphs call a UNet."""
    call = precompiled.as_unet(function, unet)
    call.stored = function
    return call


def build_command(engine, key: dict) -> list[str]:
    spec = {"config": dataclasses.asdict(engine.config), "channels_last": channels_last(engine.unet), "key": key}
    return build_process.module_command("core.accel.tick_store", json.dumps(spec), "--exit-with-server")


class StoredTickUNet:
    """``compile_fn`` of core.accel.tick_unets.TickUNets: the stored build for ``engine``'s key, made by the build
    process first when there is none. What it needs of the engine is taken now, on the ticks' thread (the engine
    may close before the build ends); what fails here is raised on the build's thread, where it only keeps the
    ticks on the eager UNet."""

    traced_elsewhere = True  # TickUNets: no symbolic marks on the examples (the loaded guards refuse them)

    def __init__(self, engine, command: list[str] | None = None):
        self.error = None
        try:
            from core.accel.compile import configure_inductor

            configure_inductor()  # its flags are part of the key: as the build process sets them
            self.key = tick_key(engine)
            self.command = command or build_command(engine, self.key)
            self.unet = engine.unet
            self.check_args = example(engine, members=3)  # a row count it was not traced at
        except Exception as error:  # noqa: BLE001 - raised where the build would run
            self.error = error

    def __call__(self, unet, dynamic_batch: bool = True):
        if self.error is not None:
            raise self.error
        if not dynamic_batch:
            raise ValueError("the stored tick UNet serves every row count")
        function = self._checked(load(self.key))
        if function is None:
            failed = build_process.earlier_failure(self.key)
            if failed:
                raise RuntimeError(f"an earlier build failed here ({failed[-300:]}); it is tried again a day later, "
                                   f"or at once when {build_process.failure_file(self.key)} is deleted")
            started = time.perf_counter()
            build_process.run(self.key, self.command)
            function = self._checked(load(self.key))
            if function is None:  # not kept as a failure: the server's own state may refuse it (see _checked)
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
    if hasattr(os, "nice"):  # POSIX (inherited by the compile workers); Windows: started below normal priority
        os.nice(10)
    from core.accel.compile import configure_inductor, prepare_layout
    from core.config import LoraSpec, StreamConfig
    from core.models import load_components
    from core.stream import StreamEngine

    fields = spec["config"]
    config = StreamConfig(**{**fields, "loras": tuple(LoraSpec(**lora) for lora in fields.get("loras", ()))})
    try:
        engine = StreamEngine(load_components(config), config)
        if spec["channels_last"]:
            prepare_layout(engine)
        engine.prepare("")
        configure_inductor()
        key = json.loads(json.dumps(tick_key(engine)))  # as the server's came: through JSON
        if key != spec["key"]:
            differ = sorted(name for name in key.keys() | spec["key"].keys() if key.get(name) != spec["key"].get(name))
            print(f"this process's UNet key differs from the server's in {', '.join(differ)}: nothing stored",
                  file=sys.stderr)
            return build_process.KEY_MISMATCH_EXIT
        print(build(engine))
    except Exception as error:  # noqa: BLE001 - the server is told whether it may pass
        traceback.print_exc()
        return build_process.exit_code_for(error)
    return 0


if __name__ == "__main__":
    if "--exit-with-server" in sys.argv[1:]:
        build_process.exit_with_server()
    sys.exit(main())
