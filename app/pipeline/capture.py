"""The capture thread's hold on its source: open it, read it, ride out a lost device with back-off
retries while the rest of the pipeline keeps running, and give up (with the reason) on one that fails."""

from __future__ import annotations

from typing import Callable

import numpy as np

from app.pipeline.config import PipelineConfig
from app.pipeline.slots import END
from app.sources import Source, SourceError, SourceLost


class SourceReader:
    def __init__(self, config: PipelineConfig, report_status: Callable[[str], None],
                 report_error: Callable[[str, BaseException], None], wait: Callable[[float], object],
                 forget: Callable[[Source], None]):
        """``wait(seconds)`` sleeps unless interrupted (a stop or a source switch); ``forget(source)`` tells
        the pipeline a source was given up, so that it is not reopened until chosen again."""
        self.config = config
        self.source: Source | None = None
        self._report_status, self._report_error, self._wait, self._forget = report_status, report_error, wait, forget
        self._opened = self._lost = False
        self._delay = config.retry_initial_s

    def switch(self, source: Source | None) -> None:
        if self.source is not None and self.source is not source:
            self.source.close()
        self.source, self._opened, self._lost, self._delay = source, False, False, self.config.retry_initial_s

    def read(self) -> np.ndarray | object | None:
        """The next image; END when a finite source ended; None when there is none now (no source,
        waiting to retry a lost device, or given up)."""
        source = self.source
        if source is None:
            self._wait(0.25)
            return None
        if not self._opened:
            try:
                source.open()
                self._opened = True
            except SourceError as exc:
                if not self._lost:  # a lost device that is still gone is retried quietly
                    self._report_error(str(exc), exc)
                    self._give_up()
                else:
                    self._back_off()
                return None
        try:
            image = source.read()
        except SourceLost as exc:
            if not self._lost:
                self._report_status(f"{exc}; retrying until it is back")
                self._lost = True
            self._opened = False
            self._back_off()
            return None
        except Exception as exc:  # noqa: BLE001 - SourceError or a back-end bug: say why, keep the engine up
            message = str(exc) if isinstance(exc, SourceError) else f"{source.name} failed: {exc!r}"
            self._report_error(message, exc)
            self._give_up()
            return None
        if self._lost:
            self._report_status(f"{source.name} is back")
            self._lost, self._delay = False, self.config.retry_initial_s
        if image is None:
            self._report_status(f"{source.name} ended")
            self._give_up()
            return END
        return image

    def close(self) -> None:
        if self.source is not None:
            self.source.close()

    def _give_up(self) -> None:
        """Close a source that ended or failed and idle until another (or the same) is chosen."""
        source, self.source = self.source, None
        source.close()
        self._forget(source)

    def _back_off(self) -> None:
        self.source.close()
        self._wait(self._delay)
        self._delay = min(self._delay * 2, self.config.retry_max_s)
