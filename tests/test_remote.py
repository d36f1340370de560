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

pytestmark = [pytest.mark.filterwarnings("ignore:running on the CPU"), pytest.mark.timeout(120)]
TOKEN = "a-test-token-long-enough-to-pass"


def gradient(i: int, size: int = 64) -> np.ndarray:
    """Smooth, moving content: what a video codec keeps well (noise would dominate its error)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 4 + i * 3) % 256, (y * 4) % 256, ((x + y) * 2 + i * 5) % 256], -1).astype(np.uint8)


@pytest.fixture
def server(tiny_components, tiny_config):
    config = tiny_config.replace(t_index_list=(30,))
    engines = []

    def make_engine():
        engine = StreamEngine(tiny_components, config)
        engine.prepare("")
        engines.append(engine)
        return engine

    limits = ServerLimits(max_sessions=2, max_frame_pixels=128 * 128, connect_timeout_s=5, idle_timeout_s=5)
    serving = EngineServer(make_engine, TOKEN, limits)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        runner = web.AppRunner(serving.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    serving.url, serving.engines, serving.local = f"http://127.0.0.1:{port}", engines, make_engine
    yield serving
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


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
    assert len(got) >= 16 and all(out.image.shape == (64, 64, 3) for out in got)
    assert [out.tag for out in got] == sorted(out.tag for out in got)  # in order, each with its own tag
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
    deadline = time.monotonic() + 5
    while server.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.sessions and server.engines[0].closed
    big = RemoteEngine(server.url, TOKEN)
    with pytest.raises(RemoteError):
        for i in range(40):  # 256x256 is over the 128x128 limit: the server ends this session
            big.submit(gradient(i, size=256))
            time.sleep(0.05)
    deadline = time.monotonic() + 5
    while server.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
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
