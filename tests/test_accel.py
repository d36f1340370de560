"""compile back-end: fallbacks everywhere (CPU) and graph replays equal to eager (CUDA only)."""

import logging

import numpy as np
import pytest
import torch

from core.accel import accelerate
from core.accel.compile import FrameGraph
from core.accel.parts import AcceleratedParts
from core.stream import StreamEngine
from tests.conftest import assert_frames_close

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_compile_on_the_cpu_runs_eager(tiny_components, tiny_config, make_frame):
    engine = StreamEngine(tiny_components, tiny_config.replace(acceleration="compile"))
    assert accelerate(engine) == "none"
    assert engine.accelerated == AcceleratedParts() and engine.unet_forward is engine.unet
    engine.prepare("a cat")
    assert engine.process(make_frame()).shape == (64, 64, 3)


def test_an_installed_compiled_unet_is_the_one_the_engine_calls(tiny_components, tiny_config):
    # torch.compile's module raises on len() and so on bool(): the engine must never test it for truth.
    engine = StreamEngine(tiny_components, tiny_config)
    compiled = torch.compile(engine.unet, fullgraph=True, dynamic=False)  # lazy: nothing compiles here
    engine.install(unet=compiled)
    assert engine.unet_forward is compiled
    engine.restore_eager("unet")
    assert engine.unet_forward is engine.unet


def test_a_failing_graph_capture_falls_back_to_eager_with_the_reason(tiny_components, tiny_config, make_frame, caplog):
    messages = []
    reference = StreamEngine(tiny_components, tiny_config)
    reference.prepare("a cat")
    engine = StreamEngine(tiny_components, tiny_config)
    engine.prepare("a cat")
    # On the CPU the capture itself fails (no CUDA streams): the same path as a compiler error.
    engine.install(frame_runner=FrameGraph(engine, messages.append))
    frame = make_frame(4)
    with caplog.at_level(logging.WARNING, logger="core.accel.compile"):
        first = engine.process(frame)
    assert "running eager" in caplog.text and any("compilation failed" in m for m in messages)
    assert engine.acceleration == "none" and engine.accelerated.frame_runner is None
    assert_frames_close(first, reference.process(frame))
    assert_frames_close(engine.process(frame), reference.process(frame))


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("cfg_type", ["none", "self", "initialize", "full"])
def test_graph_replays_match_eager_and_follow_live_changes(tiny_config, make_frame, monkeypatch, cfg_type):
    from core.models import load_components

    monkeypatch.setenv("LIVEDIFFUSION_INDUCTOR", "0")  # the graph alone; Inductor is timed by the benchmark
    config = tiny_config.replace(device="cuda", dtype="float32", cfg_type=cfg_type, acceleration="compile")
    components = load_components(config)
    eager = StreamEngine(components, config)
    graphed = StreamEngine(components, config)
    assert accelerate(graphed) == "compile"
    frames = [make_frame(i) for i in range(4)]
    for engine in (eager, graphed):
        engine.prepare("a cat", "blurry")
    for i, frame in enumerate(frames):
        if i == 2:  # live changes must reach the captured graph through its state tensors
            for engine in (eager, graphed):
                engine.update_prompt("a dog")
                engine.set_seed(9)
                engine.set_strength(0.8)
                engine.set_guidance(2.0, 0.5)
        np.testing.assert_allclose(graphed.process(frame), eager.process(frame), atol=2)
    assert len(graphed.accelerated.frame_runner.graphs) == 1


@cuda
@pytest.mark.gpu
def test_inductor_compiled_engine_stays_compiled_and_matches_eager(tiny_config, make_frame, monkeypatch):
    from core.models import load_components

    monkeypatch.setenv("LIVEDIFFUSION_INDUCTOR", "1")
    config = tiny_config.replace(device="cuda", dtype="float32", cfg_type="self", acceleration="compile")
    components = load_components(config)
    eager = StreamEngine(components, config)
    compiled = StreamEngine(components, config)
    assert accelerate(compiled) == "compile"
    for engine in (eager, compiled):
        engine.prepare("a cat", "blurry")
    for i in range(3):
        frame = make_frame(i)
        np.testing.assert_allclose(compiled.process(frame), eager.process(frame), atol=2)
    # A failure at the first frame (compile or capture) would have fallen back to eager with a note.
    assert (compiled.acceleration, compiled.acceleration_note) == ("compile", "")
    assert hasattr(compiled.unet_forward, "_orig_mod")
