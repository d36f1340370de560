"""Building an engine off the caller's threads (loading a model takes seconds to minutes): the one
loader the window, the pipeline and ``run`` share.

``build_engine`` is the load itself (model, prompt, live settings); ``BackgroundLoader`` runs it on a
thread. A newer load or ``cancel()`` supersedes one in progress: PyTorch, diffusers and huggingface_hub
offer no way to interrupt a load (a download in progress finishes its file; a later load resumes from
the cache), so a superseded load runs to its end, its progress is no longer reported, and its engine is
released when it arrives. The engine already running keeps running throughout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from app.pipeline.engine_policy import release_engine
from core.model_errors import ModelLoadError

log = logging.getLogger(__name__)

EngineFactory = Callable[..., Any]  # (config, progress=None) -> engine


def default_engine_factory(config, progress=None, components=None):
    """``components``: a model already loaded (the running engine's), shared instead of loaded again."""
    from core.stream import StreamEngine

    return StreamEngine.from_config(config, progress=progress, components=components)


def remote_engine_factory(url: str, token: str, on_event: Callable[[str], None] | None = None) -> EngineFactory:
    """A factory of the engine at an engine server (``main.py serve``) in place of a local model: the config's
    model and size are the server's business; a lost server is passed through and reconnected
    (app.remote.reconnect), and ``on_event`` hears of it."""
    def build(config, progress=None, components=None):
        try:
            from app.remote.client import RemoteEngine
            from app.remote.reconnect import ReconnectingEngine
        except ImportError as exc:
            raise ModelLoadError(f"An engine server needs the remote extra, which is not installed ({exc}): "
                                 "pip install -e \".[remote]\"") from None
        if progress is not None:
            progress(f"Connecting to {url}…")
        engine = ReconnectingEngine(lambda: RemoteEngine(url, token), url, on_event=on_event)
        engine.target = (url, token)
        return engine
    return build


def build_engine(config, prompt: str, negative_prompt: str = "", progress: Callable | None = None,
                 setup: Callable[[Any], None] | None = None, factory: EngineFactory | None = None):
    """A ready engine: the model loaded (and compiled), the prompt encoded, and ``setup`` applied (the
    live settings: strength, seed, guidance, filter) before anyone sees it. Raises what the load raises."""
    say = progress or (lambda *args, **kwargs: None)
    engine = (factory or default_engine_factory)(config, progress=say)
    try:
        say("Encoding the prompt…")
        engine.prepare(prompt, negative_prompt)
        if setup is not None:
            setup(engine)
    except BaseException:
        release_engine(engine)
        raise
    return engine


class BackgroundLoader:
    """One load at a time counts; callbacks run on the load thread (a GUI hands them to its own)."""

    def __init__(self, thread_name: str = "engine-load"):
        self._thread_name = thread_name
        self._job = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def load(self, build: Callable[[Callable], Any], on_ready: Callable[[Any], None],
             on_failed: Callable[[BaseException], None], on_progress: Callable | None = None) -> None:
        """Run ``build(progress)`` on a new thread; its engine goes to ``on_ready``, its exception to
        ``on_failed``, unless a newer load or ``cancel()`` came first."""
        with self._lock:
            self._job += 1
            job = self._job
        thread = threading.Thread(target=self._work, args=(job, build, on_ready, on_failed, on_progress),
                                  name=f"{self._thread_name}-{job}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def cancel(self) -> None:
        with self._lock:
            self._job += 1

    def is_current(self, job: int) -> bool:
        with self._lock:
            return job == self._job

    def take_threads(self) -> list[threading.Thread]:
        """The load threads started so far, for a stop() to wait on."""
        with self._lock:
            threads, self._threads = self._threads, []
        return threads

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for load threads still running; True when none is left. Quitting while
        one runs inside torch can abort the interpreter's exit."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _work(self, job: int, build, on_ready, on_failed, on_progress) -> None:
        def progress(*args, **kwargs):
            if on_progress is not None and self.is_current(job):
                on_progress(*args, **kwargs)

        try:
            engine = build(progress)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the user, even SystemExit from a library
            if self.is_current(job):
                on_failed(exc)  # which logs it: once, with the caller's wording
            return
        if not self.is_current(job):
            log.info("discarding an engine whose load was superseded")
            release_engine(engine)
            return
        on_ready(engine)
