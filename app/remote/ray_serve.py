"""``serve --ray``: the engine server past one machine, on Ray Serve (issue 12).

The engines live in replicas of one deployment, one GPU each (``EngineReplica``), placed and restarted by Ray,
and scaled by it between ``--replicas`` bounds. Each holds the model once and runs the sessions that land on it
with the same code as one machine's server (``EngineServer.open_session``): its own aiortc connections, so a
session's media flows straight between the client and its replica over UDP.

A session is one long streaming handle call on the deployment: its first item is the SDP answer, and it ends
when the connection ends or the call is cancelled. With ``max_ongoing_requests`` = sessions per replica, Serve
itself gives each new session a replica with room and keeps it there; the ingress refuses a session past the
cluster's room (503), and Serve's own back-pressure (a queue of one) any that race past it. The signaling in front (token, TLS, the WHIP-style routes) is this process's aiohttp
app, as without Ray: Serve's HTTP proxy is not used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

from aiohttp import web

from app.remote.server import EngineServer, OfferRefused, ServerLimits, Signaling, session_engines

log = logging.getLogger(__name__)

DEPLOYMENT = "engine"
OPEN_TIMEOUT_S = 120.0  # an offer waits this long for a replica's answer (a new replica loads the model first)


class EngineReplica:
    """One replica: the model loaded once, an ``EngineServer`` for the sessions Serve sends here."""

    def __init__(self, config, prompt: str, negative_prompt: str, limits: ServerLimits, batch: bool = False):
        from ray import serve

        make_engine = session_engines(config, prompt, negative_prompt)
        self.server = EngineServer(make_engine, token="", limits=limits, batch=batch)  # the token is the ingress's
        self.name = serve.get_replica_context().replica_id.unique_id

    async def session(self, offer_sdp: str):
        """The streaming call of one session: its answer first, then nothing until it ends."""
        try:
            session, answer = await self.server.open_session(offer_sdp)
        except OfferRefused as refused:
            yield {"status": refused.status, "text": refused.text, "headers": refused.headers}
            return
        yield {"status": 201, "answer": answer, "replica": self.name}
        try:
            await session.ended.wait()
        finally:  # the connection ended, or the ingress cancelled the call (DELETE, shutdown)
            await session.close("its call ended")



APP = "livediffusion"
DRAIN_S = 3600.0  # a replica Serve stops (scaling down, a redeploy) takes no new session and ends this late


def deploy(config, prompt: str, negative_prompt: str, limits: ServerLimits, replicas: int | str = 1,
           sessions_per_replica: int = 4, gpus_per_replica: float = 1.0, max_replicas: int | None = None,
           batch: bool = False):
    """Run the engine deployment on the Ray cluster this process is connected to; its handle. ``replicas``: a
    count, or "auto" (Serve scales from 1 to ``max_replicas`` on the sessions in flight)."""
    from ray import serve

    count = (max_replicas or 1) if replicas == "auto" else int(replicas)
    # Serve queues the offers that wait for a replica with room; the ingress refuses past the cluster's room, so
    # the queue never needs to hold more than that. A stopping replica drains: its sessions end on their own.
    options = dict(name=DEPLOYMENT, max_ongoing_requests=sessions_per_replica,
                   max_queued_requests=count * sessions_per_replica,
                   ray_actor_options={"num_gpus": gpus_per_replica} if gpus_per_replica else {"num_cpus": 0},
                   graceful_shutdown_timeout_s=DRAIN_S)
    if replicas == "auto":
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": count,
                                         "target_ongoing_requests": max(1, sessions_per_replica - 1)}
    else:
        options["num_replicas"] = count
    # One more than Serve sends: a session still closing after its call was cancelled must not refuse the next.
    per_replica = dataclasses.replace(limits, max_sessions=sessions_per_replica + 1)
    app = serve.deployment(EngineReplica, **options).bind(config, prompt, negative_prompt, per_replica, batch)
    serve.start(proxy_location="Disabled")
    return serve.run(app, name=APP, route_prefix=None)


class RayIngress(Signaling):
    """The signaling in front of the deployment: the same routes and rules as ``EngineServer.app()``."""

    def __init__(self, handle, token: str, max_sessions: int, describe=None):
        self.handle, self.token, self.max_sessions = handle.options(stream=True), token, max_sessions
        self.describe = describe or (lambda: {})
        self.calls: dict[str, tuple] = {}  # session id -> (the streaming call, its replica)
        self._following: set[asyncio.Task] = set()
        self.on_cleanup: list = []  # run when the app stops, after its sessions are cancelled
        self._opening = 0  # offers on their way to a replica

    def app(self) -> web.Application:
        app = super().app()
        app.on_cleanup.extend(self.on_cleanup)
        return app

    def replicas(self) -> dict[str, int]:
        """Sessions per replica, as placed by Serve."""
        counts: dict[str, int] = {}
        for _call, replica in self.calls.values():
            counts[replica] = counts.get(replica, 0) + 1
        return counts

    async def health(self, request: web.Request) -> web.Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return web.json_response({"sessions": len(self.calls), "max_sessions": self.max_sessions,
                                  "replicas": self.replicas(), **self.describe()})

    async def offer(self, request: web.Request) -> web.Response:
        refused = self.refusal(request, offer=True)
        if refused is not None:
            return refused
        if len(self.calls) + self._opening >= self.max_sessions:
            return web.Response(status=503, headers={"Retry-After": "5"}, text="every replica is full")
        self._opening += 1  # taken before the first await: offers arriving together cannot pass the limit
        try:
            return await self._open(await request.text())
        finally:
            self._opening -= 1

    async def _open(self, offer_sdp: str) -> web.Response:
        from ray.serve.exceptions import BackPressureError

        call = self.handle.session.remote(offer_sdp)
        try:
            first = await asyncio.wait_for(call.__anext__(), OPEN_TIMEOUT_S)
        except asyncio.TimeoutError:
            call.cancel()
            return web.Response(status=504, headers={"Retry-After": "10"},
                                text=f"no replica answered within {OPEN_TIMEOUT_S:.0f} s (one may still be loading)")
        except asyncio.CancelledError:  # the server stops, or the client gave up: the session must not open
            call.cancel()
            raise
        except BackPressureError:
            return web.Response(status=503, headers={"Retry-After": "5"}, text="every replica is full")
        except Exception as exc:  # noqa: BLE001 - a replica that failed: say so, keep serving
            log.warning("a replica failed to open a session: %s: %s", type(exc).__name__, exc)
            return web.Response(status=500, text=f"the cluster could not start a session: {exc}")
        if first["status"] != 201:
            return OfferRefused(first["status"], first["text"], first.get("headers")).response()
        session_id = uuid.uuid4().hex
        self.calls[session_id] = (call, first["replica"])
        task = asyncio.ensure_future(self._follow(session_id, call))
        self._following.add(task)
        task.add_done_callback(self._following.discard)
        return web.Response(status=201, content_type="application/sdp", text=first["answer"],
                            headers={"Location": f"/whip/{session_id}"})

    async def _follow(self, session_id: str, call) -> None:
        try:
            async for _ in call:  # nothing more comes: the call ends with the session
                pass
        except Exception as exc:  # noqa: BLE001 - a cancelled call or a lost replica ends the session alike
            log.info("session %s ended: %s", session_id[:8], type(exc).__name__)
        finally:
            self.calls.pop(session_id, None)

    async def end(self, request: web.Request) -> web.Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        entry = self.calls.pop(request.match_info["session"], None)
        if entry is None:
            return web.Response(status=404)
        entry[0].cancel()
        return web.Response(status=200)

    async def close_all(self, _app=None) -> None:
        for call, _replica in list(self.calls.values()):
            call.cancel()
        self.calls.clear()
        for task in list(self._following):
            task.cancel()
        await asyncio.gather(*self._following, return_exceptions=True)


def ray_ingress(args, config, token: str, limits: ServerLimits, describe) -> RayIngress:
    """``serve --ray``: join (or start) the Ray cluster, deploy the engine replicas, and the ingress in front."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ImportError(f"needs Ray Serve ({exc}): pip install -e \".[serve]\"") from None
    if args.replicas != "auto" and (not args.replicas.isdigit() or int(args.replicas) < 1):
        raise ValueError(f"--replicas is a count of at least 1 or auto, got {args.replicas!r}")
    if config.device.startswith("cuda:"):
        raise ValueError("with --ray each replica sees only the GPUs Ray gives it: use --device cuda or auto")
    # No address: a Ray of our own ("local"), never one that `ray start` happened to leave on this machine.
    ray.init(address=args.ray_address or "local", configure_logging=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    per_replica_gpus = config.gpus if gpus else 0
    room = gpus // per_replica_gpus if per_replica_gpus else None  # replicas the cluster's GPUs hold
    if args.replicas == "auto":
        replicas, count = "auto", args.max_replicas or room or 1
    else:
        replicas = count = int(args.replicas)
    if room is not None and count > room:
        raise ValueError(f"{count} replicas of {per_replica_gpus} GPU(s) need {count * per_replica_gpus} GPUs; "
                         f"the Ray cluster has {gpus} (start Ray on more machines, or ask for fewer)")
    handle = deploy(config, args.prompt, args.negative_prompt, limits, replicas, args.sessions_per_replica,
                    gpus_per_replica=per_replica_gpus, max_replicas=count, batch=args.batch)
    print(f"Ray Serve: {replicas} replica(s) of {args.sessions_per_replica} sessions, "
          f"{f'{per_replica_gpus} GPU(s) each' if gpus else 'on the CPU (no GPU in the cluster)'}")
    ingress = RayIngress(handle, token, count * args.sessions_per_replica,
                         lambda: {**describe(), "gpu": f"{gpus} GPU(s) in the Ray cluster"})

    async def remove_deployment(_app) -> None:  # a cluster outlives this process: give its GPUs back
        await asyncio.get_running_loop().run_in_executor(None, serve.delete, APP)

    ingress.on_cleanup.append(remove_deployment)
    return ingress
