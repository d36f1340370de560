"""The server's session batcher (app.remote.batching): the frames sessions bring while a tick runs make up the
next tick, run together in one UNet call; each session gets its own engine's output; a failure stays with its
own session; engines close between ticks."""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("aiortc")
from app.remote.batching import SessionBatcher, batchable  # noqa: E402
from core.multi_stream import process_together  # noqa: E402
from tests.conftest import prepared_engine  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:running on the CPU"), pytest.mark.timeout(60)]


class Held:
    """``process_together`` whose first tick waits for ``release``: what arrives meanwhile queues up."""

    def __init__(self, run=process_together):
        self.run, self.release, self.started, self.sizes = run, threading.Event(), threading.Event(), []

    def __call__(self, engines, frames):
        self.sizes.append(len(engines))
        self.started.set()
        self.release.wait(10)
        return self.run(engines, frames)


def run_async(coroutine):
    return asyncio.run(coroutine)


def test_frames_that_wait_together_run_together_and_each_session_gets_its_own_output(
        tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    engines = [prepared_engine(tiny_components, config.replace(seed=s), p) for s, p in ((1, "ink"), (2, "neon"), (3, "oil"))]
    alone = [prepared_engine(tiny_components, config.replace(seed=s), p) for s, p in ((1, "ink"), (2, "neon"), (3, "oil"))]
    frames = [make_frame(i) for i in range(3)]
    held = Held()
    batcher = SessionBatcher(held)

    async def main():
        first = asyncio.ensure_future(batcher.process(engines[0], frames[0]))
        await asyncio.get_running_loop().run_in_executor(None, held.started.wait, 10)
        rest = [asyncio.ensure_future(batcher.process(e, f)) for e, f in zip(engines[1:], frames[1:])]
        await asyncio.sleep(0.1)  # both queued behind the held tick
        held.release.set()
        return [await first] + [await r for r in rest]

    try:
        outputs = run_async(main())
    finally:
        batcher.close()
    assert held.sizes == [1, 2] and batcher.largest_tick == 2  # the two that waited shared one call
    for engine, frame, out in zip(alone, frames, outputs):
        assert np.abs(out.astype(int) - engine.process(frame).astype(int)).max() <= 1


class Plain:
    """An engine without the parts around the UNet: it runs its own process."""

    def __init__(self, fail=False):
        self.fail, self.closed = fail, False

    def process(self, frame):
        if self.fail:
            raise ValueError("bad frame")
        return 255 - frame

    def close(self):
        self.closed = True


def test_other_engines_run_alone_a_failure_stays_with_its_session_and_closing_waits_for_the_tick(make_frame):
    failing_batch = Held(run=lambda engines, frames: (_ for _ in ()).throw(RuntimeError("out of memory")))
    batcher = SessionBatcher(failing_batch)
    failing_batch.release.set()
    good, bad = Plain(), Plain(fail=True)
    assert not batchable(good)
    frame = make_frame(1)

    async def main():
        out = await batcher.process(good, frame)
        with pytest.raises(ValueError, match="bad frame"):
            await batcher.process(bad, frame)
        await batcher.call(good.close)
        return out

    try:
        out = run_async(main())
    finally:
        batcher.close()
    assert np.array_equal(out, 255 - frame) and good.closed
    assert failing_batch.sizes == []  # nothing batchable: the batch function never ran

    with pytest.raises(RuntimeError, match="shutting down"):
        run_async(batcher.process(good, frame))


def test_a_failed_batch_fails_its_frames_without_running_them_twice(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    engine = prepared_engine(tiny_components, config)
    ran = []

    def failing(engines, frames):
        ran.append(len(engines))
        for e, f in zip(engines, frames):  # the states move, then the shared call fails
            e.begin_step(None)
        raise RuntimeError("CUDA out of memory")

    batcher = SessionBatcher(failing)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            run_async(batcher.process(engine, make_frame(4)))
    finally:
        batcher.close()
    assert ran == [1] and engine.frames_processed == 0  # not run again on its own


def test_a_closed_or_unprepared_engine_fails_the_tick_before_any_state_moves(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    good = prepared_engine(tiny_components, config)
    closed = prepared_engine(tiny_components, config)
    closed.close()
    with pytest.raises(RuntimeError, match="open, prepared"):
        process_together([good, closed], [make_frame(1), make_frame(2)])
    assert good.frames_processed == 0 and good.skipped_frames == 0 and good.batch.pending is None


def test_a_batched_server_serves_two_clients(tiny_components, tiny_config):
    from app.remote.client import RemoteEngine
    from app.remote.server import EngineServer
    from tests.test_remote import LIMITS, TOKEN, Serving, gradient

    config = tiny_config.replace(t_index_list=(30,))
    serving = Serving(lambda: prepared_engine(tiny_components, config), LIMITS, batch=True)
    clients = [RemoteEngine(serving.url, TOKEN, timeout_s=10.0) for _ in range(2)]
    try:
        got, sent, deadline = [[], []], 0, time.monotonic() + 90  # a loaded machine gets more time, not a failure
        while time.monotonic() < deadline and (sent < 20 or min(map(len, got)) < 10
                                               or serving.server.batcher.ticks < 20):
            for client, out in zip(clients, got):
                out += client.submit(gradient(sent), tag=sent)
            sent += 1
            asyncio.run(asyncio.sleep(0.04))
        for client, out in zip(clients, got):
            out += client.flush(3.0)
        assert all(len(out) >= 10 for out in got) and serving.server.batcher is not None
        assert serving.server.batcher.ticks >= 20 and isinstance(serving.server, EngineServer)
    finally:
        for client in clients:
            client.close()
        serving.stop()


def test_the_server_replays_its_ticks_from_graphs_with_the_stored_tick_unet_unless_told(monkeypatch, caplog):
    from app.remote import batching
    from core.accel import precompiled
    from core.accel.tick_graph import TickGraphs, compiled_unets, stored_unets

    for name in ("LIVEDIFFUSION_TICK_GRAPHS", "LIVEDIFFUSION_TICK_COMPILE", "LIVEDIFFUSION_INDUCTOR",
                 "LIVEDIFFUSION_STORED", "LIVEDIFFUSION_AOTI"):
        monkeypatch.delenv(name, raising=False)
    ticks = batching.default_ticks()
    assert ticks.func is process_together and isinstance(ticks.keywords["graphs"], TickGraphs)
    expected = stored_unets if precompiled.available() else None
    assert ticks.keywords["graphs"].unets_for is expected  # built in a process of its own: no starved sessions
    for asked, unets_for in (("1", compiled_unets), ("here", compiled_unets), ("0", None), ("eager", None)):
        monkeypatch.setenv("LIVEDIFFUSION_TICK_COMPILE", asked)
        assert batching.default_ticks().keywords["graphs"].unets_for is unets_for
    monkeypatch.setenv("LIVEDIFFUSION_TICK_COMPILE", "sometimes")
    with caplog.at_level("WARNING", logger="app.remote.batching"):
        assert batching.default_ticks().keywords["graphs"].unets_for is expected
    assert "none of stored, here, eager" in caplog.text
    # Inductor off, stored engines off, or a torch that cannot store compiled functions: the eager UNet, and the log
    # says so (not the starving build in the server).
    monkeypatch.setenv("LIVEDIFFUSION_TICK_COMPILE", "stored")
    for name, value, said in (("LIVEDIFFUSION_INDUCTOR", "0", "Inductor is off"),
                              ("LIVEDIFFUSION_STORED", "off", "compiled functions are not stored here")):
        monkeypatch.setenv(name, value)
        caplog.clear()
        with caplog.at_level("WARNING", logger="app.remote.batching"):
            assert batching.default_ticks().keywords["graphs"].unets_for is None
        assert said in caplog.text
        monkeypatch.delenv(name)
    monkeypatch.setattr(precompiled, "available", lambda: False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="app.remote.batching"):
        assert batching.default_ticks().keywords["graphs"].unets_for is None
    assert "compiled functions are not stored here" in caplog.text
    monkeypatch.setenv("LIVEDIFFUSION_TICK_GRAPHS", "0")
    assert batching.default_ticks() is process_together
