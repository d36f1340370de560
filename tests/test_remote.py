"""The remote engine on loopback (CPU, tiny preset): a client sends frames over WebRTC to ``serve``'s server and
gets stylized frames back; settings travel over the data channel; tokens, frame sizes and departures are
handled. WebRTC's codec is lossy (docs/remote-engine.md), so frames are compared by which local result they
are nearest to, not bit for bit."""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("aiortc")
from aiohttp import web  # noqa: E402

from app.remote.client import RemoteEngine, RemoteError  # noqa: E402
from app.remote.server import EngineServer, ServerLimits  # noqa: E402
from core.stream import StreamEngine  # noqa: E402
from tests.conftest import wait_until  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:running on the CPU"), pytest.mark.timeout(120)]
TOKEN = "a-test-token-long-enough-to-pass"


def gradient(i: int, size: int = 64) -> np.ndarray:
    """Smooth, moving content: what a video codec keeps well (noise would dominate its error)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 4 + i * 3) % 256, (y * 4) % 256, ((x + y) * 2 + i * 5) % 256], -1).astype(np.uint8)


def distinct(i: int, size: int = 64) -> np.ndarray:
    """Frame ``i`` of 27 flat colours that differ from each other by 100 levels in a channel or more (a third of
    that averaged over the channels, well over the codec's loss): a frame given the wrong tag shows."""
    levels = (30, 130, 230)
    colour = (levels[i // 9 % 3], levels[i // 3 % 3], levels[i % 3])
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()


class Serving:
    """A server on 127.0.0.1 in its own event-loop thread."""

    def __init__(self, make_engine, limits, port: int = 0, batch: bool = False):
        self.engines = []

        def made():
            self.engines.append(make_engine())
            return self.engines[-1]

        self.server = EngineServer(made, TOKEN, limits, batch=batch)
        self.sessions = self.server.sessions
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            runner = web.AppRunner(self.server.app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]

        self.runner, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if not self.loop.is_running():  # stopped already (a test that kills its server)
            return
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


LIMITS = ServerLimits(max_sessions=2, max_frame_pixels=128 * 128, connect_timeout_s=3, idle_timeout_s=2)


@pytest.fixture
def server(tiny_components, tiny_config):
    config = tiny_config.replace(t_index_list=(30,))

    def make_engine():
        engine = StreamEngine(tiny_components, config)
        engine.prepare("")
        return engine

    serving = Serving(make_engine, LIMITS)
    serving.local = make_engine
    yield serving
    serving.stop()


class Inverting:
    """An engine whose output shows its input (the tiny random model's hardly does): for frame identity."""

    closed = False
    prompt = ""

    def __init__(self):
        self.settings = []

    def process(self, frame):
        return 255 - frame

    def __getattr__(self, name):  # the live setters: recorded
        if name.startswith(("set_", "update_")):
            return lambda *args, **kwargs: self.settings.append((name, args, kwargs))
        raise AttributeError(name)

    def close(self):
        self.closed = True


@pytest.fixture
def inverting_server():
    serving = Serving(Inverting, LIMITS)
    yield serving
    serving.stop()


def stream(client, frames, name=None, pause_s=0.03):
    """Frames through ``client``; each output comes with its frame's tag, (name, index)."""
    got = []
    for i, frame in enumerate(frames):
        got += client.submit(frame, tag=(name, i))
        time.sleep(pause_s)
    return got + client.flush(2.0)


def nearest(image, candidates) -> int:
    return int(np.argmin([np.abs(image.astype(int) - c.astype(int)).mean() for c in candidates]))


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_frames_come_back_stylized_and_the_settings_reach_the_servers_engine(server):
    client = RemoteEngine(server.url, TOKEN)
    local = server.local()
    frames = [gradient(i) for i in range(12)]
    got = []
    for number, (prompt, seed) in enumerate((("a watercolor", 3), ("a neon city at night", 8))):
        client.update_prompt(prompt)
        client.set_seed(seed)
        local.update_prompt(prompt)
        local.set_seed(seed)
        time.sleep(0.2)  # the message goes ahead of the frames
        reference = [local.process(frame) for frame in frames]
        batch = stream(client, frames, name=number)
        assert server.engines[0].prompt == prompt and server.engines[0].config.seed == seed
        # Each frame comes back as the local engine makes it, but for the codec's loss both ways.
        for out in batch:
            if out.tag[0] == number:
                assert mean_abs(out.image, reference[out.tag[1]]) < 20
        got += batch
    # The server takes the newest frame, so how many come back depends on the CPU's speed: some of each batch.
    assert all(sum(out.tag[0] == number for out in got) >= 3 for number in (0, 1))
    assert all(out.image.shape == (64, 64, 3) for out in got)
    assert [out.tag for out in got] == sorted(out.tag for out in got)  # in order, each with its own tag
    client.close()


def test_each_returned_frame_carries_its_own_frames_tag(inverting_server):
    client = RemoteEngine(inverting_server.url, TOKEN)
    frames = [distinct(i) for i in range(27)]
    got = stream(client, frames, name="x")
    assert len(got) >= 20
    for out in got:
        i = out.tag[1]
        # Nearest to its own frame's result among all of them: a frame matched to the wrong tag would fail here.
        distances = [mean_abs(out.image, 255 - frame) for frame in frames]
        assert int(np.argmin(distances)) == i and distances[i] < 20
    assert client.process(frames[5]).shape == (64, 64, 3)
    client.close()


def test_two_clients_keep_their_own_settings(server):
    first, second = RemoteEngine(server.url, TOKEN), RemoteEngine(server.url, TOKEN)
    first.update_prompt("a watercolor")
    second.update_prompt("a neon city at night")
    second.set_strength(0.9)
    time.sleep(0.2)
    frames = [gradient(i) for i in range(8)]
    got = {name: stream(client, frames, name=name) for name, client in (("first", first), ("second", second))}
    assert len(server.sessions) == 2 and len(server.engines) == 2 and all(got.values())
    engines = {engine.prompt: engine for engine in server.engines}
    assert set(engines) == {"a watercolor", "a neon city at night"}  # one engine each, each its own prompt
    assert engines["a watercolor"].config.t_index_list != engines["a neon city at night"].config.t_index_list
    for client in (first, second):
        client.close()


def test_a_wrong_token_and_a_full_server_are_refused(server):
    with pytest.raises(RemoteError, match="401"):
        RemoteEngine(server.url, "not-the-token-at-all-no")
    clients = [RemoteEngine(server.url, TOKEN), RemoteEngine(server.url, TOKEN)]
    with pytest.raises(RemoteError, match="503"):
        RemoteEngine(server.url, TOKEN)
    for client in clients:
        client.close()


def test_a_departing_client_leaves_no_session_and_a_too_large_frame_ends_its_own(server):
    client = RemoteEngine(server.url, TOKEN)
    stream(client, [gradient(i) for i in range(4)])
    client.close()
    assert wait_until(lambda: not server.sessions, 5, poll_s=0.05)
    assert not server.sessions and server.engines[0].closed
    big = RemoteEngine(server.url, TOKEN)
    with pytest.raises(RemoteError):
        for i in range(40):  # 256x256 is over the 128x128 limit: the server ends this session
            big.submit(gradient(i, size=256))
            time.sleep(0.05)
    assert wait_until(lambda: not server.sessions, 5, poll_s=0.05)
    assert not server.sessions and server.engines[1].closed
    big.close()


def test_run_streams_through_a_servers_engine(server, tmp_path, capsys):
    import av

    from app.commands.run import run

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    out = tmp_path / "out.mp4"
    rc = run(["--source", "test:96x64", "--frames", "30", "--output", str(out), "--engine", server.url,
              "--token-file", str(token_file), "--prompt", "a watercolor", "--seed", "5", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    with av.open(str(out)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) >= 20 and frames[0].shape == (64, 64, 3)  # the server's size, not the source's
    engine = server.engines[-1]
    assert engine.prompt == "a watercolor" and engine.config.seed == 5 and engine.closed  # ended with the run
    assert run(["--source", "test:96x64", "--frames", "5", "--output", "none", "--engine", server.url,
                "--token-file", str(token_file).replace("token", "missing")]) != 0


def test_doctor_checks_a_server(server, tmp_path):
    from app.commands.doctor import check_server

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    found = check_server(server.url, str(token_file))
    assert found.status == "ok" and "0 of 2 sessions" in found.detail
    token_file.write_text("another-token-entirely-wrong")
    assert check_server(server.url, str(token_file)).detail.endswith("refused the token")
    unreachable = check_server("http://127.0.0.1:9", str(token_file))
    assert unreachable.status == "missing" and "not reachable" in unreachable.detail


def test_the_offset_is_learned_from_the_pattern_of_gaps_even_when_frames_are_lost():
    from collections import OrderedDict

    from app.remote.client import gap, learn_offset

    pts, sent = 0, OrderedDict()
    for number in range(1, 40):
        sent[pts] = number
        pts += gap(number)
    keys = list(sent)
    origin = keys[3]  # the first frames were lost: the receiver's timestamps start at the fourth
    returned = [k - origin for k in keys[3:12] if k != keys[6]]  # and one more was lost on the way
    assert learn_offset(returned[:2], sent) is None  # too few to be sure
    assert learn_offset(returned, sent) == origin
    steady = OrderedDict((k, None) for k in range(0, 2997 * 20, 2997))  # regular gaps fit many offsets
    assert learn_offset([0, 2997, 5994], steady) is None


def test_the_watchdogs_end_silent_and_unconnected_sessions(server):
    client = RemoteEngine(server.url, TOKEN)
    stream(client, [gradient(i) for i in range(3)])
    assert wait_until(lambda: not server.sessions, 10, poll_s=0.1)
    assert not server.sessions and server.engines[0].closed
    client.close()


def test_offers_arriving_together_cannot_pass_the_session_limit(server):
    results = []

    def connect():
        try:
            results.append(RemoteEngine(server.url, TOKEN))
        except RemoteError as exc:
            results.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    engines = [r for r in results if isinstance(r, RemoteEngine)]
    assert len(engines) == 2 and all("503" in str(r) for r in results if isinstance(r, RemoteError))
    assert len(server.engines) == 2  # no engine built for a refused offer
    for engine in engines:
        engine.close()


def test_a_garbage_or_overfull_offer_is_refused_before_any_engine_is_built(server):
    import aiohttp
    from aiortc import RTCPeerConnection

    async def post(body):
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/whip", data=body, headers=headers) as reply:
                return reply.status, await reply.text()

    async def two_tracks():
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendrecv")
        pc.addTransceiver("audio", direction="sendrecv")  # decoded and never read: refused
        await pc.setLocalDescription(await pc.createOffer())
        try:
            return await post(pc.localDescription.sdp)
        finally:
            await pc.close()

    assert asyncio.run(post("garbage"))[0] == 400
    status, text = asyncio.run(two_tracks())
    assert status == 400 and "one video track" in text
    assert server.engines == [] and not server.sessions
