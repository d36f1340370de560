"""Frame parallelism: one engine per GPU, frames dealt round-robin, outputs in the order the frames came.

For one denoising step every frame is independent of the others but for two pieces of state, which stay
consistent here:

- the similarity filter runs once, in front of the engines, on every frame in order (the same decisions as
  one engine); a skipped frame leaves as the last processed output before it;
- smoothing leans each frame on its engine's last output, the processed frame ``engines`` places earlier
  (one engine: the frame before), the newest one finished when it starts.

Prompt, seed, strength and the other live settings go to every engine, applied before each one's next frame.
``submit`` keeps up to two frames per engine in flight (one running, one waiting), so the GPUs never wait for
the host; the latency grows by the frames in flight. ``process`` is the one-frame-at-a-time form (no
overlap) for callers that need each frame's own output at once.
"""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np
import torch

from core import imageops
from core.live_settings import LiveSettings
from core.similarity import SimilarityFilter

_SKIPPED = object()
_STOP = object()


class _Failed:
    """A frame's result when the engine (or the filter) raised on it."""

    def __init__(self, error: BaseException):
        self.error = error


class Emitted(NamedTuple):
    tag: object  # what the caller passed with the frame
    image: np.ndarray
    skipped: bool  # the similarity filter skipped the frame: this is the last processed output again


class FrameParallelEngine:
    def __init__(self, engines: list, in_flight_per_engine: int = 2):
        if not engines:
            raise ValueError("frame parallelism needs at least one engine")
        self.engines = engines
        first = engines[0]
        self.config, self.device = first.config, first.device
        self.filter = SimilarityFilter(first.config.similarity_threshold, first.config.max_skip_frames,
                                       seed=first.config.seed)
        self.similarity_enabled = first.config.similarity_filter
        for engine in engines:
            engine.similarity_enabled = False
            engine.set_similarity_filter(False)
        self.depth = in_flight_per_engine * len(engines)
        self._filter_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._results: dict[int, object] = {}
        self._done = threading.Condition()
        self._submitted = self._emitted = self._dealt = 0
        self._tags: dict[int, object] = {}
        self._last_output = None
        self._pending_error: BaseException | None = None
        self._undelivered: list = []
        self.last_frame_skipped, self.skipped_frames, self.last_gpu_ms = False, 0, 0.0
        self._queues = [queue.Queue(maxsize=in_flight_per_engine) for _ in engines]
        self._workers = [threading.Thread(target=self._work, args=(engine, q), daemon=True,
                                          name=f"frame-parallel-{engine.device}")
                         for engine, q in zip(engines, self._queues)]
        for worker in self._workers:
            worker.start()

    # ----- what the app and run read of an engine ------------------------------------------------------

    startup = None  # with quick start: the engines' full-speed builds, one after another (ChainedBuilds)

    @property
    def components(self):
        return self.engines[0].components

    @property
    def frames_processed(self) -> int:
        return sum(engine.frames_processed for engine in self.engines)

    @property
    def acceleration(self) -> str:
        return self.engines[0].acceleration

    @property
    def acceleration_note(self) -> str:
        return self.engines[0].acceleration_note

    @property
    def stage(self) -> str:
        return self.engines[0].stage if self.startup is None else self.startup.stage()

    @property
    def parallel(self) -> str:
        return f"frame-parallel over {', '.join(str(engine.device) for engine in self.engines)}"

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        for engine in self.engines:
            engine.prepare(prompt, negative_prompt)
        self.filter.reset()

    def warm_up(self) -> None:
        for engine in self.engines:
            engine.warm_up()

    # ----- frames ------------------------------------------------------------------------------------

    def submit(self, frame, tag=None) -> list[Emitted]:
        """Queue one host frame (HxWx3 uint8); return the outputs now due, oldest first: none while
        the engines fill up, then about one per call. Blocks while every engine has its frames in flight. A frame
        that failed raises here, in order, once the frames before it are out (they come with the next call)."""
        seq = self._submitted
        self._submitted += 1
        self._tags[seq] = tag
        try:
            skip = self._should_skip(frame)
        except Exception as error:  # noqa: BLE001 - this frame's result, raised in order by _collect
            with self._done:
                self._results[seq] = _Failed(error)
            return self._collect(until=seq + 1)
        if skip:
            self.skipped_frames += 1
            with self._done:
                self._results[seq] = _SKIPPED
        else:
            self._queues[self._dealt % len(self.engines)].put((seq, frame))
            self._dealt += 1
        return self._collect(until=seq - self.depth + 1)

    def flush(self) -> list[Emitted]:
        """Every output still due, in order."""
        return self._collect(until=self._submitted)

    def process(self, frame):
        """One frame in, its own output out (no overlap between engines)."""
        outputs = self.submit(frame) + self.flush()
        return outputs[-1].image

    def _collect(self, until: int) -> list:
        out = []
        with self._done:
            while self._emitted < self._submitted:
                seq = self._emitted
                if seq not in self._results:
                    if seq >= until:
                        break
                    self._done.wait_for(lambda: seq in self._results)
                result = self._results.pop(seq)
                self._emitted += 1
                if isinstance(result, _Failed):  # the frames before it are out; the caller hears of it now
                    self._tags.pop(seq, None)
                    self._pending_error = result.error
                    break
                self.last_frame_skipped = result is _SKIPPED
                if result is not _SKIPPED:
                    self._last_output = result
                if self._last_output is not None:  # a skip before any output cannot happen: see _should_skip
                    out.append(Emitted(self._tags.pop(seq), self._last_output, result is _SKIPPED))
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            self._undelivered = out  # emitted before the failure: handed out with the next call
            raise error
        out, self._undelivered = self._undelivered + out, []
        return out

    def _should_skip(self, frame) -> bool:
        if not self.similarity_enabled:
            return False
        frames = imageops.as_uint8_tensor(frame)
        frames = frames if frames.ndim == 4 else frames[None]
        if self._filter_stream is None:
            skip = self.filter.should_skip_frames(frames.to(self.device))
        else:
            # On its own stream: the decision's host sync waits for this frame's copy only, not the engines.
            with torch.cuda.stream(self._filter_stream):
                skip = self.filter.should_skip_frames(frames.to(self.device, non_blocking=False))
        return skip and (self._dealt > 0)

    def _work(self, engine, jobs: queue.Queue) -> None:
        if engine.device.type == "cuda":
            torch.cuda.set_device(engine.device)  # this thread's graph replays and syncs go to its own GPU
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            seq, frame = job
            try:
                result = engine.process(frame)
                self.last_gpu_ms = engine.last_gpu_ms
            except BaseException as error:  # noqa: BLE001 - this frame's result, raised in the caller's thread
                result = _Failed(error)
            with self._done:
                self._results[seq] = result
                self._done.notify_all()

    def close(self) -> None:
        """Stop the workers (frames still waiting are dropped) and close the engines they have let go of."""
        if self.startup is not None:
            self.startup.cancel()
        for q in self._queues:
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            q.put(_STOP)
        for worker, engine in zip(self._workers, self.engines):
            worker.join(timeout=30.0)
            if worker.is_alive():  # still inside a frame: closing its engine now would pull the model from under it
                continue
            engine.close()

    # ----- live settings: every engine, the filter here ----------------------------------------------

    def set_similarity_filter(self, enabled: bool, threshold: float | None = None, max_skip_frames: int | None = None):
        self.similarity_enabled = bool(enabled)
        if threshold is not None:
            self.filter.threshold = threshold
        if max_skip_frames is not None:
            self.filter.max_skip_frames = max_skip_frames


class ChainedBuilds:
    """The engines' background builds (core.accel.staged.BackgroundBuild), one after another: the next starts
    once the last one's result has run a frame; each engine swaps its own in between two of its frames."""

    def __init__(self, builds: list):
        self.builds = builds
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._work, name="frame-parallel-builds", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _work(self) -> None:
        for build in self.builds:
            if self._cancelled.is_set():
                return
            build.start()
            # Until this GPU's compiled graph is recorded, at its first frame on the build's result: dynamo's
            # "tracing now" flag is process-wide, so the next compile tracing beside that first run made it fail
            # ("using FX to symbolically trace a dynamo-optimized function", seen on the third of four GPUs).
            while not build.settled():
                if self._cancelled.wait(0.05):
                    return

    def cancel(self) -> None:
        self._cancelled.set()
        for build in self.builds:
            build.cancel()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until every engine runs its build's result (or never will)."""
        return all(build.wait(timeout_s) for build in self.builds)

    def stage(self) -> str:
        """"full speed" once every GPU is; else the first one still on its quick path, by number."""
        for number, build in enumerate(self.builds, 1):
            stage = build.stage()
            if stage != "full speed":
                return f"{stage} (GPU {number} of {len(self.builds)})"
        return "full speed"


def _broadcast(name: str):
    def setter(self, *args, **kwargs):
        for engine in self.engines:
            getattr(engine, name)(*args, **kwargs)
    setter.__name__ = name
    setter.__doc__ = getattr(LiveSettings, name).__doc__
    return setter


for _name in [n for n in vars(LiveSettings) if not n.startswith("_") and callable(getattr(LiveSettings, n))]:
    if _name not in vars(FrameParallelEngine):
        setattr(FrameParallelEngine, _name, _broadcast(_name))
