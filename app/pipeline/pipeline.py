"""The Qt-free threaded frame pipeline, shared by the GUI and the headless commands.

    capture thread --[input slot]--> GPU thread (engine.process) --[output slot]--> postprocess thread
        source.read()                                                               outputs + on_frame

Slots hold one item. By default they are lossy (a slow stage sees the newest frame, older ones are
dropped and counted) so latency stays bounded; ``PipelineConfig(lossless=True)`` makes them blocking,
so every input frame is processed once and in order (file-to-file runs).

Threading contract for users of this class (the GUI included):
- Callbacks run on pipeline threads: ``on_frame`` and ``on_finished`` on the postprocess thread,
  ``on_status`` / ``on_error`` on whichever thread noticed. A GUI must hand them over to its own thread
  (e.g. a queued Qt signal) and return quickly.
- Engine settings: call the engine's thread-safe setters directly (``pipeline.engine.update_prompt``),
  or use ``call_in_gpu_thread`` for anything that must happen between two frames.
- ``set_source``, ``add_output``/``remove_output``, ``set_engine``/``load_engine`` work while running
  and never stop the engine. Without an engine, frames pass through unchanged (``processed`` False).
- What the outputs get, also live: ``set_output_shape`` (the size frames that skip the engine are fitted
  to; None: as they come), ``set_bypass`` (send the source, so fitted, instead of the engine's frames;
  the engine stays loaded, so switching back is immediate) and ``set_output_mirror`` (flip what the
  outputs get left to right; ``on_frame`` still sees the frame unflipped).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable

from app.outputs import Output
from app.pipeline.capture import SourceReader
from app.pipeline.config import Engine, OutputShape, PipelineConfig
from app.pipeline.engine_loader import BackgroundLoader
from app.pipeline.engine_policy import (engine_error_message, flush_engine, frames_per_call, free_gpu_memory,
                                        passthrough, release_engine, run_engine)
from app.pipeline.frames import Frame, OutputFrame
from app.pipeline.output_set import OutputSet
from app.pipeline.reporting import Reporter
from app.pipeline.slots import END, FrameSlot, SlotClosed
from app.pipeline.stats import PipelineStats, StatsCollector
from app.pipeline.tasks import TaskQueue
from app.sources import Source
from core.model_errors import is_out_of_memory, load_failure_message

__all__ = ["Engine", "Frame", "OutputFrame", "OutputShape", "Pipeline", "PipelineConfig", "PipelineStats"]

log = logging.getLogger(__name__)


class Pipeline(Reporter):
    def __init__(
        self,
        engine: Engine | None = None,
        source: Source | None = None,
        config: PipelineConfig | None = None,
        *,
        on_frame: Callable[[OutputFrame], None] | None = None,
        on_error: Callable[[str, BaseException | None], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ):
        self.config = config or PipelineConfig()
        self.on_frame, self.on_error, self.on_status, self.on_finished = on_frame, on_error, on_status, on_finished
        self._engine = engine
        self._source = source
        self._source_changed = False
        self._outputs = OutputSet()
        self._tasks = TaskQueue()
        self._lock = threading.RLock()  # short critical sections on shared state
        self._lifecycle = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._gpu_thread: threading.Thread | None = None  # kept past stop(): a join can time out
        self._stopping = False
        self._loader = BackgroundLoader("pipeline-loader")
        self._stop = threading.Event()
        self._wake = threading.Event()  # interrupts back-off waits in the capture thread
        self._finished = threading.Event()
        self._engine_failures = 0
        self._stats = StatsCollector(self.config.stats_window_s)
        self._skipped = 0
        self._in_slot = FrameSlot(self.config.lossless)
        self._out_slot = FrameSlot(self.config.lossless)
        self._dropped_before = 0
        self._extra_dropped = 0  # frames discarded by the GPU thread itself (size change mid-batch)
        self.last_error: str | None = None
        self.output_shape: OutputShape | None = None
        self.bypass = False
        self.output_mirror = False

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Start the three threads. No-op when already running."""
        with self._lifecycle, self._lock:
            if self._threads:
                return
            self._stop.clear()
            self._finished.clear()
            self._in_slot = FrameSlot(self.config.lossless)
            self._out_slot = FrameSlot(self.config.lossless)
            self._stats.reset()
            loops = {"capture": Pipeline._capture_loop, "gpu": Pipeline._gpu_loop, "post": Pipeline._post_loop}
            self._threads = [
                threading.Thread(target=self._guard, args=(loop,), name=f"pipeline-{name}", daemon=True)
                for name, loop in loops.items()
            ]
            self._gpu_thread = self._threads[1]
            for thread in self._threads:
                thread.start()

    def stop(self, close_outputs: bool = True) -> None:
        """Stop and join every thread (the source is closed by its thread). Outputs are closed and
        removed unless ``close_outputs`` is False; recorders are finalized either way by close()."""
        # The lifecycle lock serialises start/stop; the state lock is not held while joining, because
        # the capture thread takes it briefly and would otherwise deadlock against this join.
        with self._lifecycle:
            with self._lock:
                threads, self._threads = self._threads, []
                self._stopping = True
                loaders = self._loader.take_threads()
                self._stop.set()
                self._wake.set()
            self._in_slot.close()
            self._out_slot.close()
            for thread in threads + loaders:
                if thread is not threading.current_thread():
                    thread.join(self.config.join_timeout_s)
                    if thread.is_alive():
                        log.warning("thread %s did not stop within %.0f s", thread.name, self.config.join_timeout_s)
            self._dropped_before += self._in_slot.dropped + self._out_slot.dropped
            self._in_slot.dropped = self._out_slot.dropped = 0
        with self._lock:
            self._stopping = False
        if not self._gpu_busy():
            self._run_pending_tasks()  # whoever waits on call_in_gpu_thread gets an answer
        if close_outputs:
            outputs = self._outputs.take_all()
            for output in outputs:
                output.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a finite source has been fully delivered to the outputs (or stop()). True if it was."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished.is_set():
            if not self.running:
                return self._finished.is_set()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._finished.wait(0.1 if left is None else min(0.1, left))
        return True

    # ------------------------------------------------------------------------------ live changes

    @property
    def source(self) -> Source | None:
        return self._source

    def set_source(self, source: Source | None) -> None:
        """Switch the source between two frames; the old one is closed by the capture thread."""
        with self._lock:
            old = self._source
            self._source, self._source_changed = source, True
            self._finished.clear()
            self._wake.set()
        if not self._threads and old is not None and old is not source:
            old.close()

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def set_engine(self, engine: Engine | None) -> None:
        """Replace the engine between two frames (None: pass frames through). The old one is released."""
        self.call_in_gpu_thread(lambda: self._install_engine(engine))

    def load_engine(self, factory: Callable[[], Engine], on_ready: Callable[[Engine], None] | None = None) -> None:
        """Build an engine with ``factory`` (slow: loads a model) on a background thread while the
        current engine keeps running, then swap it in between two frames. A failure goes to on_error
        and the current engine stays. A newer call supersedes a load still in progress. The factory
        returns a ready engine (StreamEngine.from_config(...) then prepare(prompt)). stop() waits for a
        load in progress (model loading cannot be interrupted)."""
        def ready(engine: Engine) -> None:
            self.set_engine(engine)
            self.report_status("Model ready")
            if on_ready is not None:
                on_ready(engine)

        def failed(exc: BaseException) -> None:
            self.report_error(load_failure_message(exc), exc)

        self._loader.load(lambda progress: factory(), ready, failed)

    def call_in_gpu_thread(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the GPU thread before the next frame (at once when not running)."""
        future = self._tasks.add(fn)
        if self._gpu_busy():
            self._in_slot.poke()  # a stop in progress, or a GPU thread past its join, runs them later
        else:
            self._run_pending_tasks()
        return future

    def _gpu_busy(self) -> bool:
        """Whether the GPU thread may still touch the engine: then engine swaps must wait for it."""
        with self._lock:
            gpu = self._gpu_thread
            gpu_alive = gpu is not None and gpu.is_alive() and gpu is not threading.current_thread()
            return bool(self._threads) or self._stopping or gpu_alive

    # What the outputs get (see the module's docstring); plain attributes, read once per frame.
    def set_output_shape(self, shape: OutputShape | None) -> None:
        self.output_shape = shape

    def set_bypass(self, on: bool) -> None:
        self.bypass = bool(on)

    def set_output_mirror(self, on: bool) -> None:
        self.output_mirror = bool(on)

    def add_output(self, output: Output) -> None:
        self._outputs.add(output)

    def remove_output(self, output: Output, close: bool = True) -> None:
        """Detach ``output``; it is not being written to when this returns. Closes it unless told not to."""
        self._outputs.remove(output)
        if close:
            output.close()

    @property
    def outputs(self) -> list[Output]:
        return list(self._outputs)

    def stats(self) -> PipelineStats:
        dropped = self._dropped_before + self._extra_dropped + self._in_slot.dropped + self._out_slot.dropped
        return self._stats.snapshot(dropped, self._skipped)

    # ------------------------------------------------------------------------------ threads

    def _guard(self, loop: Callable[["Pipeline"], None]) -> None:
        # Last line of defence: a bug in a loop still reaches the user instead of a silent stall.
        try:
            loop(self)
        except SlotClosed:
            pass
        except BaseException as exc:  # noqa: BLE001
            self.report_error(f"Internal error in {threading.current_thread().name}: {exc!r}", exc)

    def _take_source_change(self) -> tuple[bool, Source | None]:
        with self._lock:
            changed, self._source_changed = self._source_changed, False
            self._wake.clear()
            return changed, self._source

    def _run_pending_tasks(self) -> None:
        self._tasks.run_pending(self.report_error)

    def _install_engine(self, engine: Engine | None) -> None:
        old, self._engine = self._engine, engine
        self._engine_failures = 0
        if old is not None and old is not engine:
            release_engine(old)
            del old
            free_gpu_memory()

    # ------------------------------------------------------------------------------ capture thread
    # Follows set_source() switches; reading, retrying and giving up are the SourceReader's (capture.py).

    def _capture_loop(self) -> None:
        reader = SourceReader(self.config, self.report_status, self.report_error, self._wake.wait, self._forget_source)
        reader.switch(self._take_source_change()[1])
        index = 0
        try:
            while not self._stop.is_set():
                changed, wanted = self._take_source_change()
                if changed:
                    reader.switch(wanted)
                image = reader.read()
                if image is None:
                    continue
                if image is END:
                    self._in_slot.put(END)
                    continue
                now = time.perf_counter()
                self._stats.record_input(now)
                self._in_slot.put(Frame(image, index, now))
                index += 1
                # A source that never blocks (a file read flat out) would otherwise keep the GIL for a whole
                # switch interval, starving the GPU thread so that lossy mode dropped nearly every frame.
                time.sleep(0)
        finally:
            reader.close()

    def _forget_source(self, source: Source) -> None:
        with self._lock:
            if self._source is source and not self._source_changed:
                self._source = None

    # ------------------------------------------------------------------------------ GPU thread
    # Takes the newest captured frame, runs the engine on it between queued setting changes, and
    # hands the result on.

    def _gpu_loop(self) -> None:
        in_slot, out_slot = self._in_slot, self._out_slot
        batch: list[Frame] = []
        while not self._stop.is_set():
            if self._tasks:
                self._run_pending_tasks()
            item = in_slot.get(0.25)
            if item is None:
                continue
            if item is END:
                if batch:  # a finite source ended mid-batch: pad it, emit only the real frames
                    self._emit(self._process_frames(batch))
                    batch = []
                self._emit(self._flush_engine())
                out_slot.put(END)
                continue
            if batch and batch[-1].image.shape != item.image.shape:
                # The source changed size mid-batch (a switch): the older frames cannot share a call.
                self._extra_dropped += len(batch)
                batch = []
            batch.append(item)
            if len(batch) >= frames_per_call(self._engine):
                self._emit(self._process_frames(batch))
                batch = []

    def _emit(self, outputs: list[OutputFrame]) -> None:
        # Frames of one engine call arrive together; waiting keeps the lossy slot from discarding all but one.
        for i, out in enumerate(outputs):
            self._out_slot.put(out, wait=i < len(outputs) - 1)

    def _process_frames(self, frames: list[Frame]) -> list[OutputFrame]:
        engine, keep = self._engine, self.config.keep_input
        if engine is None or self.bypass:  # frames in flight in a frame-parallel engine are older: first out
            return self._flush_engine() + passthrough(frames, keep, self.output_shape)
        try:
            outputs = run_engine(engine, frames, keep)
        except Exception as exc:  # noqa: BLE001 - the stream must survive a bad frame or an out-of-memory
            self._engine_failed(engine, exc)
            # A frame-parallel engine still holds these frames (the failure was an earlier one's): no copy of them.
            return [] if hasattr(engine, "submit") else passthrough(frames, keep, self.output_shape)
        self._engine_failures = 0
        skipped = getattr(engine, "skipped_frames", None)
        self._skipped = int(skipped if skipped is not None else self._skipped + sum(o.skipped for o in outputs))
        return outputs

    def _flush_engine(self) -> list[OutputFrame]:
        try:
            return flush_engine(self._engine, self.config.keep_input)
        except Exception as exc:  # noqa: BLE001
            self._engine_failed(self._engine, exc)
            return []

    def _engine_failed(self, engine, exc: Exception) -> None:
        self._engine_failures += 1
        message = engine_error_message(exc, getattr(engine, "config", None))
        # After an out-of-memory the engine's buffers may be half-allocated; only a fresh load is safe,
        # and unloading gives the memory back for it. Other errors get a few chances first.
        if is_out_of_memory(exc) or self._engine_failures >= self.config.max_engine_failures:
            self._install_engine(None)
            message += " The model was unloaded and frames pass through unchanged; load it again to continue."
        self.report_error(message, exc)

    # ------------------------------------------------------------------------------ postprocess thread

    def _post_loop(self) -> None:
        out_slot = self._out_slot
        while not self._stop.is_set():
            item = out_slot.get(0.25)
            if item is None:
                continue
            if item is END:
                self._finished.set()
                if self.on_finished is not None:
                    try:
                        self.on_finished()
                    except Exception as exc:  # noqa: BLE001
                        self.report_error(f"The end-of-stream listener failed: {exc}", exc)
                continue
            self._deliver(item)

    def _deliver(self, item: OutputFrame) -> None:
        # The capture time lets a recorder place the frame on the real time line.
        image = item.image[:, ::-1] if self.output_mirror else item.image  # a view; outputs copy as they need
        for output, exc in self._outputs.write(image, item.capture_time):
            output.close()  # finalizes a recorder so what was written stays playable
            self.report_error(f"{getattr(output, 'name', 'Output')} stopped: {exc}", exc)
        item.output_time = time.perf_counter()
        if self.on_frame is not None:
            try:
                self.on_frame(item)
            except Exception as exc:  # noqa: BLE001
                self.report_error(f"The frame listener failed: {exc}", exc)
        self._stats.record_output(item.output_time, item.output_time - item.capture_time, item.gpu_ms)
