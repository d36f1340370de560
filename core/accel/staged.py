"""Quick start, then full speed: a build that runs beside a working engine and is swapped in between frames.

A compiled engine takes a minute or more to build cold; eager kernels captured in one CUDA graph are ready
in seconds at about half its speed. A staged start runs the quick path at once and builds the compiled
one on a thread (``BackgroundBuild``). The build hands its parts to ``engine.offer``; the GPU thread
installs them at the start of its next frame, so the stream goes on without a lost or repeated frame.

The user sees ``stage()``: "quick start, compiling ~62%" (an estimate from how long the same build took
last time on this machine, kept in the cache folder), then "full speed". A build that fails leaves the
quick path running and says why.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable

import torch

from core.accel.stored import stored_format
from core.cache import cache_root, write_atomic

log = logging.getLogger(__name__)

DEFAULT_BUILD_S = 75.0  # a cold Inductor build of sd-turbo on the lent H100 (BENCHMARKS.md)
_BUILDS: list[threading.Thread] = []
_BUILDS_LOCK = threading.Lock()
# While a build traces in Python it holds the interpreter lock, and the frame thread waits up to the switch
# interval at each reacquisition (several a frame). 0.5 ms instead of 5 ms while any build runs: on the CPU a
# frame of four torch calls next to a busy Python thread took 6.7 ms instead of 74 (BENCHMARKS.md).
BUILD_SWITCH_INTERVAL_S = 0.0005
_switch = {"builds": 0, "saved": None}


def _build_started() -> None:
    with _BUILDS_LOCK:
        if _switch["builds"] == 0:
            _switch["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch["saved"], BUILD_SWITCH_INTERVAL_S))
        _switch["builds"] += 1


def _build_ended() -> None:
    with _BUILDS_LOCK:
        _switch["builds"] -= 1
        if _switch["builds"] == 0 and _switch["saved"] is not None:
            sys.setswitchinterval(_switch["saved"])


@contextmanager
def lowered_switch_interval():
    """Any build beside running frames (this module's, or the app's prepared engines): the switch interval is
    ``BUILD_SWITCH_INTERVAL_S`` while at least one runs."""
    _build_started()
    try:
        yield
    finally:
        _build_ended()


def build_key(engine) -> str:
    """What the build time depends on: the model, sizes, batch, VAE, dtype, compile mode, GPU and torch."""
    cfg = engine.config
    gpu = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else engine.device.type
    return "|".join(str(part) for part in (
        cfg.model, f"{cfg.width}x{cfg.height}", engine.unet_batch_size, cfg.cfg_type, cfg.use_tiny_vae, engine.dtype,
        os.environ.get("LIVEDIFFUSION_COMPILE_MODE", "default"), os.environ.get("LIVEDIFFUSION_SDPA", "auto"),
        os.environ.get("LIVEDIFFUSION_AUTOTUNE_GEMM", "0"), stored_format(), gpu,
        torch.__version__))


def times_file():
    return cache_root() / "build_times.json"


def _read_times() -> dict:
    try:
        times = json.loads(times_file().read_text())
        return times if isinstance(times, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the default estimate serves


def expected_build_s(key: str) -> float:
    value = _read_times().get(key)
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_BUILD_S


def record_build_s(key: str, seconds: float) -> None:
    """Keep the measured build time for the next estimate; a cache folder that cannot be written costs
    only the estimate's accuracy."""
    times = _read_times()
    times[key] = round(seconds, 1)
    path = times_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(times, indent=1).encode())
    except OSError as error:
        log.info("could not keep the build time in %s: %s", path, error)


class BackgroundBuild:
    """Runs ``build(cancelled)`` on a thread; its result (``AcceleratedParts`` fields plus ``acceleration``) is
    offered to the engine, which installs it between two frames. ``cancelled()`` turns true when the engine
    closes; a build checks it between its stages and gives up (raising anything)."""

    def __init__(self, engine, build: Callable[[Callable[[], bool]], dict], key: str,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.build = build
        self.key = key
        self.clock = clock
        self.expected_s = expected_build_s(key)
        self.state = "waiting"  # -> building -> ready (offered) -> installed, or failed / cancelled
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.build_s: float | None = None
        self.installed_at: float | None = None
        self._installed_frames = 0  # the engine's frame count when the result was installed
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._built = threading.Event()  # the build has ended: offered, failed or dropped
        self._done = threading.Event()  # and what it made is running, or never will

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self.state == "cancelled":
                return
            self.state = "building"
            self.started_at = self.clock()
            self._thread = threading.Thread(target=self._work, name="engine-build", daemon=True)
        with _BUILDS_LOCK:
            _BUILDS[:] = [t for t in _BUILDS if t.is_alive()] + [self._thread]
        self._thread.start()

    def cancel(self) -> None:
        """The engine is closing: whatever the build makes is dropped (a compile cannot be interrupted, but
        the stages after it are skipped)."""
        with self._lock:
            if self.state == "ready":
                self._done.set()  # offered, never to be installed
            if self.state in ("waiting", "building", "ready"):
                self.state = "cancelled"
            if self._thread is None:
                self._built.set()
                self._done.set()

    def cancelled(self) -> bool:
        return self.state == "cancelled"

    def wait_built(self, timeout_s: float | None = None) -> bool:
        """Until the build has ended (its result offered, or it failed); True when it has."""
        return self._built.wait(timeout_s)

    def join(self, timeout_s: float | None = None) -> None:
        """Until the build's thread has ended."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until the build's result runs (installed at a frame) or never will; True when so."""
        return self._done.wait(timeout_s)

    def settled(self) -> bool:
        """The result has run a whole frame (the frame that installed it records its compiled graph), or never
        will run: from here no compiling or tracing of this build is left."""
        return self._done.is_set() and (self.state != "installed"
                                        or self.engine.frames_processed > self._installed_frames)

    def progress(self) -> float | None:
        """An estimate, 0 to 0.99, while building."""
        if self.state != "building" or self.started_at is None:
            return None
        return min(0.99, (self.clock() - self.started_at) / self.expected_s)

    def stage(self) -> str:
        if self.state == "installed":
            # A capture that failed after the swap put the engine on eager PyTorch (its note says why).
            return "eager (the compiled graph failed)" if self.engine.acceleration == "none" else "full speed"
        if self.state == "failed":
            return f"quick start (the full-speed build failed: {type(self.error).__name__})"
        if self.state == "ready":
            return "quick start, full speed from the next frame"
        if self.state == "building":
            return f"quick start, compiling ~{int(100 * (self.progress() or 0))}%"
        return "quick start"

    def _work(self) -> None:
        with lowered_switch_interval():
            self._run()

    def _run(self) -> None:
        try:
            parts = self.build(self.cancelled)
        except BaseException as error:  # noqa: BLE001 - the quick path keeps running; the user is told
            with self._lock:
                if self.state != "cancelled":
                    self.error, self.state = error, "failed"
                    self.engine.acceleration_note = f"full-speed build failed: {type(error).__name__}: {error}"
                    log.warning("the full-speed build failed (%s: %s); the quick path keeps running",
                                type(error).__name__, error)
            self._finish()
            return
        self.build_s = self.clock() - self.started_at
        with self._lock:  # against cancel(): an engine that closed takes nothing more
            offered = self.state != "cancelled" and self.engine.offer(on_installed=self._installed, **parts)
            if offered:
                self.state = "ready"
        if offered:
            record_build_s(self.key, self.build_s)
            self._built.set()
            self.build = None  # the views and parts it held go with the engine's install
        else:
            self._finish()

    def _finish(self) -> None:
        self.build = None
        self._built.set()
        self._done.set()

    def _installed(self) -> None:
        self.state = "installed"
        self.installed_at = self.clock()
        self._installed_frames = self.engine.frames_processed
        log.info("full speed: the background build (%.1f s) is running from this frame", self.build_s)
        self._done.set()


def track_build_thread(thread: threading.Thread) -> None:
    """A thread that builds engines elsewhere (the app's prepared step counts): waited for on exit too."""
    with _BUILDS_LOCK:
        _BUILDS[:] = [t for t in _BUILDS if t.is_alive()] + [thread]


def wait_for_builds(timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for build threads still inside torch (quitting while one compiles can abort
    the interpreter's exit); True when none is left."""
    deadline = time.monotonic() + timeout_s
    with _BUILDS_LOCK:
        threads = list(_BUILDS)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)
