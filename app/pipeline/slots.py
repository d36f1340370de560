"""A one-item hand-over point between two pipeline threads.

Lossy mode keeps only the newest item: a slow consumer sees the latest frame and older ones are
counted as dropped, so latency stays bounded by one item per stage instead of growing with a queue.
Blocking mode makes the producer wait until the consumer took the item, so nothing is lost and order
holds (file-to-file runs).
"""

from __future__ import annotations

import threading

#: Marks the end of a finite source; it travels through the slots like a frame and is never dropped.
END = object()


class SlotClosed(Exception):
    """The slot was closed while waiting: the pipeline is stopping."""


class FrameSlot:
    def __init__(self, blocking: bool = False):
        self.blocking = blocking
        self._cond = threading.Condition()
        self._item = None
        self._has_item = False
        self._closed = False
        self._poked = False
        self.dropped = 0

    def put(self, item, wait: bool = False) -> None:
        """Hand over ``item``; ``wait`` makes this one put blocking even in lossy mode.
        Raises SlotClosed if the slot closes first."""
        with self._cond:
            # END must not overwrite the last frame, so it waits for the slot even in lossy mode.
            if wait or self.blocking or item is END or (self._has_item and self._item is END):
                while self._has_item and not self._closed:
                    self._cond.wait()
            if self._closed:
                raise SlotClosed
            if self._has_item:
                self.dropped += 1
            self._item, self._has_item = item, True
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The pending item, or None after ``timeout`` or a ``poke``. Raises SlotClosed."""
        with self._cond:
            if not self._has_item and not self._closed and not self._poked:
                self._cond.wait(timeout)
            if self._has_item:
                item, self._item, self._has_item = self._item, None, False
                self._cond.notify_all()
                return item
            if self._closed:
                raise SlotClosed
            self._poked = False
            return None

    def poke(self) -> None:
        """Wake a waiting consumer without an item (it has other work, e.g. a queued task)."""
        with self._cond:
            self._poked = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
