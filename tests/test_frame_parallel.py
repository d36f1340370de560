"""Frame parallelism (core.parallel.frame_parallel), on the CPU with tiny presets: two engines give one engine's
frames in order with one similarity filter in front, smoothing leans on each engine's last frame, settings reach
every engine, a failed frame is raised once; the GPUs' full-speed builds run one after another. GPU tests (marked)
run the captured graphs and the quick start on each GPU."""

import numpy as np
import pytest
import torch

from core.config import ConfigError
from core.stream import StreamEngine
from tests.conftest import assert_frames_close, prepared_engine as prepared

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")

def test_frame_parallel_needs_one_frame_per_call(tiny_config):
    with pytest.raises(ConfigError, match="parallel"):
        tiny_config.replace(gpus=2, parallel="frames", frame_buffer_size=2)
    from core.parallel import parallel_mode

    assert parallel_mode(tiny_config.replace(gpus=2, frame_buffer_size=2, t_index_list=(30,))) == "asyncdiff"
    assert parallel_mode(tiny_config.replace(gpus=2, t_index_list=(30,))) == "frames"


def repeated_frames(make_frame, count):
    """Runs of identical frames, so that the similarity filter skips some."""
    return [make_frame(i // 3) for i in range(count)]


def assert_one_engines_frames_in_order(parallel, single, frames, atol):
    """``parallel`` fed through submit/flush gives ``single``'s frames, each with its own tag, in order."""
    expected = [single.process(frame) for frame in frames]
    got = []
    for i, frame in enumerate(frames):
        got += parallel.submit(frame, tag=i)
    got += parallel.flush()
    assert [out.tag for out in got] == list(range(len(frames)))
    for (_, image, _), reference in zip(got, expected):
        assert_frames_close(image, reference, atol=atol)


def test_frame_parallel_gives_one_engines_frames_in_order(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,), similarity_filter=True, similarity_threshold=0.5)
    single = prepared(tiny_components, config)
    parallel = StreamEngine.from_config(config.replace(gpus=2, parallel="frames"), components=tiny_components)
    parallel.prepare("a cat", "blurry")
    assert parallel.parallel == "frame-parallel over cpu, cpu"
    from app.pipeline.engine_policy import describe_engine  # app imports OpenCV, which the GPU machine lacks

    assert describe_engine(parallel).endswith("frame-parallel over cpu, cpu")
    assert_one_engines_frames_in_order(parallel, single, repeated_frames(make_frame, 12), atol=1)
    assert parallel.skipped_frames == single.skipped_frames > 0
    assert sum(engine.frames_processed for engine in parallel.engines) == single.frames_processed
    assert min(engine.frames_processed for engine in parallel.engines) > 0  # both engines took frames
    parallel.close()


def test_frame_parallel_smoothing_leans_on_the_engines_last_frame(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,), smoothing=0.5)
    parallel = StreamEngine.from_config(config.replace(gpus=2, parallel="frames"), components=tiny_components)
    interleaved = [prepared(tiny_components, config), prepared(tiny_components, config)]
    parallel.prepare("a cat", "blurry")
    got = []
    for i in range(8):
        got += parallel.submit(make_frame(i), tag=i)
    got += parallel.flush()
    for i, (tag, image, skipped) in enumerate(got):
        assert not skipped
        assert tag == i
        assert_frames_close(image, interleaved[i % 2].process(make_frame(i)), atol=1)
    parallel.close()


def test_frame_parallel_settings_reach_every_engine_and_errors_reach_the_caller(tiny_components, tiny_config,
                                                                              make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    parallel = StreamEngine.from_config(config.replace(gpus=2, parallel="frames"), components=tiny_components)
    single = prepared(tiny_components, config)
    parallel.prepare("a cat", "blurry")
    for engine in (parallel, single):
        engine.update_prompt("a dog")
        engine.set_seed(7)
    for i in range(4):
        assert_frames_close(parallel.process(make_frame(i)), single.process(make_frame(i)), atol=1)
    with pytest.raises(ValueError, match="frame"):
        parallel.submit(np.zeros((64, 64), dtype=np.uint8), tag="bad")  # not HxWx3
        parallel.flush()
    # The failure is raised once; the stream goes on, in order, without the failed frame.
    got = []
    for i in range(4, 10):
        got += parallel.submit(make_frame(i), tag=i)
    got += parallel.flush()
    assert [out.tag for out in got] == list(range(4, 10))
    parallel.close()
    with pytest.raises(RuntimeError, match="closed"):
        parallel.engines[0].process(make_frame(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frame_parallel_graphs_on_each_gpu_give_one_engines_frames(make_frame, monkeypatch):
    from core.config import StreamConfig
    from core.models import load_components

    monkeypatch.setenv("LIVEDIFFUSION_INDUCTOR", "0")  # the captured graph of the eager kernels: seconds to build
    gpus = max(2, min(torch.cuda.device_count(), 4))
    config = StreamConfig(model="preset:tiny", width=64, height=64, device="cuda", dtype="float32",
                          t_index_list=(30,), similarity_filter=True, similarity_threshold=0.5, quick_start=False)
    components = load_components(config)
    from core.accel import accelerate

    single = StreamEngine(components, config)
    accelerate(single)
    single.prepare("a cat", "blurry")
    parallel = StreamEngine.from_config(config.replace(gpus=gpus, parallel="frames"), components=components)
    parallel.prepare("a cat", "blurry")
    assert_one_engines_frames_in_order(parallel, single, repeated_frames(make_frame, 16), atol=2)
    parallel.close()


def test_the_gpus_full_speed_builds_run_one_after_another():
    import threading
    import time

    from core.parallel.frame_parallel import ChainedBuilds

    class Build:  # the parts of core.accel.staged.BackgroundBuild that the chain uses
        def __init__(self, log):
            self.log, self.built, self.state = log, threading.Event(), "waiting"
            self.frame_run = threading.Event()

        def start(self):
            self.log.append(("start", self))
            self.state = "building"

        def wait_built(self, timeout_s=None):
            return self.built.wait(timeout_s)

        def wait(self, timeout_s=None):
            return self.built.wait(timeout_s)

        def settled(self):  # installed and its first frame run
            return self.built.is_set() and self.frame_run.is_set()

        def cancel(self):
            self.state = "cancelled"

        def stage(self):
            return "full speed" if self.built.is_set() else f"quick start, {self.state}"

    log = []
    first, second = Build(log), Build(log)
    chain = ChainedBuilds([first, second])
    chain.start()
    time.sleep(0.3)
    assert log == [("start", first)]  # the second waits for the first to finish building
    assert chain.stage() == "quick start, building (GPU 1 of 2)"
    first.built.set()
    time.sleep(0.3)
    assert log == [("start", first)]  # and for its result's first frame (where its graph is recorded)
    first.frame_run.set()
    deadline = time.monotonic() + 5
    while len(log) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log == [("start", first), ("start", second)]
    assert chain.stage() == "quick start, building (GPU 2 of 2)" and not chain.wait(0.01)
    second.built.set()
    assert chain.wait(1) and chain.stage() == "full speed"
    chain.cancel()
    assert first.state == second.state == "cancelled"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frame_parallel_quick_start_reaches_full_speed_on_every_gpu_without_losing_frames(make_frame):
    from core.config import StreamConfig

    gpus = max(2, min(torch.cuda.device_count(), 4))
    config = StreamConfig(model="preset:tiny", width=64, height=64, device="cuda", dtype="float32",
                          t_index_list=(30,), gpus=gpus, parallel="frames")
    parallel = StreamEngine.from_config(config)
    parallel.prepare("a cat", "blurry")
    assert parallel.startup is not None and parallel.stage.startswith("quick start")
    submitted, got = 0, []
    while not parallel.startup.wait(0.01) and submitted < 5000:
        got += parallel.submit(make_frame(submitted % 7), tag=submitted)
        submitted += 1
    for _ in range(4 * gpus):
        got += parallel.submit(make_frame(submitted % 7), tag=submitted)
        submitted += 1
    got += parallel.flush()
    assert parallel.stage == "full speed"
    assert [out.tag for out in got] == list(range(submitted))
    assert all(engine.acceleration == "compile" for engine in parallel.engines)
    parallel.close()
