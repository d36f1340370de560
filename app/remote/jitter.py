"""A video frame leaves aiortc's jitter buffer as soon as its last packet (RTP marker bit) is in.

aiortc's receiver releases frame N only when a packet of frame N+1 arrives, ignoring the marker bit the sender
sets on a frame's last packet: every hop of the round trip holds each frame one frame interval (33 ms at
30 fps, twice per round trip) and the last frame of a stream never comes out (docs/remote-engine.md). This
subclass releases a frame once the packets from the buffer's start up to a marked one, all of one timestamp,
are in; anything else (audio, a frame with a packet missing) goes the library's way.

It overrides a private method, so it is used only with the aiortc versions it was checked against (the serve
extra pins them); with another it stays off and says so in the log.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CHECKED_VERSIONS = ("1.16.",)


def marker_jitter_buffer_class():
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame

    class MarkerJitterBuffer(JitterBuffer):
        def _remove_frame(self, sequence_number: int):
            if self._is_video:
                frame = self._frame_up_to_marker()
                if frame is not None:
                    return frame
            return super()._remove_frame(sequence_number)

        def _frame_up_to_marker(self):
            packets = []
            for count in range(self.capacity):
                packet = self._packets[(self._origin + count) % self.capacity]
                if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                    return None  # a gap, or an earlier frame without a marker: the library's rule
                packets.append(packet)
                if packet.marker:
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packets[0].timestamp)
            return None

    return MarkerJitterBuffer


def use_marker_jitter_buffer() -> bool:
    """Make aiortc's receivers release each video frame at its marker; False (and a log line) where this aiortc
    is not a checked version. Idempotent."""
    import aiortc
    from aiortc import rtcrtpreceiver

    if getattr(rtcrtpreceiver.JitterBuffer, "releases_at_marker", False):
        return True
    version = getattr(aiortc, "__version__", "")
    if not version.startswith(CHECKED_VERSIONS) or not hasattr(rtcrtpreceiver.JitterBuffer, "_remove_frame"):
        log.warning("aiortc %s is not a version the early frame release was checked with (%s): each frame waits "
                    "for the next one in the jitter buffer (one frame interval per hop)", version,
                    ", ".join(v + "x" for v in CHECKED_VERSIONS))
        return False
    cls = marker_jitter_buffer_class()
    cls.releases_at_marker = True
    rtcrtpreceiver.JitterBuffer = cls
    return True
