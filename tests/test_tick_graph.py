"""Shared ticks replayed from graphs of parts (core.accel.tick_graph): each session's front and back, and the
UNet per row count. A CPU stand-in for the CUDA graph replays by running the captured function again on the
static inputs and writing into the captured outputs, as a graph replay reads and writes the same buffers. Each
stream's frames equal its engine alone; a session is captured once whatever groups it ticks in, a row count
once; a swapped engine part or a closed engine is handled; a failed capture leaves the streams as they were and
the ticks run eagerly; a capture never runs beside another thread's build."""

import numpy as np
import pytest
import torch

from core.accel.tick_graph import TickGraphs, stored_unets
from core.accel.tick_unets import TickUNets
from core.multi_stream import process_together
from tests.conftest import prepared_engine

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


class ReplayingRecorder:
    def __init__(self, fail: bool = False, error=RuntimeError("operation not permitted when stream is capturing")):
        self.fail, self.error, self.warmups = fail, error, 0

    @staticmethod
    def supports(device) -> bool:
        return True

    def __call__(self, fn, device, pool=None):
        for _ in range(2):  # warm-ups move the streams on, as on the GPU
            fn()
            self.warmups += 1
        if self.fail:
            raise self.error
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
    assert graphs.session_captures == 3 and graphs.unet_captures == 1


def tick_groups(graphs, make_frame, *groups) -> None:
    """One shared tick of each group in turn, each stream with a frame of its own, new at every tick."""
    for tick, group in enumerate(groups):
        process_together(group, [make_frame(10 * tick + i) for i in range(len(group))], graphs=graphs)


def test_a_session_is_captured_once_and_a_row_count_once_whatever_the_groups(tiny_components, tiny_config,
                                                                             make_frame):
    a, b, c = engines_of(tiny_components, tiny_config.replace(t_index_list=(30,)), 3)
    graphs = TickGraphs(ReplayingRecorder())
    tick_groups(graphs, make_frame, [a, b, c], [a, b], [b, c], [a, c], [a, b, c])
    assert graphs.session_captures == 3 and graphs.unet_captures == 2  # three rows' counts, two of them
    small = TickGraphs(ReplayingRecorder(), limit=4)  # a quarter of it for the UNet graphs: one
    tick_groups(small, make_frame, [a, b, c], [a, b])
    assert len(small.unet_graphs) == 1 and len(small.sessions) == 3


def test_each_stream_matches_its_engine_alone_while_the_groups_change(tiny_components, tiny_config, make_frame):
    config = tiny_config  # two steps: a stream state moved by another group's tick would show
    together, alone = engines_of(tiny_components, config, 3), engines_of(tiny_components, config, 3)
    graphs = TickGraphs(ReplayingRecorder())
    for tick, members in enumerate([(0, 1, 2), (0, 1), (1, 2), (0, 2), (2,), (0, 1, 2)]):
        if tick == 3:  # the prompt is copied into the UNet graph's inputs at every tick; strength is state
            for engine in (together[0], alone[0]):
                engine.update_prompt("a changed style")
                engine.set_strength(0.7)
        frames = [make_frame(seed=10 * tick + i) for i in members]
        outputs = process_together([together[i] for i in members], frames, graphs=graphs)
        assert_same(outputs, [alone[i].process(f) for i, f in zip(members, frames)])
        for i in members:  # the latents too: the tiny model's pictures hardly show a prompt
            torch.testing.assert_close(together[i].batch.latents, alone[i].batch.latents, rtol=1e-3, atol=1e-3)
    assert graphs.session_captures == 3 and graphs.unet_captures == 2 and not graphs.disabled


def test_a_swapped_part_recaptures_and_a_closed_engine_lets_its_graphs_go(tiny_components, tiny_config, make_frame):
    a, b, c = engines_of(tiny_components, tiny_config.replace(t_index_list=(30,)), 3)
    graphs = TickGraphs(ReplayingRecorder())
    tick_groups(graphs, make_frame, [a, b, c], [a, b])
    b.install(keep_alive=object())  # what a background build's swap does: new parts
    tick_groups(graphs, make_frame, [a, b, c])
    assert graphs.session_captures == 4 and graphs.unet_captures == 2  # b again; the UNet graphs stand
    c.close()
    tick_groups(graphs, make_frame, [a, b])
    assert {id(session.engine) for session in graphs.sessions.values()} == {id(a), id(b)}


def test_a_failed_capture_restores_the_streams_and_ticks_run_eagerly(tiny_components, tiny_config, make_frame):
    config = tiny_config  # two steps: warm-ups left in the stream would change the next outputs
    together, alone = engines_of(tiny_components, config, 2), engines_of(tiny_components, config, 2)
    recorder = ReplayingRecorder(fail=True)
    graphs = TickGraphs(recorder)
    for tick in range(2):
        frames = [make_frame(seed=tick * 3 + i) for i in range(2)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
    assert "not permitted" in graphs.disabled and recorder.warmups == 2  # one try, then eager


def test_the_same_streams_in_another_order_share_one_graph(tiny_components, tiny_config, make_frame):
    a, b, c = engines_of(tiny_components, tiny_config.replace(t_index_list=(30,)), 3)
    graphs = TickGraphs(ReplayingRecorder())
    frames = [make_frame(i) for i in range(3)]
    first = process_together([a, b, c], frames, graphs=graphs)
    second = process_together([c, a, b], [frames[2], frames[0], frames[1]], graphs=graphs)
    assert graphs.session_captures == 3 and graphs.unet_captures == 1
    assert [o.shape for o in second] == [first[2].shape, first[0].shape, first[1].shape]


def test_running_out_of_memory_in_a_capture_falls_back_to_eager_ticks(tiny_components, tiny_config, make_frame):
    together, alone = engines_of(tiny_components, tiny_config, 2), engines_of(tiny_components, tiny_config, 2)
    graphs = TickGraphs(ReplayingRecorder(fail=True, error=torch.OutOfMemoryError("CUDA out of memory")))
    for tick in range(2):
        frames = [make_frame(seed=tick * 3 + i) for i in range(2)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
    assert "out of GPU memory" in graphs.disabled


class CountingCompile:
    """A stand-in for torch.compile: the UNet itself, counting the calls made through the "compiled" one."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls, self.built = fail, 0, []

    def __call__(self, unet):
        if self.fail:
            raise RuntimeError("no Triton")
        self.built.append(unet)

        def compiled(*args, **kwargs):
            self.calls += 1
            return unet(*args, **kwargs)

        return compiled


def test_a_compiled_unet_for_the_tick_batch_is_built_beside_the_ticks_and_swapped_in(tiny_components, tiny_config,
                                                                                    make_frame):
    together, alone = engines_of(tiny_components, tiny_config, 3), engines_of(tiny_components, tiny_config, 3)
    compile_fn = CountingCompile()
    made = []
    graphs = TickGraphs(ReplayingRecorder(),
                        unets_for=lambda engine: made.append(TickUNets(engine.unet, compile_fn=compile_fn)) or made[-1])

    def tick(index):
        frames = [make_frame(seed=10 * index + i) for i in range(3)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])

    tick(0)  # captured with the eager UNet, then the build starts
    assert graphs.unet_captures == 1 and len(made) == 1 and made[0].wait(60)
    rows = sum(e.unet_batch_size for e in together)
    assert rows in made[0].ready and compile_fn.built == [tiny_components.pipe.unet]
    calls_after_build = compile_fn.calls  # the build's own compile and settling runs
    tick(1)  # the compiled UNet is ready: the group is captured again with it
    tick(2)
    assert graphs.unet_captures == 2 and graphs.session_captures == 3 and compile_fn.calls > calls_after_build
    assert [graph.unet for graph in graphs.unet_graphs.values()] == [made[0].ready[rows]]


class DynamicCountingCompile(CountingCompile):
    def __call__(self, unet, dynamic_batch=False):
        assert dynamic_batch
        return super().__call__(unet)


def test_a_dynamic_batch_build_serves_every_row_count(tiny_components, tiny_config, make_frame):
    engines = engines_of(tiny_components, tiny_config.replace(t_index_list=(30,)), 3)
    compile_fn = DynamicCountingCompile()
    made = []
    graphs = TickGraphs(ReplayingRecorder(), unets_for=lambda engine: made.append(
        TickUNets(engine.unet, compile_fn=compile_fn, dynamic_batch=True)) or made[-1])
    tick_groups(graphs, make_frame, engines)
    assert made[0].wait(60) and len(compile_fn.built) == 1
    tick_groups(graphs, make_frame, engines[:2], engines, engines[1:])
    assert len(compile_fn.built) == 1 and made[0].failed == set()
    assert {graph.unet for graph in graphs.unet_graphs.values()} == {made[0].built(2)}  # both row counts


def test_groups_at_another_size_on_the_same_model_get_a_compiled_unet_of_their_own(tiny_components, tiny_config,
                                                                                   make_frame):
    # A stored build serves one size: a group at another size must not be handed it (its guards would refuse).
    small = engines_of(tiny_components, tiny_config.replace(t_index_list=(30,)), 2)
    tall = engines_of(tiny_components, tiny_config.replace(t_index_list=(30,), height=72), 2)
    made = []
    graphs = TickGraphs(ReplayingRecorder(), unets_for=lambda engine: made.append(
        TickUNets(engine.unet, compile_fn=DynamicCountingCompile(), dynamic_batch=True)) or made[-1])
    tick_groups(graphs, make_frame, small, tall, small, tall)
    assert len(made) == 2 and all(unets.unet is tiny_components.pipe.unet for unets in made)
    assert all(unets.wait(60) and unets.built(2) is not None for unets in made)


def test_a_failed_unet_build_leaves_that_batch_on_the_eager_unet(tiny_components, tiny_config, make_frame):
    together, alone = engines_of(tiny_components, tiny_config, 2), engines_of(tiny_components, tiny_config, 2)
    made = []
    graphs = TickGraphs(ReplayingRecorder(), unets_for=lambda engine: made.append(
        TickUNets(engine.unet, compile_fn=CountingCompile(fail=True))) or made[-1])
    for tick in range(3):
        frames = [make_frame(seed=tick * 3 + i) for i in range(2)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
        made[0].wait(60)
    assert made[0].failed == {sum(e.unet_batch_size for e in together)} and not made[0].ready
    assert graphs.unet_captures == 1 and not graphs.disabled


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["rows", "dynamic", "stored"],
                         ids=["a build per row count", "one dynamic-batch build", "built in its own process, stored"])
def test_on_the_gpu_the_tick_graphs_give_each_stream_its_engine_alone(tiny_config, make_frame, kind, tmp_path,
                                                                       monkeypatch):
    """Real CUDA graphs, the UNet compiled for the tick's rows swapped in when built, live changes (prompt, seed,
    strength, smoothing) between ticks, and a smaller group at the end: a graph reading a replaced tensor, or
    a pool shared across sessions, would drift."""
    from core.models import load_components

    config = tiny_config.replace(device="cuda", dtype="float32", acceleration="none")
    components = load_components(config)
    together, alone = engines_of(components, config, 3), engines_of(components, config, 3)
    made = []
    dynamic = kind != "rows"
    if kind == "stored":
        monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path))  # nothing stored yet: the build process runs
        unets_for = stored_unets
    else:
        def unets_for(engine):
            return TickUNets(engine.unet, dynamic_batch=dynamic)
    graphs = TickGraphs(unets_for=lambda engine: made.append(unets_for(engine)) or made[-1])
    changes = {2: lambda e, i: e.update_prompt(f"changed {i}"), 3: lambda e, i: e.set_seed(40 + i),
               4: lambda e, i: e.set_strength(0.6), 5: lambda e, i: e.set_smoothing(0.3)}
    for tick in range(9):
        if tick in (1, 7):  # the compiled UNet for these rows (or any, dynamic): used from the next tick
            assert made and made[0].wait(300)
        for i, engine in enumerate(together + alone):
            if tick in changes:
                changes[tick](engine, i % 3)
        members = range(3) if tick < 6 else range(2)
        frames = [make_frame(seed=10 * tick + i) for i in members]
        outputs = process_together([together[i] for i in members], frames, graphs=graphs)
        for out, i, frame in zip(outputs, members, frames):
            np.testing.assert_allclose(out.astype(int), alone[i].process(frame).astype(int), atol=2)
            torch.testing.assert_close(together[i].batch.latents, alone[i].batch.latents, rtol=1e-2, atol=1e-2)
    # three rows: eager, then compiled; two rows: compiled at once (dynamic), or eager and then compiled
    assert graphs.unet_captures == (3 if dynamic else 4) and graphs.session_captures == 3 and not graphs.disabled
    assert len(made[0].ready) == (1 if dynamic else 2) and not made[0].failed
    assert hasattr(made[0].built(3), "stored") == (kind == "stored")
