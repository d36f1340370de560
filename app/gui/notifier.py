"""How the window tells the user about problems: one object, so tests can swap it for a recorder.

The default shows non-modal message boxes (``open`` rather than ``exec``): a dialog must never block
the GUI thread, or frames would stop painting behind it and a test would hang on it.
"""

from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, parent: QWidget | None = None):
        self.parent = parent
        self._open: list[QMessageBox] = []

    def error(self, title: str, text: str, details: str = "") -> None:
        log.error("%s: %s", title, text)
        self._show(QMessageBox.Icon.Critical, title, text, details)

    def warning(self, title: str, text: str, details: str = "") -> None:
        log.warning("%s: %s", title, text)
        self._show(QMessageBox.Icon.Warning, title, text, details)

    def info(self, title: str, text: str) -> None:
        log.info("%s: %s", title, text)
        self._show(QMessageBox.Icon.Information, title, text, "")

    def error_with_choices(self, title: str, text: str, choices: list[tuple[str, Callable[[], None]]]) -> None:
        """An error box with a button per (label, action) next to Close; never blocks."""
        log.error("%s: %s", title, text)
        box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Close, self.parent)
        actions = {box.addButton(label, QMessageBox.ButtonRole.ActionRole): action for label, action in choices}
        box.buttonClicked.connect(lambda button: actions[button]() if button in actions else None)
        box.finished.connect(lambda _=0, b=box: self._closed(b))
        self._open.append(box)
        box.open()

    def _show(self, icon, title: str, text: str, details: str) -> None:
        # The same message again (a camera failing every retry) would stack identical boxes.
        for box in self._open:
            if box.windowTitle() == title and box.text() == text:
                box.raise_()
                return
        box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, self.parent)
        if details:
            box.setDetailedText(details)
        box.finished.connect(lambda _=0, b=box: self._closed(b))
        self._open.append(box)
        box.open()

    def _closed(self, box: QMessageBox) -> None:
        if box in self._open:
            self._open.remove(box)
        box.deleteLater()


class RecordingNotifier(Notifier):
    """Keeps messages in a list instead of showing them; for tests and headless checks."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.messages: list[tuple[str, str, str]] = []
        #: The buttons of the latest error_with_choices, label -> action, for a test to press.
        self.choices: dict[str, Callable[[], None]] = {}

    def _show(self, icon, title: str, text: str, details: str) -> None:
        level = {QMessageBox.Icon.Critical: "error", QMessageBox.Icon.Warning: "warning"}.get(icon, "info")
        self.messages.append((level, title, text))

    def error_with_choices(self, title: str, text: str, choices: list[tuple[str, Callable[[], None]]]) -> None:
        self.messages.append(("error", title, text))
        self.choices = dict(choices)

    def texts(self, level: str | None = None) -> list[str]:
        return [text for lvl, _, text in self.messages if level is None or lvl == level]
