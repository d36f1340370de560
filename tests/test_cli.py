import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from app.commands.cli import main
from core.cli_options import add_engine_arguments, config_from_args, parse_lora
from core.config import ConfigError, LoraSpec, StreamConfig
from tests.pipeline_fakes import write_clip

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def _engine_args(*argv):
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def _clip_info(path):
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return count, size


def test_engine_options_default_to_the_default_config():
    assert config_from_args(_engine_args()) == StreamConfig()


def test_engine_options_map_onto_the_config():
    config = config_from_args(_engine_args(
        "--model", "preset:tiny", "--width", "256", "--height", "320", "--t-index-list", "20,35", "--cfg-type", "self",
        "--guidance", "1.5", "--delta", "0.8", "--seed", "7", "--no-tiny-vae", "--lora", "a/b:0.5", "--lora", "c.safetensors",
        "--similarity-filter", "--similarity-threshold", "0.9", "--max-skip", "4", "--device", "cpu", "--dtype", "float32",
        "--acceleration", "compile", "--resize", "letterbox", "--allow-pickle", "--frame-buffer", "2",
        "--output-size", "1280x720", "--smoothing", "0.4",
    ))
    assert (config.output_width, config.output_height, config.smoothing) == (1280, 720, 0.4)
    assert (config.width, config.height, config.t_index_list) == (256, 320, (20, 35))
    assert (config.cfg_type, config.guidance_scale, config.delta, config.seed) == ("self", 1.5, 0.8, 7)
    assert config.loras == (LoraSpec("a/b", 0.5), LoraSpec("c.safetensors", 1.0))
    assert config.similarity_filter and config.similarity_threshold == 0.9 and config.max_skip_frames == 4
    assert not config.use_tiny_vae and config.allow_pickle and config.frame_buffer_size == 2
    assert (config.acceleration, config.resize_mode, config.device, config.dtype) == ("compile", "letterbox", "cpu", "float32")


def test_strength_and_steps_choose_the_schedule():
    strong = config_from_args(_engine_args("--strength", "0.8", "--steps", "2"))
    weak = config_from_args(_engine_args("--strength", "0.2", "--steps", "2"))
    assert len(strong.t_index_list) == 2 and strong.t_index_list[0] < weak.t_index_list[0]
    # --steps alone keeps the default first index.
    assert config_from_args(_engine_args("--steps", "3")).t_index_list[0] == StreamConfig().t_index_list[0]


def test_conflicting_or_bad_engine_options_name_the_problem():
    with pytest.raises(ConfigError, match="not both"):
        config_from_args(_engine_args("--strength", "0.5", "--t-index-list", "30"))
    with pytest.raises(ConfigError, match="does not match"):
        config_from_args(_engine_args("--steps", "2", "--t-index-list", "30"))
    with pytest.raises(ConfigError, match="width"):
        config_from_args(_engine_args("--width", "500"))
    with pytest.raises(ConfigError, match="strength"):
        config_from_args(_engine_args("--strength", "1.5"))


def test_lora_specs_keep_drive_letters_and_hub_ids():
    assert parse_lora(r"C:\loras\style.safetensors") == LoraSpec(r"C:\loras\style.safetensors", 1.0)
    assert parse_lora(r"C:\loras\style.safetensors:0.7") == LoraSpec(r"C:\loras\style.safetensors", 0.7)
    assert parse_lora("owner/repo") == LoraSpec("owner/repo", 1.0)


def test_top_level_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "bench", "bench-pipeline", "doctor"):
        assert command in out


@pytest.mark.parametrize("command", ["run", "bench", "bench-pipeline", "doctor"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"main.py {command}" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_run_passthrough_file_to_file_keeps_every_frame(tmp_path, capsys):
    write_clip(tmp_path / "in.mp4", frames=20, size=(64, 48))
    rc = main(["run", "--source", str(tmp_path / "in.mp4"), "--output", str(tmp_path / "out.mp4"), "--no-engine"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert _clip_info(tmp_path / "out.mp4") == (20, (64, 48))
    assert "latency" in err and "20 in, 20 out, 0 dropped" in err


def test_run_live_source_with_a_frame_limit(tmp_path, capsys):
    rc = main(["run", "--source", "test:64x48", "--output", str(tmp_path / "out.avi"), "--no-engine", "--frames", "15",
               "--no-lossless", "--fps", "100"])
    assert rc == 0, capsys.readouterr().err
    count, size = _clip_info(tmp_path / "out.avi")
    # Clock timing: one file frame per 10 ms of real capture time, so a late frame may add one or two.
    assert size == (64, 48) and 1 <= count <= 20


def test_run_reports_unusable_sources_and_outputs(tmp_path, capsys):
    assert main(["run", "--source", str(tmp_path / "missing.mp4"), "--no-engine"]) == 1
    assert "does not exist" in capsys.readouterr().err
    write_clip(tmp_path / "in.mp4", frames=2)
    assert main(["run", "--source", str(tmp_path / "in.mp4"), "--output", str(tmp_path / "no" / "o.mp4"), "--no-engine"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--source", "test", "--width", "100", "--frames", "1"]) == 2
    assert "width" in capsys.readouterr().err


def test_doctor_reports_every_area(capsys):
    rc = main(["doctor", "--json"])
    findings = json.loads(capsys.readouterr().out)
    names = {f["name"] for f in findings}
    assert {"Python", "torch", "several GPUs", "TensorRT", "Window (Qt)", "Cameras", "Virtual camera", "Recording",
            "Screen capture", "Model cache"} <= names
    recording = next(f for f in findings if f["name"] == "Recording")
    assert recording["status"] == "ok" and recording["detail"].startswith("H.264 with ")
    # Exit 1 exactly when something the app needs is missing (warnings alone leave it at 0).
    assert rc == (1 if any(f["status"] == "missing" for f in findings) else 0)
    assert all(f["fix"] for f in findings if f["status"] != "ok" and f["name"] != "Screen capture")


def test_run_with_the_tiny_engine_writes_the_same_frames(tmp_path):
    # The real engine end to end, as a user calls it: a subprocess of main.py.
    write_clip(tmp_path / "in.mp4", frames=6, size=(64, 64))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "run", "--source", str(tmp_path / "in.mp4"), "--output",
         str(tmp_path / "out.mp4"), "--model", "preset:tiny", "--prompt", "x", "--width", "64", "--height", "64",
         "--device", "cpu", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert _clip_info(tmp_path / "out.mp4") == (6, (64, 64))
    assert "6 in, 6 out, 0 dropped" in result.stderr


def test_the_window_takes_every_engine_option_run_takes():
    from app.commands.window_options import ENGINE_OPTIONS, SETTING_OPTIONS, parse_window_options

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    dests = {action.dest for action in parser._actions if action.dest != "help"}
    special = {"lora", "output_size", "t_index_list"}  # mapped by hand: one option, several fields
    assert dests - set(SETTING_OPTIONS) - set(ENGINE_OPTIONS) == special
    options = parse_window_options(["--output-size", "1920x1080", "--smoothing", "0.3", "--transition", "1.5",
                                    "--resize", "letterbox", "--width", "640", "--height", "360"])
    assert options.settings == {"output_size": "1920x1080", "smoothing": 0.3, "transition_s": 1.5,
                                "resize_mode": "letterbox", "width": 640, "height": 360, "quality": "custom"}
    assert parse_window_options(["--output-size", "generated", "--quality", "high"]).settings == {
        "output_size": "generated", "quality": "high"}
