"""An engine on a server (``serve``), used like a local one: ``submit``/``flush`` as a frame-parallel engine (the
outputs come back frames later, each with its own frame's tag), ``process`` for one frame at a time, and the
live setters, which travel as data-channel messages (app.remote.protocol).

WebRTC keeps only differences between a frame's timestamps across the round trip, so the frames go out with
small irregular gaps and the client finds the one offset that maps the returned timestamps onto the ones it
sent (docs/remote-engine.md); a frame the server dropped simply never comes back.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from app.remote.jitter import use_marker_jitter_buffer
from app.remote.protocol import encode_message

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, 90000)
STEP = 2997  # about 30 fps; a multiple of 9 ticks, so that VP8's microsecond rounding keeps it exact
MAX_IN_FLIGHT = 256  # frames sent and not yet back (about 8 s); older ones are forgotten: the server dropped them
MIN_TO_LEARN = 3  # returned frames needed to learn the offset with one best fit
RELEARN_AFTER = 8  # returned frames in a row that match nothing: learn the offset again
SILENCE_S = 10.0  # frames sent and nothing back for this long: the server is gone


def gap(number: int) -> int:
    """The pts step before frame ``number``: ``STEP`` give or take up to 20 x 9 ticks, a fixed pseudo-random
    pattern, so that any few returned frames fit the sent ones at one offset only."""
    return STEP + 9 * ((number * 7919 + 13) % 41 - 20)


class RemoteError(ConnectionError):
    """The server refused the session or went away; the text says which."""


class Returned(NamedTuple):
    tag: object
    image: np.ndarray
    skipped: bool = False
    processed: bool = True  # False: the frame as sent (app.remote.reconnect, while the server is gone)


def learn_offset(returned: list[int], sent) -> int | None:
    """The offset that maps the returned timestamps onto sent ones (each hop restarts them at 0), once at least
    ``MIN_TO_LEARN`` returned frames fit one offset better than any other; None until then."""
    if len(returned) < MIN_TO_LEARN:
        return None
    scores: dict[int, int] = {}
    for p in returned[:MIN_TO_LEARN * 2]:
        for s in sent:
            offset = s - p
            if offset not in scores:
                scores[offset] = sum(q + offset in sent for q in returned)
    ranked = sorted(scores.values(), reverse=True)
    best = max(scores, key=scores.get)
    if ranked[0] < MIN_TO_LEARN or (len(ranked) > 1 and ranked[1] == ranked[0]):
        return None
    return best


class _Outgoing(MediaStreamTrack):
    kind = "video"

    def __init__(self):
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=4)

    async def recv(self):
        frame = await self.queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class RemoteEngine:
    def __init__(self, url: str, token: str, timeout_s: float = 15.0):
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s
        use_marker_jitter_buffer()  # each returned frame as soon as it is in, not one frame later
        self.device = "remote"
        self.acceleration, self.acceleration_note, self.parallel = "remote", "", f"engine at {self.url}"
        self.startup = None
        self.last_frame_skipped, self.skipped_frames, self.frames_processed, self.last_gpu_ms = False, 0, 0, 0.0
        self._sent: OrderedDict[int, object] = OrderedDict()  # pts -> tag
        self._back: list[tuple[int, np.ndarray]] = []  # returned, not yet matched
        self._offset: int | None = None
        self._misses = 0
        self._pts = 0
        self._number = 0
        self._last_back = time.monotonic()
        self._cond = threading.Condition()
        self._error: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="remote-engine", daemon=True)
        self._thread.start()
        self._location: str | None = None
        self.refused: str | None = None  # the server's last answer to a setting it did not apply
        try:
            self._call(self._connect())
        except BaseException as exc:
            self.close()
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                raise RemoteError(f"no session with {self.url} within {self.timeout_s:.0f} s") from None
            raise

    def _call(self, coroutine, timeout_s: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s or self.timeout_s)

    async def _connect(self) -> None:
        self._pc = pc = RTCPeerConnection()
        self._out = _Outgoing()
        pc.addTransceiver(self._out, direction="sendrecv")
        self._channel = pc.createDataChannel("settings")
        self._opened = asyncio.Event()
        self._channel.on("open", self._opened.set)
        self._channel.on("message", self._on_message)

        @pc.on("track")
        def on_track(track):
            asyncio.ensure_future(self._receive(track))

        @pc.on("connectionstatechange")
        def on_state():
            if pc.connectionState in ("failed", "closed"):
                self._fail(f"the connection to {self.url} {pc.connectionState}")

        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/sdp"}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(self.url + "/whip", data=pc.localDescription.sdp, headers=headers) as reply:
                    text = await reply.text()
                    if reply.status != 201:
                        raise RemoteError(f"{self.url} refused the session ({reply.status}): {text.strip()}")
                    self._location = reply.headers.get("Location")
        except aiohttp.ClientError as exc:
            raise RemoteError(f"cannot reach {self.url}: {exc}") from None
        await pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        await asyncio.wait_for(self._opened.wait(), self.timeout_s)

    def _on_message(self, message) -> None:
        if isinstance(message, str) and '"error"' in message:  # the setting is not applied; the stream goes on
            self.refused = message
            log.warning("%s refused a setting: %s", self.url, message)

    def _fail(self, reason: str) -> None:
        with self._cond:
            self._error = self._error or reason
            self._cond.notify_all()

    async def _receive(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                with self._cond:
                    self._back.append((frame.pts, frame.to_ndarray(format="rgb24")))
                    self._last_back = time.monotonic()
                    self._cond.notify_all()
        except MediaStreamError:
            self._fail("the server stopped sending")

    # ----- frames --------------------------------------------------------------------------------------

    def submit(self, frame: np.ndarray, tag=None) -> list[Returned]:
        """Send one HxWx3 uint8 frame; the frames that have come back since, oldest first. Never blocks on the
        network: when the encoder falls behind, the oldest frame not yet sent is dropped."""
        self._raise()
        with self._cond:
            if self._sent and time.monotonic() - self._last_back > SILENCE_S:
                self._error = f"nothing came back from {self.url} for {SILENCE_S:.0f} s"
                self._raise()
            if not self._sent:
                self._last_back = time.monotonic()  # the silence counts from the first frame in flight
            pts = self._pts
            self._number += 1
            self._pts += gap(self._number)
            self._sent[pts] = tag
            while len(self._sent) > MAX_IN_FLIGHT:
                self._sent.popitem(last=False)
        video = VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video.pts, video.time_base = pts, TIME_BASE
        self._loop.call_soon_threadsafe(self._enqueue, video)
        return self._collect()

    def _enqueue(self, video) -> None:
        queue = self._out.queue
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(video)

    def flush(self, timeout_s: float = 1.0) -> list[Returned]:
        """Whatever comes back within ``timeout_s`` (a frame the server dropped never does)."""
        deadline = time.monotonic() + timeout_s
        out = []
        while self._sent and time.monotonic() < deadline:
            with self._cond:
                self._cond.wait(0.02)
            out += self._collect()
        return out + self._collect()

    def process(self, frame: np.ndarray) -> np.ndarray:
        """One frame and its own output, for one-off use (a stream goes through ``submit``). Each receiving side
        releases a frame when the next one arrives, so copies follow it, spaced so that the server, which takes
        the newest frame, still sees this one first."""
        marker = object()
        returned = self.submit(frame, tag=marker)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for out in returned + self.flush(0.15):
                if out.tag is marker:
                    return out.image
            returned = self.submit(frame)
        raise RemoteError(f"the frame did not come back from {self.url}")

    def _collect(self) -> list[Returned]:
        with self._cond:
            if self._offset is None:
                self._offset = learn_offset([pts for pts, _ in self._back], self._sent)
                if self._offset is None:
                    self._back = self._back[-MAX_IN_FLIGHT:]
                    return []
            back, self._back = self._back, []
            out = []
            for pts, image in back:
                key = pts + self._offset
                if key not in self._sent:
                    self._misses += 1
                    if self._misses >= RELEARN_AFTER:  # the stream restarted or the fit was wrong
                        self._offset, self._misses = None, 0
                    continue
                self._misses = 0
                tag = self._sent.pop(key)
                for older in [p for p in self._sent if p < key]:  # dropped on the way: never coming
                    del self._sent[older]
                out.append(Returned(tag, image))
            self.frames_processed += len(out)
            return out

    def _raise(self) -> None:
        if self._error is not None:
            raise RemoteError(self._error)

    # ----- live settings ----------------------------------------------------------------------------------

    def _send(self, **changes) -> None:
        message = encode_message(**changes)
        self._loop.call_soon_threadsafe(self._channel.send, message)

    def update_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        self._send(prompt=prompt, **({} if negative_prompt is None else {"negative_prompt": negative_prompt}))

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        self.update_prompt(prompt, negative_prompt)

    def set_strength(self, strength: float) -> None:
        self._send(strength=float(strength))

    def set_seed(self, seed: int) -> None:
        self._send(seed=int(seed))

    def set_guidance(self, guidance_scale: float | None = None, delta: float | None = None) -> None:
        changes = {k: v for k, v in (("guidance", guidance_scale), ("delta", delta)) if v is not None}
        if changes:
            self._send(**changes)

    def set_smoothing(self, smoothing: float) -> None:
        self._send(smoothing=float(smoothing))

    def set_similarity_filter(self, enabled: bool, threshold=None, max_skip_frames=None) -> None:
        self._send(similarity_filter=bool(enabled))

    def close(self) -> None:
        async def end():
            if self._location:
                try:
                    async with aiohttp.ClientSession() as http:
                        await http.delete(self.url + self._location, headers={"Authorization": f"Bearer {self.token}"})
                except aiohttp.ClientError:
                    pass
            if getattr(self, "_out", None) is not None:
                await self._out.queue.put(None)
            if getattr(self, "_pc", None) is not None:
                await self._pc.close()

        if self._loop.is_running():
            try:
                self._call(end(), 5.0)
            except Exception:  # noqa: BLE001 - closing is best effort: the server's watchdog ends it anyway
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
