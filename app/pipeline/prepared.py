"""Engines for the other step counts, built in the background once the running one is at full speed, so that
the steps control (and a preset with another step count) switches within a frame instead of after a compile.

They share the running engine's model (weights are not loaded twice); each has its own compiled graphs and
stream state. Preparing is worth it only for a compiled engine on one GPU with room to spare
(``worth_preparing``); a change of anything but the step count and the live settings throws them away.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from app.pipeline.engine_loader import build_engine
from app.pipeline.engine_policy import release_engine
from core.model_errors import is_out_of_memory

log = logging.getLogger(__name__)

STEP_COUNTS = (1, 2, 3, 4)
MIN_FREE_GPU_BYTES = 4 * 2**30  # an engine's graphs take 1-2 GiB at 512x512; leave the running one room


def worth_preparing(engine, config) -> bool:
    """An engine that runs compiled (not merely asked to) on one CUDA GPU with ``MIN_FREE_GPU_BYTES`` free; asked
    again before each build, as the free memory shrinks."""
    device = getattr(engine, "device", None)
    if getattr(device, "type", None) != "cuda" or getattr(engine, "acceleration", None) != "compile" \
            or config.gpus > 1:
        return False
    import torch

    try:
        free, _total = torch.cuda.mem_get_info(device)
    except Exception:  # noqa: BLE001 - no answer: do not risk the running engine's memory
        return False
    return free >= MIN_FREE_GPU_BYTES


def at_full_speed(engine, startup) -> bool:
    """``engine``'s background build runs (its first frame done) with its frame graph captured, where it has one."""
    settled = getattr(startup, "settled", None)  # several GPUs' chained builds: their wait is the whole story
    if settled is not None and not settled():
        return False
    graphs = getattr(getattr(getattr(engine, "accelerated", None), "frame_runner", None), "graphs", None)
    return graphs is None or bool(graphs)


def same_but_steps(a, b) -> bool:
    """``a`` and ``b`` differ at most in the step count, the strength, how the start went and the live settings."""
    return not a.replace(t_index_list=b.t_index_list, num_inference_steps=b.num_inference_steps,
                         quick_start=b.quick_start).needs_new_engine(b)


class PreparedEngines:
    """``prepare_for(engine, config, ...)`` after an engine goes live; ``take(config)`` when the user asks for
    another one; ``clear()`` when the window closes. One background thread builds one engine at a time."""

    def __init__(self, factory: Callable[..., Any], should_prepare: Callable[[Any, Any], bool] = worth_preparing,
                 poll_s: float = 1.0):
        self.factory = factory
        self.should_prepare = should_prepare
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._ready: dict[int, tuple[Any, Any]] = {}  # step count -> (config, engine)
        self._generation = 0
        self._thread: threading.Thread | None = None
        self.building: int | None = None  # the step count being built now

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Until the worker has ended (tests; quitting waits through core.accel.staged.wait_for_builds)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return thread is None or not thread.is_alive()

    def ready_steps(self) -> list[int]:
        with self._lock:
            return sorted(self._ready)

    def take(self, config):
        """A prepared engine for ``config`` (its step count, the same model, size and acceleration), or None.
        The caller applies the prompt and live settings, as after any load."""
        with self._lock:
            entry = self._ready.get(len(config.t_index_list))
            if entry is None or not same_but_steps(entry[0], config):
                return None
            del self._ready[len(config.t_index_list)]
        return entry[1]

    def prepare_for(self, engine, config, prompt: str, negative_prompt: str, setup=None) -> None:
        """``engine`` now runs ``config``: keep the prepared engines that still match, build the missing step
        counts once it runs at full speed (one worker: a new one waits for the last to end)."""
        from core.accel.staged import track_build_thread

        with self._lock:
            self._generation += 1
            generation = self._generation
            stale = {steps: entry for steps, entry in self._ready.items()
                     if steps == len(config.t_index_list) or not same_but_steps(entry[0], config)}
            for steps in stale:
                del self._ready[steps]
            previous = self._thread
            self._thread = threading.Thread(target=self._work, name="prepare-steps", daemon=True,
                                            args=(generation, previous, engine, config, prompt, negative_prompt, setup))
            thread = self._thread
        for _config, old in stale.values():
            release_engine(old)
        track_build_thread(thread)  # quitting waits for a build inside torch, as for the engine's own
        thread.start()

    def clear(self) -> None:
        """Drop every prepared engine; a build under way is dropped when it ends."""
        with self._lock:
            self._generation += 1
            ready, self._ready = self._ready, {}
        for _config, engine in ready.values():
            release_engine(engine)

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _work(self, generation, previous, engine, config, prompt, negative_prompt, setup) -> None:
        from core.schedule import strength_to_t_index_list, t_index_list_to_strength

        if previous is not None:
            previous.join()  # one build at a time
        startup = getattr(engine, "startup", None)
        # Its own build first, and the frame that installs it, which captures its graph: a build started
        # sooner would hold that capture off (core.accel.capture_guard) and the frames would run without it.
        while startup is not None and not (startup.wait(self.poll_s) and at_full_speed(engine, startup)):
            if not self._current(generation):
                return
            if startup.wait(0):  # built, not yet running a captured graph: wait for frames
                time.sleep(self.poll_s)
        components = getattr(engine, "components", None)
        extra = {} if components is None else {"components": components}
        if getattr(engine, "closed", False) or (hasattr(engine, "components") and components is None):
            return  # swapped out meanwhile: never load its model again
        strength = t_index_list_to_strength(config.t_index_list, config.num_inference_steps)
        for steps in STEP_COUNTS:
            if not self._current(generation) or not self.should_prepare(engine, config):
                return
            with self._lock:
                if steps == len(config.t_index_list) or steps in self._ready:
                    continue
                self.building = steps
            wanted = config.replace(t_index_list=strength_to_t_index_list(strength, steps, config.num_inference_steps))
            try:
                built = self._build(wanted, prompt, negative_prompt, setup, extra)
            except Exception as exc:  # noqa: BLE001 - preparing is a bonus: the running engine is untouched
                log.info("preparing %d step(s) failed (%s: %s)%s", steps, type(exc).__name__, exc,
                         "; preparing no more" if is_out_of_memory(exc) else "")
                if is_out_of_memory(exc):
                    return
                continue
            finally:
                with self._lock:
                    self.building = None
            with self._lock:
                keep = generation == self._generation
                if keep:
                    self._ready[steps] = (wanted, built)
            if not keep:
                release_engine(built)
                return
            log.info("%d step(s) prepared: the steps control switches to it at once", steps)

    def _build(self, config, prompt, negative_prompt, setup, extra):
        """One engine on the quick path, its full-speed build done (compiled, warmed up, not yet installed: its
        first frame after ``take`` installs it and records the graph). The compile runs outside the capture lock,
        so the running engine can record a graph meanwhile."""
        from core.accel.staged import lowered_switch_interval

        with lowered_switch_interval():  # the running engine's thread keeps getting the interpreter
            built = build_engine(config, prompt, negative_prompt, None, setup,
                                 lambda c, progress=None: self.factory(c, progress=progress, **extra))
            startup = getattr(built, "startup", None)
            if startup is not None:
                startup.wait_built()
        return built
