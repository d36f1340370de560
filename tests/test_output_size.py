"""The picture's shape and size: the generated size from the source's shape, the output size handed out
by the engine (upscaled inside the frame step), and crop or letterbox where the shapes differ."""

import numpy as np
import pytest
import torch

from core import imageops
from core.config import ConfigError, StreamConfig
from core.sizes import OUTPUT_SIZES, generation_size, parse_size
from core.stream import StreamEngine

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


@pytest.mark.parametrize("source, quality, expected", [
    ((1280, 720), "fast", (640, 360)), ((1920, 1080), "balanced", (768, 432)), ((1366, 768), "high", (1024, 576)),
    ((640, 480), "fast", (512, 384)), ((800, 600), "balanced", (640, 480)), ((1024, 768), "high", (768, 576)),
    ((1024, 1024), "balanced", (512, 512)), ((720, 1280), "balanced", (432, 768)),
])
def test_generated_size_follows_the_source_shape(source, quality, expected):
    assert generation_size(*source, quality) == expected


@pytest.mark.parametrize("source", [(2560, 1080), (3440, 1440), (1080, 2400), (333, 777)])
def test_odd_shapes_keep_their_aspect_within_the_budget(source):
    width, height = generation_size(*source, "balanced")
    assert width % 8 == 0 and height % 8 == 0
    assert abs(width / height - source[0] / source[1]) < 0.05 * source[0] / source[1]
    assert 0.8 * 768 * 432 <= width * height <= 1.2 * 768 * 432
    assert StreamConfig(width=width, height=height)  # a size the engine takes


def test_sizes_are_validated():
    assert parse_size("1280x720") == (1280, 720) and parse_size(" 640 X 360 ") == (640, 360)
    for bad in ("1280", "axb", "0x720"):
        with pytest.raises(ValueError, match="1280x720|positive"):
            parse_size(bad)
    with pytest.raises(ValueError, match="quality"):
        generation_size(1280, 720, "ultra")
    with pytest.raises(ConfigError, match="even"):
        StreamConfig(output_width=1281, output_height=720)
    assert OUTPUT_SIZES["1280x720"] == (1280, 720)


def _pattern(height, width):
    """White inside, a one-pixel red frame: shows which pixels became bars or were cut away."""
    image = np.full((height, width, 3), 255, np.uint8)
    image[0, :] = image[-1, :] = image[:, 0] = image[:, -1] = (255, 0, 0)
    return image


def test_letterbox_puts_black_bars_where_the_shapes_differ():
    square = torch.from_numpy(_pattern(64, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    out = imageops.to_output_frames(square, 72, 128, letterbox=True)[0].numpy()
    assert out.shape == (72, 128, 3)
    left, right = out[:, :28], out[:, -28:]  # 64 scaled to 72 high is 72 wide: (128 - 72) / 2 = 28 per side
    assert left.max() == 0 and right.max() == 0
    assert out[36, 64].tolist() == [255, 255, 255] and out[36, 28, 0] > 200  # the picture and its red edge


def test_crop_fills_the_frame_and_cuts_the_overflow():
    square = torch.from_numpy(_pattern(64, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    out = imageops.to_output_frames(square, 72, 128, letterbox=False)[0].numpy()
    assert out.shape == (72, 128, 3) and out[..., 0].min() > 200  # every pixel white or red: no bars
    # The left and right edges (red) survive; the top and bottom ones were cut away.
    assert out[36, 0].tolist()[1] < 100 and out[0, 64].tolist() == [255, 255, 255]


@pytest.mark.parametrize("source", [(48, 64), (64, 48), (90, 160), (64, 64)])
@pytest.mark.parametrize("resize_mode", ["crop", "letterbox"])
def test_engine_hands_out_the_output_size_for_any_source(tiny_components, tiny_config, source, resize_mode):
    config = tiny_config.replace(output_width=160, output_height=90, resize_mode=resize_mode)
    engine = StreamEngine(tiny_components, config)
    engine.prepare("a cat")
    frame = np.random.default_rng(0).integers(0, 255, (*source, 3), dtype=np.uint8)
    assert engine.process(frame).shape == (90, 160, 3)


def test_upscale_is_inside_the_frame_step_and_the_size_changes_live(tiny_components, tiny_config, make_frame):
    engine = StreamEngine(tiny_components, tiny_config.replace(output_width=128, output_height=72))
    engine.prepare("a cat")
    # The frame step (what a captured graph replays) returns the output size on the device itself.
    device_frames = imageops.as_uint8_tensor(make_frame())
    assert tuple(engine.frame_step(device_frames).shape) == (1, 72, 128, 3)
    engine.set_output_size(96, 64)
    assert engine.process(make_frame()).shape == (64, 96, 3)
    engine.set_output_size(0, 0)  # back to the generated size
    assert engine.process(make_frame()).shape == (64, 64, 3)


def test_same_size_output_is_todays_output(tiny_components, tiny_config, make_frame):
    plain = StreamEngine(tiny_components, tiny_config)
    sized = StreamEngine(tiny_components, tiny_config.replace(output_width=64, output_height=64))
    for engine in (plain, sized):
        engine.prepare("a cat")
    for seed in range(2):
        frame = make_frame(seed)
        np.testing.assert_allclose(sized.process(frame).astype(int), plain.process(frame).astype(int), atol=1)
