"""Losing the engine server and finding it again (app.remote.reconnect): frames pass through unfiltered while it is
gone, tries follow the back-off, the settings given meanwhile reach the new session, and on loopback a server
that is stopped and started again on its port serves the same client again."""

import threading
import time

import numpy as np
import pytest

from app.pipeline.engine_policy import changing_stage, describe_engine, run_engine
from app.pipeline.frames import Frame
from tests.conftest import wait_until

pytest.importorskip("aiortc")
from app.remote.client import RemoteError, Returned  # noqa: E402
from app.remote.reconnect import BACKOFF_S, ReconnectingEngine, backoff_delay  # noqa: E402

FAST = (0.01, 0.02, 0.05)


class FakeRemote:
    """A connected session: its output is the inverted frame; ``fail()`` makes the next call find it gone."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.gone = False
        self.closed = False

    def submit(self, frame, tag=None):
        if self.gone:
            raise RemoteError("nothing came back for 10 s")
        return [Returned(tag, 255 - frame)]

    def flush(self, timeout_s=1.0):
        return []

    def process(self, frame):
        return self.submit(frame)[0].image

    def close(self):
        self.closed = True

    def __getattr__(self, name):
        if name.startswith(("set_", "update_")):
            return lambda *args, **kwargs: self.calls.append((name, args, kwargs))
        raise AttributeError(name)


class Connector:
    """Hands out FakeRemotes; the tries while ``down`` fail as an unreachable server does."""

    def __init__(self):
        self.made: list[FakeRemote] = []
        self.tries = 0
        self.down = False

    def __call__(self):
        self.tries += 1
        if self.down:
            raise RemoteError("cannot reach http://server: connection refused")
        self.made.append(FakeRemote())
        return self.made[-1]


def frame(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


def test_the_back_off_grows_to_its_ceiling():
    assert [backoff_delay(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0]
    assert backoff_delay(1, FAST) == 0.01 and backoff_delay(7, FAST) == 0.05
    assert BACKOFF_S[-1] == 30.0


def test_a_lost_server_passes_frames_through_and_a_new_session_gets_the_settings_given_meanwhile():
    connect, events = Connector(), []
    engine = ReconnectingEngine(connect, "http://server", on_event=events.append, delays=FAST)
    engine.prepare("a watercolor", "blurry")
    engine.set_strength(0.4)
    first = connect.made[0]
    assert engine.submit(frame(10), tag="a")[0].image[0, 0, 0] == 245  # stylized (inverted) while connected
    assert changing_stage(engine) == "connected to http://server"

    connect.down, first.gone = True, True
    out = engine.submit(frame(20), tag="b")
    assert len(out) == 1 and out[0].tag == "b" and not out[0].processed and out[0].image[0, 0, 0] == 20
    assert wait_until(lambda: first.closed, 5)
    assert len(events) == 1 and events[0].startswith("Lost the engine server at http://server")
    assert "unfiltered" in changing_stage(engine) and "server lost" in describe_engine(engine)
    assert engine.process(frame(30))[0, 0, 0] == 30  # one-off frames too, unfiltered
    engine.update_prompt("charcoal")  # given while the server is gone: kept for the next session
    engine.set_strength(0.7)
    engine.set_guidance(guidance_scale=2.0)
    assert wait_until(lambda: connect.tries >= 3, 5)  # it keeps trying while the server is down

    connect.down = False
    assert wait_until(lambda: engine.connected, 5)
    second = connect.made[1]
    assert second.calls == [("update_prompt", ("charcoal", "blurry"), {}), ("set_strength", (0.7,), {}),
                            ("set_guidance", (), {"guidance_scale": 2.0})]
    assert events[-1].startswith("Reconnected") and engine.reconnections == 1
    assert engine.submit(frame(40), tag="c")[0].image[0, 0, 0] == 215
    engine.close()
    assert second.closed


def test_the_pipelines_outputs_say_which_frames_were_not_filtered():
    connect = Connector()
    engine = ReconnectingEngine(connect, "http://server", delays=(60.0,))
    source = Frame(frame(50), 7, time.monotonic())
    assert run_engine(engine, [source], keep_input=False)[0].processed
    connect.made[0].gone = True
    out = run_engine(engine, [source], keep_input=True)[0]
    assert not out.processed and out.index == 7 and out.image[0, 0, 0] == 50
    engine.close()


def test_closing_stops_the_tries():
    connect = Connector()
    engine = ReconnectingEngine(connect, "http://server", delays=(0.2,))
    connect.down, connect.made[0].gone = True, True
    engine.submit(frame(1))
    engine.close()
    tries = connect.tries
    time.sleep(0.5)
    assert connect.tries == tries and not engine.connected


def test_only_one_thread_handles_a_loss_seen_by_two():
    connect, events = Connector(), []
    engine = ReconnectingEngine(connect, "http://server", on_event=events.append, delays=(60.0,))
    connect.made[0].gone = True
    threads = [threading.Thread(target=engine.submit, args=(frame(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(events) == 1
    engine.close()


def test_a_first_connection_that_fails_fails_the_load():
    connect = Connector()
    connect.down = True
    with pytest.raises(RemoteError, match="cannot reach"):
        ReconnectingEngine(connect, "http://server")


@pytest.mark.timeout(120)
def test_a_server_stopped_and_started_again_serves_the_same_client_again(monkeypatch):
    from app.remote import client
    from app.remote.client import RemoteEngine
    from tests.test_remote import LIMITS, TOKEN, Inverting, Serving

    monkeypatch.setattr(client, "SILENCE_S", 1.0)
    serving = Serving(Inverting, LIMITS)
    url, events = serving.url, []
    engine = ReconnectingEngine(lambda: RemoteEngine(url, TOKEN, timeout_s=5.0), url, on_event=events.append,
                                delays=(0.2, 0.4))
    try:
        def outputs(value, seconds):
            got, deadline = [], time.monotonic() + seconds
            while time.monotonic() < deadline:
                got += engine.submit(frame(value))
                time.sleep(0.03)
            return got

        assert any(out.processed and out.image.mean() > 200 for out in outputs(20, 3))  # inverted: 235
        serving.stop()
        during = outputs(60, 4)
        assert not engine.connected and events and events[0].startswith("Lost")
        assert any(not out.processed and out.image.mean() == 60 for out in during)
        serving = Serving(Inverting, LIMITS, port=serving.port)
        assert wait_until(lambda: engine.connected, 30, poll_s=0.1)
        after = outputs(100, 3)
        assert any(out.processed and 145 < out.image.mean() < 165 for out in after)  # 255 - 100
        assert events[-1].startswith("Reconnected")
    finally:
        engine.close()
        serving.stop()


def packet(sequence: int, timestamp: int, marker: bool):
    from aiortc.rtp import RtpPacket

    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=sequence, timestamp=timestamp)
    p._data = bytes([sequence])  # what the receiver's depayloader leaves for the buffer
    return p


def test_a_video_frame_leaves_the_jitter_buffer_at_its_marker_not_at_the_next_frame():
    from app.remote.jitter import marker_jitter_buffer_class, use_marker_jitter_buffer

    buffer = marker_jitter_buffer_class()(capacity=64, is_video=True)
    assert buffer.add(packet(10, 900, False))[1] is None  # the frame's first packet: not complete
    frame = buffer.add(packet(11, 900, True))[1]  # its last (marked): out at once
    assert frame is not None and frame.timestamp == 900 and frame.data == bytes([10, 11])
    assert buffer.add(packet(13, 1800, True))[1] is None  # a packet missing before the marker: wait
    late = buffer.add(packet(12, 1800, False))[1]
    assert late is not None and late.data == bytes([12, 13])
    # Without markers (a sender that sets none) the library's rule holds: out when the next frame begins.
    plain = marker_jitter_buffer_class()(capacity=64, is_video=True)
    assert plain.add(packet(1, 100, False))[1] is None
    assert plain.add(packet(2, 200, False))[1].timestamp == 100
    assert use_marker_jitter_buffer() and use_marker_jitter_buffer()  # idempotent


def test_the_last_frame_of_a_stream_comes_back():
    from app.remote.client import RemoteEngine
    from tests.test_remote import LIMITS, TOKEN, Inverting, Serving

    serving = Serving(Inverting, LIMITS)
    client = RemoteEngine(serving.url, TOKEN, timeout_s=5.0)
    try:
        got = []
        for i in range(10):
            got += client.submit(frame(10 * i + 5), tag=i)
            time.sleep(0.05)
        got += client.flush(3.0)
        assert got and got[-1].tag == 9  # it waited for a next frame that never came, before
    finally:
        client.close()
        serving.stop()


def test_a_server_that_drops_each_new_session_is_tried_ever_more_rarely():
    from app.remote import reconnect

    connect = Connector()
    engine = ReconnectingEngine(connect, "http://server", delays=(0.05, 0.1, 60.0))
    for expected_wait in (0.05, 0.1, 60.0):  # each session lost at once: the wait grows across losses
        connect.made[-1].gone = True
        before = time.monotonic()
        engine.submit(frame(1))
        after = time.monotonic()
        scheduled = engine._next_try  # noqa: SLF001 - the scheduled try is what is checked
        assert before + expected_wait <= scheduled <= after + expected_wait
        if expected_wait < 60:
            assert wait_until(lambda: engine.connected, 5)
    engine.close()
    assert reconnect.STEADY_FRAMES > 0


def test_a_setting_the_server_refuses_is_not_kept_and_never_blocks_a_reconnection():
    connect = Connector()
    engine = ReconnectingEngine(connect, "http://server", delays=(0.01,))

    def refuse(*_args, **_kwargs):
        raise ValueError("prompt: must be text of at most 2000 characters")

    connect.made[0].update_prompt = refuse
    with pytest.raises(ValueError):
        engine.update_prompt("x" * 3000)
    engine.set_seed(4)
    connect.made[0].gone = True
    engine.submit(frame(1))
    assert wait_until(lambda: engine.connected, 5)
    assert connect.made[1].calls == [("set_seed", (4,), {})]  # the refused prompt was not kept
    engine.close()


def test_closing_does_not_wait_for_a_slow_try():
    gate = threading.Event()
    connect = Connector()
    engine = ReconnectingEngine(connect, "http://server", delays=(0.01,))
    slow = Connector.__call__

    def hanging(self):
        gate.wait(10)
        return slow(self)

    connect.made[0].gone = True
    Connector.__call__ = hanging
    try:
        engine.submit(frame(1))
        time.sleep(0.1)  # the try is now inside connect()
        closer = threading.Thread(target=engine.close)
        closer.start()
        closer.join(5)
        assert not closer.is_alive() and not gate.is_set()  # closed while the try still hangs
        gate.set()
        assert wait_until(lambda: connect.made[-1].closed, 5)  # what the late try made is closed, not used
        assert not engine.connected
    finally:
        Connector.__call__ = slow
