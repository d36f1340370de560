"""A guard against reference-count bugs of PySide6 6.12 on CPython < 3.12.

Seen with PySide6 6.12.0 on CPython 3.11: every ``Signal.emit()`` called from Python drops a reference
to ``True`` (its return value) that it never took, and every call from Qt into Python code (a slot run
by a click or a timer, an overridden ``paintEvent``) drops one to ``None``. These singletons start with
some thousands of references, so a window that paints and emits per frame aborts within minutes
("Fatal Python error: none_dealloc: deallocating None", or "bool_dealloc").

CPython 3.12 made the singletons immortal, which hides the bugs. For older versions
``ensure_emit_is_safe`` gives them the same property in effect: it checks for the leaks and, only if one
shows, adds 2**40 references to None, True and False (a million leaks a second would take twelve days
to use up a thousandth of them). It does nothing on fixed PySide versions or on other interpreters.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

_SPARE_REFERENCES = 1 << 40
_checked = False


class _Probe(QObject):
    fired = Signal()

    def childEvent(self, event) -> None:  # noqa: N802 - a Qt virtual, called from C++
        pass


def singletons_leak() -> bool:
    """True when emitting a signal or calling back into Python loses references to True or None."""
    probe = _Probe()
    child = QObject()
    before = sys.getrefcount(True), sys.getrefcount(None)
    for _ in range(8):
        probe.fired.emit()
        child.setParent(probe)  # each re-parent calls probe.childEvent from C++
        child.setParent(None)
    after = sys.getrefcount(True), sys.getrefcount(None)
    return after[0] < before[0] or after[1] < before[1]


def ensure_emit_is_safe() -> bool:
    """Apply the guard once if this PySide needs it; returns True when it was applied."""
    global _checked
    if _checked:
        return False
    _checked = True
    if platform.python_implementation() != "CPython" or sys.version_info >= (3, 12):
        return False
    if not singletons_leak():
        return False
    # ob_refcnt is the first field of every object in CPython < 3.12; the GIL is held here.
    for singleton in (None, True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += _SPARE_REFERENCES
    log.debug("PySide6 reference leaks on None/True detected; the singletons were pinned")
    return True
