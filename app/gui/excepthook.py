"""Routes uncaught exceptions from any thread to the log and to the window.

Without this an exception in a Qt slot or a worker thread only prints to a terminal that a desktop
user never sees, and the window carries on in a state nobody explained.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import Callable

log = logging.getLogger("app.uncaught")

_report: Callable[[str, BaseException | None], None] | None = None


def install(report: Callable[[str, BaseException | None], None]) -> None:
    """``report`` must be safe to call from any thread (a Qt signal emit is)."""
    global _report
    _report = report
    sys.excepthook = _main_hook
    threading.excepthook = _thread_hook


def uninstall() -> None:
    global _report
    _report = None
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__


def _deliver(where: str, exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    log.error("uncaught exception in %s:\n%s", where, "".join(traceback.format_exception(exc_type, exc, tb)))
    if _report is not None:
        try:
            _report(f"Unexpected error in {where}: {exc_type.__name__}: {exc}", exc)
        except Exception:  # noqa: BLE001 - reporting must never raise from a hook
            pass


def _main_hook(exc_type, exc, tb) -> None:
    _deliver("the window", exc_type, exc, tb)


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "a thread"
    _deliver(f"thread {name}", args.exc_type, args.exc_value, args.exc_traceback)
