"""The CPU half of the tensorrt back-end: ONNX export, cache keys, error messages, and the drop-in wiring.

TensorRT itself needs CUDA (tests/test_tensorrt.py); everything up to the ONNX file is checked here with
onnxruntime on the CPU, and the callables that replace the engine's networks are driven by onnxruntime
sessions standing in for TensorRT engines.
"""

import sys
import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from core.accel import onnx_export  # noqa: E402
from core.accel import tensorrt as trt_backend  # noqa: E402
from core.accel.parts import AcceleratedParts  # noqa: E402
from core.accel.trt_runtime import INSTALL_HINT, TensorRTBuildError, TensorRTUnavailable, import_tensorrt  # noqa: E402


def make_engine(components, config, **changes):
    from core.stream import StreamEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "running on the CPU"
        return StreamEngine(components, config.replace(**changes))


class OrtRunner:
    """An onnxruntime session with the call convention of trt_runtime.EngineRunner."""

    def __init__(self, path):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.calls = 0

    def __call__(self, feeds):
        self.calls += 1
        arrays = {name: feeds[name].detach().to(torch.float32).contiguous().numpy() for name in self.inputs}
        names = [o.name for o in self.session.get_outputs()]
        return {name: torch.from_numpy(value) for name, value in zip(names, self.session.run(names, arrays))}


def export_and_compare(spec, folder, atol=1e-4, **kwargs):
    path = onnx_export.export_onnx(spec, folder / "model.onnx", **kwargs)
    onnx.checker.check_model(str(path))  # the path form also checks external data
    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == list(spec.inputs)
    assert [o.name for o in model.graph.output] == list(spec.outputs)
    for value in model.graph.input:  # static shapes, no symbolic dims
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == list(spec.inputs[value.name].shape)
    runner = OrtRunner(path)
    got = runner(spec.inputs)[spec.outputs[0]]
    with torch.no_grad():
        want = spec.module(*spec.inputs.values())
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=atol, rtol=1e-4), float((got - want).abs().max())
    return path


@pytest.mark.parametrize("cfg_type, rows", [("none", 2), ("full", 4)])
def test_unet_export_matches_torch(tiny_components, tiny_config, tmp_path, cfg_type, rows):
    engine = make_engine(tiny_components, tiny_config, cfg_type=cfg_type)
    spec = onnx_export.engine_specs(engine)["unet"]
    assert list(spec.inputs) == ["sample", "timestep", "encoder_hidden_states"]
    assert spec.inputs["sample"].shape == (rows, 4, 8, 8)  # one row per UNet input of the stream batch
    assert spec.inputs["encoder_hidden_states"].shape[:2] == (rows, 77)
    export_and_compare(spec, tmp_path)


def test_sdxl_unet_export_takes_added_conditioning(tiny_sdxl_components, tiny_config, tmp_path):
    engine = make_engine(tiny_sdxl_components, tiny_config, model="preset:tiny-sdxl", cfg_type="self")
    spec = onnx_export.engine_specs(engine)["unet"]
    assert list(spec.inputs) == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    assert spec.inputs["time_ids"].shape == (2, 6)
    export_and_compare(spec, tmp_path)
    # The added conditioning must reach the graph, not be folded away as a constant.
    session = OrtRunner(tmp_path / "model.onnx")
    changed = dict(spec.inputs, text_embeds=spec.inputs["text_embeds"] + 1)
    assert not torch.allclose(session(changed)["noise"], session(spec.inputs)["noise"])


def test_tiny_vae_export_matches_torch(tiny_components, tiny_config, tmp_path):
    engine = make_engine(tiny_components, tiny_config, frame_buffer_size=2)
    specs = onnx_export.engine_specs(engine)
    assert type(engine.vae).__name__ == "AutoencoderTiny"
    assert specs["vae_encoder"].inputs["images"].shape == (2, 3, 64, 64)
    assert specs["vae_decoder"].inputs["latents"].shape == (2, 4, 8, 8)
    export_and_compare(specs["vae_encoder"], tmp_path / "enc")
    export_and_compare(specs["vae_decoder"], tmp_path / "dec")
    # The wrappers compute exactly what the engine's own methods do.
    with torch.no_grad():
        images = specs["vae_encoder"].inputs["images"]
        assert torch.allclose(specs["vae_encoder"].module(images), engine.encode_images(images), atol=1e-6)
        latents = specs["vae_decoder"].inputs["latents"]
        assert torch.allclose(specs["vae_decoder"].module(latents), engine.decode_latents(latents), atol=1e-6)


def test_full_vae_export_matches_torch(tiny_components, tiny_config, tmp_path):
    engine = make_engine(tiny_components, tiny_config, use_tiny_vae=False)
    assert type(engine.vae).__name__ == "AutoencoderKL"  # quant_conv, posterior mode, post_quant_conv
    specs = onnx_export.engine_specs(engine)
    export_and_compare(specs["vae_encoder"], tmp_path / "enc")
    export_and_compare(specs["vae_decoder"], tmp_path / "dec", atol=1e-3)


def test_txt2img_needs_no_encoder(tiny_components, tiny_config):
    engine = make_engine(tiny_components, tiny_config, mode="txt2img")
    assert set(onnx_export.engine_specs(engine)) == {"unet", "vae_decoder"}


def test_external_data_goes_to_one_file(tiny_components, tiny_config, tmp_path):
    engine = make_engine(tiny_components, tiny_config)
    spec = onnx_export.engine_specs(engine)["unet"]
    export_and_compare(spec, tmp_path, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    # Only the graph and tensors too small to be worth a seek stay inline; the weights are beside it.
    weights = onnx_export.parameter_bytes(spec.module)
    assert (tmp_path / "model.onnx").stat().st_size < weights / 4 < (tmp_path / "model.onnx.data").stat().st_size


# ----- cache keys ---------------------------------------------------------------------------------------

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


# ----- the drop-in callables inside a real engine ---------------------------------------------------------


@pytest.mark.parametrize("preset, cfg_type", [("tiny", "full"), ("tiny-sdxl", "initialize")])
def test_installed_runners_reproduce_the_eager_engine(request, tiny_config, tmp_path, make_frame, preset, cfg_type):
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


def test_a_failed_graph_capture_keeps_the_engines(tiny_components, tiny_config, tmp_path, make_frame):
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
