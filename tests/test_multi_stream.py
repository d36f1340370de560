"""Several streams in one UNet call (core.multi_stream): each stream's frames equal those of its engine run alone,
to float tolerance, whatever the others do; the shared UNet runs once per tick."""

import numpy as np
import pytest

from core.multi_stream import process_together, share_key
from tests.conftest import prepared_engine

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")

SETTINGS = (  # (cfg type, prompt, seed, strength): three streams that share nothing but the model
    ("none", "a watercolor", 1, 0.5),
    ("self", "charcoal drawing", 2, 0.7),
    ("full", "neon city", 3, 0.4),
)


def engine_pair(components, config, cfg_type, prompt, seed, strength, **changes):
    """Two engines of one setting: one to run with the others, one to run alone."""
    pair = []
    for _ in range(2):
        engine = prepared_engine(components, config.replace(cfg_type=cfg_type, seed=seed, **changes), prompt, "blurry")
        engine.set_strength(strength)
        pair.append(engine)
    return pair


def test_each_stream_gets_what_its_engine_alone_gives_and_the_unet_runs_once_per_tick(
        tiny_components, tiny_config, make_frame):
    pairs = [engine_pair(tiny_components, tiny_config, *setting) for setting in SETTINGS]
    together, alone = [p[0] for p in pairs], [p[1] for p in pairs]
    calls = []
    hook = tiny_components.pipe.unet.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    try:
        for tick in range(4):
            frames = [make_frame(seed=10 * tick + i) for i in range(len(together))]
            calls.clear()
            shared = process_together(together, frames)
            assert calls == [sum(e.unet_batch_size for e in together)]  # one call, every stream's rows
            for engine, frame, out in zip(alone, frames, shared):
                expected = engine.process(frame)
                assert out.shape == expected.shape
                assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    finally:
        hook.remove()
    assert [e.frames_processed for e in together] == [4, 4, 4]


def test_a_skipped_frame_keeps_its_last_output_and_stays_out_of_the_call(tiny_components, tiny_config, make_frame):
    still, moving = engine_pair(tiny_components, tiny_config, "none", "a cat", 5, 0.5, similarity_filter=True,
                                similarity_threshold=0.5, max_skip_frames=100), \
        engine_pair(tiny_components, tiny_config, "none", "a dog", 6, 0.5)
    calls = []
    hook = tiny_components.pipe.unet.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    try:
        first = process_together([still[0], moving[0]], [make_frame(1), make_frame(2)])
        calls.clear()
        second = process_together([still[0], moving[0]], [make_frame(1), make_frame(3)])
    finally:
        hook.remove()
    assert still[0].last_frame_skipped and still[0].skipped_frames == 1
    assert np.array_equal(second[0], first[0])  # the same frame again: its last output
    assert calls == [moving[0].unet_batch_size]  # only the moving stream's rows
    moving[1].process(make_frame(2))
    expected = moving[1].process(make_frame(3))
    assert np.abs(second[1].astype(int) - expected.astype(int)).max() <= 1


def test_a_stream_reusing_deep_features_runs_alone(tiny_components, tiny_config, make_frame):
    reuse = engine_pair(tiny_components, tiny_config, "none", "a cat", 7, 0.5, feature_reuse=True)
    plain = engine_pair(tiny_components, tiny_config, "none", "a dog", 8, 0.5)
    for tick in range(3):
        frames = [make_frame(tick), make_frame(tick + 5)]
        shared = process_together([reuse[0], plain[0]], frames)
        assert share_key(reuse[0]) is None and share_key(plain[0]) is not None
        for engine, frame, out in zip((reuse[1], plain[1]), frames, shared):
            assert np.abs(out.astype(int) - engine.process(frame).astype(int)).max() <= 1
