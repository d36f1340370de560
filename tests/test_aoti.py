"""Compiled engines stored on disk (AOTInductor packages): built once for the tiny model on the CPU, loaded
into a fresh engine, checked against eager; keys and broken artifacts."""

import logging

import pytest
import torch

from core.accel import aoti
from core.accel.stored import stored_format
from core.accel.keys import weight_fingerprint
from core.stream import StreamEngine
from tests.conftest import assert_frames_close
from tests.conftest import prepared_engine as prepared

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def built(tiny_components, tiny_config, tmp_path_factory):
    """One build for the module (about a minute on 2 cores): the cache folder and the config it is for."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIVEDIFFUSION_CACHE", str(cache))
        config = tiny_config.replace(cfg_type="self")
        folder = aoti.build(prepared(tiny_components, config))
    return cache, config, folder


def test_a_stored_engine_loads_into_a_new_process_and_matches_eager(built, tiny_components, make_frame, monkeypatch):
    cache, config, folder = built
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(cache))
    assert sorted(p.name for p in folder.iterdir()) == ["decode.pt2", "encode.pt2", "key.json", "unet.pt2"]
    eager, loaded = prepared(tiny_components, config), prepared(tiny_components, config)
    parts = aoti.load(loaded)  # found by the engine's own key, as a new start finds it
    assert parts is not None
    loaded.install(**parts)
    for i in range(3):
        frame = make_frame(i)
        assert_frames_close(loaded.process(frame), eager.process(frame), atol=2)
    # Probed once: the next start loads at once, without a second process (a crashing probe is never run).
    assert (folder / aoti.PROBED_FILE).exists()
    monkeypatch.setattr(aoti, "load_problem", lambda paths: ("probed again", True))
    assert aoti.load(prepared(tiny_components, config)) is not None


def test_the_artifact_key_changes_with_each_input(tiny_components, tiny_config):
    base_engine = StreamEngine(tiny_components, tiny_config)
    base = aoti.artifact_dir(aoti.artifact_key(base_engine))
    for change in (dict(width=128), dict(height=96), dict(cfg_type="full"), dict(t_index_list=(10, 20, 30)),
                   dict(frame_buffer_size=2), dict(model="preset:tiny-sdxl")):
        engine = StreamEngine(tiny_components, tiny_config.replace(**change))
        assert aoti.artifact_dir(aoti.artifact_key(engine)) != base, change
    same = StreamEngine(tiny_components, tiny_config.replace(seed=7, guidance_scale=2.0, output_width=128,
                                                             output_height=128))
    assert aoti.artifact_dir(aoti.artifact_key(same)) == base  # live settings do not change the compiled code
    key = aoti.artifact_key(base_engine)
    for field, value in (("torch", "0.0"), ("gpu", "another GPU"), ("driver", "1"), ("project", "0.0.1"),
                         ("dtype", "torch.float16"), ("layout", [True, True])):
        assert aoti.artifact_dir({**key, field: value}) != base, field


def test_the_weights_fingerprint_follows_the_weights(tiny_components):
    unet = tiny_components.pipe.unet
    before = weight_fingerprint(unet)
    weight = unet.conv_in.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.5)  # what fusing a LoRA does to a layer: every value moves
    try:
        assert weight_fingerprint(unet) != before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert weight_fingerprint(unet) == before


def test_a_corrupt_artifact_is_removed_for_a_rebuild_with_a_log_line(built, tiny_components, tmp_path, monkeypatch,
                                                                    caplog):
    import shutil

    cache, config, folder = built
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "unet.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "unet.pt2").write_bytes(bytes(data))
    engine = prepared(tiny_components, config)
    with caplog.at_level(logging.WARNING, logger="core.accel.aoti"):
        assert aoti.load(engine, copy) is None
    assert "could not be used" in caplog.text and "rebuild" in caplog.text
    assert not copy.exists()
    assert aoti.load(engine, tmp_path / "never-built") is None  # nothing stored: no message, a build follows


def test_a_failed_ahead_of_time_build_falls_back_to_torch_compile_and_says_where(tiny_components, tiny_config,
                                                                                  monkeypatch, caplog):
    from core.accel import compile as compile_backend

    def broken(engine, say=None):
        raise AssertionError((False, True))

    monkeypatch.setenv("LIVEDIFFUSION_AOTI", "1")
    monkeypatch.setattr(aoti, "build_and_load", broken)
    engine = prepared(tiny_components, tiny_config)
    with caplog.at_level(logging.WARNING, logger="core.accel.compile"):
        parts = compile_backend.full_speed_parts(engine)
    assert hasattr(parts["unet"], "_orig_mod")  # torch.compile's module, compiled lazily at its first call
    assert "ahead-of-time compilation failed (AssertionError" in caplog.text and "test_aoti.py" in caplog.text
    monkeypatch.setenv("LIVEDIFFUSION_AOTI", "0")
    assert stored_format() != "aoti"
    monkeypatch.setenv("LIVEDIFFUSION_STORED", "off")
    assert stored_format() == ""


def test_a_loader_that_crashes_turns_stored_engines_off_for_this_torch_without_taking_the_app_down(
        built, tiny_components, tmp_path, monkeypatch, caplog):
    import json
    import shutil
    import sys

    from core.accel import compile as compile_backend

    cache, config, folder = built
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIVEDIFFUSION_AOTI", "1")
    stored = tmp_path / "cache" / "compiled" / folder.name
    shutil.copytree(folder, stored)
    (stored / aoti.PROBED_FILE).unlink(missing_ok=True)  # never loaded on this machine yet
    # As torch 2.11's loader did on the lent H100: the process that loads the packages dies on a signal.
    monkeypatch.setattr(aoti, "probe_command", lambda paths: [
        sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    engine = prepared(tiny_components, config)
    with caplog.at_level(logging.WARNING, logger="core.accel.aoti"):
        assert aoti.load(engine, stored) is None  # this process lives on
    assert "package loader crashed (signal" in caplog.text and not stored.exists()
    assert stored_format() == ""  # no build that would only crash again
    marker = tmp_path / "cache" / "compiled" / aoti.LOADER_CRASH_FILE
    recorded = json.loads(marker.read_text())
    marker.write_text(json.dumps({**recorded, "torch": "another version"}))
    assert stored_format() == "aoti"  # another torch gets its chance
