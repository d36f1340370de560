"""How far the UNet's output moves with fp8 matrix products (core.accel.fp8), on a GPU with fp8 tensor cores.

    python -m tools.fp8_check [preset]

Random-weight presets: the deviation is the arithmetic's, not a statement about image quality. Printed as the
relative L2 distance to a float32 reference, for float16 and for float16 with fp8 linear layers.
"""

from __future__ import annotations

import copy
import sys

import torch

from core.accel.fp8 import quantize_linear_layers, unavailable_reason
from core.presets import build_preset


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def main(name: str = "sd-turbo") -> int:
    reason = unavailable_reason("cuda" if torch.cuda.is_available() else "cpu")
    if reason:
        print(reason)
        return 1
    pipe, _ = build_preset(name, device="cuda", dtype=torch.float16, with_tiny_vae=False)
    unet = pipe.unet.eval()
    generator = torch.Generator("cuda").manual_seed(0)
    sample = torch.randn((1, 4, 64, 64), device="cuda", generator=generator)
    hidden = torch.randn((1, 77, unet.config.cross_attention_dim), device="cuda", generator=generator)
    rows, reference_unet = [], copy.deepcopy(unet).float()
    for timestep in (999, 500, 250):
        t = torch.tensor([timestep], device="cuda")
        reference = reference_unet(sample, t, hidden, return_dict=False)[0]
        half = unet(sample.half(), t, hidden.half(), return_dict=False)[0]
        rows.append((timestep, reference, half))
    del reference_unet
    converted = quantize_linear_layers(unet)
    print(f"{name}: {converted} linear layers in float8 (per-tensor scales), timesteps 999/500/250")
    print("| timestep | float16 vs float32 | fp8 vs float32 | fp8 vs float16 |")
    print("| --- | --- | --- | --- |")
    for timestep, reference, half in rows:
        t = torch.tensor([timestep], device="cuda")
        fp8 = unet(sample.half(), t, hidden.half(), return_dict=False)[0]
        print(f"| {timestep} | {relative(half, reference):.5f} | {relative(fp8, reference):.5f} | "
              f"{relative(fp8, half):.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
