"""The capture thread: reads the current source, follows set_source() switches, and rides out a lost
device with back-off retries while the rest of the pipeline keeps running."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from app.frame_slot import END
from app.frames import Frame
from app.sources import Source, SourceError, SourceLost

if TYPE_CHECKING:
    from app.pipeline import Pipeline


def capture_loop(pipe: "Pipeline") -> None:
    cfg = pipe.config
    _, source = pipe._take_source_change()
    opened = False
    lost = False
    delay = cfg.retry_initial_s
    index = 0
    try:
        while not pipe._stop.is_set():
            changed, wanted = pipe._take_source_change()
            if changed:
                if source is not None and source is not wanted:
                    source.close()
                source, opened, lost, delay = wanted, False, False, cfg.retry_initial_s
            if source is None:
                pipe._wake.wait(0.25)
                continue
            if not opened:
                try:
                    source.open()
                    opened = True
                except SourceError as exc:
                    if lost:  # still gone: keep trying quietly
                        delay = _back_off(pipe, source, delay)
                        continue
                    pipe.report_error(str(exc), exc)
                    source = _give_up(pipe, source)
                    continue
            try:
                image = source.read()
            except SourceLost as exc:
                if not lost:
                    pipe.report_status(f"{exc}; retrying until it is back")
                    lost = True
                opened = False
                delay = _back_off(pipe, source, delay)
                continue
            except Exception as exc:  # noqa: BLE001 - SourceError or a back-end bug: say why, keep the engine up
                message = str(exc) if isinstance(exc, SourceError) else f"{source.name} failed: {exc!r}"
                pipe.report_error(message, exc)
                source = _give_up(pipe, source)
                continue
            if lost:
                pipe.report_status(f"{source.name} is back")
                lost, delay = False, cfg.retry_initial_s
            if image is None:
                pipe.report_status(f"{source.name} ended")
                source = _give_up(pipe, source)
                pipe._in_slot.put(END)
                continue
            now = time.perf_counter()
            pipe._stats.record_input(now)
            pipe._in_slot.put(Frame(image, index, now))
            index += 1
            # A source that never blocks (a file read flat out) would otherwise keep the GIL for a whole
            # switch interval, starving the GPU thread so that lossy mode dropped nearly every frame.
            time.sleep(0)
    finally:
        if source is not None:
            source.close()


def _give_up(pipe: "Pipeline", source: Source) -> None:
    """Close a source that ended or failed and idle until set_source() brings another (or the same)."""
    source.close()
    with pipe._lock:
        if pipe._source is source and not pipe._source_changed:
            pipe._source = None
    return None


def _back_off(pipe: "Pipeline", source: Source, delay: float) -> float:
    source.close()
    pipe._wake.wait(delay)  # stop() or set_source() cut the wait short
    return min(delay * 2, pipe.config.retry_max_s)
