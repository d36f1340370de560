"""How the pipeline tells its user what happened: errors and notes, logged and handed to callbacks that
must never take a pipeline thread down with them."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("app.pipeline.pipeline")


class Reporter:
    on_error: Callable[[str, BaseException | None], None] | None = None
    on_status: Callable[[str], None] | None = None
    last_error: str | None = None

    def report_error(self, message: str, exc: BaseException | None = None) -> None:
        self.last_error = message
        log.error("%s", message, exc_info=exc)
        if self.on_error is not None:
            try:
                self.on_error(message, exc)
            except Exception:
                log.exception("the error callback failed")

    def report_status(self, message: str) -> None:
        log.info("%s", message)
        if self.on_status is not None:
            try:
                self.on_status(message)
            except Exception:
                log.exception("the status callback failed")
