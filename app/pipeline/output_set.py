"""The outputs attached to a pipeline: added and removed from any thread, written by the postprocess thread."""

from __future__ import annotations

import threading

import numpy as np

from app.outputs import Output


class OutputSet:
    def __init__(self) -> None:
        self._outputs: list[Output] = []
        self._lock = threading.Lock()

    def add(self, output: Output) -> None:
        with self._lock:
            self._outputs = [*self._outputs, output]

    def remove(self, output: Output) -> None:
        """Detach ``output``; it is not being written to when this returns."""
        with self._lock:
            self._outputs = [o for o in self._outputs if o is not output]

    def take_all(self) -> list[Output]:
        with self._lock:
            outputs, self._outputs = self._outputs, []
        return outputs

    def __iter__(self):
        return iter(list(self._outputs))

    def write(self, image: np.ndarray, timestamp: float) -> list[tuple[Output, Exception]]:
        """Write one frame to every output; a broken one is detached (not closed) and returned with its
        error, so that one failing output never stops the others."""
        with self._lock:
            failed = []
            for output in self._outputs:
                try:
                    output.write(image, timestamp)
                except Exception as exc:  # noqa: BLE001
                    failed.append((output, exc))
            if failed:
                broken = {id(o) for o, _ in failed}
                self._outputs = [o for o in self._outputs if id(o) not in broken]
        return failed
