"""The UNet compiled for each batch a shared tick runs (core.accel.tick_graph), built in the background.

A shared tick of four sd-turbo streams replayed from one CUDA graph took 23.6 ms with the eager UNet and 17.5 ms
with the UNet compiled for the tick's batch (lent H100, BENCHMARKS.md). A compile takes about a minute cold,
and a tick's batch changes with the sessions (and with a similarity filter skipping one), so each row count
seen is compiled on a thread, one at a time, while the ticks go on with the eager UNet in their graphs;
``for_rows`` hands the compiled one out once it has run. A build that fails is logged and that row count stays
eager.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

log = logging.getLogger(__name__)


def compile_unet(unet):
    from core.accel.compile import configure_inductor

    configure_inductor()  # its caches, and torch.fx's tracing kept to this thread
    return torch.compile(unet, fullgraph=True, dynamic=False)


class TickUNets:
    def __init__(self, unet, compile_fn: Callable = compile_unet, max_sizes: int = 8, lock=None):
        self.unet = unet
        self.compile_fn = compile_fn
        self.max_sizes = max_sizes  # each is a compiled graph and its workspace: a bound on what ticks may ask
        self.lock = lock  # held around the second (settling) run: core.accel.compile.CAPTURE_LOCK on a GPU
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
        with self._guard:
            if rows in self.ready or rows in self._seen or len(self._seen) >= self.max_sizes:
                return self.ready.get(rows)
            self._seen.add(rows)
            args, kwargs = example()
            self._wanted.append((rows, args, kwargs))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="tick-unet-build", daemon=True)
                self._thread.start()
        return None

    def close(self) -> None:
        self.closed = True

    def wait(self, timeout_s: float) -> bool:
        """Whether every build asked for has ended within ``timeout_s`` (tests, the probe)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return thread is None or not thread.is_alive()

    def _work(self) -> None:
        while not self.closed:
            with self._guard:
                if not self._wanted:
                    return
                rows, args, kwargs = self._wanted.pop(0)
            started = time.perf_counter()
            try:
                compiled = self.compile_fn(self.unet)
                device = args[0].device
                side = torch.cuda.Stream(device) if device.type == "cuda" else None
                with torch.cuda.stream(side) if side is not None else nullcontext(), torch.no_grad():
                    for run in range(2):  # the first compiles (unlocked: it may take a minute), the second settles
                        with self.lock if run and self.lock is not None else nullcontext():
                            compiled(*args, **kwargs)
                            if side is not None:
                                side.synchronize()
            except torch.OutOfMemoryError as error:
                self._fail(rows, error)
                torch.cuda.empty_cache()
                continue
            except Exception as error:  # noqa: BLE001 - that row count stays on the eager UNet
                self._fail(rows, error)
                continue
            with self._guard:
                self.ready[rows] = compiled
            log.info("shared ticks of %d UNet rows: compiled in %.1f s, used from the next capture", rows,
                     time.perf_counter() - started)

    def _fail(self, rows: int, error: Exception) -> None:
        with self._guard:
            self.failed.add(rows)
        log.warning("compiling the UNet for shared ticks of %d rows failed (%s: %s); they stay eager", rows,
                    type(error).__name__, error)
