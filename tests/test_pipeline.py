import threading
import time

import numpy as np
import pytest

from app.outputs import Output
from app.pipeline import OutputFrame, Pipeline, PipelineConfig
from app.sources import Camera, Source, SourceError, TestPattern, VideoFile
from tests.conftest import wait_until
from tests.pipeline_fakes import FakeEngine, FlakyCapture, pipeline_threads, write_clip

pytestmark = pytest.mark.timeout(60)


class Collector:
    def __init__(self):
        self.frames: list[OutputFrame] = []
        self.errors: list[str] = []
        self.statuses: list[str] = []

    def wire(self, **kwargs) -> dict:
        return dict(on_frame=self.frames.append, on_error=lambda m, e: self.errors.append(m),
                    on_status=self.statuses.append, **kwargs)

    def wait_for(self, predicate, timeout=10.0) -> bool:
        return wait_until(predicate, timeout)


def test_test_pattern_lossless_delivers_every_frame_in_order():
    got = Collector()
    engine = FakeEngine()
    pipe = Pipeline(engine, TestPattern(64, 48, fps=None, limit=60), PipelineConfig(lossless=True), **got.wire())
    pipe.start()
    assert pipe.wait(10)
    pipe.stop()
    assert [f.index for f in got.frames] == list(range(60))
    assert all(f.processed and f.image.shape == (24, 32, 3) for f in got.frames)
    assert engine.calls == 60
    times = [f.capture_time for f in got.frames]
    assert times == sorted(times) and all(f.output_time >= f.capture_time for f in got.frames)
    assert got.errors == [] and pipe.stats().dropped_frames == 0


def test_video_file_lossless_matches_the_file(tmp_path):
    written = write_clip(tmp_path / "clip.mp4", frames=15)
    got = Collector()
    pipe = Pipeline(None, VideoFile(tmp_path / "clip.mp4", paced=False), PipelineConfig(lossless=True), **got.wire())
    pipe.start()
    assert pipe.wait(10)
    pipe.stop()
    assert [f.index for f in got.frames] == list(range(15))
    # Without an engine the input passes through: the decoded frames are the written ones (lossy codec).
    for frame, original in zip(got.frames, written):
        assert not frame.processed
        assert np.abs(frame.image.astype(int) - original).mean() < 12


def test_slow_stage_drops_stale_frames_and_keeps_latency_bounded():
    got = Collector()
    engine = FakeEngine(delay_s=0.04)  # 25 fps engine behind a 200 fps source
    pipe = Pipeline(engine, TestPattern(64, 48, fps=200), **got.wire())
    pipe.start()
    time.sleep(1.2)
    pipe.stop()
    stats = pipe.stats()
    assert len(got.frames) >= 10
    assert stats.dropped_frames > 50, "a slow stage must drop, not queue"
    assert stats.frames_in - stats.frames_out - stats.dropped_frames <= 3, "nothing waits in a queue"
    late = [f.latency_ms for f in got.frames[3:]]
    # One frame in the engine plus at most one waiting: about two engine times (80 ms), where a queue
    # would have grown to several seconds by now (210 frames behind a 25 fps engine). The wide margin
    # absorbs a loaded machine; the bound only has to tell a slot from a queue.
    assert max(late) < 800, late
    indices = [f.index for f in got.frames]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)


def test_stop_and_restart_leave_no_thread_behind():
    before = {t.ident for t in threading.enumerate()}
    pipe = Pipeline(FakeEngine(), TestPattern(32, 24, fps=100))
    for _ in range(3):
        pipe.start()
        time.sleep(0.05)
        pipe.stop(close_outputs=False)
        pipe.start()
        time.sleep(0.05)
        pipe.stop()
        assert pipeline_threads() == []
    pipe.load_engine(lambda: FakeEngine())
    pipe.stop()
    assert {t.ident for t in threading.enumerate()} <= before
    assert not pipe.running


def test_switching_source_keeps_the_engine():
    got = Collector()
    engine = FakeEngine()
    first = TestPattern(32, 24, fps=200)
    pipe = Pipeline(engine, first, **got.wire())
    pipe.start()
    assert got.wait_for(lambda: len(got.frames) > 5)
    pipe.set_source(TestPattern(80, 60, fps=200))
    assert got.wait_for(lambda: any(f.input.shape == (60, 80, 3) for f in got.frames[-3:]))
    pipe.stop()
    assert pipe.engine is engine and not engine.closed
    assert first._strip is None, "the old source was closed"
    assert got.errors == []


def test_lost_camera_is_retried_and_the_stream_resumes():
    device = FlakyCapture(good_reads=5, down_opens=3)
    got = Collector()
    engine = FakeEngine()
    config = PipelineConfig(retry_initial_s=0.01, retry_max_s=0.05)
    pipe = Pipeline(engine, Camera(0, capture_factory=device.factory), config, **got.wire())
    pipe.start()
    assert got.wait_for(lambda: len(got.frames) >= 12), got.statuses
    pipe.stop()
    assert any("stopped delivering" in s and "retrying" in s for s in got.statuses)
    assert any(s.endswith("is back") for s in got.statuses)
    assert device.opens >= 5  # the first open, three failed re-opens, the one that worked
    assert pipe.engine is engine and got.errors == []
    assert all(f.processed for f in got.frames)


def test_exception_in_a_source_reaches_the_error_callback():
    class Broken(Source):
        name = "broken"

        def read(self):
            raise ValueError("decoder exploded")

    got = Collector()
    pipe = Pipeline(FakeEngine(), Broken(), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: got.errors)
    assert "decoder exploded" in got.errors[0]
    # The pipeline is still up: a new source streams.
    pipe.set_source(TestPattern(32, 24, fps=100))
    assert got.wait_for(lambda: len(got.frames) > 3)
    pipe.stop()


def test_source_that_cannot_open_says_why():
    got = Collector()
    pipe = Pipeline(None, VideoFile("/nonexistent/clip.mp4"), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: got.errors)
    pipe.stop()
    assert "does not exist" in got.errors[0]


def test_engine_errors_are_reported_and_out_of_memory_unloads_it():
    torch = pytest.importorskip("torch")
    got = Collector()
    engine = FakeEngine()
    engine.fail_with = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    pipe = Pipeline(engine, TestPattern(32, 24, fps=100), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: got.errors and len(got.frames) > 3)
    pipe.stop()
    assert "smaller size or fewer steps" in got.errors[0] and "32x24" in got.errors[0]
    assert pipe.engine is None and engine.closed
    assert not got.frames[-1].processed, "frames keep flowing, unprocessed"


def test_repeated_engine_failures_unload_after_the_limit():
    got = Collector()
    engine = FakeEngine()
    engine.fail_with = RuntimeError("shape mismatch")
    pipe = Pipeline(engine, TestPattern(32, 24, fps=200), PipelineConfig(max_engine_failures=3), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: pipe.engine is None)
    pipe.stop()
    assert engine.calls == 3 and len(got.errors) == 3
    assert "unloaded" in got.errors[-1]


def test_call_in_gpu_thread_runs_between_frames():
    engine = FakeEngine(delay_s=0.005)
    pipe = Pipeline(engine, TestPattern(32, 24, fps=200))
    pipe.start()
    seen = [pipe.call_in_gpu_thread(lambda: (threading.current_thread().name, engine.in_process)).result(5)
            for _ in range(20)]
    pipe.stop()
    assert all(name == "pipeline-gpu" and not busy for name, busy in seen)
    assert pipe.call_in_gpu_thread(lambda: 42).result(1) == 42  # stopped: runs at once


def test_new_engine_replaces_the_old_only_when_ready():
    got = Collector()
    old, new = FakeEngine(), FakeEngine(width=16, height=16)
    gate = threading.Event()

    def factory():
        gate.wait(5)
        return new

    pipe = Pipeline(old, TestPattern(32, 24, fps=200), **got.wire())
    pipe.start()
    pipe.load_engine(factory)
    time.sleep(0.2)
    calls_while_loading = old.calls
    assert calls_while_loading > 5 and not old.closed
    gate.set()
    assert got.wait_for(lambda: got.frames and got.frames[-1].image.shape == (16, 16, 3))
    pipe.stop()
    assert old.closed and pipe.engine is new and "Model ready" in got.statuses


def test_failed_engine_load_keeps_the_old_engine():
    got = Collector()
    old = FakeEngine()
    pipe = Pipeline(old, TestPattern(32, 24, fps=100), **got.wire())
    pipe.start()

    def factory():
        raise SourceError("weights not found")

    pipe.load_engine(factory)
    assert got.wait_for(lambda: got.errors)
    pipe.stop()
    assert "weights not found" in got.errors[0] and pipe.engine is old and not old.closed


def test_broken_output_is_detached_and_closed_while_others_continue():
    class Good(Output):
        def __init__(self):
            self.count = 0
            self.closed = False

        def write(self, image, timestamp=None):
            self.count += 1

        def close(self):
            self.closed = True

    class Bad(Good):
        name = "Bad output"

        def write(self, image, timestamp=None):
            raise OSError("device gone")

    got = Collector()
    good, bad = Good(), Bad()
    pipe = Pipeline(FakeEngine(), TestPattern(32, 24, fps=200), **got.wire())
    pipe.add_output(good)
    pipe.add_output(bad)
    pipe.start()
    assert got.wait_for(lambda: good.count > 10)
    assert bad.closed and bad not in pipe.outputs and "Bad output stopped: device gone" in got.errors[0]
    pipe.remove_output(good, close=False)
    count = good.count
    time.sleep(0.05)
    assert good.count == count and not good.closed
    pipe.stop()


def test_frame_buffer_batches_keep_every_frame():
    got = Collector()
    engine = FakeEngine(frame_buffer_size=3)
    pipe = Pipeline(engine, TestPattern(32, 24, fps=None, limit=10), PipelineConfig(lossless=True), **got.wire())
    pipe.start()
    assert pipe.wait(10)
    pipe.stop()
    assert [f.index for f in got.frames] == list(range(10))
    assert engine.calls == 4  # 3 + 3 + 3 + a padded last call


def test_stats_report_rates_and_latency():
    pipe = Pipeline(FakeEngine(delay_s=0.01), TestPattern(32, 24, fps=50))
    pipe.start()
    time.sleep(1.0)
    stats = pipe.stats()
    pipe.stop()
    # Rates of a 50 fps source, with room for a loaded machine; the engine's reported time is exact.
    assert 15 < stats.input_fps < 70 and 15 < stats.output_fps < 70
    assert 10 <= stats.latency_ms < 1000 and stats.gpu_ms == pytest.approx(10, abs=1)
    assert stats.frames_out > 20 and "fps" in stats.summary()


def test_real_tiny_engine_in_the_pipeline(tiny_components, tiny_config):
    from core.stream import StreamEngine

    engine = StreamEngine(tiny_components, tiny_config)
    engine.prepare("a watercolor", "")
    got = Collector()
    pipe = Pipeline(engine, TestPattern(80, 60, fps=None, limit=6), PipelineConfig(lossless=True), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: len(got.frames) >= 3, timeout=60)
    # Engine setters are thread-safe and apply at the next frame, with the stream running.
    engine.update_prompt("a pencil sketch")
    engine.set_seed(5)
    assert pipe.wait(60)
    pipe.stop()
    assert got.errors == [] and [f.index for f in got.frames] == list(range(6))
    assert all(f.processed and f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8 for f in got.frames)
    assert pipe.stats().gpu_ms > 0


@pytest.mark.filterwarnings("ignore:running on the CPU")
def test_a_frame_parallel_engine_in_the_pipeline_keeps_every_frame_with_its_own_data(tiny_components, tiny_config):
    from core.stream import StreamEngine

    config = tiny_config.replace(t_index_list=(30,))
    engine = StreamEngine.from_config(config.replace(gpus=2, parallel="frames"), components=tiny_components)
    engine.prepare("a watercolor", "")
    single = StreamEngine(tiny_components, config)
    single.prepare("a watercolor", "")
    got = Collector()
    pipe = Pipeline(engine, TestPattern(64, 64, fps=None, limit=9), PipelineConfig(lossless=True, keep_input=True),
                    **got.wire())
    pipe.start()
    assert pipe.wait(60)
    pipe.stop()
    # Outputs come out frames later than their inputs went in; each keeps its own frame's index and input, and
    # the ones still in flight at the end of the source are flushed.
    assert got.errors == [] and [f.index for f in got.frames] == list(range(9))
    for f in got.frames:
        assert np.abs(f.image.astype(int) - single.process(f.input).astype(int)).max() <= 1


@pytest.mark.filterwarnings("ignore:running on the CPU")
def test_a_swapped_out_engine_frees_its_model_even_while_something_still_holds_it(tiny_config, make_frame):
    import gc
    import weakref

    from core.models import load_components
    from core.stream import StreamEngine

    got = Collector()
    old = StreamEngine(load_components(tiny_config), tiny_config)  # its own model: the shared fixture stays alive
    old.prepare("a cat")
    unet, vae = weakref.ref(old.unet), weakref.ref(old.vae)
    pipe = Pipeline(old, TestPattern(64, 64, fps=100), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: any(f.processed for f in got.frames))
    pipe.set_engine(FakeEngine(width=16, height=16))
    assert got.wait_for(lambda: got.frames[-1].image.shape == (16, 16, 3))
    pipe.stop()
    gc.collect()
    # `old` is still referenced right here, as a stray reference elsewhere in the app would hold it.
    assert old.closed and unet() is None and vae() is None
    with pytest.raises(RuntimeError, match="closed"):
        old.process(make_frame())


def test_background_loader_hands_over_only_the_newest_load_and_releases_the_rest():
    from app.pipeline.engine_loader import BackgroundLoader

    loader = BackgroundLoader()
    ready, failures, progress = [], [], []
    gate = threading.Event()
    slow, fast = FakeEngine(), FakeEngine()

    def slow_build(say):
        say("slow started")
        gate.wait(5)
        say("slow finished")  # superseded by now: must not be shown
        return slow

    def failing_build(say):
        gate.wait(5)
        raise SourceError("superseded failure")

    loader.load(slow_build, ready.append, failures.append, progress.append)
    loader.load(failing_build, ready.append, failures.append, progress.append)
    loader.load(lambda say: fast, ready.append, failures.append, progress.append)
    assert loader.wait(0.5) is False  # two loads still run
    gate.set()
    assert loader.wait(5)
    assert ready == [fast] and failures == [] and slow.closed and not fast.closed
    assert "slow finished" not in progress


def test_an_engine_swap_during_stop_waits_for_the_frame_in_flight():
    got = Collector()
    old, new = FakeEngine(delay_s=0.5), FakeEngine()
    pipe = Pipeline(old, TestPattern(32, 24, fps=100), **got.wire())
    pipe.start()
    assert got.wait_for(lambda: old.in_process)
    stopping = threading.Thread(target=pipe.stop)
    stopping.start()
    assert got.wait_for(lambda: not pipe.running)  # stop() has taken the threads and is joining them
    pipe.set_engine(new)  # as the window does when a load finishes while Stop runs on a worker
    stopping.join(10)
    assert pipe.engine is new and old.closed and not old.closed_mid_frame and got.errors == []
