"""Carries frames and events from the pipeline's worker threads to the GUI thread.

Frames are coalesced: at most one frame signal is in the GUI's event queue at any time, and the slot
always takes the newest frame. A GUI that is briefly busy (a dialog opening, a resize) therefore skips
frames instead of working through a backlog that would add latency and stall input handling.
"""

from __future__ import annotations

import threading

from typing import Callable

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal, Slot

from app.gui.display import DisplayTarget, FramePacket, make_packet


class FrameBridge(QObject):
    """``post_frame`` may be called from any thread; ``frame_ready`` fires in the GUI thread."""

    # Carries a FramePacket; the receiving slot swaps in any newer one on arrival.
    _queued = Signal(object)
    frame_ready = Signal(object)  # FramePacket
    error = Signal(str, object)  # message, the exception (or None)
    status = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._latest: FramePacket | None = None
        #: Returns where frames will be shown, read on the posting thread (see display.py).
        self.display_target: Callable[[], DisplayTarget | None] = lambda: None
        self._pending = False
        self.posted = 0
        self.delivered = 0
        self._queued.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    def post_frame(self, input_frame: np.ndarray | None, output_frame: np.ndarray | None, processed: bool = True) -> None:
        # Scaling for display happens here, on the pipeline's thread, not in the GUI.
        packet = make_packet(input_frame, output_frame, self.display_target(), processed)
        with self._lock:
            self.posted += 1
            self._latest = packet
            if self._pending:
                return
            self._pending = True
        self._queued.emit(packet)

    def post_error(self, message: str, exc: BaseException | None = None) -> None:
        # Signals crossing threads are queued by Qt already; nothing else is needed for these rare events.
        self.error.emit(message, exc)

    def post_status(self, message: str) -> None:
        self.status.emit(message)

    @Slot(object)
    def _deliver(self, packet: FramePacket) -> None:
        with self._lock:
            if self._latest is not None:
                packet = self._latest
            self._latest = None
            self._pending = False
        self.delivered += 1
        self.frame_ready.emit(packet)

    def reset(self) -> None:
        with self._lock:
            self._latest = None
