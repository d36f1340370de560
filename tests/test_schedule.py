import math

import pytest
import torch
from diffusers import LCMScheduler

from core import imageops, schedule
from core.config import ConfigError, StreamConfig


def sd_scheduler():
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_lcm_schedule_and_coefficients_match_the_equations():
    sched = sd_scheduler()
    timesteps = schedule.lcm_timesteps(sched, 50)
    assert timesteps[0] == 999 and timesteps[-1] == 19 and len(timesteps) == 50
    t_list = schedule.sub_timesteps(timesteps, (32, 45))
    coef = schedule.step_coefficients(sched, t_list, frame_buffer_size=2)
    assert coef.timesteps.tolist() == [t_list[0], t_list[0], t_list[1], t_list[1]]
    acp = sched.alphas_cumprod.double()
    for row, t in enumerate([t_list[0]] * 2 + [t_list[1]] * 2):
        assert coef.alpha[row].item() == pytest.approx(math.sqrt(acp[t]))
        assert coef.beta[row].item() == pytest.approx(math.sqrt(1 - acp[t]))
        assert coef.c_out[row].item() == pytest.approx(10 * t / math.sqrt((10 * t) ** 2 + 0.25))


def test_step_math_inverts_add_noise():
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    a, b = torch.tensor(0.6), torch.tensor(0.8)
    x_t = schedule.add_noise(x0, noise, a, b)
    torch.testing.assert_close(schedule.predict_x0(x_t, noise, a, b), x0)
    torch.testing.assert_close(schedule.residual_noise(x_t, x0, a, b), noise)
    torch.testing.assert_close(schedule.lcm_denoise(x_t, noise, a, b, torch.tensor(0.0), torch.tensor(1.0)), x0)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_strength_maps_to_increasing_indices(steps):
    previous_first = None
    for strength in (0.0, 0.2, 0.5, 0.8, 1.0):
        indices = schedule.strength_to_t_index_list(strength, steps, 50)
        assert len(indices) == steps and list(indices) == sorted(set(indices))
        assert 0 <= indices[0] and indices[-1] <= 49
        if previous_first is not None:
            assert indices[0] <= previous_first  # more strength, noisier start
        previous_first = indices[0]
    assert schedule.strength_to_t_index_list(1.0, steps, 50)[0] == 0
    StreamConfig(t_index_list=schedule.strength_to_t_index_list(0.0, steps, 50))  # valid


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


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"width": 500}, "width"),
        ({"t_index_list": (30, 20)}, "t_index_list"),
        ({"t_index_list": (1, 2, 3, 4, 5)}, "t_index_list"),
        ({"t_index_list": (60,)}, "t_index_list"),
        ({"cfg_type": "double"}, "cfg_type"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"frame_buffer_size": 0}, "frame_buffer_size"),
        ({"similarity_threshold": 1.5}, "similarity_threshold"),
        ({"acceleration": "fast"}, "acceleration"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as error:
        StreamConfig(**changes)
    assert error.value.field_name == field
    assert field in str(error.value)
