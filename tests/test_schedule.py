import math

import pytest
import torch
from diffusers import LCMScheduler

from core import schedule
from core.config import StreamConfig


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
