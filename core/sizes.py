"""The generated size from the source's shape and a quality setting, and the output sizes on offer.

SD-family UNets are trained on squares around 512 (sd-turbo, SD 1.5) or 1024 (SDXL-Turbo) pixels, and a
size far from that pixel count loses detail (smaller) or repeats subjects (larger). So each quality names
a pixel budget, and the shape follows the source so that nothing is cropped away and nothing is stretched.
Every size is a multiple of 8 (the VAE's factor). The UNet also halves the latent three times; where a
latent side is not a multiple of 8 (360 px -> 45), diffusers' UNet carries the exact size to its upsamplers
(45 -> 23 -> 12 -> 6 and back), so 640x360 runs as it is; sides that are multiples of 64 (512, 576, 768,
1024) divide all the way down with no odd step.
"""

from __future__ import annotations

QUALITIES = ("fast", "balanced", "high")

# Sizes for the common shapes, picked by hand: the three 16:9 sizes are the 360p/432p/576p steps (the
# 432p one measured at 131 fps for sd-turbo, 1 step, on an H100); 4:3 keeps about the same pixel budgets.
# A square source gets 512x512 at every quality: the turbo models' own training size, where they look best
# (smaller loses detail quickly, and a square is already the cheapest shape at a given budget).
# Keys are (width, height) of the reduced aspect ratio.
SIZES = {
    (16, 9): {"fast": (640, 360), "balanced": (768, 432), "high": (1024, 576)},
    (4, 3): {"fast": (512, 384), "balanced": (640, 480), "high": (768, 576)},
    (1, 1): {"fast": (512, 512), "balanced": (512, 512), "high": (512, 512)},
}
ASPECT_TOLERANCE = 0.02  # a 1366x768 laptop screen counts as 16:9

#: (width, height) the preview, recordings and the virtual camera can take; None: the generated size.
OUTPUT_SIZES = {"1280x720": (1280, 720), "1920x1080": (1920, 1080), "640x360": (640, 360), "generated": None}
DEFAULT_OUTPUT_SIZE = "1280x720"


def generation_size(source_width: int, source_height: int, quality: str = "balanced") -> tuple[int, int]:
    """(width, height) to generate at for a source of that size: a listed size where the source has a
    listed shape (portrait too), else the quality's pixel budget at the source's own aspect ratio."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    if source_width <= 0 or source_height <= 0:
        raise ValueError(f"the source size must be positive, got {source_width}x{source_height}")
    portrait = source_height > source_width
    long_side, short_side = max(source_width, source_height), min(source_width, source_height)
    aspect = long_side / short_side
    for (w, h), by_quality in SIZES.items():
        if abs(aspect - w / h) <= ASPECT_TOLERANCE * (w / h):
            width, height = by_quality[quality]
            return (height, width) if portrait else (width, height)
    budget_w, budget_h = SIZES[(16, 9)][quality]
    pixels = budget_w * budget_h
    short = _multiple_of_8((pixels / aspect) ** 0.5)
    long = _multiple_of_8(min(short * aspect, 2048))
    return (short, long) if portrait else (long, short)


def _multiple_of_8(value: float) -> int:
    return max(64, int(round(value / 8)) * 8)


def parse_size(text: str) -> tuple[int, int]:
    """"1280x720" -> (1280, 720); raises ValueError with the expected form."""
    try:
        width, height = (int(part) for part in text.lower().replace(" ", "").split("x"))
    except ValueError:
        raise ValueError(f"a size is WIDTHxHEIGHT, for example 1280x720; got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"a size needs a positive width and height, got {text!r}")
    return width, height


def crop_box(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int, int, int]:
    """The centred (top, left, height, width) of the source that has the target's aspect ratio."""
    if src_w * dst_h > dst_w * src_h:  # source is wider: cut the sides
        w = max(1, round(src_h * dst_w / dst_h))
        return 0, (src_w - w) // 2, src_h, w
    h = max(1, round(src_w * dst_h / dst_w))
    return (src_h - h) // 2, 0, h, src_w


def letterbox_box(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int, int, int]:
    """The centred (top, left, height, width) in the target that the whole source scales into."""
    scale = min(dst_h / src_h, dst_w / src_w)
    h, w = max(1, round(src_h * scale)), max(1, round(src_w * scale))
    return (dst_h - h) // 2, (dst_w - w) // 2, h, w
