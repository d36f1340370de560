"""The shared ticks' UNet built in a process of its own and stored (core.accel.tick_store): the real build process
on the tiny model, every row count against the eager UNet, the next start loading without a build, a failed or
empty build leaving the ticks on the eager UNet with the reason in the log, a broken artifact removed, and a
build process whose UNet is not the server's storing nothing."""

import json
import logging
import os
import re
import sys
import time

import pytest
import torch

from core.accel import build_process, precompiled, store, tick_store
from core.accel.tick_graph import TickGraphs, stored_unets
from core.accel.tick_unets import TickUNets
from core.multi_stream import process_together
from tests.conftest import prepared_engine
from tests.test_tick_graph import ReplayingRecorder, assert_same, engines_of

pytestmark = [pytest.mark.filterwarnings("ignore:running on the CPU", "ignore::DeprecationWarning"),
              pytest.mark.skipif(not precompiled.available(), reason="this torch cannot precompile")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache of the module's own, seen by this process and by the build processes it starts."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIVEDIFFUSION_CACHE", str(folder))
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
        yield folder


@pytest.fixture(scope="module")
def built(cache, tiny_components, tiny_config):
    """The real build process run once for the tiny model: (the engine, the UNet it handed back)."""
    engine = prepared_engine(tiny_components, tiny_config)
    unet = tick_store.StoredTickUNet(engine)(engine.unet)
    return engine, unet


def eager_rows(engine, rows: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((rows, *engine.latent_shape), generator=generator)
    timesteps = torch.linspace(900, 100, rows).to(engine.batch.unet_timesteps.dtype)
    hidden = torch.randn((rows, *engine.conditioning.encoder_hidden_states.shape[1:]), generator=generator)
    with torch.no_grad():
        expected = engine.unet(latents, timesteps, encoder_hidden_states=hidden, return_dict=False)[0]
    return (latents, timesteps), {"encoder_hidden_states": hidden, "added_cond_kwargs": None}, expected


def shared_ticks(components, config, make_frame, streams: int, ticks: int, unets_for=stored_unets):
    """``ticks`` shared ticks of ``streams`` engines, each stream's frames equal to its engine's alone, every UNet
    build awaited after each tick: the tick graphs and the TickUNets they made."""
    together, alone = engines_of(components, config, streams), engines_of(components, config, streams)
    made = []
    graphs = TickGraphs(ReplayingRecorder(), unets_for=lambda engine: made.append(unets_for(engine)) or made[-1])
    for tick in range(ticks):
        frames = [make_frame(seed=tick * streams + i, height=config.height) for i in range(streams)]
        assert_same(process_together(together, frames, graphs=graphs), [e.process(f) for e, f in zip(alone, frames)])
        assert made[0].wait(120)
    return graphs, made


def test_the_build_process_stores_one_unet_for_every_row_count_that_matches_eager(built):
    engine, unet = built
    folder = store.artifact_dir(tick_store.tick_key(engine))
    assert sorted(p.name for p in folder.iterdir()) == ["key.json", tick_store.FILE]
    assert json.loads((folder / "key.json").read_text())["key"]["format"] == "precompiled-tick"
    for rows in (2, 3, 5, 8):
        args, kwargs, expected = eager_rows(engine, rows, seed=rows)
        with torch.no_grad():
            (out,) = unet(*args, **kwargs, return_dict=False)
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_the_next_start_loads_the_stored_unet_without_a_build_and_the_ticks_use_it(built, tiny_components,
                                                                                     tiny_config, make_frame,
                                                                                     monkeypatch):
    def no_build(*_args, **_kwargs):
        raise AssertionError("a stored UNet was there: nothing should be built")

    monkeypatch.setattr(build_process, "BuildProcess", no_build)
    graphs, made = shared_ticks(tiny_components, tiny_config, make_frame, streams=3, ticks=3)
    loaded = made[0].built(3)
    assert loaded is not None and hasattr(loaded, "stored") and not made[0].failed
    assert [graph.unet for graph in graphs.unet_graphs.values()] == [loaded]  # captured again with it


def test_a_failed_build_process_leaves_the_ticks_eager_and_the_log_says_why(cache, tiny_components, tiny_config,
                                                                            make_frame, caplog, monkeypatch):
    config = tiny_config.replace(height=72)  # a key nothing is stored under
    failing = [sys.executable, "-c", "import sys; print('the GPU ran out of memory'); sys.exit(1)"]

    def unets_for(engine):
        return TickUNets(engine.unet, compile_fn=tick_store.StoredTickUNet(engine, failing), dynamic_batch=True)

    with caplog.at_level(logging.WARNING, logger="core.accel.tick_unets"):
        graphs, made = shared_ticks(tiny_components, config, make_frame, streams=2, ticks=3, unets_for=unets_for)
    assert made[0].failed == {0} and not made[0].ready and graphs.unet_captures == 1
    assert "the GPU ran out of memory" in caplog.text and "exit 1" in caplog.text


def test_a_build_process_that_stores_nothing_fails_with_that_reason(cache, tiny_components, tiny_config):
    engine = prepared_engine(tiny_components, tiny_config.replace(width=72))
    with pytest.raises(RuntimeError, match="stored does not load"):
        tick_store.StoredTickUNet(engine, [sys.executable, "-c", "pass"])(engine.unet)


def test_a_broken_stored_unet_is_removed_for_a_build(built, tmp_path, caplog):
    engine, _ = built
    folder = store.artifact_dir(tick_store.tick_key(engine))
    kept = tmp_path / "kept"
    kept.mkdir()
    for path in folder.iterdir():
        (kept / path.name).write_bytes(path.read_bytes())
    try:
        with open(folder / tick_store.FILE, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\0" * 64)
        with caplog.at_level(logging.INFO):
            assert tick_store.load(tick_store.tick_key(engine)) is None
        assert not folder.exists()
    finally:  # the module's other tests keep their stored UNet
        folder.mkdir(exist_ok=True)
        for path in kept.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())


def quiet_main(monkeypatch):
    """``tick_store.main`` in this process without its process-wide settings (niceness, logging)."""
    monkeypatch.setattr(os, "nice", lambda _n: 0, raising=False)
    monkeypatch.setattr(logging, "basicConfig", lambda **_kw: None)


def test_a_build_process_whose_unet_is_not_the_servers_stores_nothing_and_names_what_differs(
        cache, tiny_components, tiny_config, capsys, monkeypatch):
    quiet_main(monkeypatch)
    engine = prepared_engine(tiny_components, tiny_config.replace(width=80))
    command = tick_store.build_command(engine, {**tick_store.tick_key(engine), "unet": "another architecture"})
    assert tick_store.main(command[3:]) == 3
    assert "differs from the server's in unet:" in capsys.readouterr().err
    assert not store.artifact_dir(tick_store.tick_key(engine)).exists()


def test_the_server_and_the_build_process_agree_on_the_key_whatever_inductor_flags_the_server_had(
        cache, tiny_components, tiny_config, monkeypatch):
    # A server whose sessions never compiled had torch's own Inductor flags; the build process sets ours.
    import torch._inductor.config as inductor

    quiet_main(monkeypatch)
    monkeypatch.setattr(inductor, "conv_1x1_as_mm", False)
    engine = prepared_engine(tiny_components, tiny_config.replace(width=88))
    stored_unet = tick_store.StoredTickUNet(engine)
    built_for = []
    monkeypatch.setattr(tick_store, "build", lambda engine: built_for.append(tick_store.tick_key(engine)))
    assert tick_store.main(stored_unet.command[3:]) == 0
    assert built_for == [stored_unet.key]


def test_a_stale_stored_unet_is_removed_and_built_once_again(cache, tiny_components, tiny_config, monkeypatch,
                                                            caplog):
    engine = prepared_engine(tiny_components, tiny_config.replace(width=96))

    def refused(*_args):
        raise RuntimeError("GuardManager check failed: made for another torch")

    def good(unet, latents, *_rest):
        return torch.zeros_like(latents)

    loads = iter([refused, good])
    monkeypatch.setattr(tick_store, "load", lambda key: next(loads))
    started = []
    real_process = build_process.BuildProcess
    monkeypatch.setattr(build_process, "BuildProcess", lambda command: started.append(command) or real_process(command))
    with caplog.at_level(logging.WARNING, logger="core.accel.store"):
        unet = tick_store.StoredTickUNet(engine, [sys.executable, "-c", "pass"])(engine.unet)
    assert unet.stored is good and len(started) == 1
    assert "made for another torch" in caplog.text  # the stale one was removed, with the reason


def test_a_failed_build_is_not_tried_again_for_a_day_but_what_may_pass_is(cache, tiny_components, tiny_config,
                                                                          monkeypatch):
    engine = prepared_engine(tiny_components, tiny_config.replace(width=104))
    key = tick_store.tick_key(engine)
    for code in (build_process.TRANSIENT_EXIT, 1, -9):  # out of memory or a full disk; killed (Windows: 1); killed
        with pytest.raises(RuntimeError, match=f"exit {code}"):
            tick_store.StoredTickUNet(engine, [sys.executable, "-c", f"import os; os._exit({code % 256})"]
                                      if code >= 0 else [sys.executable, "-c", "import os, signal; "
                                                         "os.kill(os.getpid(), signal.SIGKILL)"])(engine.unet)
        assert build_process.earlier_failure(key) is None  # may pass: tried again next time
    broken = [sys.executable, "-c",
              f"print('Inductor: unsupported op'); raise SystemExit({build_process.BUILD_FAILED_EXIT})"]
    with pytest.raises(RuntimeError, match="unsupported op"):
        tick_store.StoredTickUNet(engine, broken)(engine.unet)
    assert "unsupported op" in build_process.earlier_failure(key)
    started = []
    real_process = build_process.BuildProcess
    monkeypatch.setattr(build_process, "BuildProcess", lambda command: started.append(command) or real_process(command))
    failed = build_process.failure_file(key)
    with pytest.raises(RuntimeError, match=f"{re.escape(str(failed))} is deleted"):
        tick_store.StoredTickUNet(engine, broken)(engine.unet)
    assert started == []  # not tried again within the day
    day_ago = failed.stat().st_mtime - build_process.FAILURE_KEPT_S - 1
    os.utime(failed, (day_ago, day_ago))
    with pytest.raises(RuntimeError, match="unsupported op"):
        tick_store.StoredTickUNet(engine, broken)(engine.unet)
    assert len(started) == 1  # a day later it is


def test_what_the_build_process_reports_tells_whether_its_failure_may_pass():
    transient, kept = build_process.TRANSIENT_EXIT, build_process.BUILD_FAILED_EXIT
    assert build_process.exit_code_for(MemoryError()) == transient
    assert build_process.exit_code_for(RuntimeError("Triton Error [CUDA]: out of memory")) == transient
    assert build_process.exit_code_for(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED")) == transient
    assert build_process.exit_code_for(OSError(28, "No space left on device")) == transient
    assert build_process.exit_code_for(RuntimeError("unsupported operator aten::foo")) == kept
    assert build_process.exit_code_for(OSError(2, "No such file")) == kept


def test_a_stored_unet_that_cannot_even_be_asked_for_leaves_the_ticks_graphed_with_the_eager_unet(
        cache, tiny_components, tiny_config, make_frame, monkeypatch):
    def broken_key(engine):
        raise OSError("the cache folder is not readable")

    monkeypatch.setattr(tick_store, "tick_key", broken_key)
    graphs, made = shared_ticks(tiny_components, tiny_config, make_frame, streams=2, ticks=2)
    assert made[0].failed == {0} and not graphs.disabled and graphs.unet_captures == 1


def test_the_build_process_ends_when_the_server_is_gone_and_is_asked_to_watch(tmp_path, tiny_components,
                                                                             tiny_config):
    # The server's end of the build's stdin closes however the server ends (killed outright included).
    ready = tmp_path / "watching"
    script = ("import pathlib, time, core.accel.build_process as b; b.exit_with_server(); "
              f"pathlib.Path({str(ready)!r}).write_text('yes'); time.sleep(300)")
    child = build_process.BuildProcess([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and not child.ended.is_set():
            time.sleep(0.1)
        assert ready.exists() and not child.ended.is_set()  # watching, and running while the server is there
        child.process.stdin.close()
        assert child.ended.wait(120) and child.process.returncode == build_process.SERVER_GONE_EXIT
        assert "the server is gone" in child.output
    finally:
        child.stop()
    engine = prepared_engine(tiny_components, tiny_config)
    assert tick_store.build_command(engine, tick_store.tick_key(engine))[-1] == "--exit-with-server"
