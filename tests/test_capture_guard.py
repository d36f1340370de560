"""Captures kept apart from other threads' device work (core.accel.capture_guard): a capture asked not to wait
is refused while work runs and the frame or tick runs eagerly instead; a waiting capture holds new work back;
one thread may nest both; a background UNet build holds the guard while it runs."""

import threading

import pytest
import torch

from core.accel.capture_guard import CAPTURE_GUARD, CaptureBusy, CaptureGuard
from core.accel.compile import FrameGraph
from core.accel.tick_graph import CudaGraphRecorder, TickGraphs
from core.accel.tick_unets import TickUNets
from core.multi_stream import process_together
from tests.conftest import assert_frames_close, prepared_engine
from tests.test_tick_graph import CountingCompile, ReplayingRecorder, assert_same, engines_of

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


class WorkOnAnotherThread:
    """``guard.work()`` held by a thread of its own until ``release()``."""

    def __init__(self, guard, short: bool = False, wait_until_in: bool = True):
        self.entered, self.leave = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(guard, short), daemon=True)
        self.thread.start()
        assert not wait_until_in or self.entered.wait(10)

    def _hold(self, guard, short):
        with guard.work(short=short):
            self.entered.set()
            self.leave.wait(30)

    def release(self):
        self.leave.set()
        self.thread.join(10)


def test_a_capture_that_may_not_wait_is_refused_while_work_runs_and_taken_after():
    guard = CaptureGuard()
    work = WorkOnAnotherThread(guard)
    with pytest.raises(CaptureBusy):
        with guard.capture(blocking=False):
            pass
    work.release()
    with guard.capture(blocking=False):
        pass


def test_a_waiting_capture_runs_after_the_work_and_before_work_asked_later():
    guard, order = CaptureGuard(), []
    work = WorkOnAnotherThread(guard)

    def capture():
        with guard.capture():
            order.append("capture")

    def later_work():
        with guard.work():
            order.append("later work")

    capturing = threading.Thread(target=capture)
    capturing.start()
    while not guard._waiting:  # the capture waits for the work under way
        threading.Event().wait(0.01)
    late = threading.Thread(target=later_work)
    late.start()
    late.join(0.2)
    assert order == []  # new work waits behind the waiting capture
    order.append("work done")
    work.release()
    capturing.join(10)
    late.join(10)
    assert order == ["work done", "capture", "later work"]


def test_a_capture_that_may_not_wait_waits_for_an_eager_frame_and_holds_new_frames_behind_it():
    # Sessions falling back to eager frames (short work) must not refuse one another's captures for ever.
    guard, order = CaptureGuard(short_wait_s=60), []  # a frame's time on any machine
    frame = WorkOnAnotherThread(guard, short=True)

    def capture():
        try:
            with guard.capture(blocking=False):
                order.append("capture")
        except CaptureBusy:
            order.append("refused")

    def next_frame():
        with guard.work(short=True):
            order.append("next frame")

    capturing = threading.Thread(target=capture)
    capturing.start()
    while not guard._waiting and not order:  # it waits for the frame under way (or was refused)
        threading.Event().wait(0.01)
    assert order == []
    late = threading.Thread(target=next_frame)
    late.start()
    late.join(0.2)
    assert order == []  # a frame asked for meanwhile waits behind the capture
    order.append("frame done")
    frame.release()
    capturing.join(10)
    late.join(10)
    assert order == ["frame done", "capture", "next frame"]
    build = WorkOnAnotherThread(guard)  # long work (a build): refused at once, as before
    with pytest.raises(CaptureBusy):
        with guard.capture(blocking=False):
            pass
    build.release()


def test_an_eager_frame_that_runs_long_is_waited_for_once_and_then_refuses_captures_at_once():
    # An eager frame that met a compile at its first call: waited for up to short_wait_s from its start, after
    # which every capture is refused at once again (sessions waiting on it at every frame would crawl).
    now = [100.0]
    guard = CaptureGuard(short_wait_s=0.25, clock=lambda: now[0])
    frame = WorkOnAnotherThread(guard, short=True)  # began at 100.0
    now[0] = 100.3
    with pytest.raises(CaptureBusy, match="runs long"):
        with guard.capture(blocking=False):
            pass
    assert not guard._waiting  # refused without waiting
    frame.release()
    with guard.capture(blocking=False):  # its frame over: captured
        pass


def test_work_held_behind_a_capture_goes_on_when_the_capture_gives_up():
    guard = CaptureGuard(short_wait_s=1.0)
    frame = WorkOnAnotherThread(guard, short=True)
    refused = threading.Event()

    def capture():
        with pytest.raises(CaptureBusy):
            with guard.capture(blocking=False):
                pass
        refused.set()

    capturing = threading.Thread(target=capture)
    capturing.start()
    while not guard._waiting and not refused.is_set():
        threading.Event().wait(0.01)
    behind = WorkOnAnotherThread(guard, short=True, wait_until_in=False)  # held back while the capture waits,
    assert refused.wait(30) and behind.entered.wait(30)  # and in once it gave up (the frame still runs)
    behind.release()
    frame.release()
    capturing.join(10)


def test_one_thread_may_nest_work_and_captures():
    guard = CaptureGuard()
    with guard.capture(), guard.work(), guard.capture(blocking=False):
        pass
    with guard.work(), guard.capture(blocking=False), guard.work():
        pass


def test_the_graph_recorder_is_refused_before_it_runs_anything_while_work_runs():
    ran = []
    work = WorkOnAnotherThread(CAPTURE_GUARD)
    try:
        with pytest.raises(CaptureBusy):
            CudaGraphRecorder()(lambda: ran.append(1) or [], "cpu")
    finally:
        work.release()
    assert ran == []


def test_a_frame_graph_runs_the_frame_eagerly_while_another_thread_builds(tiny_components, tiny_config, make_frame):
    engine, reference = (prepared_engine(tiny_components, tiny_config) for _ in range(2))
    said = []
    graph = FrameGraph(engine, said.append)
    engine.acceleration = "graph"  # what a failed capture would turn to "none"
    frame = torch.from_numpy(make_frame(1))[None]
    work = WorkOnAnotherThread(CAPTURE_GUARD)
    try:
        out = graph(frame)
    finally:
        work.release()
    torch.testing.assert_close(out, reference.frame_step(frame), atol=1, rtol=0)
    assert graph.graphs == {} and engine.acceleration == "graph" and said == []  # no fallback: next frame tries


class GuardedRecorder(ReplayingRecorder):
    """The stand-in graph, asked for as the real recorder asks (core.accel.compile.record_graph)."""

    def __call__(self, fn, device, pool=None):
        with CAPTURE_GUARD.capture(blocking=False):
            return super().__call__(fn, device, pool)


def test_a_shared_tick_runs_eagerly_while_another_thread_builds_and_captures_after(tiny_components, tiny_config,
                                                                                  make_frame):
    together, alone = engines_of(tiny_components, tiny_config, 2), engines_of(tiny_components, tiny_config, 2)
    graphs = TickGraphs(GuardedRecorder())
    work = WorkOnAnotherThread(CAPTURE_GUARD)
    try:
        for tick in range(3):
            if tick == 2:
                work.release()
            frames = [make_frame(seed=10 * tick + i) for i in range(2)]
            outputs = process_together(together, frames, graphs=graphs)
            assert_same(outputs, [e.process(f) for e, f in zip(alone, frames)])
            assert graphs.session_captures == (2 if tick == 2 else 0)
    finally:
        work.release()
    assert not graphs.disabled


def test_a_background_unet_build_holds_captures_off_while_it_runs(tiny_components):
    refused = []

    def try_capture():
        try:
            with CAPTURE_GUARD.capture(blocking=False):
                refused.append(False)
        except CaptureBusy:
            refused.append(True)

    class ProbingCompile(CountingCompile):
        def __call__(self, unet):
            compiled = super().__call__(unet)

            def probed(*args, **kwargs):
                probe = threading.Thread(target=try_capture)  # another thread, as the tick's would be
                probe.start()
                probe.join(10)
                return compiled(*args, **kwargs)

            return probed

    unet = tiny_components.pipe.unet
    unets = TickUNets(unet, compile_fn=ProbingCompile())
    latents = torch.zeros((2, unet.config.in_channels, 8, 8))
    hidden = torch.zeros((2, 77, unet.config.cross_attention_dim))
    assert unets.for_rows(2, lambda: ((latents, torch.tensor([10, 10])), {"encoder_hidden_states": hidden,
                                                                          "return_dict": False})) is None
    assert unets.wait(60) and unets.built(2) is not None
    assert refused == [True, True]  # the compiling run and the settling run


def test_asyncdiff_runs_its_frames_eagerly_while_a_build_runs_and_asks_to_capture_again_after(
        tiny_components, tiny_config, make_frame, monkeypatch):
    """AsyncDiff's captures do not wait for another thread's build (a minute of compile): its frames run eagerly
    meanwhile, equal to the eager runner's, and the capture is asked for again once the build has ended."""
    from core.parallel import asyncdiff, use_asyncdiff
    from core.parallel.asyncdiff import AsyncDiffRunner

    config = tiny_config.replace(t_index_list=(10, 20, 30), cfg_type="self")
    eager, graphed = prepared_engine(tiny_components, config), prepared_engine(tiny_components, config)
    cpu = torch.device("cpu")
    use_asyncdiff(eager, [cpu, cpu], split_at=(3,))
    runner = AsyncDiffRunner(graphed, [cpu, cpu], (3,), graphs=True)  # as on CUDA, with this CPU's tensors
    graphed.install(frame_runner=runner)
    asked = []

    def capture(device, fn, pool=None, keep_begun=None):
        asked.append(CAPTURE_GUARD._capturing is not None)  # noqa: SLF001 - inside the runner's own capture
        raise CaptureBusy("the stand-in captures nothing")

    monkeypatch.setattr(asyncdiff, "_capture", capture)
    building, done = threading.Event(), threading.Event()

    def build():
        with CAPTURE_GUARD.work():
            building.set()
            done.wait(60)

    builder = threading.Thread(target=build)
    builder.start()
    try:
        assert building.wait(10)
        for i in range(3):
            assert_frames_close(graphed.process(make_frame(i)), eager.process(make_frame(i)), atol=1)
        assert asked == [] and runner.stage_graphs is None and runner.graphs == {}  # nothing waited, nothing kept
    finally:
        done.set()
        builder.join()
    assert_frames_close(graphed.process(make_frame(3)), eager.process(make_frame(3)), atol=1)
    assert asked == [True]  # asked again once the build ended (and, busy again, ran that frame eagerly too)
    torch.testing.assert_close(graphed.batch.latents, eager.batch.latents, rtol=1e-5, atol=1e-6)


class ReplayingGraph:
    """A captured graph's stand-in on the CPU: replaying runs the captured function again on its static buffers."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()

    @staticmethod
    def pool():
        return None


def asyncdiff_pair(tiny_components, tiny_config):
    from core.parallel import use_asyncdiff
    from core.parallel.asyncdiff import AsyncDiffRunner

    config = tiny_config.replace(t_index_list=(10, 20, 30), cfg_type="self")
    eager, graphed = prepared_engine(tiny_components, config), prepared_engine(tiny_components, config)
    cpu = torch.device("cpu")
    use_asyncdiff(eager, [cpu, cpu], split_at=(3,))
    runner = AsyncDiffRunner(graphed, [cpu, cpu], (3,), graphs=True)
    graphed.install(frame_runner=runner)
    return eager, graphed, runner


def test_asyncdiff_with_its_stages_captured_runs_the_frame_eagerly_around_them_while_a_build_runs(
        tiny_components, tiny_config, make_frame, monkeypatch):
    """A build that starts after the stages' capture refuses the frame's: the stage graphs are replayed around an
    eager front and back (equal to the eager runner), and the frame's capture is asked for at every frame."""
    from core.parallel import asyncdiff

    eager, graphed, runner = asyncdiff_pair(tiny_components, tiny_config)

    class BuildAfterTheStages:
        """The real guard, refusing every capture once the stages are captured (another thread's build)."""

        def __init__(self):
            self.refused = 0

        def capture(self, blocking=True):
            if runner.stage_graphs is not None:
                self.refused += 1
                raise CaptureBusy("a build runs")
            return CAPTURE_GUARD.capture(blocking)

        @staticmethod
        def work(short=False):
            return CAPTURE_GUARD.work(short=short)

    guard = BuildAfterTheStages()
    monkeypatch.setattr(asyncdiff, "CAPTURE_GUARD", guard)
    monkeypatch.setattr(asyncdiff, "_capture", lambda device, fn, pool=None, keep_begun=None: ReplayingGraph(fn))
    for i in range(4):
        assert_frames_close(graphed.process(make_frame(i)), eager.process(make_frame(i)), atol=1)
        torch.testing.assert_close(graphed.batch.latents, eager.batch.latents, rtol=1e-5, atol=1e-6)
    assert runner.stage_graphs is not None and runner.graphs == {} and guard.refused == 4


def test_a_failed_asyncdiff_frame_capture_leaves_the_stream_as_it_was(tiny_components, tiny_config, make_frame,
                                                                      monkeypatch):
    from core.parallel import asyncdiff

    _, graphed, runner = asyncdiff_pair(tiny_components, tiny_config)
    runner.graphs_wanted = False
    graphed.process(make_frame(0))  # an eager frame first: the runner's buffers exist
    runner.graphs_wanted = True
    calls = []

    def capture(device, fn, pool=None, keep_begun=None):
        calls.append(device)
        if len(calls) == 3:  # the stages (one) and the front went; the back fails
            raise RuntimeError("operation not permitted when stream is capturing")
        for _ in range(2):  # warm-ups, as the real capture runs
            fn()
            if keep_begun is not None:
                keep_begun.pending = None
        return ReplayingGraph(fn)

    monkeypatch.setattr(asyncdiff, "_capture", capture)
    latents = graphed.batch.latents.clone()
    with pytest.raises(RuntimeError, match="stream is capturing"):
        graphed.process(make_frame(1))
    assert len(calls) == 3 and graphed.batch.pending is None and runner.epoch_seen is None
    torch.testing.assert_close(graphed.batch.latents, latents)  # the warm-ups' steps were undone
