"""Building an engine off the pipeline's threads (loading a model takes seconds to minutes) and handing
it to the pipeline when ready; the engine already running keeps running meanwhile."""

from __future__ import annotations

import threading
from typing import Callable

from app.pipeline.engine_policy import engine_error_message, release_engine


class BackgroundLoader:
    """One load at a time counts: a newer ``load`` supersedes one still in progress, whose engine is
    released when it arrives. Talks to the pipeline through its public methods only."""

    def __init__(self, pipeline) -> None:
        self._pipeline = pipeline
        self._generation = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def load(self, factory: Callable[[], object], on_ready: Callable[[object], None] | None = None) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        pipe = self._pipeline

        def work() -> None:
            try:
                engine = factory()
            except BaseException as exc:  # noqa: BLE001 - reported, the old engine keeps running
                pipe.report_error(f"Loading the model failed: {engine_error_message(exc)}", exc)
                return
            if generation != self._generation:
                release_engine(engine)
                return  # the dropped reference is freed with this thread's frame
            pipe.set_engine(engine)
            pipe.report_status("Model ready")
            if on_ready is not None:
                on_ready(engine)

        thread = threading.Thread(target=work, name="pipeline-loader", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def take_threads(self) -> list[threading.Thread]:
        """The load threads started so far, for stop() to wait on (model loading cannot be interrupted)."""
        with self._lock:
            threads, self._threads = self._threads, []
        return threads
