"""The persisted settings store and the style presets (no window needed)."""

import json
import os

import pytest

pytest.importorskip("PySide6")

from app.gui.presets import StylePreset, load_presets, parse_preset, save_preset, SHIPPED_DIR  # noqa: E402
from app.settings import AppSettings, SettingsStore, format_region, parse_region  # noqa: E402


def test_round_trip_keeps_every_value(tmp_path):
    path = str(tmp_path / "settings.ini")
    saved = AppSettings(
        prompt="a watercolor, soft, pastel",  # commas: the INI format must not turn this into a list
        negative_prompt="blurry",
        strength=0.73,
        steps=3,
        cfg_type="self",
        guidance=1.7,
        delta=0.8,
        seed=123456789012,
        similarity_filter=True,
        similarity_threshold=0.95,
        model="preset:tiny",
        width=384,
        height=256,
        acceleration="compile",
        source_kind="region",
        monitor=2,
        region="10,20,300,200",
        follow_mouse=True,
        video_path="/videos/clip, final.mp4",
        view="side",
        mirror=True,
        output_dir=str(tmp_path),
        advanced_open=True,
        preset="Anime",
    )
    SettingsStore(path).save(saved)
    store = SettingsStore(path)
    assert store.load() == saved
    assert store.warnings == []


def test_missing_file_gives_defaults_without_warning(tmp_path):
    store = SettingsStore(str(tmp_path / "nested" / "settings.ini"))
    assert store.load() == AppSettings()
    assert store.warnings == []


def test_values_of_the_wrong_type_are_reset_with_a_warning(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text(
        "[General]\nstrength=very strong\nsteps=9\nwidth=500\nseed=-4\nmirror=maybe\n"
        "prompt=kept prompt\ncfg_type=bogus\nregion=1,2,-3,4\n"
    )
    store = SettingsStore(str(path))
    settings = store.load()
    defaults = AppSettings()
    assert settings.prompt == "kept prompt"  # good values survive
    for name in ("strength", "steps", "width", "seed", "mirror", "cfg_type", "region"):
        assert getattr(settings, name) == getattr(defaults, name), name
    assert len(store.warnings) == 1
    for name in ("strength", "steps", "width", "seed", "mirror", "cfg_type", "region"):
        assert name in store.warnings[0]
    # The bad values were removed, so the next start is quiet.
    again = SettingsStore(str(path))
    again.load()
    assert again.warnings == []


def test_an_unreadable_file_resets_everything_and_is_kept_aside(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_bytes(b"\x00\xff\xfe[General]\nstrength=0.2\n\x00garbage")
    store = SettingsStore(str(path))
    assert store.load() == AppSettings()
    assert len(store.warnings) == 1 and "could not be read" in store.warnings[0]
    assert (tmp_path / "settings.ini.corrupt").exists()
    store.save(AppSettings(strength=0.25))
    assert SettingsStore(str(path)).load().strength == 0.25


def test_a_folder_in_place_of_the_file_is_reported(tmp_path):
    path = tmp_path / "settings.ini"
    path.mkdir()
    store = SettingsStore(str(path))
    assert store.load() == AppSettings()
    assert store.warnings and "folder" in store.warnings[0]


def test_region_parsing():
    assert parse_region(" 1, 2 ,30,40") == (1, 2, 30, 40)
    assert format_region((1, 2, 30, 40)) == "1,2,30,40"
    for bad in ("1,2,3", "1,2,0,4", "a,b,c,d", ""):
        with pytest.raises(ValueError):
            parse_region(bad)


def test_shipped_presets_are_valid_and_varied():
    presets = load_presets(None)
    names = {p.name for p in presets}
    assert len(presets) >= 8
    for wanted in ("Oil painting", "Anime", "Watercolor", "Cyberpunk", "Pencil sketch", "Pixel art",
                   "Stained glass", "Claymation"):
        assert wanted in names
    for preset in presets:
        assert preset.prompt and 0 <= preset.strength <= 1 and not preset.user
    # Every shipped file parses: none is silently skipped.
    assert len(list(SHIPPED_DIR.glob("*.json"))) == len(presets)


def test_user_presets_are_saved_loaded_and_win_over_shipped(tmp_path):
    user_dir = tmp_path / "presets"
    path = save_preset(StylePreset("Anime", "my own anime prompt", "", 0.4, 2.0, user=True), user_dir)
    save_preset(StylePreset("Neon noir", "neon noir film still", "daylight", 0.6, 1.1, user=True), user_dir)
    assert json.loads(path.read_text())["prompt"] == "my own anime prompt"
    presets = load_presets(user_dir)
    anime = [p for p in presets if p.name == "Anime"]
    assert len(anime) == 1 and anime[0].user and anime[0].prompt == "my own anime prompt"
    assert any(p.name == "Neon noir" and p.user for p in presets)
    assert not list(user_dir.glob("*.tmp"))


def test_a_broken_user_preset_is_skipped(tmp_path):
    user_dir = tmp_path / "presets"
    user_dir.mkdir()
    (user_dir / "broken.json").write_text("{not json")
    (user_dir / "wrong.json").write_text(json.dumps({"name": "x", "prompt": "y", "strength": 7}))
    presets = load_presets(user_dir)
    assert not any(p.user for p in presets)
    with pytest.raises(ValueError):
        parse_preset({"name": "", "prompt": "p"})


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_reset(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text("[General]\nstrength=0.2\n")
    path.chmod(0)
    store = SettingsStore(str(path))
    assert store.load() == AppSettings()
    assert store.warnings
