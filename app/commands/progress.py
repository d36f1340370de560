"""A one-line progress display on stderr for headless runs, and plain periodic lines when stderr is
not a terminal (CI logs, pipes), so logs are not flooded with carriage returns."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, total: int | None = None, stream=None, enabled: bool = True, interval_s: float | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.tty else 5.0)
        self._last_draw = 0.0
        self._line = ""
        self._lock = threading.Lock()  # messages come from pipeline threads, updates from the main thread
        self._started = time.perf_counter()

    def update(self, done: int, detail: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < self.interval_s:
            return
        self._last_draw = now
        elapsed = now - self._started
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(fraction * 24)
            head = f"[{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total}"
        else:
            head = f"{done} frames"
        line = f"{head}  {elapsed:5.1f} s  {detail}".rstrip()
        with self._lock:
            if self.tty:
                pad = max(0, len(self._line) - len(line))
                self.stream.write("\r" + line + " " * pad)
            else:
                self.stream.write(line + "\n")
            self._line = line
            self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line above the bar (status or error) without garbling it."""
        with self._lock:
            if self.tty and self._line:
                self.stream.write("\r" + " " * len(self._line) + "\r")
            self.stream.write(text + "\n")
            if self.tty and self._line and self.enabled:
                self.stream.write(self._line)
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty and self._line and self.enabled:
                self.stream.write("\n")
                self.stream.flush()
            self._line = ""
