"""Write a random-weight preset as a diffusers folder, with its tiny VAE beside it, so that a start-up
benchmark reads the weights from disk through the real loading code, as a user's start does (building the
random weights instead takes about 10 s for sd-turbo and says nothing about a user's wait).

    python -m tools.save_preset sd-turbo /tmp/models/sd-turbo
    python main.py bench --startup --model /tmp/models/sd-turbo --tiny-vae /tmp/models/sd-turbo-taesd ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from core.presets import build_preset


def save_preset(name: str, folder: Path, dtype: torch.dtype = torch.float16) -> tuple[Path, Path]:
    pipe, tiny_vae = build_preset(name, device="cpu", dtype=dtype, with_tiny_vae=True)
    tiny_folder = folder.with_name(f"{folder.name}-taesd")
    pipe.save_pretrained(folder, safe_serialization=True)
    tiny_vae.save_pretrained(tiny_folder, safe_serialization=True)
    return folder, tiny_folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("preset")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    model, tiny = save_preset(args.preset, args.folder)
    print(f"--model {model} --tiny-vae-model {tiny}")


if __name__ == "__main__":
    main()
