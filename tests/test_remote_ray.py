"""``serve --ray`` on a local Ray with two CPU replicas of one session each (tiny preset): two clients land on
different replicas and both get their frames; a third is refused while both are busy; ending a session frees its
replica for the next client."""

import asyncio
import threading

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

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        handle = deploy(tiny_config.replace(t_index_list=(30,)), "", "", ServerLimits(max_frame_pixels=128 * 128),
                        replicas=2, sessions_per_replica=1, gpus_per_replica=0)
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


def frames_back(client, count=15):
    got = []
    for i in range(count):
        got += client.submit(gradient(i), tag=i)
        threading.Event().wait(0.05)
    return got + client.flush(3.0)


def test_sessions_land_on_replicas_with_room_and_flow(cluster):
    first = RemoteEngine(cluster.url, TOKEN, timeout_s=60)
    second = RemoteEngine(cluster.url, TOKEN, timeout_s=60)
    try:
        assert len(cluster.replicas()) == 2 and set(cluster.replicas().values()) == {1}  # one each
        assert len(frames_back(first)) >= 5 and len(frames_back(second)) >= 5
        with pytest.raises(RemoteError, match="503"):
            RemoteEngine(cluster.url, TOKEN, timeout_s=30)  # both replicas hold their one session
    finally:
        first.close()
    assert wait_until(lambda: len(cluster.calls) == 1, 30, poll_s=0.1)  # DELETE cancelled the first's call
    third = RemoteEngine(cluster.url, TOKEN, timeout_s=60)  # the freed replica takes the next client
    try:
        assert len(cluster.replicas()) == 2 and len(frames_back(third)) >= 5
    finally:
        third.close()
        second.close()
    assert wait_until(lambda: not cluster.calls, 30, poll_s=0.1)
