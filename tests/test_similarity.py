import numpy as np
import pytest
import torch

from core.similarity import SimilarityFilter, skip_probability
from core.stream import StreamEngine

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


def longest_run(flags):
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def test_skip_probability_follows_the_formula():
    assert skip_probability(1.0, 0.98) == 1.0
    assert skip_probability(0.99, 0.98) == pytest.approx(0.5)
    assert skip_probability(0.9, 0.98) == 0.0
    assert skip_probability(1.0, 1.0) == 0.0


def test_identical_frames_skip_at_most_max_skip_frames_in_a_row():
    flt = SimilarityFilter(threshold=0.9, max_skip_frames=4)
    frame = torch.rand(3, 16, 16)
    flags = [flt.should_skip(frame) for _ in range(30)]
    assert longest_run(flags) == 4
    assert flags[0] is False  # the first frame has nothing to compare with


def test_threshold_one_never_skips():
    flt = SimilarityFilter(threshold=1.0, max_skip_frames=10)
    frame = torch.rand(3, 16, 16)
    assert not any(flt.should_skip(frame) for _ in range(20))


def test_very_different_frames_never_skip():
    flt = SimilarityFilter(threshold=0.98, max_skip_frames=10)
    gen = torch.Generator().manual_seed(0)
    assert not any(flt.should_skip(torch.randn(3, 16, 16, generator=gen)) for _ in range(50))


def test_engine_reemits_the_last_output_on_a_skipped_frame(tiny_components, tiny_config, make_frame):
    engine = StreamEngine(tiny_components, tiny_config.replace(similarity_filter=True, similarity_threshold=0.9, max_skip_frames=3))
    engine.prepare("a cat")
    frame = make_frame(1)
    outputs, skipped = [], []
    for _ in range(9):
        outputs.append(engine.process(frame))
        skipped.append(engine.last_frame_skipped)
    assert skipped == [False, True, True, True, False, True, True, True, False]
    assert engine.skipped_frames == 6 and engine.frames_processed == 3
    for i, flag in enumerate(skipped):
        if flag:
            np.testing.assert_array_equal(outputs[i], outputs[i - 1])
    other = make_frame(2)[::-1].copy()
    engine.process(other)
    assert engine.last_frame_skipped is False


def test_filter_switches_live(tiny_components, tiny_config, make_frame):
    engine = StreamEngine(tiny_components, tiny_config)
    engine.prepare("a cat")
    frame = make_frame(1)
    engine.process(frame)
    engine.process(frame)
    assert engine.skipped_frames == 0
    engine.set_similarity_filter(True, threshold=0.5, max_skip_frames=2)
    for _ in range(4):
        engine.process(frame)
    assert engine.skipped_frames == 2  # first frame after switching on becomes the reference
