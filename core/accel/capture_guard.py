"""CUDA-graph captures kept apart from the GPU work of other threads that would break them.

A capture runs with ``capture_error_mode="thread_local"``, so other threads' frames (replays, eager kernels,
copies on their own streams) go on beside it. What must not run beside it: a compile's first run (Inductor
benchmarks its kernels and synchronizes the device), a stored engine's check run, ``torch.cuda.empty_cache``,
building weights under a forked random generator. Through the real server with several sessions each of these
met a capture on the lent H100 ("operation not permitted when stream is capturing", "Offset increment outside
graph capture"): the session or the capture failed and fell back to eager.

So that work is ``work()`` (many threads at once), and a capture is ``capture()`` (alone, after the work
running now). A capture on a thread that serves frames asks with ``blocking=False``: while work runs (a compile
may take a minute) it gets ``CaptureBusy`` and runs its frame eagerly, then asks again at the next one.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class CaptureBusy(Exception):
    """Another thread's GPU work runs now; a capture asked not to wait for it."""


class CaptureGuard:
    def __init__(self):
        self._cond = threading.Condition()
        self._capturing: int | None = None  # the thread capturing now
        self._depth = 0  # its nested captures
        self._waiting = 0  # blocking captures waiting: new work waits behind them
        self._working: dict[int, int] = {}  # thread -> nested work() it is in

    def _others_working(self, me: int) -> bool:
        return any(count for thread, count in self._working.items() if thread != me)

    @contextmanager
    def capture(self, blocking: bool = True):
        me = threading.get_ident()
        with self._cond:
            if self._capturing != me:
                if not blocking and (self._capturing is not None or self._others_working(me)):
                    raise CaptureBusy("another thread's GPU work is running")
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: self._capturing is None and not self._others_working(me))
                finally:
                    self._waiting -= 1
                    self._cond.notify_all()  # work held back behind this wait may go on if it ends in an error
                self._capturing = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._capturing = None
                    self._cond.notify_all()

    @contextmanager
    def work(self):
        """GPU work that may synchronize the device: waits for a capture under way (or asked for) to end."""
        me = threading.get_ident()
        with self._cond:
            if self._capturing != me and self._working.get(me, 0) == 0:
                self._cond.wait_for(lambda: self._capturing is None and self._waiting == 0)
            self._working[me] = self._working.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._working[me] -= 1
                if not self._working[me]:
                    del self._working[me]
                self._cond.notify_all()


CAPTURE_GUARD = CaptureGuard()


def empty_cache() -> None:
    """``torch.cuda.empty_cache()`` (it frees device memory, which a capture beside it must not see)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with CAPTURE_GUARD.work():
            torch.cuda.empty_cache()
