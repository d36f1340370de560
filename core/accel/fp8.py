"""fp8 matrix products for the UNet's linear layers, a speed lever under measurement (``LIVEDIFFUSION_FP8=1``).

GPUs with fp8 tensor cores (compute capability 8.9: Ada, Hopper and later) multiply float8 matrices at twice
the fp16 rate. torchao's dynamic float8 quantization stores each linear layer's weight in float8 with its scale
and scales each activation at run time; Inductor fuses that scaling into the ops around it. Per-tensor scales:
torchao's per-row scales need bfloat16 weights, and the engine runs float16. The convolutions stay float16.
Off by default until it is measured faster with its error small (BENCHMARKS.md); where it cannot apply (no
torchao, an older GPU, the CPU) it says why and the engine runs as before.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

log = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 9)


def wanted() -> bool:
    return os.environ.get("LIVEDIFFUSION_FP8", "0") == "1"


def unavailable_reason(device) -> str:
    """Why fp8 cannot run on ``device`` ("" when it can)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "fp8 matrix products need an NVIDIA GPU"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"fp8 matrix products need compute capability 8.9 or newer (this GPU has {capability[0]}.{capability[1]})"
    try:
        import torchao.quantization  # noqa: F401
    except ImportError as exc:
        return f"fp8 matrix products need torchao ({exc}); pip install torchao"
    return ""


def _fits(module: torch.nn.Module, _name: str) -> bool:
    # float8 matrix products need both dimensions in multiples of 16; a weight already converted is a subclass.
    return (isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
            and module.weight.dtype in (torch.float16, torch.bfloat16)
            and not is_traceable_wrapper_subclass(module.weight))


def quantize_linear_layers(unet: torch.nn.Module) -> int:
    """The UNet's linear layers in float8 (in place); how many were converted. A second call converts none."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerTensor, quantize_

    count = sum(1 for name, module in unet.named_modules() if _fits(module, name))
    if count:
        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor(),
                                                                   set_inductor_config=False), filter_fn=_fits)
    return count


def apply_if_wanted(engine) -> bool:
    """``LIVEDIFFUSION_FP8=1``: the engine's UNet in float8 where the GPU and torchao allow; True when it is."""
    if not wanted():
        return False
    reason = unavailable_reason(engine.device)
    if reason:
        log.warning("%s; running float16 matrix products", reason)
        return False
    count = quantize_linear_layers(engine.unet)
    log.info("fp8 matrix products: %d linear layers of the UNet in float8", count)
    return True
