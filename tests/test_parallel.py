"""Several devices (core.parallel), on the CPU with tiny presets: the UNet's stages chain to diffusers' own UNet,
AsyncDiff equals the plain engine with one stage and a by-hand one-step-stale reference with two, frame
parallelism gives one engine's frames in order. GPU tests (marked) hold the captured graphs to the eager
runner."""

import numpy as np
import pytest
import torch

from core.config import ConfigError
from core.parallel import parallel_devices, use_asyncdiff
from core.parallel.asyncdiff import shift_rows
from core.parallel.unet_stages import (UNetStage, balanced_starts, split_units, unet_units, unit_flops)
from core.stream import StreamEngine
from tests.conftest import assert_frames_close

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


def prepared(components, config):
    engine = StreamEngine(components, config)
    engine.prepare("a cat", "blurry")
    return engine


def unet_inputs(engine, seed=0):
    cond = engine.conditioning
    rows = cond.encoder_hidden_states.shape[0]
    x = torch.randn((rows, *engine.latent_shape), generator=torch.Generator().manual_seed(seed))
    return x, engine.batch.unet_timesteps, cond.encoder_hidden_states, cond.added_cond_kwargs


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_any_chain_of_stages_is_diffusers_unet(family, tiny_components, tiny_sdxl_components, tiny_config):
    components = tiny_components if family == "sd" else tiny_sdxl_components
    config = tiny_config.replace(model="preset:tiny-sdxl") if family == "sdxl" else tiny_config
    engine = prepared(components, config.replace(width=96, height=72))  # 12x9 latents: upsample sizes from skips
    x, t, ehs, added = unet_inputs(engine)
    units = unet_units(engine.unet)
    with torch.no_grad():
        expected = engine.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)[0]
        for starts in [(), (1,), (len(units) // 2,), (1, 3), (2, 3, len(units) - 1)]:
            handoff = (x,)
            for run in split_units(units, starts):
                handoff = UNetStage(engine.unet, run, engine.latent_shape[1:])(handoff, t, ehs, added)
            assert len(handoff) == 1
            torch.testing.assert_close(handoff[0], expected, rtol=1e-4, atol=1e-5)


def test_a_stage_copy_holds_only_its_layers_and_runs_like_the_whole_unet(tiny_components, tiny_config):
    from core.parallel.unet_stages import stage_copy

    engine = prepared(tiny_components, tiny_config)
    x, t, ehs, added = unet_inputs(engine)
    units = unet_units(engine.unet)
    first, second = split_units(units, (len(units) // 2,))
    copied = stage_copy(engine.unet, second)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(copied) < count(engine.unet)
    assert not any(p is q for p in copied.parameters() for q in engine.unet.parameters())  # a copy, not a view
    with torch.no_grad():
        handoff = UNetStage(engine.unet, first, engine.latent_shape[1:])((x,), t, ehs, added)
        expected = UNetStage(engine.unet, second, engine.latent_shape[1:])(handoff, t, ehs, added)
        got = UNetStage(copied, second, engine.latent_shape[1:])(handoff, t, ehs, added)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-7)


def test_the_units_flops_add_up_to_the_whole_unet(tiny_components, tiny_config):
    from torch.utils.flop_counter import FlopCounterMode

    engine = prepared(tiny_components, tiny_config)
    x, t, ehs, added = unet_inputs(engine)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        engine.unet(x, t, encoder_hidden_states=ehs, return_dict=False)
    costs = unit_flops(engine.unet, x, t, ehs)
    assert len(costs) == len(unet_units(engine.unet))
    assert min(costs[1:-1]) > 0
    assert sum(costs) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_balanced_starts_minimise_the_slowest_stage():
    assert balanced_starts([1, 1, 1, 1], 2) == (2,)
    assert balanced_starts([1, 1, 1, 1, 10, 1, 1], 2) == (4,)  # the heavy unit alone on the second device
    assert balanced_starts([1, 1, 1, 1], 2, first_extra=2) == (1,)  # the first device also decodes
    assert balanced_starts([2, 1, 1, 2, 1, 1], 3) == (2, 4)
    with pytest.raises(ValueError):
        balanced_starts([1, 1], 3)


def test_shift_rows_moves_each_sample_one_step_within_its_group():
    src = torch.arange(7.0)[:, None]  # groups: 3 negative rows, then 4 positive rows; frame buffer 1
    dst = torch.zeros_like(src)
    shift_rows(dst, src, [3, 4], 1)
    assert dst[:, 0].tolist() == [0, 0, 1, 3, 3, 4, 5]
    shift_rows(dst, src, [6], 2)
    assert dst[:6, 0].tolist() == [0, 1, 0, 1, 2, 3]


def by_hand_shift(previous, groups, fb):
    """The row each sample sat in one frame earlier, written out row by row."""
    rows, start = [], 0
    for size in groups:
        for i in range(size):
            rows.append(start + (i if i < fb else i - fb))
        start += size
    return tuple(t[rows] for t in previous)


def test_asyncdiff_with_one_stage_is_the_plain_engine(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(10, 25, 40), cfg_type="self")
    plain, single = prepared(tiny_components, config), prepared(tiny_components, config)
    use_asyncdiff(single, [torch.device("cpu")])
    for i in range(5):
        frame = make_frame(i)
        assert_frames_close(single.process(frame), plain.process(frame), atol=1)
        torch.testing.assert_close(single.batch.latents, plain.batch.latents, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps,frame_buffer,cfg_type,split", [(2, 1, "self", (3,)), (3, 2, "none", (2,)),
                                                              (2, 1, "full", (4,)), (3, 1, "initialize", (1,))])
def test_asyncdiff_two_stages_equal_a_one_step_stale_reference(steps, frame_buffer, cfg_type, split,
                                                               tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=tuple(range(10, 10 + 10 * steps, 10)), frame_buffer_size=frame_buffer,
                                 cfg_type=cfg_type, gpus=2, parallel="asyncdiff", split_at=split)
    engine = StreamEngine.from_config(config, components=tiny_components)
    engine.prepare("a cat", "blurry")
    assert engine.parallel.startswith("asyncdiff over 2 devices: cpu: in")
    plain = prepared(tiny_components, config.replace(gpus=1, split_at=()))
    reference = prepared(tiny_components, config.replace(gpus=1, split_at=()))
    first, second = (UNetStage(reference.unet, run, reference.latent_shape[1:])
                     for run in split_units(unet_units(reference.unet), split))
    groups = [g for g in (reference.batch.negative_count, reference.batch.unet_rows.__len__() -
                          reference.batch.negative_count) if g]
    state = {"previous": None, "epoch": None}

    def stale_predict(x_in, timesteps):
        cond = reference.conditioning
        args = (timesteps, cond.encoder_hidden_states, cond.added_cond_kwargs)
        handoff = first((x_in,), *args)
        fresh = state["epoch"] != reference.batch.epoch
        stage_input = handoff if fresh else by_hand_shift(state["previous"], groups, frame_buffer)
        state["previous"], state["epoch"] = handoff, reference.batch.epoch
        return second(stage_input, *args)[0]

    reference.predict_noise = stale_predict
    differs = 0.0
    for i in range(7):
        if i == 4:
            for e in (engine, reference, plain):
                e.update_prompt("a dog")
        frame = np.stack([make_frame(i * frame_buffer + k) for k in range(frame_buffer)])
        assert_frames_close(engine.process(frame), reference.process(frame), atol=1)
        plain.process(frame)
        torch.testing.assert_close(engine.batch.feedback, reference.batch.feedback, rtol=1e-4, atol=1e-5)
        differs = max(differs, float((engine.batch.feedback - plain.batch.feedback).abs().max()))
    assert differs > 1e-4  # the staleness is real: not the plain engine's frames


def test_asyncdiff_follows_changes_however_its_first_device_is_spelled(tiny_components, tiny_config, make_frame):
    # "cuda" and "cuda:0" are one GPU: the first stage must read the engine's own prompt and timesteps, not a copy
    # made once. The CPU spelled "cpu" and "cpu:0" stands in for it.
    config = tiny_config.replace(t_index_list=(10, 20, 30), cfg_type="self")
    plain, spelled = prepared(tiny_components, config), prepared(tiny_components, config)
    use_asyncdiff(plain, [torch.device("cpu")] * 2, split_at=(3,))
    use_asyncdiff(spelled, [torch.device("cpu", 0), torch.device("cpu")], split_at=(3,))
    for i in range(6):
        if i == 3:
            for engine in (plain, spelled):
                engine.update_prompt("a dog")
                engine.set_strength(0.8)
        assert_frames_close(spelled.process(make_frame(i)), plain.process(make_frame(i)), atol=1)


def test_one_device_spelled_two_ways_is_one_device(monkeypatch):
    from core.parallel.asyncdiff import canonical

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert canonical("cuda") == canonical(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert canonical("cuda") != canonical("cuda:0")
    assert canonical(torch.device("cpu", 0)) == canonical("cpu")


def test_frame_parallel_needs_one_frame_per_call(tiny_config):
    with pytest.raises(ConfigError, match="parallel"):
        tiny_config.replace(gpus=2, parallel="frames", frame_buffer_size=2)
    from core.parallel import parallel_mode

    assert parallel_mode(tiny_config.replace(gpus=2, frame_buffer_size=2, t_index_list=(30,))) == "asyncdiff"
    assert parallel_mode(tiny_config.replace(gpus=2, t_index_list=(30,))) == "frames"


def test_asyncdiff_split_at_is_checked(tiny_components, tiny_config):
    with pytest.raises(ConfigError, match="split_at"):
        tiny_config.replace(gpus=3, split_at=(2,))
    engine = prepared(tiny_components, tiny_config)
    with pytest.raises(ValueError, match="increasing unit indices"):
        use_asyncdiff(engine, [torch.device("cpu")] * 2, split_at=(99,))


def test_doctor_shows_the_split_for_the_gpus_it_sees(monkeypatch):
    from app.commands import doctor
    from core.parallel import split_plan

    plan = split_plan("tiny", gpus=3, rows=2, size=64)
    parts = plan.split(" | ")
    assert len(parts) == 3 and parts[0].startswith("in+") and parts[-1].split(" (")[0].endswith("+out")
    assert sum(int(part.rsplit("(", 1)[1].rstrip("%)")) for part in parts) == pytest.approx(100, abs=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    check = doctor.check_several_gpus()
    assert "4 GPUs" in check.detail and check.detail.count(" | ") == 3


def test_parallel_devices_on_the_cpu(tiny_config):
    assert parallel_devices(tiny_config.replace(gpus=3)) == [torch.device("cpu")] * 3


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
def test_asyncdiff_graphs_equal_the_eager_runner_on_the_gpu(make_frame):
    from core.config import StreamConfig
    from core.models import load_components

    gpus = max(2, min(torch.cuda.device_count(), 4))
    config = StreamConfig(model="preset:tiny", width=64, height=64, device="cuda", dtype="float32",
                          acceleration="none", t_index_list=(10, 20, 30, 40), cfg_type="self")
    components = load_components(config)
    devices = parallel_devices(config.replace(gpus=gpus)) if torch.cuda.device_count() > 1 else \
        [torch.device("cuda")] * 2
    engines = []
    for acceleration in ("none", "compile"):
        engine = prepared(components, config.replace(acceleration=acceleration))
        use_asyncdiff(engine, devices)
        engines.append(engine)
    assert engines[1].acceleration == "compile" and engines[0].acceleration == "none"
    for i in range(6):
        if i == 3:
            for engine in engines:
                engine.update_prompt("a dog")
        outs = [engine.process(make_frame(i)) for engine in engines]
        assert_frames_close(outs[1], outs[0], atol=2)


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

        def start(self):
            self.log.append(("start", self))
            self.state = "building"

        def wait_built(self, timeout_s=None):
            return self.built.wait(timeout_s)

        def wait(self, timeout_s=None):
            return self.built.wait(timeout_s)

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
