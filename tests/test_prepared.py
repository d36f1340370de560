"""Engines for the other step counts, prepared in the background (app.pipeline.prepared), with the tiny preset on
the CPU: they share the running engine's model, wait for its own build, and are dropped when the setting moves."""

import threading
import time

import pytest

from app.pipeline.prepared import PreparedEngines, same_but_steps, worth_preparing
from core.stream import StreamEngine
from tests.conftest import wait_until

pytestmark = [pytest.mark.filterwarnings("ignore:running on the CPU"), pytest.mark.timeout(120)]


def factory(config, progress=None, components=None):
    return StreamEngine.from_config(config, progress=progress, components=components)


def wait_for(predicate, timeout=60.0):
    return wait_until(predicate, timeout, poll_s=0.02)


def running(tiny_components, config):
    engine = StreamEngine(tiny_components, config)
    engine.prepare("a cat")
    return engine


def test_the_other_step_counts_are_built_on_the_running_model(tiny_components, tiny_config, make_frame):
    config = tiny_config.replace(t_index_list=(30,))
    engine = running(tiny_components, config)
    prepared = PreparedEngines(factory, should_prepare=lambda e, c: True, poll_s=0.01)
    prepared.prepare_for(engine, config, "a cat", "")
    assert wait_for(lambda: prepared.ready_steps() == [2, 3, 4])
    wanted = config.replace(t_index_list=(20, 40, 45), seed=9)  # another strength and seed: live settings
    three = prepared.take(wanted)
    assert three is not None and three.config.denoising_steps == 3
    assert three.unet is engine.unet  # the model is shared, not loaded again
    assert three.process(make_frame(0)).shape == (64, 64, 3)
    assert prepared.take(wanted) is None  # taken once
    assert prepared.take(config.replace(t_index_list=(10, 20), width=96)) is None  # another size: a real load
    assert prepared.ready_steps() == [2, 4]
    prepared.clear()


def test_a_new_setting_drops_what_no_longer_matches_and_keeps_the_rest(tiny_components, tiny_config):
    config = tiny_config.replace(t_index_list=(30,))
    engine = running(tiny_components, config)
    built = []

    def recording_factory(*args, **kwargs):
        built.append(factory(*args, **kwargs))
        return built[-1]

    prepared = PreparedEngines(recording_factory, should_prepare=lambda e, c: c.width == 64, poll_s=0.01)
    prepared.prepare_for(engine, config, "a cat", "")
    assert wait_for(lambda: prepared.ready_steps() == [2, 3, 4])
    two = prepared.take(config.replace(t_index_list=(20, 35)))
    # Two steps now run: 3 and 4 stay as they are, 1 is built.
    prepared.prepare_for(two, two.config, "a cat", "")
    assert wait_for(lambda: prepared.ready_steps() == [1, 3, 4])
    assert len(built) == 4
    kept = prepared.take(config.replace(t_index_list=(10, 20, 30)))
    prepared.prepare_for(kept, kept.config.replace(width=96), "a cat", "")  # another size: none of them fits
    assert prepared.wait_idle(30) and prepared.ready_steps() == []
    assert [e.closed for e in built] == [False, False, True, True]  # 2 and 3 run or ran; 4 and the new 1 dropped
    assert len(built) == 4  # and nothing is prepared for a setting that is not worth it
    prepared.clear()


def test_one_build_at_a_time_and_a_build_cleared_meanwhile_is_dropped(tiny_components, tiny_config):
    config = tiny_config.replace(t_index_list=(30,))
    engine = running(tiny_components, config)
    gate, lock, state = threading.Event(), threading.Lock(), {"now": 0, "most": 0}
    built = []

    def slow_factory(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        gate.wait(10)
        try:
            built.append(factory(*args, **kwargs))
            return built[-1]
        finally:
            with lock:
                state["now"] -= 1

    prepared = PreparedEngines(slow_factory, should_prepare=lambda e, c: True, poll_s=0.01)
    prepared.prepare_for(engine, config, "a cat", "")
    prepared.prepare_for(engine, config, "a cat", "")  # a second worker waits for the first
    assert wait_for(lambda: prepared.building is not None)
    prepared.clear()
    gate.set()
    assert prepared.wait_idle(60)
    assert state["most"] == 1
    # The one build under way ends, is released (it belongs to a cleared generation), and nothing else starts.
    assert len(built) == 1 and built[0].closed and prepared.ready_steps() == []


def test_nothing_is_built_before_the_running_engine_reaches_full_speed(tiny_components, tiny_config):
    class Startup:
        def __init__(self):
            self.done, self.first_frame_run = threading.Event(), False

        def wait(self, timeout_s=None):
            return self.done.wait(timeout_s)

        def settled(self):  # the frame that installed the build (and captured its graph) has run
            return self.done.is_set() and self.first_frame_run

    config = tiny_config.replace(t_index_list=(30,))
    engine = running(tiny_components, config)
    engine.startup = Startup()
    prepared = PreparedEngines(factory, should_prepare=lambda e, c: True, poll_s=0.01)
    prepared.prepare_for(engine, config, "a cat", "")
    time.sleep(0.3)
    assert prepared.ready_steps() == [] and prepared.building is None
    engine.startup.done.set()
    time.sleep(0.3)
    assert prepared.ready_steps() == [] and prepared.building is None
    engine.startup.first_frame_run = True
    assert wait_for(lambda: prepared.ready_steps() == [2, 3, 4])
    prepared.clear()


def test_preparing_is_for_compiled_engines_on_one_gpu(tiny_components, tiny_config):
    engine = running(tiny_components, tiny_config)
    assert not worth_preparing(engine, tiny_config)  # the CPU: a new engine there costs no compile
    assert same_but_steps(tiny_config, tiny_config.replace(t_index_list=(10, 20, 30), smoothing=0.5))
    assert not same_but_steps(tiny_config, tiny_config.replace(model="preset:tiny-sdxl"))


def test_preparing_waits_for_the_running_engines_graph_without_spinning(tiny_components, tiny_config):
    """Built and its first frame run, but that frame ran eagerly (its capture met another thread's build): no
    prepared build yet, and the wait sleeps between looks."""
    class Startup:
        looks = 0

        def wait(self, timeout_s=None):
            return True

        def settled(self):
            Startup.looks += 1
            return True

    class Runner:
        graphs: dict = {}

    config = tiny_config.replace(t_index_list=(30,))
    engine = running(tiny_components, config)
    engine.startup = Startup()
    engine.install(frame_runner=Runner())
    prepared = PreparedEngines(factory, should_prepare=lambda e, c: True, poll_s=0.05)
    prepared.prepare_for(engine, config, "a cat", "")
    time.sleep(0.5)
    assert prepared.ready_steps() == [] and Startup.looks < 50  # about ten looks in 0.5 s, not a busy loop
    Runner.graphs = {"captured": True}
    assert wait_for(lambda: prepared.ready_steps() == [2, 3, 4])
    prepared.clear()
