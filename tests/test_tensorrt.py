"""The TensorRT back-end: build flow and engine cache (with a fake ``tensorrt``), and the real thing.

Three tiers: build-flow tests run anywhere against tests/fake_tensorrt.py; ``gpu`` tests run the whole
back-end on CUDA with the fake's engines (torch modules behind TensorRT's binding protocol), CUDA graph
capture included; ``tensorrt`` tests build and run real engines and are skipped without TensorRT.
"""

import sys
import warnings

import numpy as np
import pytest
import torch

from core.accel import onnx_export, trt_runtime
from core.accel import tensorrt as trt_backend
from core.accel.trt_runtime import TensorRTBuildError
from tests import fake_tensorrt

HAS_CUDA = torch.cuda.is_available()


def _real_tensorrt() -> str | None:
    if not HAS_CUDA:
        return "needs CUDA"
    try:
        trt_runtime.import_tensorrt()
    except trt_runtime.TensorRTUnavailable as error:
        return str(error)
    return None


_NO_TRT = _real_tensorrt()


def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")(test))


def needs_tensorrt(test):
    reason = f"needs CUDA and TensorRT ({_NO_TRT})"
    return pytest.mark.tensorrt(pytest.mark.skipif(_NO_TRT is not None, reason=reason)(test))


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    fake_tensorrt.reset()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(trt_runtime, "_LOGGER", None)  # the logger class derives from the module's ILogger
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path / "cache"))
    yield fake_tensorrt
    fake_tensorrt.reset()


@pytest.fixture
def small_onnx(tmp_path):
    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, latents):
            return self.conv(latents)

    spec = onnx_export.ExportSpec("vae_decoder", Small().eval(), {"latents": torch.randn(1, 4, 8, 8)}, ("images",))
    return onnx_export.export_onnx(spec, tmp_path / "onnx" / "model.onnx")


def build(trt, onnx_path, tmp_path, dtype=torch.float16, said=None):
    trt_runtime.build_plan(trt, onnx_path, tmp_path / "engine.plan", label="VAE decoder", dtype=dtype,
                           log_path=tmp_path / "build.log", timing_cache_path=tmp_path / "timing.cache",
                           workspace_bytes=1 << 30, say=(said.append if said is not None else lambda m: None))


# ----- build flow, anywhere -------------------------------------------------------------------------------


def test_build_writes_plan_timing_cache_and_log(fake_trt, small_onnx, tmp_path):
    said = []
    build(fake_trt, small_onnx, tmp_path, said=said)
    assert (tmp_path / "engine.plan").is_file() and (tmp_path / "timing.cache").is_file()
    config = fake_trt.Builder.last_config
    assert fake_trt.BuilderFlag.FP16 in config.flags
    assert config.pools[fake_trt.MemoryPoolType.WORKSPACE] == 1 << 30
    assert "parsed" in (tmp_path / "build.log").read_text()
    assert any("Building engine" in m for m in said) and any("built in" in m for m in said)
    # The saved timing cache is read back by the next build.
    build(fake_trt, small_onnx, tmp_path)
    assert fake_trt.Builder.last_config.timing_cache.blob.startswith(b"fake-timing:x")


def test_float32_networks_get_no_reduced_precision(fake_trt, small_onnx, tmp_path):
    build(fake_trt, small_onnx, tmp_path, dtype=torch.float32)  # e.g. the SDXL VAE, which overflows in fp16
    assert not fake_trt.Builder.last_config.flags


def test_without_precision_flags_the_network_is_strongly_typed(fake_trt, small_onnx, tmp_path, monkeypatch):
    import enum

    monkeypatch.setattr(fake_trt, "BuilderFlag", enum.IntEnum("BuilderFlag", {"REFIT": 1}))  # as in TensorRT 11
    build(fake_trt, small_onnx, tmp_path)
    assert fake_trt.Builder.last_network.flags == 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert not fake_trt.Builder.last_config.flags


def test_a_foreign_timing_cache_is_ignored(fake_trt, small_onnx, tmp_path):
    (tmp_path / "timing.cache").write_bytes(b"from another TensorRT")
    build(fake_trt, small_onnx, tmp_path)
    assert (tmp_path / "engine.plan").is_file()


@pytest.mark.parametrize("stage, expected", [("parse", "UNSUPPORTED_NODE"), ("build", "out of memory")])
def test_failures_name_the_stage_and_the_log(fake_trt, small_onnx, tmp_path, stage, expected):
    fake_trt.FAIL[stage] = True
    with pytest.raises(TensorRTBuildError) as caught:
        build(fake_trt, small_onnx, tmp_path)
    message = str(caught.value)
    assert caught.value.stage == stage and f"TensorRT {stage} of the VAE decoder failed" in message
    assert expected in message and str(tmp_path / "build.log") in message
    assert not (tmp_path / "engine.plan").exists()


# ----- the whole back-end on CUDA, fake engines -----------------------------------------------------------


def cuda_engine(components, tiny_config, **changes):
    from core.stream import StreamEngine

    config = tiny_config.replace(device="cuda", dtype="float16", **changes)
    return StreamEngine(components, config)


@pytest.fixture(scope="module")
def cuda_components(tiny_config):
    """Components of their own on the GPU: the session's CPU ones stay untouched for other tests."""
    from core.models import load_components

    loaded = {}

    def get(preset):
        if preset not in loaded:
            config = tiny_config.replace(model=f"preset:{preset}", device="cuda", dtype="float16")
            loaded[preset] = load_components(config)
        return loaded[preset]

    return get


@pytest.mark.parametrize("preset, cfg_type", [("tiny", "self"), ("tiny-sdxl", "full")])
@needs_cuda
def test_backend_with_fake_engines_matches_eager(fake_trt, cuda_components, tiny_config, make_frame, preset,
                                                  cfg_type):
    components = cuda_components(preset)
    changes = dict(model=f"preset:{preset}", cfg_type=cfg_type)
    eager = cuda_engine(components, tiny_config, **changes)
    accelerated = cuda_engine(components, tiny_config, **changes)
    for spec in onnx_export.engine_specs(accelerated).values():
        fake_trt.MODULES[tuple(spec.inputs)] = spec.module
    said = []
    trt_backend.use_tensorrt(accelerated, said.append)
    assert fake_trt.STATS["builds"] == 3
    for engine in (eager, accelerated):
        engine.prepare("a paper cutout city")
    for seed in range(3):
        frame = make_frame(seed)
        want, got = eager.process(frame), accelerated.process(frame)
        assert np.abs(want.astype(int) - got.astype(int)).max() <= 2
    graph = accelerated.accelerated.frame_runner
    assert not graph.failed and graph.graphs  # captured, and replayed for the later frames
    # A second engine with the same model and shapes loads the plans instead of building them.
    again = cuda_engine(components, tiny_config, **changes)
    trt_backend.use_tensorrt(again, said.append)
    assert fake_trt.STATS["builds"] == 3 and sum("using the cached engine" in m for m in said) == 3


@needs_cuda
def test_a_corrupt_cached_plan_is_rebuilt(fake_trt, cuda_components, tiny_config):
    components = cuda_components("tiny")
    engine = cuda_engine(components, tiny_config)
    for spec in onnx_export.engine_specs(engine).values():
        fake_trt.MODULES[tuple(spec.inputs)] = spec.module
    trt_backend.use_tensorrt(engine, lambda m: None)
    for plan in trt_backend.cache_dir().glob("*/engine.plan"):
        plan.write_bytes(b"truncated")
    trt_backend.use_tensorrt(cuda_engine(components, tiny_config), lambda m: None)
    assert fake_trt.STATS["builds"] == 6


@needs_cuda
def test_vae_failure_keeps_the_unet_engine(fake_trt, cuda_components, tiny_config, monkeypatch):
    components = cuda_components("tiny")
    engine = cuda_engine(components, tiny_config)
    for spec in onnx_export.engine_specs(engine).values():
        fake_trt.MODULES[tuple(spec.inputs)] = spec.module
    real_export = onnx_export.export_onnx

    def export_unet_only(spec, path, **kwargs):
        if spec.name != "unet":
            raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX is not supported")
        return real_export(spec, path, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", export_unet_only)
    said = []
    trt_backend.use_tensorrt(engine, said.append)
    assert isinstance(engine.unet_forward, trt_backend.TensorRTUNet)
    assert engine.accelerated.encode_images is None and engine.accelerated.decode_latents is None
    assert any("TensorRT export of the VAE encoder failed" in m and "stays in PyTorch" in m for m in said)


# ----- real TensorRT --------------------------------------------------------------------------------------


@needs_tensorrt
def test_real_unet_engine_matches_torch(cuda_components, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path))
    trt = trt_runtime.import_tensorrt()
    engine = cuda_engine(cuda_components("tiny"), tiny_config, cfg_type="full")
    spec = onnx_export.engine_specs(engine)["unet"]
    runner = trt_backend._Builder(trt, engine.device, lambda m: None).runner(engine, "unet", spec, engine.unet)
    got = trt_backend.TensorRTUNet(runner)(spec.inputs["sample"], spec.inputs["timestep"].long(),
                                           encoder_hidden_states=spec.inputs["encoder_hidden_states"])[0]
    with torch.no_grad():
        want = spec.module(*spec.inputs.values())
    torch.cuda.synchronize()
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2), float((got - want).abs().max())


@needs_tensorrt
def test_real_engines_in_the_stream_engine(cuda_components, tiny_config, tmp_path, monkeypatch, make_frame):
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path))
    components = cuda_components("tiny-sdxl")
    changes = dict(model="preset:tiny-sdxl", cfg_type="initialize")
    eager = cuda_engine(components, tiny_config, **changes)
    accelerated = cuda_engine(components, tiny_config, **changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trt_backend.use_tensorrt(accelerated, lambda m: None)
    for engine in (eager, accelerated):
        engine.prepare("a paper cutout city")
    for seed in range(3):
        frame = make_frame(seed)
        want, got = eager.process(frame), accelerated.process(frame)
        assert np.abs(want.astype(int) - got.astype(int)).mean() < 2.0
