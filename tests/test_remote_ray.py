"""``serve --ray`` on a local Ray with two CPU replicas of one session each (tiny preset): two clients land on
different replicas and both get their frames; a third is refused while both are busy; ending a session frees its
replica for the next client."""

import asyncio
import threading
import time

import pytest

pytest.importorskip("aiortc")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
from aiohttp import web  # noqa: E402

from app.remote.client import RemoteEngine, RemoteError  # noqa: E402
from app.remote.server import ServerLimits  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.test_remote import TOKEN, gradient  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tiny_config):
    from ray import serve

    from app.remote.ray_serve import RayIngress, deploy

    # Its own Ray always: a bare init joins any cluster `ray start` left on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        limits = ServerLimits(max_frame_pixels=128 * 128, connect_timeout_s=3, idle_timeout_s=3)
        handle = deploy(tiny_config.replace(t_index_list=(30,)), "", "", limits, replicas=2, sessions_per_replica=1,
                        gpus_per_replica=0)
        ingress = RayIngress(handle, TOKEN, max_sessions=2)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        async def start():
            runner = web.AppRunner(ingress.app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]

        runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        ingress.url = f"http://127.0.0.1:{port}"
        yield ingress
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        serve.shutdown()
    finally:
        ray.shutdown()


def frames_back(client, want=5, timeout_s=90.0):
    """Frames sent at a camera's pace until ``want`` came back (a loaded machine: more time, never a failure for
    slowness), then what is still on its way; short of ``want`` only when the session stopped flowing."""
    got, sent, deadline = [], 0, time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += client.submit(gradient(sent), tag=sent)
        sent += 1
        threading.Event().wait(0.05)
    return got + client.flush(3.0)


def connect_together(url, count):
    """``count`` clients whose offers go out at once."""
    made, errors = [None] * count, []

    def connect(i):
        try:
            made[i] = RemoteEngine(url, TOKEN, timeout_s=60)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [m for m in made if m is not None], errors


def test_sessions_land_on_replicas_with_room_and_flow(cluster):
    (first, second), errors = connect_together(cluster.url, 2)  # offers arriving together both get a replica
    assert not errors
    try:
        assert len(cluster.replicas()) == 2 and set(cluster.replicas().values()) == {1}  # one each
        assert len(frames_back(first)) >= 5 and len(frames_back(second)) >= 5
        with pytest.raises(RemoteError, match="503"):
            RemoteEngine(cluster.url, TOKEN, timeout_s=30)  # both replicas hold their one session
    finally:
        first.close()
    # The freed replica takes the next client at once, and it flows (the replica closed the first session).
    third = RemoteEngine(cluster.url, TOKEN, timeout_s=60)
    try:
        assert len(cluster.replicas()) == 2 and len(frames_back(third)) >= 5
    finally:
        third.close()
        second.close()
    assert wait_until(lambda: not cluster._following, 30, poll_s=0.1)  # noqa: SLF001 - every call has ended


def test_a_client_that_vanishes_without_ending_its_session_frees_its_replica(cluster):
    gone = RemoteEngine(cluster.url, TOKEN, timeout_s=60)
    frames_back(gone, 5)
    gone._pc = None  # noqa: SLF001 - no DELETE, no goodbye: as a killed client
    gone._location = None  # noqa: SLF001
    # The replica's watchdog ends the silent session (connect check, then one idle period), its call ends, and
    # the ingress forgets it: the replica has room again.
    assert wait_until(lambda: not cluster.calls, 60, poll_s=0.2)
    a, b = RemoteEngine(cluster.url, TOKEN, timeout_s=60), RemoteEngine(cluster.url, TOKEN, timeout_s=60)
    try:
        assert len(frames_back(a)) >= 5 and len(frames_back(b)) >= 5
    finally:
        a.close()
        b.close()
        gone.close()
