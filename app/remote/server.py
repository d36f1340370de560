"""``serve``: the engine behind WebRTC. Signaling is WHIP-style HTTP (aiohttp): a client POSTs its SDP offer with
its token and gets the answer (201, ``Location``); DELETE at that location ends the session. Media and the live
settings (a data channel, app.remote.protocol) go over the peer connection (aiortc).

Each session has its own engine (its own stream state, filter and settings; the model is shared where the
factory shares it) and its own engine thread; with ``batch=True`` one engine thread runs every session's frame
of a tick in one UNet call instead (app.remote.batching). The newest frame that
arrived is the next one processed, so a slow engine drops frames rather than building latency
(docs/remote-engine.md). Limits: sessions, frame size, message size, a connection that never comes up, a client
that stops sending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from app.remote.batching import SessionBatcher
from app.remote.jitter import use_marker_jitter_buffer
from app.remote.protocol import ProtocolError, apply_changes, parse_message
from app.remote.security import token_accepted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    max_sessions: int = 4
    max_frame_pixels: int = 2560 * 1440
    connect_timeout_s: float = 10.0  # a session whose connection never comes up
    idle_timeout_s: float = 10.0  # a client that stops sending frames (a killed one is otherwise seen after 30 s)


class OfferRefused(Exception):
    """Why a session was not opened, as the HTTP answer the client gets."""

    def __init__(self, status: int, text: str, headers: dict | None = None):
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.text, headers=self.headers)


class Session:
    def __init__(self, session_id: str, pc: RTCPeerConnection, engine, on_closed: Callable[[str], None],
                 batcher: SessionBatcher | None = None):
        self.id, self.pc, self.engine, self.batcher = session_id, pc, engine, batcher
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"engine-{session_id[:6]}")
        self.tasks: list[asyncio.Task] = []
        self.track: EngineTrack | None = None
        self.frames_in = 0
        self._on_closed = on_closed
        self._closed = False
        self.ended = asyncio.Event()  # set once the session is closed, for whoever waits on its end

    async def run(self, fn, *args):
        """``fn(*args)`` on the engine's thread: the batcher's when sessions are batched, else the session's own."""
        if self.batcher is not None:
            return await self.batcher.call(lambda: fn(*args))
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def close(self, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if reason:
            log.info("session %s closed: %s", self.id[:8], reason)
        try:
            for task in self.tasks:
                if task is not asyncio.current_task():  # a watchdog closing the session goes on to the end
                    task.cancel()
            if self.track is not None:
                self.track.stop()
            await self.pc.close()
            # The engine thread may be inside a frame: close the engine after it.
            if self.engine is not None:
                await self.run(_close_engine, self.engine)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the slot and the thread are given back
            log.warning("closing session %s: %s: %s", self.id[:8], type(exc).__name__, exc)
        finally:
            self.executor.shutdown(wait=False)
            self._on_closed(self.id)
            self.ended.set()


def session_engines(config, prompt: str, negative_prompt: str, progress=None) -> Callable[[], Any]:
    """The model of ``config`` loaded once, and a maker of one session's engine on it (``serve`` and each of its
    Ray replicas)."""
    from core.models import load_components
    from core.stream import StreamEngine

    components = load_components(config, progress)

    def make_engine():
        engine = StreamEngine.from_config(config, components=components)
        engine.prepare(prompt, negative_prompt)
        return engine

    return make_engine


def _close_engine(engine) -> None:
    close = getattr(engine, "close", None)
    if callable(close):
        close()


class EngineTrack(MediaStreamTrack):
    """What goes back: the newest incoming frame run through the session's engine, with the incoming pts (so the
    client can tell which of its frames this is)."""

    kind = "video"

    def __init__(self, source, session: Session, limits: ServerLimits):
        super().__init__()
        self.source, self.session, self.limits = source, session, limits
        self.latest: VideoFrame | None = None
        self.arrived = asyncio.Event()
        self.ended = False
        session.tasks.append(asyncio.ensure_future(self._read()))

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                if frame.width * frame.height > self.limits.max_frame_pixels:
                    asyncio.ensure_future(self.session.close(
                        f"a {frame.width}x{frame.height} frame is over the {self.limits.max_frame_pixels}-pixel limit"))
                    return
                self.session.frames_in += 1
                self.latest = frame  # an older one not yet taken is dropped
                self.arrived.set()
        except MediaStreamError:
            pass
        finally:
            self.ended = True
            self.arrived.set()

    async def recv(self) -> VideoFrame:
        await self.arrived.wait()
        self.arrived.clear()
        frame, self.latest = self.latest, None
        if frame is None:
            self.stop()
            raise MediaStreamError
        image = frame.to_ndarray(format="rgb24")
        session = self.session
        try:
            if session.batcher is not None:
                out = await session.batcher.process(session.engine, image)
            else:
                out = await session.run(session.engine.process, image)
        except Exception as exc:  # noqa: BLE001 - one session's failure must not take the server down
            asyncio.ensure_future(self.session.close(f"the engine failed: {type(exc).__name__}: {exc}"))
            self.stop()
            raise MediaStreamError from exc
        result = VideoFrame.from_ndarray(out, format="rgb24")
        result.pts, result.time_base = frame.pts, frame.time_base
        return result


class Signaling:
    """The WHIP-style routes (POST an offer, DELETE a session, GET /health) and their rules: the token, the SDP
    content type, a bounded body. Subclasses open and end the sessions."""

    token: str

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/whip", self.offer)
        app.router.add_delete("/whip/{session}", self.end)
        app.router.add_get("/health", self.health)
        app.on_shutdown.append(self.close_all)
        return app

    def _authorized(self, request: web.Request) -> bool:
        return token_accepted(request.headers.get("Authorization"), self.token)

    def refusal(self, request: web.Request, offer: bool = False) -> web.Response | None:
        """The answer to a request that breaks the rules (no token; an offer that is not SDP), else None."""
        if not self._authorized(request):
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"}, text="token refused")
        if offer and request.content_type != "application/sdp":
            return web.Response(status=415, text="send the SDP offer as application/sdp")
        return None

    async def offer(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def end(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def health(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def close_all(self, _app=None) -> None:
        raise NotImplementedError


class EngineServer(Signaling):
    """The aiohttp application (``app()``) and its sessions. ``make_engine()`` builds one session's engine,
    prepared with an empty prompt (it runs on a worker thread: loading may take seconds)."""

    def __init__(self, make_engine: Callable[[], Any], token: str, limits: ServerLimits = ServerLimits(),
                 describe: Callable[[], dict] | None = None, batch: bool = False):
        self.make_engine, self.token, self.limits = make_engine, token, limits
        use_marker_jitter_buffer()  # each client frame to the engine as soon as it is in, not one frame later
        # Batched: one engine thread for all sessions, their frames in one UNet call per tick (app.remote.batching).
        self.batcher = SessionBatcher() if batch else None
        self.describe = describe or (lambda: {})
        self.sessions: dict[str, Session] = {}

    async def health(self, request: web.Request) -> web.Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return web.json_response({"sessions": len(self.sessions), "max_sessions": self.limits.max_sessions,
                                  **self.describe()})

    async def offer(self, request: web.Request) -> web.Response:
        refused = self.refusal(request, offer=True)
        if refused is not None:
            return refused
        try:
            session, answer = await self.open_session(await request.text())
        except OfferRefused as refused:
            return refused.response()
        return web.Response(status=201, content_type="application/sdp", text=answer,
                            headers={"Location": f"/whip/{session.id}"})

    async def open_session(self, offer_sdp: str) -> tuple[Session, str]:
        """A session for a client's SDP offer, with its engine built; (the session, the SDP answer). Raises
        ``OfferRefused`` (full, a bad offer, no engine). A Ray replica (app.remote.ray_serve) calls it too."""
        if len(self.sessions) >= self.limits.max_sessions:
            raise OfferRefused(503, "the server is full", {"Retry-After": "5"})
        # The slot is taken before the first await: offers arriving together cannot pass the limit.
        session_id, pc = uuid.uuid4().hex, RTCPeerConnection()
        session = Session(session_id, pc, None, lambda sid: self.sessions.pop(sid, None), self.batcher)
        self.sessions[session_id] = session
        self._wire(session)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            transceivers = pc.getTransceivers()
            # One video, sent and received (and the data channel): anything more would be decoded unread.
            if len(transceivers) != 1 or transceivers[0].kind != "video" or transceivers[0].sender.track is None:
                raise ValueError("offer one video track to send and receive, nothing else")
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's problem, not the server's
            await session.close(f"bad offer: {exc}")
            raise OfferRefused(400, f"bad offer: {exc}") from None
        try:
            # The offer is sound: now the engine (seconds on a GPU), before any frame can arrive.
            session.engine = await asyncio.get_running_loop().run_in_executor(None, self.make_engine)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - no model, no memory: say so, keep serving
            await session.close(f"no engine: {exc}")
            raise OfferRefused(500, f"the server could not start an engine: {exc}") from None
        session.tasks.append(asyncio.ensure_future(self._watch(session)))
        return session, pc.localDescription.sdp

    def _wire(self, session: Session) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track):
            if track.kind == "video" and session.track is None:
                session.track = EngineTrack(track, session, self.limits)
                pc.addTrack(session.track)  # on the offered transceiver: it is in the answer

        @pc.on("datachannel")
        def on_channel(channel):
            @channel.on("message")
            def on_message(message):
                try:
                    apply_changes(session.engine, parse_message(message))
                except ProtocolError as exc:
                    channel.send(json.dumps({"error": str(exc)}))
                    if exc.garbage:  # not a message of ours: this client is not one
                        asyncio.ensure_future(session.close(f"garbage on the data channel: {exc}"))
                except Exception as exc:  # noqa: BLE001 - the engine refused a checked value: say so, keep serving
                    log.warning("a setting for session %s failed: %s", session.id[:8], exc)
                    channel.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await session.close(f"connection {pc.connectionState}")

    async def _watch(self, session: Session) -> None:
        await asyncio.sleep(self.limits.connect_timeout_s)
        if session.pc.connectionState != "connected":
            await session.close("the connection never came up")
            return
        seen = -1
        while True:
            await asyncio.sleep(self.limits.idle_timeout_s)
            if session.frames_in == seen:
                await session.close(f"no frame for {self.limits.idle_timeout_s:.0f} s")
                return
            seen = session.frames_in

    async def end(self, request: web.Request) -> web.Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        session = self.sessions.get(request.match_info["session"])
        if session is None:
            return web.Response(status=404)
        await session.close("the client ended it")
        return web.Response(status=200)

    async def close_all(self, _app=None) -> None:
        for session in list(self.sessions.values()):
            await session.close("the server stops")
        if self.batcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.close)
