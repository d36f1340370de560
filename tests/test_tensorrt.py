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
from core.accel.parts import AcceleratedParts
from core.accel.trt_runtime import INSTALL_HINT, TensorRTBuildError, TensorRTUnavailable, import_tensorrt
from tests import fake_tensorrt
from tests.onnx_support import OrtRunner, quiet_engine as make_engine

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


# ----- the engine cache, the install hint, the export stage --------------------------------------------------


BASE_KEY = dict(kind="unet", model="stabilityai/sd-turbo", module_config="abc", weights="def",
                inputs={"sample": (2, 4, 64, 64), "timestep": (2,), "encoder_hidden_states": (2, 77, 1024)},
                batch=2, gpu_name="NVIDIA H100 80GB HBM3", trt_version="10.13.0", dtype="torch.float16")


def test_cache_key_is_stable_for_identical_inputs():
    assert trt_backend.engine_cache_key(**BASE_KEY) == trt_backend.engine_cache_key(**dict(BASE_KEY))


@pytest.mark.parametrize("change", [
    {"inputs": {**BASE_KEY["inputs"], "sample": (2, 4, 96, 96)}},
    {"batch": 4},
    {"gpu_name": "NVIDIA GeForce RTX 4090"},
    {"trt_version": "10.14.1"},
    {"model": "stabilityai/sdxl-turbo"},
    {"weights": "fed"},
    {"module_config": "abd"},
    {"dtype": "torch.float32"},
    {"kind": "vae_decoder"},
])
def test_cache_key_changes_with_what_the_engine_depends_on(change):
    assert trt_backend.engine_cache_key(**{**BASE_KEY, **change}) != trt_backend.engine_cache_key(**BASE_KEY)


def test_weight_fingerprint_sees_a_changed_weight(tiny_components):
    unet = tiny_components.pipe.unet
    before = trt_backend.weight_fingerprint(unet)
    assert trt_backend.weight_fingerprint(unet) == before
    weight = unet.conv_in.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.01)  # as a fused LoRA would
    try:
        assert trt_backend.weight_fingerprint(unet) != before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert trt_backend.config_digest(unet.config) != trt_backend.config_digest(tiny_components.tiny_vae.config)


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes "import tensorrt" raise ImportError
    with pytest.raises(TensorRTUnavailable) as caught:
        import_tensorrt()
    assert "TensorRT is not installed" in str(caught.value)
    assert 'pip install -e ".[tensorrt]"' in str(caught.value) and "CUDA GPU" in INSTALL_HINT


def test_export_failure_names_the_stage_and_the_log(tmp_path):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            raise RuntimeError("unsupported operator in forward")

    spec = onnx_export.ExportSpec("unet", Broken(), {"sample": torch.ones(1)}, ("noise",))
    log_path = tmp_path / "unet" / "build.log"
    with pytest.raises(TensorRTBuildError) as caught:
        trt_backend.export_stage(spec, tmp_path / "unet" / "onnx", "UNet", log_path, lambda message: None)
    assert caught.value.stage == "export"
    assert "TensorRT export of the UNet failed" in str(caught.value) and str(log_path) in str(caught.value)
    assert "unsupported operator in forward" in log_path.read_text()
    # The exporter left it off after a failed trace: every stored compiled function's guards would then refuse.
    assert torch.is_autocast_cache_enabled()


@pytest.fixture
def onnxruntime():
    return pytest.importorskip("onnxruntime")


# ----- the drop-in callables inside a real engine (onnxruntime standing in for TensorRT, on the CPU) -------


@pytest.mark.parametrize("preset, cfg_type", [("tiny", "full"), ("tiny-sdxl", "initialize")])
def test_installed_runners_reproduce_the_eager_engine(onnxruntime, request, tiny_config, tmp_path, make_frame, preset, cfg_type):
    components = request.getfixturevalue("tiny_components" if preset == "tiny" else "tiny_sdxl_components")
    config = dict(model=f"preset:{preset}", cfg_type=cfg_type)
    eager = make_engine(components, tiny_config, **config)
    swapped = make_engine(components, tiny_config, **config)
    runners = {}
    for kind, spec in onnx_export.engine_specs(swapped).items():
        runners[kind] = OrtRunner(onnx_export.export_onnx(spec, tmp_path / kind / "model.onnx"))
    trt_backend.install(swapped, runners, say=lambda message: None, graph=False)
    for engine in (eager, swapped):
        engine.prepare("a watercolor fox", "blurry")
    for seed in range(3):  # past the stream batch's latency, so the buffered latents matter too
        frame = make_frame(seed)
        want, got = eager.process(frame), swapped.process(frame)
        assert np.abs(want.astype(int) - got.astype(int)).max() <= 2
    assert all(runner.calls == 3 for runner in runners.values())
    trt_backend.uninstall(swapped)
    assert swapped.unet_forward is swapped.unet and swapped.accelerated == AcceleratedParts()


def test_a_failed_graph_capture_keeps_the_engines(onnxruntime, tiny_components, tiny_config, tmp_path, make_frame):
    eager, swapped = make_engine(tiny_components, tiny_config), make_engine(tiny_components, tiny_config)
    runners = {kind: OrtRunner(onnx_export.export_onnx(spec, tmp_path / kind / "model.onnx"))
               for kind, spec in onnx_export.engine_specs(swapped).items()}
    said = []
    trt_backend.install(swapped, runners, say=said.append, graph=True)
    for engine in (eager, swapped):
        engine.prepare("a watercolor fox")
    for seed in range(2):  # on the CPU the capture itself fails: the frame must still come out right
        frame = make_frame(seed)
        assert np.abs(eager.process(frame).astype(int) - swapped.process(frame).astype(int)).max() <= 2
    assert swapped.accelerated.frame_runner.failed and any("capture failed" in m for m in said)
    assert isinstance(swapped.unet_forward, trt_backend.TensorRTUNet) and runners["unet"].calls == 2
