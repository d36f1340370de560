"""Stop signals handled like Ctrl+C: whatever asks the program to end (kill, systemctl or docker stop, a
closed terminal, logout, Ctrl+Break on Windows) finishes the outputs first instead of losing them."""

from __future__ import annotations

import signal

#: Signals that end a run the way Ctrl+C does (outputs finalized, summary printed, exit 128 + signal).
#: SIGHUP (a closed terminal or ssh session) does not exist on Windows, SIGBREAK (Ctrl+Break) only there.
STOP_SIGNALS = tuple(sig for sig in (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"))
                     if sig is not None)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so every place that copes with Ctrl+C copes with it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """While entered, the first stop signal raises ``Interrupted`` in the main thread. Later signals,
    and any signal once ``disarm()`` was called (the outputs are being finished), are only noted:
    a second Ctrl+C or a repeated SIGTERM must not cut a recording off half-written."""

    def __init__(self):
        self.signum: int | None = None
        self.armed = True
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            try:
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN:
                    continue  # ignored on purpose by whoever started us (nohup, a background job)
                signal.signal(signum, self._handle)
            except (ValueError, OSError):  # not the main thread (an embedding program), or not allowed here
                continue
            self._previous[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self.armed:
            raise Interrupted(signum)

    def disarm(self) -> None:
        self.armed = False

    def exit_code(self, interrupted: bool) -> int | None:
        """128 + the signal that stopped the run (130 for Ctrl+C), or None when nothing stopped it."""
        if self.signum is not None:
            return 128 + int(self.signum)
        return 128 + int(signal.SIGINT) if interrupted else None
