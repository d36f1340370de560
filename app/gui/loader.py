"""The window's engine loader: the shared ``BackgroundLoader`` (app/pipeline/engine_loader.py) with its
callbacks turned into Qt signals, so that loading, downloading and compiling a model never freezes the
window. Cancel abandons a load (see the shared loader for why it cannot be interrupted).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from app.pipeline.engine_loader import BackgroundLoader, EngineFactory, build_engine, default_engine_factory
from core.config import StreamConfig

log = logging.getLogger(__name__)
from core.model_errors import is_explained, load_failure_reason


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
        self._background = BackgroundLoader("engine-load")
        self._busy = False
        self._generation = 0  # which load() the busy flag belongs to

    def is_busy(self) -> bool:
        return self._busy

    def load(self, config: StreamConfig, prompt: str, negative_prompt: str, setup: Callable[[Any], None] | None = None,
             factory: EngineFactory | None = None) -> None:
        """Build an engine for ``config`` and prepare it with the prompt; ``setup`` (run in the worker)
        applies the live settings (strength, seed, guidance, filter) before the engine is handed over.
        ``factory``: another than the loader's (an engine server's)."""
        self._generation += 1
        generation = self._generation
        self._set_busy(True)

        def report(*args, **kwargs) -> None:
            message, fraction = describe_progress(*args, **kwargs)
            self.progress.emit(message, -1.0 if fraction is None else fraction)

        def build(progress):
            progress("Loading the model…")
            return build_engine(config, prompt, negative_prompt, progress, setup, factory or self.factory)

        def ready(engine) -> None:
            self._done(generation)
            self.loaded.emit(engine, config)

        def failed(exc: BaseException) -> None:
            if is_explained(exc):
                log.debug("loading %s failed: %s", config.model, exc)  # the window shows and logs the message
            else:
                log.exception("loading %s failed", config.model, exc_info=exc)
            self._done(generation)
            self.failed.emit(load_failure_reason(exc), exc)

        self._background.load(build, ready, failed, report)

    def wait_for_workers(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for load threads still running (a cancelled load runs to its end)."""
        return self._background.wait(timeout_s)

    def cancel(self) -> None:
        self._generation += 1
        self._background.cancel()
        self._set_busy(False)

    def _done(self, generation: int) -> None:
        if generation == self._generation:  # an older load finishing must not clear a newer one's flag
            self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)
