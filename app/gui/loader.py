"""Builds a StreamEngine in a background thread, so that loading, downloading and compiling a model
never freezes the window.

Cancelling does not stop the work in the thread: PyTorch, diffusers and huggingface_hub offer no way
to interrupt a load, and a download in progress cannot be interrupted mid-file (the hub client writes
each file to completion; a later load resumes from its cache). Cancel therefore marks the job as
abandoned: its progress is no longer shown, its result is discarded when it arrives (the engine is
dropped, freeing its memory), and the engine already running keeps running throughout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from core.config import StreamConfig
from core.model_errors import OOM_ADVICE, is_out_of_memory

log = logging.getLogger(__name__)

EngineFactory = Callable[..., Any]


def default_engine_factory(config: StreamConfig, progress=None):
    from core.stream import StreamEngine

    return StreamEngine.from_config(config, progress=progress)


def describe_progress(*args, **kwargs) -> tuple[str, float | None]:
    """Turn whatever a progress callback receives into (message, fraction or None).

    The engine's callback may pass a message, a (message, fraction) pair, or (done, total) counts;
    reading all of them keeps the dialog useful while that contract settles.
    """
    message = kwargs.get("message") or kwargs.get("stage") or ""
    fraction = kwargs.get("fraction")
    numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    texts = [a for a in args if isinstance(a, str)]
    if texts and not message:
        message = texts[0]
    if fraction is None and len(numbers) >= 2 and numbers[1]:
        fraction = numbers[0] / numbers[1]
    elif fraction is None and len(numbers) == 1 and 0.0 <= numbers[0] <= 1.0:
        fraction = float(numbers[0])
    if fraction is not None:
        fraction = min(1.0, max(0.0, float(fraction)))
    return str(message), fraction


class EngineLoader(QObject):
    """One load at a time; starting a new one abandons the previous."""

    progress = Signal(str, float)  # message, fraction (negative when unknown)
    loaded = Signal(object, object)  # engine, config
    failed = Signal(str, object)  # user-facing message, the exception
    busy_changed = Signal(bool)

    def __init__(self, factory: EngineFactory | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.factory = factory or default_engine_factory
        self._job = 0
        self._lock = threading.Lock()
        self._busy = False
        self._threads: list[threading.Thread] = []

    def is_busy(self) -> bool:
        return self._busy

    def load(self, config: StreamConfig, prompt: str, negative_prompt: str, setup: Callable[[Any], None] | None = None) -> None:
        """Build an engine for ``config`` and prepare it with the prompt; ``setup`` (run in the worker)
        applies the live settings (strength, seed, guidance, filter) before the engine is handed over."""
        with self._lock:
            self._job += 1
            job = self._job
        self._set_busy(True)
        thread = threading.Thread(
            target=self._work, args=(job, config, prompt, negative_prompt, setup), name=f"engine-load-{job}", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def wait_for_workers(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for load threads still running (a cancelled load runs to its end);
        True when none is left. Quitting while one runs inside torch can abort the interpreter's exit."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def cancel(self) -> None:
        with self._lock:
            self._job += 1
        self._set_busy(False)

    def _current(self, job: int) -> bool:
        with self._lock:
            return job == self._job

    def _work(self, job: int, config: StreamConfig, prompt: str, negative: str, setup) -> None:
        def report(*args, **kwargs):
            if self._current(job):
                message, fraction = describe_progress(*args, **kwargs)
                self.progress.emit(message, -1.0 if fraction is None else fraction)

        try:
            report("Loading the model…")
            engine = self.factory(config, progress=report)
            if not self._current(job):
                return
            report("Encoding the prompt…")
            engine.prepare(prompt, negative)
            if setup is not None:
                setup(engine)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the UI, even SystemExit from a library
            if self._current(job):
                if type(exc).__name__ in _EXPLAINED:
                    # The window shows this message and its notifier logs it: once is enough.
                    log.debug("loading %s failed: %s", config.model, exc)
                else:
                    log.exception("loading %s failed", config.model)
                self._finish(job)
                self.failed.emit(user_message(exc), exc)
            return
        if self._current(job):
            self._finish(job)
            self.loaded.emit(engine, config)
        else:
            log.info("discarding the engine for %s: the load was cancelled", config.model)

    def _finish(self, job: int) -> None:
        if self._current(job):
            self._busy = False
            self.busy_changed.emit(False)

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)


# Exceptions whose message was written for users: shown as they are, logged without a traceback.
_EXPLAINED = ("ModelLoadError", "ConfigError", "SourceError", "OutputError")


def user_message(exc: BaseException) -> str:
    """A sentence for a dialog: the library's own message where it was written for users."""
    if is_out_of_memory(exc):
        return f"The GPU ran out of memory. {OOM_ADVICE}"
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ in _EXPLAINED:
        return text
    return f"{type(exc).__name__}: {text}"
