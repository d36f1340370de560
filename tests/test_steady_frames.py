"""Steady frames and smooth changes: latent feedback (smoothing), prompt and seed transitions over N
frames, weighted prompt blends. Random-weight tiny models show the mechanism, not the look."""

import numpy as np
import pytest
import torch

from core.prompts import encode_conditioning, parse_weighted_prompt
from core.stream import StreamEngine
from core.transitions import slerp

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


def engine_for(components, config, prompt="a cat"):
    engine = StreamEngine(components, config)
    engine.prepare(prompt, "blurry")
    return engine


def noisy_static_scene(count, seed=0):
    """One still picture with fresh sensor-like noise in every frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, (64, 64, 3)).astype(np.int16)
    return [np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def test_smoothing_zero_is_exactly_off(tiny_components, tiny_config):
    config = tiny_config.replace(t_index_list=(20, 35))
    plain, smoothed = engine_for(tiny_components, config), engine_for(tiny_components, config.replace(smoothing=0.0))
    smoothed.batch.feedback.normal_(0, 100)  # poisoned feedback: a zero weight must leave no trace of it
    smoothed.batch.has_feedback.fill_(1)
    for frame in noisy_static_scene(4):
        np.testing.assert_allclose(smoothed.process(frame).astype(int), plain.process(frame).astype(int), atol=1)


def test_smoothing_steadies_a_static_noisy_scene(tiny_components, tiny_config):
    # A random-weight UNet does not denoise, so it cannot show steadiness; an oracle that predicts exactly
    # the noise that was added (a perfect denoiser) does: its output is the input latent, and the
    # frame-to-frame change left is the sensor noise that smoothing averages away.
    rng = torch.Generator().manual_seed(3)
    base = torch.randn((1, 4, 8, 8), generator=rng)
    inputs = [base + 0.3 * torch.randn(base.shape, generator=rng) for _ in range(30)]
    differences = {}
    for smoothing in (0.0, 0.8):
        engine = engine_for(tiny_components, tiny_config.replace(t_index_list=(20,), smoothing=smoothing))
        engine.install(unet=lambda x, t, **kwargs: (engine.batch.noise[: x.shape[0]],))
        with torch.no_grad():
            outputs = [engine.denoise(x) for x in inputs]
        differences[smoothing] = float(torch.stack([(a - b).abs().mean() for a, b in zip(outputs[5:], outputs[6:])]).mean())
        torch.testing.assert_close(outputs[-1].mean(), base.mean(), atol=0.1, rtol=0)  # steadier, not shifted
    assert differences[0.8] < 0.5 * differences[0.0], differences


def test_smoothing_blends_the_last_output_into_the_next_input(tiny_components, tiny_config):
    engine = engine_for(tiny_components, tiny_config.replace(t_index_list=(20,)))
    engine.set_smoothing(0.5)
    x_first, x_second = torch.randn((2, 1, *engine.latent_shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        engine.apply_pending()
        out_first = engine.denoise(x_first)
        expected = x_second + 0.5 * (out_first - x_second)
        torch.testing.assert_close(engine.batch.smooth(x_second), expected)
        engine.prepare("a cat", "blurry")  # a fresh start has nothing to lean on
        torch.testing.assert_close(engine.batch.smooth(x_second), x_second)


def test_a_prompt_transition_reaches_the_new_embeddings_exactly_at_frame_n(tiny_components, tiny_config, make_frame):
    engine = engine_for(tiny_components, tiny_config.replace(transition_frames=4))
    engine.process(make_frame())
    start = engine.conditioning.encoder_hidden_states.clone()
    target = encode_conditioning(tiny_components, "a dog", "blurry", engine.layout, 64, 64, "cpu", torch.float32)
    engine.update_prompt("a dog")
    seen = []
    for i in range(5):
        engine.process(make_frame(i))
        seen.append(engine.conditioning.encoder_hidden_states.clone())
    for i, value in enumerate(seen[:3], start=1):  # strictly between the two, on the straight line
        torch.testing.assert_close(value, torch.lerp(start, target.encoder_hidden_states, i / 4))
        assert not torch.allclose(value, target.encoder_hidden_states)
    assert torch.equal(seen[3], target.encoder_hidden_states) and torch.equal(seen[4], seen[3])


def test_a_seed_transition_slerps_the_noise(tiny_components, tiny_config, make_frame):
    engine = engine_for(tiny_components, tiny_config.replace(transition_frames=3))
    engine.process(make_frame())
    start = engine.batch.noise.clone()
    target = engine.batch.noise_for(77)
    engine.set_seed(77)
    engine.process(make_frame())
    torch.testing.assert_close(engine.batch.noise, slerp(start, target, 1 / 3))
    engine.process(make_frame())
    engine.process(make_frame())
    assert torch.equal(engine.batch.noise, target)


def test_without_a_transition_changes_land_at_once(tiny_components, tiny_config, make_frame):
    engine = engine_for(tiny_components, tiny_config)
    engine.process(make_frame())
    engine.set_seed(77)
    engine.process(make_frame())
    assert torch.equal(engine.batch.noise, engine.batch.noise_for(77))


def test_slerped_noise_keeps_unit_variance():
    a, b = (torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    for t in (0.25, 0.5, 0.75):
        assert abs(float(slerp(a, b, t).std()) - 1.0) < 0.03
    assert float(torch.lerp(a, b, 0.5).std()) < 0.75  # what a straight line would have done
    torch.testing.assert_close(slerp(a, a, 0.5), a)  # parallel inputs take the straight line


def test_weighted_prompts_parse_and_blend(tiny_components, tiny_config):
    assert parse_weighted_prompt("oil painting:0.7 | anime:0.3") == [("oil painting", 0.7), ("anime", 0.3)]
    assert parse_weighted_prompt("style: film noir") == [("style: film noir", 1.0)]
    assert parse_weighted_prompt("a | b:3") == [("a", 0.25), ("b", 0.75)]
    layout = [1]

    def encode(prompt):
        return encode_conditioning(tiny_components, prompt, "", layout, 64, 64, "cpu", torch.float32)

    oil, anime = encode("oil painting"), encode("anime")
    blended = encode("oil painting:0.7 | anime:0.3")
    torch.testing.assert_close(blended.encoder_hidden_states,
                               0.7 * oil.encoder_hidden_states + 0.3 * anime.encoder_hidden_states)
