"""On-device image operations: the crop and letterbox boxes, and the model input cut from a frame."""

import pytest
import torch

from core import imageops


def test_crop_and_letterbox_boxes():
    assert imageops.crop_box(720, 1280, 512, 512) == (0, 280, 720, 720)
    assert imageops.crop_box(1280, 720, 512, 512) == (280, 0, 720, 720)
    assert imageops.letterbox_box(720, 1280, 512, 512) == (112, 0, 288, 512)


def test_model_input_is_cropped_from_the_centre():
    frame = torch.zeros((1, 40, 80, 3), dtype=torch.uint8)
    frame[:, :, 20:60] = 255  # the centre square is white, the sides black
    x = imageops.to_model_input(frame, 16, 16, torch.float32)
    assert x.shape == (1, 3, 16, 16) and x.min() == pytest.approx(1.0)
    boxed = imageops.to_model_input(frame, 16, 16, torch.float32, letterbox=True)
    assert boxed[0, :, 0].max() == -1.0 and boxed[0, :, 8].max() == 1.0
    back = imageops.to_uint8_frames(x)
    assert back.shape == (1, 16, 16, 3) and int(back.min()) == 255
