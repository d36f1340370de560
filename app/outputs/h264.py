"""H.264 video files through PyAV (FFmpeg): NVIDIA's NVENC where the GPU has it, x264 otherwise.

H.264 in MP4 with yuv420p pixels and the index (moov atom) at the front is what browsers, Discord and
Slack previews and phones play, also while the file is still downloading. PyAV's wheels carry FFmpeg
with both encoders, so nothing outside pip is needed.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Encoders in order of preference. NVENC runs on the GPU's own encoder block, so recording takes no CPU
#: time from the capture and postprocess threads; x264 "veryfast" keeps 1080p at 60 fps within one core.
ENCODER_OPTIONS = {
    "h264_nvenc": {"preset": "p4", "rc": "vbr", "cq": "23"},
    "libx264": {"preset": "veryfast", "crf": "20"},
}
#: Containers that take H.264 (.webm would need VP8/VP9/AV1).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")
_FASTSTART = (".mp4", ".mov")  # the index moved to the front, where a browser looks for it first


class EncoderError(RuntimeError):
    """No H.264 encoder could be opened, or the file cannot be written; the message says which."""


@functools.cache
def encoder_problem(name: str) -> str | None:
    """Why the encoder ``name`` cannot run on this machine (no NVIDIA driver for NVENC, an FFmpeg build
    without it), or None. Opening a small throwaway encoder is the only reliable check: NVENC is listed
    in every PyAV wheel but opens only where a driver and an encoder block exist."""
    try:
        import av

        context = av.CodecContext.create(name, "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 30)
        context.options = dict(ENCODER_OPTIONS.get(name, {}))  # the options recordings use: refused ones fail here
        context.open()
    except Exception as exc:  # av raises its own error types per FFmpeg code; all mean "not here"
        text = str(exc) or type(exc).__name__
        return f"no NVIDIA GPU encoder and driver here ({text})" if name == "h264_nvenc" else text
    return None


def pick_encoder(preferred: tuple[str, ...] = tuple(ENCODER_OPTIONS)) -> str:
    """The first encoder in ``preferred`` that opens here; logs why a faster one was passed over."""
    reasons = []
    for name in preferred:
        problem = encoder_problem(name)
        if problem is None:
            if reasons:
                log.info("Recording with %s; %s", name, "; ".join(reasons))
            return name
        reasons.append(f"{name} is not available ({problem})")
    raise EncoderError("No H.264 encoder could be opened: " + "; ".join(reasons))


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as read back from the file itself."""

    frames: int
    width: int
    height: int
    fps: float
    codec: str = ""

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo | None:
    """Frame count, size, rate and codec of the first video stream; None when it cannot be read."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            rate = stream.average_rate or stream.base_rate or 0
            return VideoInfo(frames, stream.codec_context.width, stream.codec_context.height, float(rate),
                             stream.codec_context.name)
    except Exception:  # a broken or foreign file is "unreadable", whatever FFmpeg calls it
        return None


class H264Writer:
    """Writes RGB uint8 frames, each one frame period long, to an H.264 file of a fixed even size."""

    def __init__(self, path: Path, width: int, height: int, fps: float, encoder: str | None = None):
        import av

        if width % 2 or height % 2:
            raise EncoderError(f"H.264 (4:2:0) needs an even width and height, got {width}x{height}")
        self.encoder = encoder or pick_encoder()
        options = {"movflags": "+faststart"} if path.suffix.lower() in _FASTSTART else {}
        self._container = av.open(str(path), mode="w", options=options)
        try:
            rate = Fraction(fps).limit_denominator(1001)  # an exact rational: pts count whole frame periods
            stream = self._container.add_stream(self.encoder, rate=rate, options=dict(ENCODER_OPTIONS.get(self.encoder, {})))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = 1 / rate
        except Exception:
            self._container.close()
            raise
        self._stream = stream
        self._next_pts = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self._next_pts
        self._next_pts += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder's delayed frames and write the index; raises what the disk raised."""
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
