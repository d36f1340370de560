"""The UNet compiled for each batch a shared tick runs (core.accel.tick_graph), built in the background.

A shared tick of four sd-turbo streams replayed from one CUDA graph took 23.6 ms with the eager UNet and 17.5 ms
with the UNet compiled for the tick's batch (lent H100, BENCHMARKS.md). A compile takes about a minute cold,
and a tick's batch changes with the sessions (and with a similarity filter skipping one), so each row count
seen is compiled on a thread, one at a time, while the ticks go on with the eager UNet in their graphs;
``for_rows`` hands the compiled one out once it has run. A build that fails is logged and that row count stays
eager.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from core.accel.capture_guard import CAPTURE_GUARD, empty_cache
from core.accel.staged import lowered_switch_interval

log = logging.getLogger(__name__)
# One tick UNet build at a time in a process, whatever model or size it is for: each holds a model's compile (or a
# build process with a model of its own) on the GPU, and torch.fx's tracing is kept to one thread (fx_threads).
_ONE_BUILD = threading.Lock()


def compile_unet(unet, dynamic_batch: bool = False):
    from core.accel.compile import configure_inductor

    configure_inductor()  # its caches, and torch.fx's tracing kept to this thread
    # dynamic=None: static except the dimensions marked dynamic (mark_batch_dynamic); False would refuse them.
    return torch.compile(unet, fullgraph=True, dynamic=None if dynamic_batch else False)


def mark_batch_dynamic(args: tuple, kwargs: dict) -> None:
    """The rows dimension of every tensor argument symbolic: one compile serves every row count from 2 up (Dynamo
    specializes sizes 0 and 1, and a shared tick has two rows or more). No bounds: torch 2.11's Inductor failed
    on the sd-turbo UNet with ``min=2`` and no maximum ("not simple sympy type")."""
    tensors = [*args, kwargs.get("encoder_hidden_states"), *(kwargs.get("added_cond_kwargs") or {}).values()]
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            torch._dynamo.mark_dynamic(tensor, 0)


class TickUNets:
    """``dynamic_batch``: one build, its rows dimension symbolic, for every row count; else a build per count. A
    ``compile_fn`` with ``traced_elsewhere`` (core.accel.tick_store: loaded, not traced here) gets examples without
    symbolic marks, which its guards would refuse, and waits at the normal switch interval."""

    def __init__(self, unet, compile_fn: Callable = compile_unet, max_sizes: int = 8, dynamic_batch: bool = False):
        self.unet = unet
        self.dynamic_batch = dynamic_batch
        self.traced_here = not getattr(compile_fn, "traced_elsewhere", False)
        self.mark_rows = dynamic_batch and self.traced_here
        self.compile_fn = functools.partial(compile_fn, dynamic_batch=True) if dynamic_batch else compile_fn
        self.max_sizes = max_sizes  # each is a compiled graph and its workspace: a bound on what ticks may ask
        self.ready: dict[int, Callable] = {}
        self.failed: set[int] = set()
        self._wanted: list[tuple[int, tuple, dict]] = []
        self._seen: set[int] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self.closed = False

    def for_rows(self, rows: int, example: Callable[[], tuple[tuple, dict]]):
        """The UNet compiled for ``rows``, or None while it is built (the first ask starts its build;
        ``example()`` gives arguments of the tick's shapes to compile and warm it on)."""
        slot = self._slot(rows)
        with self._guard:
            if slot in self.ready or slot in self._seen or len(self._seen) >= self.max_sizes:
                return self.ready.get(slot)
            self._seen.add(slot)
            args, kwargs = example()
            if self.mark_rows:
                mark_batch_dynamic(args, kwargs)
            self._wanted.append((slot, args, kwargs))
            if self._thread is None:  # the worker clears it, under this lock, as it finds nothing left
                self._thread = threading.Thread(target=self._work, name="tick-unet-build", daemon=True)
                self._thread.start()
        return None

    def built(self, rows: int):
        """The UNet compiled for ``rows`` if it is ready (asks for nothing)."""
        with self._guard:
            return self.ready.get(self._slot(rows))

    def _slot(self, rows: int) -> int:
        """Where the build for ``rows`` is kept: 0 for the one dynamic build, else the row count."""
        return 0 if self.dynamic_batch and rows >= 2 else rows

    def close(self) -> None:
        self.closed = True

    def wait(self, timeout_s: float) -> bool:
        """Whether every build asked for has ended within ``timeout_s`` (tests, the probe)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return thread is None or not thread.is_alive()

    def _work(self) -> None:
        # A compile is Python-heavy for a minute: the ticks' thread must keep getting the interpreter (an eager
        # tick is a thousand launches, each waiting for it at the default switch interval).
        with lowered_switch_interval() if self.traced_here else nullcontext():
            self._build_wanted()

    def _build_wanted(self) -> None:
        while True:
            with self._guard:
                if not self._wanted or self.closed:
                    self._thread = None
                    return
                rows, args, kwargs = self._wanted.pop(0)
            try:
                with _ONE_BUILD:
                    started = time.perf_counter()
                    compiled = self._build(args, kwargs)
            except torch.OutOfMemoryError as error:
                self._fail(rows, error)
                empty_cache()
                continue
            except Exception as error:  # noqa: BLE001 - that row count stays on the eager UNet
                self._fail(rows, error)
                continue
            with self._guard:
                self.ready[rows] = compiled
            log.info("shared ticks of %s UNet rows: the compiled UNet ready in %.1f s, used from the next capture",
                     _rows_text(rows), time.perf_counter() - started)

    def _build(self, args: tuple, kwargs: dict):
        """The compiled (or loaded) UNet, run twice on the example: the first run compiles (it may take a minute)
        or loads its kernels, the second settles."""
        compiled = self.compile_fn(self.unet)
        device = args[0].device
        side = torch.cuda.Stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(side) if side is not None else nullcontext(), torch.no_grad():
            for _run in range(2):
                if self.closed:
                    raise RuntimeError("closed: no session uses this model any more")
                with CAPTURE_GUARD.work():  # Inductor's benchmarks synchronize the device
                    compiled(*args, **kwargs)
                    if side is not None:
                        side.synchronize()
        return compiled

    def _fail(self, rows: int, error: Exception) -> None:
        with self._guard:
            self.failed.add(rows)
        log.warning("compiling the UNet for shared ticks of %s rows failed (%s: %s); they stay eager", _rows_text(rows),
                    type(error).__name__, error)


def _rows_text(slot: int) -> str:
    return "any number of" if slot == 0 else str(slot)
