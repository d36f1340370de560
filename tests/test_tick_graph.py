"""Shared ticks replayed from one graph per group (core.accel.tick_graph), with a CPU stand-in for the CUDA graph
that replays by running the tick again on the captured static inputs and writing into the captured outputs, as
a graph replay reads and writes the same buffers. Each stream's frames equal its engine alone; a group's graph
is captured once and reused; a changed group, a swapped engine part or a closed engine is handled; a failed
capture leaves the streams as they were and the ticks run eagerly."""

import numpy as np
import pytest
import torch

from core.accel.tick_graph import TickGraphs
from core.multi_stream import process_together
from tests.conftest import prepared_engine

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


class ReplayingRecorder:
    def __init__(self, fail: bool = False):
        self.fail, self.warmups = fail, 0

    @staticmethod
    def supports(device) -> bool:
        return True

    def __call__(self, fn, device):
        for _ in range(2):  # warm-ups move the streams on, as on the GPU
            fn()
            self.warmups += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        outputs = [out.clone() for out in fn()]

        class Replay:
            @staticmethod
            def replay():
                for static, fresh in zip(outputs, fn()):
                    static.copy_(fresh)

        return Replay(), outputs


def engines_of(components, config, count: int, **changes):
    return [prepared_engine(components, config.replace(seed=seed, **changes), f"style {seed}")
            for seed in range(1, count + 1)]


def assert_same(outputs, references):
    for out, ref in zip(outputs, references):
        assert out.shape == ref.shape
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_each_stream_matches_its_engine_alone_and_the_group_is_captured_once(tiny_components, tiny_config,
                                                                             make_frame):
    config = tiny_config  # two steps: each frame's output depends on the stream state the earlier ones left
    together, alone = engines_of(tiny_components, config, 3), engines_of(tiny_components, config, 3)
    graphs = TickGraphs(ReplayingRecorder())
    for tick in range(4):
        frames = [make_frame(seed=10 * tick + i) for i in range(3)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
    assert graphs.captures == 1 and len(graphs.entries) == 1


def test_a_new_group_is_captured_and_a_group_seen_before_is_reused(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    a, b, c = engines_of(tiny_components, config, 3)
    graphs = TickGraphs(ReplayingRecorder())
    process_together([a, b, c], [make_frame(i) for i in range(3)], graphs=graphs)
    process_together([a, b], [make_frame(i) for i in range(2)], graphs=graphs)
    process_together([a, b, c], [make_frame(i + 5) for i in range(3)], graphs=graphs)
    assert graphs.captures == 2
    small = TickGraphs(ReplayingRecorder(), limit=1)
    process_together([a, b, c], [make_frame(i) for i in range(3)], graphs=small)
    process_together([a, b], [make_frame(i) for i in range(2)], graphs=small)
    assert len(small.entries) == 1


def test_a_swapped_part_recaptures_and_a_closed_engine_lets_its_graphs_go(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    a, b, c = engines_of(tiny_components, config, 3)
    graphs = TickGraphs(ReplayingRecorder())
    process_together([a, b, c], [make_frame(i) for i in range(3)], graphs=graphs)
    process_together([a, b], [make_frame(i) for i in range(2)], graphs=graphs)
    b.install(keep_alive=object())  # what a background build's swap does: new parts
    process_together([a, b, c], [make_frame(i) for i in range(3)], graphs=graphs)
    assert graphs.captures == 3
    c.close()
    process_together([a, b], [make_frame(i) for i in range(2)], graphs=graphs)
    assert all(not any(e is c for e in entry.engines) for entry in graphs.entries.values())


def test_a_failed_capture_restores_the_streams_and_ticks_run_eagerly(tiny_components, tiny_config, make_frame):
    config = tiny_config  # two steps: warm-ups left in the stream would change the next outputs
    together, alone = engines_of(tiny_components, config, 2), engines_of(tiny_components, config, 2)
    recorder = ReplayingRecorder(fail=True)
    graphs = TickGraphs(recorder)
    for tick in range(2):
        frames = [make_frame(seed=tick * 3 + i) for i in range(2)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
    assert "not permitted" in graphs.disabled and recorder.warmups == 2  # one try, then eager


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_a_captured_tick_gives_each_stream_its_engine_alone(tiny_config, make_frame):
    from core.models import load_components

    config = tiny_config.replace(device="cuda", dtype="float32", acceleration="none")
    components = load_components(config)
    together, alone = engines_of(components, config, 3), engines_of(components, config, 3)
    graphs = TickGraphs()  # real CUDA graphs
    for tick in range(5):
        frames = [make_frame(seed=10 * tick + i) for i in range(3)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
    assert graphs.captures == 1 and not graphs.disabled
