"""AsyncDiff over several devices (core.parallel), on the CPU with tiny presets: the UNet's stages chain to
diffusers' own UNet, AsyncDiff equals the plain engine with one stage and a by-hand one-step-stale reference with
two. A GPU test (marked) holds the captured graphs to the eager runner. Frame parallelism: test_frame_parallel.py."""

import numpy as np
import pytest
import torch

from core.config import ConfigError
from core.parallel import parallel_devices, use_asyncdiff
from core.parallel.asyncdiff import shift_rows
from core.parallel.unet_stages import (UNetStage, balanced_starts, split_units, unet_units, unit_flops)
from core.stream import StreamEngine
from tests.conftest import assert_frames_close, prepared_engine as prepared

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")




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
