"""One logging set-up for every command: one handler on the root logger, and the libraries' own
handlers removed so that each of their lines is printed once, at the level the command chose.

huggingface_hub, diffusers and transformers each attach a handler of their own to their top logger;
with ours on the root as well, every hub warning was printed twice (once plain, once formatted).
"""

from __future__ import annotations

import importlib
import logging
import sys

LIBRARIES = ("huggingface_hub", "diffusers", "transformers")
_MARK = "_livediffusion_handler"


def configure_logging(level: int, fmt: str = "%(levelname)s %(name)s: %(message)s") -> logging.Handler:
    """Install our stderr handler at ``level``, replacing the one an earlier call installed (a command
    run twice in one process, as tests do, must write to the stderr of now)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    # The handler's level, not only the root's: records of library loggers reach every handler up the
    # chain whatever the ancestors' levels are.
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    root.setLevel(min(level, logging.INFO))
    route_library_logs()
    return handler


def route_library_logs() -> None:
    """Send the libraries' records through the root handler only. Runs again after a library is
    imported, because diffusers adds its handler lazily."""
    for name in LIBRARIES:
        if name not in sys.modules:
            continue
        try:
            importlib.import_module(f"{name}.utils.logging")  # its import attaches the handler we remove
        except Exception:  # noqa: BLE001 - a library without that module keeps its defaults
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
