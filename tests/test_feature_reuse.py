"""Deep-feature reuse inside Stream Batch (CPU, tiny presets): the split UNet equals diffusers' own, reuse off
and interval 1 give today's frames, each row runs on its own sample's deep features, changes refresh."""

import numpy as np
import pytest
import torch

from core import feature_reuse
from core.feature_reuse import FeatureCache, unet_split_forward
from core.stream import StreamEngine
from tests.conftest import assert_frames_close

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


def prepared(components, config):
    engine = StreamEngine(components, config)
    engine.prepare("a cat", "blurry")
    return engine


@pytest.mark.parametrize("depth", ["block", "layer"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_split_unet_is_diffusers_unet(family, depth, tiny_components, tiny_sdxl_components, tiny_config):
    components = tiny_components if family == "sd" else tiny_sdxl_components
    engine = prepared(components, tiny_config.replace(model="preset:tiny-sdxl") if family == "sdxl" else tiny_config)
    cond = engine.conditioning
    rows = cond.encoder_hidden_states.shape[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((rows, *engine.latent_shape), generator=generator)
    timesteps = engine.batch.unet_timesteps
    with torch.no_grad():
        expected = engine.unet(x, timesteps, encoder_hidden_states=cond.encoder_hidden_states,
                               added_cond_kwargs=cond.added_cond_kwargs, return_dict=False)[0]
        eps, deep = unet_split_forward(engine.unet, x, timesteps, cond.encoder_hidden_states, cond.added_cond_kwargs,
                                       depth=depth)
        shallow, same = unet_split_forward(engine.unet, x, timesteps, cond.encoder_hidden_states,
                                           cond.added_cond_kwargs, deep=deep, depth=depth)
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shallow, eps, rtol=1e-6, atol=1e-7)  # the shallow path on its own deep features
    assert same is deep


def test_an_odd_latent_size_takes_the_upsample_sizes_from_the_skips(tiny_components, tiny_config):
    engine = prepared(tiny_components, tiny_config.replace(width=96, height=72))  # 12x9 latents: 9 is odd
    cond = engine.conditioning
    x = torch.randn((cond.encoder_hidden_states.shape[0], *engine.latent_shape))
    with torch.no_grad():
        expected = engine.unet(x, engine.batch.unet_timesteps, encoder_hidden_states=cond.encoder_hidden_states,
                               return_dict=False)[0]
        eps, _ = unet_split_forward(engine.unet, x, engine.batch.unet_timesteps, cond.encoder_hidden_states)
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-5)


def frames(make_frame, count):
    return [make_frame(i) for i in range(count)]


def test_reuse_off_is_todays_engine_and_interval_one_matches_it(tiny_components, tiny_config, make_frame,
                                                              monkeypatch):
    import core.stream

    calls = []
    real = feature_reuse.unet_split_forward
    monkeypatch.setattr(core.stream, "unet_split_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = tiny_config.replace(t_index_list=(10, 25, 40), cfg_type="self")
    plain, off = prepared(tiny_components, config), prepared(tiny_components, config.replace(feature_reuse=False))
    always = prepared(tiny_components, config.replace(feature_reuse=True, feature_reuse_interval=1))
    for frame in frames(make_frame, 6):
        reference = plain.process(frame)
        np.testing.assert_array_equal(off.process(frame), reference)  # the same code path, not the split
        assert_frames_close(always.process(frame), reference, atol=1)
    assert len(calls) == 6  # interval 1: one whole-UNet pass per frame, never the shallow path


@pytest.mark.parametrize("steps,frame_buffer,cfg_type", [(2, 1, "self"), (3, 1, "none"), (4, 1, "self"),
                                                        (3, 2, "none"), (2, 1, "full"), (3, 1, "initialize")])
def test_each_row_runs_on_the_deep_features_its_own_sample_made(steps, frame_buffer, cfg_type, tiny_components,
                                                               tiny_config, make_frame, monkeypatch):
    t_index_list = tuple(range(10, 10 + 10 * steps, 10))
    config = tiny_config.replace(t_index_list=t_index_list, frame_buffer_size=frame_buffer, cfg_type=cfg_type,
                                 feature_reuse=True)
    engine = prepared(tiny_components, config)
    used = []  # per frame: the deep features each UNet row ran on, in row order
    real_advance = FeatureCache.advance

    def advance(cache, deep):
        used.append(deep.clone())
        real_advance(cache, deep)

    monkeypatch.setattr(FeatureCache, "advance", advance)
    negatives = engine.batch.negative_count
    batch = config.batch_size
    for i in range(steps + 2):
        stack = np.stack([make_frame(i * frame_buffer + j) for j in range(frame_buffer)])
        engine.process(stack)
    assert engine.feature_cache.frames == steps + 2
    groups = [(0, negatives), (negatives, batch)] if negatives else [(0, batch)]
    checked = 0
    for frame in range(1, len(used)):
        for start, size in groups:
            for element in range(frame_buffer, size):  # past their first step: reused features
                row, previous_row = start + element, start + element - frame_buffer
                assert torch.equal(used[frame][row], used[frame - 1][previous_row])  # a copy: bit for bit
                checked += 1
            for element in range(min(frame_buffer, size)):  # new frames: fresh features, not a copy
                assert not torch.equal(used[frame][start + element], used[frame - 1][start + element])
    assert checked > 0


def test_a_change_refreshes_every_row_at_the_next_frame(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(10, 25, 40), feature_reuse=True)
    engine = prepared(tiny_components, config)
    kinds = []
    for i, change in enumerate([None, None, None, "prompt", None, "seed", None, "strength", None, None]):
        if change == "prompt":
            engine.update_prompt("a dog")
        elif change == "seed":
            engine.set_seed(11)
        elif change == "strength":
            engine.set_strength(0.7)
        engine.process(make_frame(i))
        kinds.append(engine.reuse_refresh)
    assert kinds == [True, False, False, True, False, True, False, True, False, False]
    engine.prepare("a bird")  # a new stream from scratch
    engine.process(make_frame(0))
    assert engine.reuse_refresh is True


def test_an_interval_refreshes_every_n_frames(tiny_components, tiny_config, make_frame):
    engine = prepared(tiny_components, tiny_config.replace(t_index_list=(10, 40), feature_reuse=True,
                                                           feature_reuse_interval=3))
    kinds = []
    for i in range(7):
        engine.process(make_frame(i))
        kinds.append(engine.reuse_refresh)
    assert kinds == [True, False, False, True, False, False, True]
    engine.update_prompt("a dog")  # a change refreshes now, and the interval counts from there
    for i in range(4):
        engine.process(make_frame(i))
        kinds.append(engine.reuse_refresh)
    assert kinds[7:] == [True, False, False, True]


def test_a_compiled_unet_keeps_the_plain_unet_and_says_so(tiny_components, tiny_config, make_frame, caplog):
    import logging

    engine = prepared(tiny_components, tiny_config.replace(feature_reuse=True))
    engine.install(unet=lambda *args, **kwargs: engine.unet(*args, **kwargs))  # stands for torch.compile's module
    with caplog.at_level(logging.INFO, logger="core.feature_reuse"):
        engine.process(make_frame(0))
        engine.process(make_frame(1))
    assert engine.reuse_refresh is None and caplog.text.count("feature reuse needs the UNet's parts") == 1


def test_a_frame_runner_gets_the_kind_of_frame_before_it_runs(tiny_components, tiny_config, make_frame):
    engine = prepared(tiny_components, tiny_config.replace(feature_reuse=True))
    seen = []
    engine.install(frame_runner=lambda frames: seen.append(engine.reuse_refresh) or engine.frame_step(frames))
    for i in range(3):
        engine.process(make_frame(i))
    assert seen == [True, False, False]  # a captured graph per kind: FrameGraph keys on it


@pytest.mark.parametrize("cfg_type,deep_rows", [("self", 1), ("full", 2), ("initialize", 2)])
def test_the_deep_path_runs_only_for_the_new_frames(cfg_type, deep_rows, tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(10, 20, 30, 40), cfg_type=cfg_type, feature_reuse=True)
    engine = prepared(tiny_components, config)
    batches = []
    handle = engine.unet.mid_block.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        for i in range(3):
            engine.process(make_frame(i))
    finally:
        handle.remove()
    rows = engine.unet_batch_size
    # The first frame refreshes every row; after it only the new frame (and its negative input) goes deep.
    assert batches == [rows, deep_rows, deep_rows] and rows > deep_rows


def test_the_skipped_fraction_counts_the_deep_path_of_the_rows_past_their_first_step(tiny_components, tiny_config):
    from core.roofline import feature_reuse_savings

    one = feature_reuse_savings(prepared(tiny_components, tiny_config.replace(t_index_list=(30,))))
    four = feature_reuse_savings(prepared(tiny_components, tiny_config.replace(t_index_list=(10, 20, 30, 40))))
    assert 0 < one["shallow_row_gflop"] < one["row_gflop"]
    assert one["skipped_fraction"] == 0  # one step: every row is a new frame
    deep_share = 1 - four["shallow_row_gflop"] / four["row_gflop"]
    assert four["skipped_fraction"] == pytest.approx(3 / 4 * deep_share)


def test_one_step_has_nothing_to_reuse_and_runs_as_today(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    plain, reuse = prepared(tiny_components, config), prepared(tiny_components, config.replace(feature_reuse=True))
    for i in range(3):
        frame = make_frame(i)
        np.testing.assert_array_equal(reuse.process(frame), plain.process(frame))
    assert reuse.reuse_refresh is None


def test_a_snapshot_restores_the_feature_cache_without_moving_its_storage(tiny_components, tiny_config, make_frame):
    engine = prepared(tiny_components, tiny_config.replace(t_index_list=(10, 25, 40), feature_reuse=True))
    saved = engine.snapshot_stream()  # before any frame: no cache yet
    engine.process(make_frame(0))
    engine.process(make_frame(1))
    storage = engine.feature_cache.deep
    after_two = engine.snapshot_stream()
    engine.process(make_frame(2))
    engine.restore_stream(after_two)
    assert engine.feature_cache.deep is storage and engine.feature_cache.frames == 2
    assert torch.equal(engine.feature_cache.deep, after_two.features[0])  # a restored copy: bit for bit
    engine.restore_stream(saved)  # a warm-up that allocated the cache is undone in place
    assert engine.feature_cache.deep is storage and not storage.any() and engine.feature_cache.is_refresh()


def test_a_scratch_batch_has_its_own_feature_cache(tiny_components, tiny_config, make_frame):
    engine = prepared(tiny_components, tiny_config.replace(t_index_list=(10, 25, 40), feature_reuse=True))
    engine.process(make_frame(0))
    scratch = engine.view(own_state=True)
    assert scratch.batch.features is not engine.batch.features
    scratch.process(make_frame(1))
    assert engine.feature_cache.frames == 1 and scratch.feature_cache.frames == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("inductor,depth", [("0", "block"), ("1", "block"), ("1", "layer")])
def test_feature_reuse_in_the_frame_graph_matches_eager_reuse(inductor, depth, tiny_config, make_frame, monkeypatch):
    from core.accel import accelerate
    from core.models import load_components

    monkeypatch.setenv("LIVEDIFFUSION_INDUCTOR", inductor)  # 0: the eager kernels' graph; 1: the split compiled
    config = tiny_config.replace(device="cuda", dtype="float32", t_index_list=(10, 25, 40), cfg_type="self",
                                 acceleration="compile", feature_reuse=True, feature_reuse_depth=depth)
    components = load_components(config)
    eager = prepared(components, config)
    graphed = StreamEngine(components, config)
    assert accelerate(graphed) == "compile"
    graphed.prepare("a cat", "blurry")
    other = "layer" if depth == "block" else "block"
    for i in range(10):
        if i == 3:
            for engine in (eager, graphed):
                engine.update_prompt("a dog")  # a refresh frame, then reuse again
        if i in (5, 8):  # the other depth, then back: each keeps its own buffer, which its graphs read
            for engine in (eager, graphed):
                engine.set_feature_reuse(True, depth=other if i == 5 else depth)
        frame = make_frame(i)
        np.testing.assert_allclose(graphed.process(frame), eager.process(frame), atol=2)
        assert graphed.reuse_refresh == eager.reuse_refresh == (i in (0, 3, 5, 8))
    assert {key[-2:] for key in graphed.accelerated.frame_runner.graphs} == {
        (True, depth), (False, depth), (True, other), (False, other)}
    assert (graphed.accelerated.unet_split is not None) == (inductor == "1")


def test_an_accelerators_split_unet_is_the_one_reuse_runs(tiny_components, tiny_config, make_frame, caplog):
    import functools
    import logging

    config = tiny_config.replace(t_index_list=(10, 25, 40), feature_reuse=True)
    reference, engine = prepared(tiny_components, config), prepared(tiny_components, config)
    calls = []

    def compiled_split(*args, **kwargs):  # stands for torch.compile of the bound split forward
        calls.append("deep" in kwargs)
        return functools.partial(unet_split, engine.unet)(*args, **kwargs)

    unet_split = feature_reuse.unet_split_forward
    engine.install(unet=lambda *args, **kwargs: engine.unet(*args, **kwargs), unet_split=compiled_split)
    with caplog.at_level(logging.INFO, logger="core.stream"):
        for i in range(3):
            frame = make_frame(i)
            assert_frames_close(engine.process(frame), reference.process(frame), atol=1)
    assert calls == [False, False, True, False, True] and "plain UNet runs" not in caplog.text


@pytest.mark.parametrize("steps,frame_buffer,cfg_type,depth", [
    (3, 1, "self", "block"), (2, 2, "full", "block"), (3, 2, "initialize", "block"), (4, 1, "full", "block"),
    (3, 1, "self", "layer"), (2, 2, "full", "layer"), (3, 2, "initialize", "layer")])
def test_reuse_frames_equal_an_independent_reference(steps, frame_buffer, cfg_type, depth, tiny_components,
                                                     tiny_config, make_frame, monkeypatch):
    # Every row's noise recomputed outside the engine: the whole UNet for a sample's first step (or a refresh),
    # the shallow path on that same sample's deep features afterwards.
    import core.stream

    config = tiny_config.replace(t_index_list=tuple(range(10, 10 + 10 * steps, 10)), cfg_type=cfg_type,
                                 frame_buffer_size=frame_buffer, feature_reuse=True, feature_reuse_depth=depth)
    engine = prepared(tiny_components, config)
    unet, fb = engine.unet, frame_buffer
    groups = engine.feature_cache.groups
    deep_of: dict[tuple, torch.Tensor] = {}
    frame_index = [0]
    checked = [0]
    real = core.stream.predict_with_reuse

    def spy(split, cache, refresh, x_in, timesteps, encoder_hidden_states, added_cond_kwargs=None, used_depth=None):
        assert used_depth == depth
        eps = real(split, cache, refresh, x_in, timesteps, encoder_hidden_states, added_cond_kwargs, used_depth)
        f, start = frame_index[0], 0
        for g, size in enumerate(groups):
            for element in range(size):
                r = start + element
                sample = (g, f - element // fb, element % fb)
                args = (x_in[r : r + 1], timesteps[r : r + 1], encoder_hidden_states[r : r + 1])
                if refresh or element < fb:
                    expected, deep_of[sample] = unet_split_forward(unet, *args, depth=depth)
                else:
                    expected, _ = unet_split_forward(unet, *args, deep=deep_of[sample], depth=depth)
                    checked[0] += 1
                torch.testing.assert_close(eps[r : r + 1], expected, rtol=1e-4, atol=1e-5)
            start += size
        frame_index[0] += 1
        return eps

    monkeypatch.setattr(core.stream, "predict_with_reuse", spy)
    for i in range(steps + 2):
        engine.process(np.stack([make_frame(i * fb + j) for j in range(fb)]))
    assert checked[0] > 0


def test_each_depth_keeps_its_own_buffer_and_a_switch_refreshes(tiny_components, tiny_config, make_frame):
    engine = prepared(tiny_components, tiny_config.replace(t_index_list=(10, 20, 30), feature_reuse=True,
                                                           feature_reuse_depth="block"))
    kinds, buffers = [], {}
    for i in range(9):
        if i in (3, 6):
            engine.set_feature_reuse(True, depth="layer" if i == 3 else "block")
        engine.process(make_frame(i))
        kinds.append(engine.reuse_refresh)
        cache = engine.feature_cache
        buffers.setdefault(cache.depth, cache.deep)
        assert cache.deep is buffers[cache.depth]  # allocated once per depth, never replaced
    assert kinds == [True, False, False] * 3
    assert buffers["block"].shape != buffers["layer"].shape
    saved = cache.state()
    cache.set_depth("layer")
    cache.restore(saved)
    assert cache.depth == "block" and cache.deep is buffers["block"]


def test_reuse_switched_back_on_refreshes_first(tiny_components, tiny_config, make_frame):
    engine = prepared(tiny_components, tiny_config.replace(t_index_list=(10, 20, 30, 40), feature_reuse=True))
    kinds = []
    for i in range(6):
        if i == 2:
            engine.set_feature_reuse(False)
        if i == 4:
            engine.set_feature_reuse(True)
        engine.process(make_frame(i))
        kinds.append(engine.reuse_refresh)
    assert kinds == [True, False, None, None, True, False]  # the cache fell behind while off


def test_the_load_warms_up_both_kinds_of_frame(tiny_components, tiny_config):
    engine = StreamEngine(tiny_components, tiny_config.replace(t_index_list=(10, 40), feature_reuse=True))
    kinds = []
    engine.install(frame_runner=lambda frames: kinds.append(engine.reuse_refresh) or engine.frame_step(frames))
    engine.warm_up()
    assert kinds == [True, False] and engine.feature_cache.is_refresh()  # and the live stream starts afresh
