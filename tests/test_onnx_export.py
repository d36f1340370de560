"""ONNX export of the engine's networks at its static shapes, checked against torch with onnxruntime.

The TensorRT back-end that builds engines from these files is tested in tests/test_tensorrt.py.
"""


import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from core.accel import onnx_export  # noqa: E402
from tests.onnx_support import OrtRunner, quiet_engine as make_engine  # noqa: E402


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
