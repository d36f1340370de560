"""Frame conversions on the device: uint8 HxWx3 in, model-sized [-1, 1] tensors, and back to uint8.

Everything here is torch arithmetic on the frame's device, so the hot path never touches PIL or the
CPU beyond the one upload and the one download.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.sizes import crop_box, letterbox_box


def as_uint8_tensor(frame) -> torch.Tensor:
    """Accept numpy or torch, HxWx3 or NxHxWx3 uint8 RGB; return a torch uint8 tensor NxHxWx3."""
    if isinstance(frame, np.ndarray):
        frame = torch.from_numpy(np.ascontiguousarray(frame))
    if not isinstance(frame, torch.Tensor):
        raise TypeError(f"frames must be numpy arrays or torch tensors, got {type(frame).__name__}")
    if frame.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {frame.dtype}")
    if frame.ndim == 3:
        frame = frame.unsqueeze(0)
    if frame.ndim != 4 or frame.shape[-1] != 3:
        raise ValueError(f"frames must be HxWx3 or NxHxWx3 RGB, got shape {tuple(frame.shape)}")
    return frame


def fit(x: torch.Tensor, height: int, width: int, letterbox: bool, fill: float = 0.0) -> torch.Tensor:
    """Nx3xHxW float -> Nx3xheightxwidth: centre-cropped to the target's shape and resized, or scaled
    whole into it with ``fill`` bars (letterbox)."""
    src_h, src_w = x.shape[-2:]
    if (src_h, src_w) == (height, width):
        return x
    if letterbox:
        top, left, h, w = letterbox_box(src_h, src_w, height, width)
        out = torch.full((x.shape[0], x.shape[1], height, width), fill, dtype=x.dtype, device=x.device)
        out[:, :, top : top + h, left : left + w] = _resize(x, h, w)
        return out
    top, left, h, w = crop_box(src_h, src_w, height, width)
    return _resize(x[:, :, top : top + h, left : left + w], height, width)


def to_model_input(frames_u8: torch.Tensor, height: int, width: int, dtype: torch.dtype, letterbox: bool = False):
    """NxHxWx3 uint8 -> Nx3xheightxwidth in [-1, 1], centre-cropped (or letterboxed) and resized."""
    x = fit(frames_u8.permute(0, 3, 1, 2).to(torch.float32), height, width, letterbox)
    return (x / 127.5 - 1.0).to(dtype)


def to_output_frames(images: torch.Tensor, height: int, width: int, letterbox: bool = False) -> torch.Tensor:
    """Decoded Nx3xhxw in [-1, 1] -> NxheightxwidthX3 uint8 at the output size (black bars when letterboxed).

    Runs on the engine's device inside the frame step, so the frame that leaves the GPU already has the
    camera's size: upscaling there costs a fraction of a millisecond, on the CPU several per frame. A float16
    decode is resized and converted in float16 (half the bytes of float32); its uint8 values are within 1 of
    the float32 path's (tests/test_bench.py).
    """
    return to_uint8_frames(fit(_working_dtype(images), height, width, letterbox, fill=-1.0))


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    shrinking = x.shape[-2] > height or x.shape[-1] > width
    # Antialiasing matters when a 1080p webcam frame shrinks to 512: without it edges shimmer.
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def to_uint8_frames(images: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW in [-1, 1] -> NxHxWx3 uint8: ``127.5 * (x + 1)`` rounded (half up), as one affine, a clamp and
    a truncating cast, in float16 for float16 images and float32 otherwise."""
    x = (_working_dtype(images) * 127.5 + 128.0).clamp_(0, 255)  # +0.5 so that truncation rounds
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # no copy for a channels-last x


def _working_dtype(images: torch.Tensor) -> torch.Tensor:
    """float16 stays float16 (fine for 256 levels); bfloat16 (8 bits of mantissa) and the rest go float32."""
    return images if images.dtype in (torch.float16, torch.float32) else images.float()
