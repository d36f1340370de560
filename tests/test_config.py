"""StreamConfig: which changes need a new engine, and the one cache folder."""

import pytest

from core.config import ConfigError, StreamConfig


def test_only_live_settings_keep_the_engine():
    base = StreamConfig(model="preset:tiny", t_index_list=(20, 35))
    live = base.replace(seed=9, guidance_scale=2.0, delta=0.5, similarity_filter=True, similarity_threshold=0.9,
                        max_skip_frames=3, t_index_list=(10, 30))
    assert not base.needs_new_engine(live)
    for change in (dict(t_index_list=(20,)), dict(width=256), dict(height=256), dict(model="preset:sd15"),
                   dict(cfg_type="self"), dict(acceleration="none"), dict(device="cpu"), dict(frame_buffer_size=2),
                   dict(use_tiny_vae=False)):
        assert base.needs_new_engine(base.replace(**change)), change


def test_every_cache_lives_under_one_root(monkeypatch, tmp_path):
    from core.accel import compile as compile_backend
    from core.accel import tensorrt as trt_backend
    from core.cache import cache_root

    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert compile_backend.cache_dir().parent == trt_backend.cache_dir().parent == tmp_path


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
