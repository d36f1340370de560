"""Shared pieces of the window tests: a factory of stand-in engines, waiting, small settings.

Every window gets its own temporary settings file, a notifier that records instead of showing
dialogs, and no device discovery, so nothing depends on the machine's cameras or screens. The
``open_window`` fixture that uses these lives in conftest.py.
"""

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QStandardPaths  # noqa: E402

from app.gui.settings import AppSettings  # noqa: E402
from tools.standin import StandInEngine  # noqa: E402

QStandardPaths.setTestModeEnabled(True)
WAIT_MS = 8000


class FakeFactory:
    """Builds stand-in engines that record their setter calls; a model in ``failures`` raises instead."""

    def __init__(self, failures=None, gate: threading.Event | None = None, make=None):
        self.failures = failures or {}
        self.gate = gate
        self.make = make or StandInEngine  # (config) -> engine: a test's own stand-in
        self.built: list[StandInEngine] = []

    def __call__(self, config, progress=None, components=None):
        if progress is not None:
            progress(f"Loading {config.model}")
        if self.gate is not None and config.model == "slow/model":
            self.gate.wait(10)
        if config.model in self.failures:
            raise self.failures[config.model]
        engine = self.make(config)
        self.built.append(engine)
        return engine


def until(qtbot, condition, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def no_devices():
    return [], [], "not listed in tests"


def small(**changes) -> AppSettings:
    """Settings for a fast window: the test pattern and a small engine size."""
    values = dict(source_kind="test", width=128, height=96, model="fake/model", quality="custom", output_size="generated")
    values.update(changes)
    return AppSettings(**values)
