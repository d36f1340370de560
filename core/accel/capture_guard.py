"""CUDA-graph captures kept apart from the GPU work of other threads that would break them.

A capture runs with ``capture_error_mode="thread_local"``, so other threads' frames (replays, eager kernels,
copies on their own streams) go on beside it. What must not run beside it: a compile's first run (Inductor
benchmarks its kernels and synchronizes the device), a stored engine's check run, ``torch.cuda.empty_cache``,
building weights under a forked random generator. Through the real server with several sessions each of these
met a capture on the lent H100 ("operation not permitted when stream is capturing", "Offset increment outside
graph capture"): the session or the capture failed and fell back to eager.

So that work is ``work()`` (many threads at once), and a capture is ``capture()`` (alone, after the work
running now). A capture on a thread that serves frames asks with ``blocking=False``: while long work runs (a
compile may take a minute) it gets ``CaptureBusy`` and runs its frame eagerly, then asks again at the next one.
Such an eager frame is ``work(short=True)``: a capture asked without blocking waits for short work that began
less than ``short_wait_s`` ago to end, instead of being refused at once, and new work waits behind it. Otherwise
sessions whose eager frames overlap, each falling back while another captures, could refuse one another's
captures for as long as they ran. Short work that runs past that (an eager frame that met a compile at a first
call) refuses captures at once again, so that it stalls no one.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


# How long after its start other threads' short work (an eager frame) is waited for by a capture asked without
# blocking: a few frames, never a stall of the server (an eager frame may meet a compile at its first call).
SHORT_WORK_WAIT_S = 0.25


class CaptureBusy(Exception):
    """Another thread's GPU work runs now; a capture asked not to wait for it."""


class CaptureGuard:
    def __init__(self, short_wait_s: float = SHORT_WORK_WAIT_S, clock=time.monotonic):
        self.short_wait_s = short_wait_s
        self.clock = clock
        self._cond = threading.Condition()
        self._capturing: int | None = None  # the thread capturing now
        self._depth = 0  # its nested captures
        self._waiting = 0  # captures waiting: new work waits behind them
        self._working: dict[int, int] = {}  # thread -> nested work() it is in
        self._long: dict[int, int] = {}  # thread -> nested work() of those that may take long
        self._since: dict[int, float] = {}  # thread -> when its outermost work() began

    def _others_working(self, me: int) -> bool:
        return any(count for thread, count in self._working.items() if thread != me)

    def _others_working_long(self, me: int) -> bool:
        return any(count for thread, count in self._long.items() if thread != me)

    def _refusal(self, me: int) -> str | None:
        """Why a capture that may not wait is refused now, if it is: another capture (under way or waiting), long
        work, or short work that began ``short_wait_s`` ago or more."""
        if self._capturing is not None or self._waiting:
            return "another thread is capturing"
        if self._others_working_long(me):
            return "another thread's GPU work is running"
        started = [since for thread, since in self._since.items() if thread != me]
        if started and self.clock() - min(started) >= self.short_wait_s:
            return "another thread's eager frame runs long (a compile at its first call?)"
        return None

    @contextmanager
    def capture(self, blocking: bool = True):
        me = threading.get_ident()
        with self._cond:
            if self._capturing != me:
                refusal = None if blocking else self._refusal(me)
                if refusal:
                    raise CaptureBusy(refusal)
                self._waiting += 1
                try:
                    while self._capturing is not None or self._others_working(me):
                        if blocking:
                            self._cond.wait()
                            continue
                        self._waiting -= 1  # not counted while it looks at the others
                        refusal = self._refusal(me)
                        self._waiting += 1
                        if refusal:
                            raise CaptureBusy(refusal)
                        started = min(since for thread, since in self._since.items() if thread != me)
                        self._cond.wait(max(0.0, self.short_wait_s - (self.clock() - started)))
                finally:
                    self._waiting -= 1
                    self._cond.notify_all()  # work held back behind this wait may go on, whatever the outcome
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
    def work(self, short: bool = False):
        """GPU work that may synchronize the device: waits for a capture under way (or asked for) to end.
        ``short``: a frame's worth (an eager frame beside a build), which a capture asked without blocking waits
        for instead of being refused."""
        me = threading.get_ident()
        with self._cond:
            if self._capturing != me and self._working.get(me, 0) == 0:
                self._cond.wait_for(lambda: self._capturing is None and self._waiting == 0)
            if not self._working.get(me):
                self._since[me] = self.clock()
            self._working[me] = self._working.get(me, 0) + 1
            if not short:
                self._long[me] = self._long.get(me, 0) + 1
                self._cond.notify_all()  # a capture waiting for short work no longer may (nested long work)
        try:
            yield
        finally:
            with self._cond:
                self._working[me] -= 1
                if not self._working[me]:
                    del self._working[me]
                    del self._since[me]
                if not short:
                    self._long[me] -= 1
                    if not self._long[me]:
                        del self._long[me]
                self._cond.notify_all()


CAPTURE_GUARD = CaptureGuard()


def empty_cache() -> None:
    """``torch.cuda.empty_cache()`` (it frees device memory, which a capture beside it must not see)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with CAPTURE_GUARD.work():
            torch.cuda.empty_cache()
