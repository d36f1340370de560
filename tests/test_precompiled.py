"""Compiled engines stored as torch.compile's precompiled functions: built once for the tiny model on the CPU,
loaded in a new process, checked against eager, also on other weights of the same architecture; keys and
broken artifacts."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from core.accel import aoti, precompiled, store
from core.accel.compile import configure_inductor
from core.stream import StreamEngine
from tests.conftest import assert_frames_close
from tests.conftest import prepared_engine as prepared

pytestmark = [pytest.mark.filterwarnings("ignore:running on the CPU", "ignore::DeprecationWarning"),
              pytest.mark.skipif(not precompiled.available(), reason="this torch cannot precompile")]


@pytest.fixture(scope="module")
def built(tiny_components, tiny_config, tmp_path_factory):
    """One build for the module: the cache folder, the config it is for, and the folder."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIVEDIFFUSION_CACHE", str(cache))
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
        config = tiny_config.replace(cfg_type="self")
        configure_inductor()  # as every build and load does first (its flags are part of the key)
        folder, _ = precompiled.build(prepared(tiny_components, config))
    return cache, config, folder


def test_a_stored_engine_loads_in_a_new_process_without_tracing_and_matches_eager(built, tmp_path):
    cache, config, folder = built
    assert sorted(p.name for p in folder.iterdir()) == ["decode.bin", "encode.bin", "key.json", "unet.bin"]
    # A new process, as a second start is: it finds the folder by the engine's key, runs three frames, and
    # says how many frames Dynamo traced (none: the functions were loaded, not compiled again).
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import torch
        import torch._dynamo.utils as dynamo_utils
        from core.accel import precompiled
        from core.accel.compile import configure_inductor
        from core.config import StreamConfig
        from core.models import load_components
        from core.stream import StreamEngine
        config = StreamConfig(**json.loads(sys.argv[1]))
        components = load_components(config)
        eager, loaded = StreamEngine(components, config), StreamEngine(components, config)
        for engine in (eager, loaded):
            engine.prepare("a cat", "blurry")
        configure_inductor()
        parts = precompiled.load(loaded)
        assert parts is not None
        loaded.install(**parts)
        rng = np.random.default_rng(0)
        worst = 0
        for i in range(3):
            frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            worst = max(worst, int(np.abs(loaded.process(frame).astype(int) - eager.process(frame).astype(int)).max()))
        traced = dynamo_utils.counters["stats"]["unique_graphs"]
        print(json.dumps({{"worst": worst, "traced": traced}}))
    """)
    fields = dict(model=config.model, width=config.width, height=config.height, device="cpu",
                  t_index_list=list(config.t_index_list), cfg_type=config.cfg_type)
    env = {**os.environ, "LIVEDIFFUSION_CACHE": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(fields)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["worst"] <= 2 and result["traced"] == 0, result


def test_one_artifact_serves_other_weights_of_the_same_architecture(built, tiny_components, make_frame,
                                                                    monkeypatch):
    import copy

    cache, config, folder = built
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(cache))
    other = copy.copy(tiny_components)
    other.pipe = copy.deepcopy(tiny_components.pipe)
    with torch.no_grad():  # another fine-tune, or a fused LoRA: every weight moves
        for parameter in other.pipe.unet.parameters():
            parameter.mul_(1.05).add_(0.002)
    eager, loaded = prepared(other, config), prepared(other, config)
    assert store.artifact_dir(precompiled.artifact_key(loaded)) == folder  # no rebuild for new weights
    parts = precompiled.load(loaded)
    assert parts is not None
    loaded.install(**parts)
    first = prepared(tiny_components, config)
    for i in range(3):
        frame = make_frame(i)
        out = loaded.process(frame)
        assert_frames_close(out, eager.process(frame), atol=2)
        assert abs(out.astype(int) - first.process(frame).astype(int)).max() > 2  # the new weights did count


def test_the_key_follows_what_the_compiled_code_depends_on(tiny_components, tiny_config, tiny_sdxl_components):
    base_engine = StreamEngine(tiny_components, tiny_config)
    base = store.artifact_dir(precompiled.artifact_key(base_engine))
    for change in (dict(width=128), dict(height=96), dict(cfg_type="full"), dict(t_index_list=(10, 20, 30)),
                   dict(frame_buffer_size=2)):
        engine = StreamEngine(tiny_components, tiny_config.replace(**change))
        assert store.artifact_dir(precompiled.artifact_key(engine)) != base, change
    sdxl = StreamEngine(tiny_sdxl_components, tiny_config.replace(model="preset:tiny-sdxl"))
    assert store.artifact_dir(precompiled.artifact_key(sdxl)) != base
    same = StreamEngine(tiny_components, tiny_config.replace(seed=7, guidance_scale=2.0, output_width=128,
                                                             output_height=128))
    assert store.artifact_dir(precompiled.artifact_key(same)) == base
    key = precompiled.artifact_key(base_engine)
    assert key != aoti.artifact_key(base_engine)  # its own folder
    for field, value in (("torch", "0.0"), ("gpu", "another GPU"), ("driver", "1"), ("project", "0.0.1"),
                         ("dtype", "torch.float16"), ("layout", [True, True]), ("mode", "max-autotune"),
                         ("device", "cuda:1"), ("diffusers", "0.1"), ("python", "3.0"), ("source", "edited")):
        assert store.artifact_dir({**key, field: value}) != base, field


def test_a_corrupt_or_unloadable_artifact_is_removed_for_a_rebuild_with_a_log_line(built, tiny_components, tmp_path,
                                                                                   caplog):
    import shutil

    cache, config, folder = built
    engine = prepared(tiny_components, config)
    for damage in ("flip a byte", "garbage with a matching checksum"):
        copy = tmp_path / damage.replace(" ", "-")
        shutil.copytree(folder, copy)
        if damage == "flip a byte":
            data = bytearray((copy / "unet.bin").read_bytes())
            data[len(data) // 2] ^= 0xFF
            (copy / "unet.bin").write_bytes(bytes(data))
        else:  # what a torch that writes another format would leave: it passes the checksum, fails to load
            (copy / "unet.bin").write_bytes(b"not a compiled function")
            key = json.loads((copy / store.KEY_FILE).read_text())
            key["sha256"]["unet.bin"] = store.sha256(copy / "unet.bin")
            (copy / store.KEY_FILE).write_text(json.dumps(key))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert precompiled.load(engine, copy) is None, damage
        assert "could not be used" in caplog.text and "rebuild" in caplog.text, damage
        assert not copy.exists(), damage
    assert precompiled.load(engine, tmp_path / "never-built") is None  # nothing stored: no message, a build follows


def test_a_call_the_stored_piece_was_not_built_for_compiles_that_piece_instead_of_failing(built, tiny_components,
                                                                                         monkeypatch, caplog):
    cache, config, folder = built
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(cache))
    engine = prepared(tiny_components, config)
    parts = precompiled.load(engine)
    latents = torch.randn((2, *engine.latent_shape))  # two frames: it was built for one
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = parts["decode_latents"](latents)
        expected = engine.decode_latents(latents)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert "does not fit this call" in caplog.text


def test_the_next_start_finds_the_stored_engine_and_a_failed_build_falls_back_to_torch_compile(
        built, tiny_components, monkeypatch, caplog):
    from core.accel import compile as compile_backend

    cache, config, folder = built
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(cache))
    monkeypatch.setenv("LIVEDIFFUSION_STORED", "precompiled")
    monkeypatch.delenv("LIVEDIFFUSION_AOTI", raising=False)
    said = []
    parts = compile_backend.load_stored(prepared(tiny_components, config), said.append)
    assert parts is not None and set(parts) >= {"unet", "unet_split", "encode_images", "decode_latents"}
    assert "loaded the compiled engine from the cache" in said[0]

    def broken(engine, say=None):
        raise AssertionError("no")

    monkeypatch.setattr(precompiled, "build_and_use", broken)
    with caplog.at_level(logging.WARNING, logger="core.accel.compile"):
        parts = compile_backend.full_speed_parts(prepared(tiny_components, config))
    assert hasattr(parts["unet"], "_orig_mod")  # torch.compile's module, compiled lazily at its first call
    assert "ahead-of-time compilation failed (AssertionError" in caplog.text


def test_an_artifact_its_guards_refuse_is_stale_and_removed_at_load_instead_of_compiling_at_the_first_frame(
        built, tiny_components, tmp_path, caplog):
    import shutil

    cache, config, folder = built
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale)
    wider = prepared(tiny_components, config.replace(width=96))  # what the stored code was not built for
    with caplog.at_level(logging.WARNING):
        assert precompiled.load(wider, stale) is None
    assert "could not be used" in caplog.text and "does not fit" not in caplog.text
    assert not stale.exists()
