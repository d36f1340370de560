"""ONNX export of the engine's UNet and VAE halves, at the engine's static shapes.

TensorRT builds from ONNX, and an engine is only as static as the graph it came from: every input here
gets the exact shape the StreamEngine feeds it each frame (no dynamic axes), which lets the builder pick
one best kernel per layer. Each network is wrapped in a small module with plain tensor inputs and one
tensor output, so the exported graph has named, positional I/O and none of diffusers' dict outputs.

The VAE halves are exported as the engine's whole ``encode_images`` / ``decode_latents`` computations
(including the latent scaling and, for the full VAE, quant_conv / post_quant_conv and the posterior
mode), so the TensorRT engines can stand in for those two engine methods without knowing which VAE
class is underneath.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 17
# Protobuf refuses messages of 2 GiB and more; leave room for the graph itself.
EXTERNAL_DATA_BYTES = 1_900_000_000


@dataclass
class ExportSpec:
    """One network to export: the wrapper module, named example inputs (in call order), output names."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...]

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {key: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for key, t in self.inputs.items()}

    @property
    def dtype(self) -> torch.dtype:
        """The precision the network computes in (its parameters' dtype)."""
        return next(self.module.parameters()).dtype


# ----- wrappers with plain tensor I/O ------------------------------------------------------------------


class UNetExport(nn.Module):
    """``unet(...)[0]`` with the SDXL added conditioning as two more positional tensors."""

    def __init__(self, unet: nn.Module, with_added_cond: bool):
        super().__init__()
        self.unet = unet
        self.with_added_cond = with_added_cond

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.with_added_cond else None
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class VaeEncodeExport(nn.Module):
    """Images in [-1, 1] to scaled latents, as ``StreamEngine.encode_images`` computes them."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, images):
        latents = self.vae.encode(images, return_dict=False)[0]
        if not isinstance(latents, torch.Tensor):  # the full VAE's posterior; the engine takes its mode
            latents = latents.mode()
        return latents * self.scaling_factor


class VaeDecodeExport(nn.Module):
    """Scaled latents to images in [-1, 1], as ``StreamEngine.decode_latents`` computes them."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents):
        return self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]


# ----- specs at the engine's shapes --------------------------------------------------------------------


def is_sdxl_unet(unet) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def unet_spec(unet, batch: int, latent_shape, seq_len: int, dtype, device) -> ExportSpec:
    cfg = unet.config
    hidden = cfg.cross_attention_dim
    hidden = hidden if isinstance(hidden, int) else hidden[0]
    # Fixed, non-trivial example values: constant folding must not see a special case such as all zeros.
    gen = torch.Generator("cpu").manual_seed(0)

    def example(*shape):
        return torch.randn(shape, generator=gen).to(device, dtype)

    inputs = {
        "sample": example(batch, *latent_shape),
        # float32 timesteps: the UNet turns them into float sinusoids anyway, and it spares TensorRT int64 I/O.
        "timestep": torch.linspace(999, 1, batch).to(device, torch.float32),
        "encoder_hidden_states": example(batch, seq_len, hidden),
    }
    sdxl = is_sdxl_unet(unet)
    if sdxl:
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["text_embeds"] = example(batch, pooled)
        inputs["time_ids"] = torch.tensor([[512, 512, 0, 0, 512, 512]] * batch).to(device, dtype)
    return ExportSpec("unet", UNetExport(unet, sdxl).eval(), inputs, ("noise",))


def vae_encoder_spec(vae, batch: int, height: int, width: int, device) -> ExportSpec:
    dtype = vae.dtype
    images = (torch.rand((batch, 3, height, width), generator=torch.Generator("cpu").manual_seed(1)) * 2 - 1)
    return ExportSpec("vae_encoder", VaeEncodeExport(vae).eval(), {"images": images.to(device, dtype)}, ("latents",))


def vae_decoder_spec(vae, batch: int, latent_shape, device) -> ExportSpec:
    dtype = vae.dtype
    latents = torch.randn((batch, *latent_shape), generator=torch.Generator("cpu").manual_seed(2))
    return ExportSpec("vae_decoder", VaeDecodeExport(vae).eval(), {"latents": latents.to(device, dtype)}, ("images",))


def prompt_length(components) -> int:
    """Tokens per prompt embedding: what diffusers' ``encode_prompt`` pads to."""
    tokenizer = getattr(components.pipe, "tokenizer", None) or getattr(components.pipe, "tokenizer_2", None)
    length = getattr(tokenizer, "model_max_length", 77)
    return length if isinstance(length, int) and 0 < length <= 4096 else 77


def engine_specs(engine) -> dict[str, ExportSpec]:
    """The networks of a StreamEngine at exactly the shapes its ``frame_step`` feeds them."""
    cfg = engine.config
    specs = {
        "unet": unet_spec(
            engine.unet, engine.unet_batch_size, engine.latent_shape, prompt_length(engine.components),
            engine.dtype, engine.device,
        ),
        "vae_decoder": vae_decoder_spec(engine.vae, cfg.frame_buffer_size, engine.latent_shape, engine.device),
    }
    if cfg.mode == "img2img":  # txt2img never encodes an image
        specs["vae_encoder"] = vae_encoder_spec(engine.vae, cfg.frame_buffer_size, cfg.height, cfg.width, engine.device)
    return specs


# ----- export ------------------------------------------------------------------------------------------


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@contextlib.contextmanager
def _autocast_cache_kept():
    """The TorchScript exporter turns the process's autocast cache off while it traces and leaves it off when the
    trace raises (torch 2.13): every precompiled function's global-state guard would then refuse its calls."""
    enabled = torch.is_autocast_cache_enabled()
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(enabled)


def export_onnx(spec: ExportSpec, path: str | os.PathLike, *, opset: int = OPSET,
                external_data: bool | None = None) -> Path:
    """Write ``spec`` to ``path``; weights go to ``<path>.data`` beside it when external_data (default: over 2 GB).

    The file's folder should hold nothing else: the TorchScript exporter scatters one file per weight there
    for large models before they are gathered into the single data file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = parameter_bytes(spec.module) >= EXTERNAL_DATA_BYTES
    args = tuple(spec.inputs.values())
    names = dict(input_names=list(spec.inputs), output_names=list(spec.outputs), opset_version=opset)
    with torch.no_grad(), warnings.catch_warnings(), _autocast_cache_kept():
        # The UNet's Python-level shape checks are constant at static shapes; the tracer warns about each.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(spec.module, args, str(path), dynamo=False, do_constant_folding=True, **names)
        except Exception as first:  # noqa: BLE001 - the dynamo exporter is the second chance, if it is installed
            if not _has_onnxscript():
                raise
            log.warning("TorchScript ONNX export of %s failed (%s); trying the dynamo exporter", spec.name, first)
            names["opset_version"] = max(opset, 18)
            torch.onnx.export(spec.module, args, str(path), dynamo=True, external_data=external_data, **names)
    if external_data:
        gather_external_data(path)
    return path


def _has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def gather_external_data(path: Path) -> Path:
    """Move every weight into one ``<name>.data`` file beside the model (TensorRT and onnxruntime read it)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(path), load_external_data=False)
    scattered = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            scattered.update(entry.value for entry in tensor.external_data if entry.key == "location")
    load_external_data_for_model(model, str(path.parent))
    data_name = path.name + ".data"
    if (path.parent / data_name).exists():
        (path.parent / data_name).unlink()  # save_model appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    for name in scattered - {data_name}:
        (path.parent / name).unlink(missing_ok=True)
    return path.parent / data_name
