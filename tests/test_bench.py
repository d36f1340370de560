"""The benchmark's own machinery on the CPU (its figures come from the lent GPU): one engine per setting
serving every output size and variant, the steadiness probe, and the host copies it times."""

import json

import numpy as np
import pytest
import torch

from core import bench, bench_probes, imageops
from core.host_copies import host_copy

pytestmark = pytest.mark.filterwarnings("ignore:running on the CPU")


def test_one_engine_per_setting_serves_every_output_size(tmp_path, monkeypatch):
    built = []
    real_build = bench.build_engine
    monkeypatch.setattr(bench, "build_engine", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    out = tmp_path / "bench.json"
    bench.main(["--model", "preset:tiny", "--acceleration", "none", "--device", "cpu", "--width", "128",
                "--height", "72", "--input-size", "160x90", "--output-size", "160x90,128x72", "--frames", "3",
                "--warmup", "1", "--diffusers", "none", "--settings", "1:none", "--smoothing", "0.3",
                "--steadiness", "--json", str(out)])
    report = json.loads(out.read_text())
    names = [row["name"] for row in report["results"]]
    assert len(built) == 1 and built[0].closed  # one model for all four rows, released at the end
    assert [n.split(", ")[-1] for n in names] == [
        "160x90 -> 128x72 -> 160x90", "smoothing 0.3", "160x90 -> 128x72 -> 128x72", "smoothing 0.3"]
    assert sum("smoothing" in n for n in names) == 2
    steady = report["steadiness"]
    assert set(steady) == {"input frames, levels", "output, smoothing 0.0, levels", "output, smoothing 0.3, levels",
                           "denoised latent, smoothing 0.0", "denoised latent, smoothing 0.3"}
    assert steady["input frames, levels"] > 2  # fresh sensor noise in every frame of the still scene


def test_a_reused_engine_takes_each_rows_settings(tiny_components, tiny_config):
    config = tiny_config.replace(t_index_list=(30,))
    engine = bench.build_engine(tiny_components, config)
    frames = bench_probes.synthetic_frames(3, 48, 80)
    row = config.replace(output_width=96, output_height=64, resize_mode="letterbox", smoothing=0.4)
    bench.bench_engine(tiny_components, row, frames, 1, engine=engine)
    assert engine.config.output_size == (64, 96) and engine.config.resize_mode == "letterbox"
    assert engine.config.smoothing == pytest.approx(0.4)
    assert engine.process(frames[0]).shape == (64, 96, 3)


def test_steadiness_puts_the_engines_smoothing_back(tiny_components, tiny_config):
    engine = bench.build_engine(tiny_components, tiny_config.replace(t_index_list=(30,), smoothing=0.2))
    frames = bench_probes.synthetic_frames(4, 64, 64, static=True, noise=4.0)
    result = bench_probes.steadiness(engine, frames, 1, (0.0, 0.6))
    engine.process(frames[0])  # queued settings land at the next frame
    assert engine.config.smoothing == pytest.approx(0.2)
    assert result["input frames, levels"] == pytest.approx(bench_probes.mean_frame_difference(frames[1:]))


def test_mean_frame_difference_counts_levels():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 3, np.uint8)
    assert bench_probes.mean_frame_difference([a, b, a]) == 3.0


def test_host_copy_is_an_independent_array():
    source = torch.arange(2 * 5 * 3, dtype=torch.uint8).reshape(2, 5, 3)
    copy = host_copy(source)
    source.zero_()
    assert isinstance(copy, np.ndarray) and copy.shape == (2, 5, 3)
    assert copy.reshape(-1).tolist() == list(range(30))


def test_uint8_conversion_rounds_half_up_and_clamps():
    levels = torch.arange(-10, 266, dtype=torch.float64)
    x = (levels / 127.5 - 1.0).reshape(1, 1, 1, -1)
    halfway = ((levels + 0.5) / 127.5 - 1.0).reshape(1, 1, 1, -1)
    expected = levels.clamp(0, 255).to(torch.uint8)
    assert torch.equal(imageops.to_uint8_frames(x.float())[0, 0, :, 0], expected)
    # Exactly half a level up rounds up (float32 can be a hair off exact halves: allow those to go either way).
    up = imageops.to_uint8_frames(halfway.float())[0, 0, :, 0].int()
    assert ((up - expected.int()) >= 0).all() and ((up - (levels + 1).clamp(0, 255).int()) <= 0).all()


def test_a_float16_decode_converts_within_one_level_of_float32():
    images = torch.rand((1, 3, 27, 48), generator=torch.Generator().manual_seed(0)) * 2 - 1
    wide = imageops.to_output_frames(images, 72, 128)
    half = imageops.to_output_frames(images.half(), 72, 128)
    assert half.shape == wide.shape == (1, 72, 128, 3)
    assert (half.int() - wide.int()).abs().max() <= 1


def test_split_at_sets_the_cuts_of_the_gpu_count_it_fits(tmp_path, tiny_components):
    from core.parallel.unet_stages import describe_units, split_units, unet_units

    out = tmp_path / "bench.json"
    bench.main(["--model", "preset:tiny", "--acceleration", "none", "--device", "cpu", "--width", "64",
                "--height", "64", "--frames", "2", "--warmup", "1", "--diffusers", "none", "--settings", "2:none",
                "--gpus", "1,2,3", "--split-at", "2", "--json", str(out)])
    rows = {row["name"]: row for row in json.loads(out.read_text())["results"]}
    two = next(row for name, row in rows.items() if "on 2 GPUs" in name)
    three = next(row for name, row in rows.items() if "on 3 GPUs" in name)
    units = unet_units(tiny_components.pipe.unet)
    wanted = [describe_units([units[i] for i in run], units) for run in split_units(list(range(len(units))), (2,))]
    assert two["extra"]["parallel"] == f"asyncdiff over 2 devices: cpu: {wanted[0]} | cpu: {wanted[1]}"
    assert three["extra"]["parallel"].count("|") == 2  # one cut does not fit three GPUs: balanced by FLOPs
