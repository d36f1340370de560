"""Work handed to the GPU thread, to run between two frames (engine swaps, settings that must not
change mid-batch). Each task's caller gets a Future."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable


class TaskQueue:
    def __init__(self) -> None:
        self._tasks: list[tuple[Callable[[], object], Future]] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def add(self, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        with self._lock:
            self._tasks.append((fn, future))
        return future

    def run_pending(self, on_error: Callable[[str, BaseException], None]) -> None:
        """Run what is queued, in order; a failing task's exception goes to its Future and ``on_error``."""
        with self._lock:
            tasks, self._tasks = self._tasks, []
        for fn, future in tasks:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller and the log
                future.set_exception(exc)
                on_error(f"A setting could not be applied: {exc}", exc)
