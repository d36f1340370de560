"""Settings and style presets: the store on its own, then the window and panels restoring them."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

from app.gui.presets import SHIPPED_DIR, StylePreset, load_presets, parse_preset, save_preset  # noqa: E402
from app.gui.settings import AppSettings, SettingsStore, format_region, parse_region  # noqa: E402
from tests.gui_support import WAIT_MS, small, until  # noqa: E402


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
        acceleration="tensorrt",
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


def test_a_preset_blends_styles_from_a_list_of_weighted_prompts():
    from core.prompts import parse_weighted_prompt

    pairs = parse_preset({"name": "Blend", "prompt": [["oil painting", 0.7], {"text": "anime", "weight": 0.3}]})
    assert pairs.prompt == "oil painting:0.7 | anime:0.3"
    assert parse_weighted_prompt(pairs.prompt) == [("oil painting", pytest.approx(0.7)), ("anime", pytest.approx(0.3))]
    shipped = next(p for p in load_presets(None) if p.name == "Oil painting x anime")
    assert [text for text, _ in parse_weighted_prompt(shipped.prompt)] == [
        "an oil painting, thick brush strokes, rich texture", "anime style, cel shading, clean line art"]
    for bad in ([], [["a|b", 1]], [["a", 0]], [["a", "x"]], [["a"]], 5):
        with pytest.raises(ValueError):
            parse_preset({"name": "Bad", "prompt": bad})


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_reset(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text("[General]\nstrength=0.2\n")
    path.chmod(0)
    store = SettingsStore(str(path))
    assert store.load() == AppSettings()
    assert store.warnings


# ------------------------------------------------------------- the window and panels restoring settings


def test_settings_round_trip_through_the_window(qtbot, open_window):
    window = open_window(small())
    window.style_panel.prompt_edit.setPlainText("a pencil sketch, cross hatching")
    window.style_panel.strength_slider.setValue(0.35)
    window.style_panel.seed_spin.setValue(77)
    window.style_panel.steps_spin.setValue(2)
    window.style_panel.filter_check.setChecked(True)
    window.style_panel.advanced.set_expanded(True)
    window.style_panel.cfg_combo.setCurrentText("self")
    window.model_panel.set_model("preset:tiny")
    window.model_panel.set_size(256, 256)
    window.output_panel.set_view("input")
    window.output_panel.mirror_check.setChecked(True)
    window.close()

    again = open_window(wait_engine=False)
    panel = again.style_panel
    assert panel.prompt() == "a pencil sketch, cross hatching"
    assert panel.strength_slider.value() == pytest.approx(0.35)
    assert panel.seed_spin.value() == 77 and panel.steps_spin.value() == 2
    assert panel.filter_check.isChecked() and panel.advanced.is_expanded()
    assert panel.cfg_combo.currentText() == "self"
    assert again.model_panel.model() == "preset:tiny" and again.model_panel.size() == (256, 256)
    assert again.output_panel.current_view() == "input" and again.preview.view() == "input"
    assert again.output_panel.mirror_check.isChecked()
    assert again.notifier.messages == []
    # The new window's engine is built from the restored values.
    until(qtbot, lambda: again.session.engine is not None, timeout=WAIT_MS)
    config = again.session.engine.config
    assert (config.model, config.width, len(config.t_index_list), config.cfg_type) == ("preset:tiny", 256, 2, "self")
    assert again.session.engine.last("set_seed") == ("set_seed", 77)


def test_corrupt_settings_are_reset_with_a_warning(qtbot, open_window, tmp_path):
    (tmp_path / "settings.ini").write_text("[General]\nstrength=loud\nsteps=twelve\nprompt=still here\n")
    window = open_window(wait_engine=False)
    warnings = window.notifier.texts("warning")
    assert len(warnings) == 1 and "strength" in warnings[0] and "steps" in warnings[0]
    assert window.style_panel.strength_slider.value() == pytest.approx(AppSettings().strength)
    assert window.style_panel.prompt() == "still here"

    (tmp_path / "binary.ini").write_bytes(b"\x00\x01\x02 not settings \xff")
    broken = open_window(settings_file="binary.ini", wait_engine=False)
    assert any("could not be read" in text for text in broken.notifier.texts("warning"))
    assert broken.style_panel.prompt() == AppSettings().prompt


def test_presets_apply_and_user_presets_are_saved(qtbot, open_window, tmp_path):
    window = open_window(small())
    engine = window.session.engine
    combo = window.style_panel.preset_combo
    index = combo.findText("Pixel art")
    assert index > 0 and combo.count() >= 9
    combo.setCurrentIndex(index)
    combo.activated.emit(index)
    preset = next(p for p in window.presets if p.name == "Pixel art")
    assert window.style_panel.prompt() == preset.prompt
    assert engine.last("update_prompt")[1] == preset.prompt  # applied at once, no debounce
    assert engine.last("set_strength") == ("set_strength", pytest.approx(preset.strength))

    window.style_panel.prompt_edit.setPlainText("my own style")
    assert combo.currentIndex() == 0  # edited by hand: no longer the preset
    window._ask_text = lambda title, label: ("Mine", True)
    window.style_panel.save_preset_button.click()
    assert (tmp_path / "presets" / "mine.json").exists()
    assert window.style_panel.preset_combo.findText("Mine  (yours)") > 0


def test_source_panel_lists_devices_and_restores_the_choice(qtbot):
    from app.sources.camera import CameraInfo
    from app.gui.source_panel import SourcePanel, build_source
    from app.sources import Camera, Screen

    monitors = [{"left": 0, "top": 0, "width": 3840, "height": 1080},
                {"left": 0, "top": 0, "width": 1920, "height": 1080},
                {"left": 1920, "top": 0, "width": 1920, "height": 1080}]
    panel = SourcePanel(discover=lambda: ([CameraInfo(0, "Built-in"), CameraInfo(2, "USB cam")], monitors, ""))
    qtbot.addWidget(panel)
    texts = [panel.kind_combo.itemText(i) for i in range(panel.kind_combo.count())]
    assert texts[:2] == ["Camera 0: Built-in", "Camera 2: USB cam"]
    assert "All screens (3840×1080)" in texts and "Screen 2 (1920×1080)" in texts and "Screen region…" in texts

    panel.load(AppSettings(source_kind="camera", camera_index=2))
    assert panel.kind_combo.currentText() == "Camera 2: USB cam"
    assert isinstance(build_source(panel.choice()), Camera) and panel.choice().camera_index == 2

    panel.load(AppSettings(source_kind="region", monitor=2, region="10,20,640,360", follow_mouse=True))
    choice = panel.choice()
    assert (choice.kind, choice.monitor, choice.region, choice.follow_mouse) == ("region", 2, (10, 20, 640, 360), True)
    screen = build_source(choice)
    assert isinstance(screen, Screen) and screen.region == (10, 20, 640, 360) and screen.follow_mouse
    assert panel.region_edit.isVisibleTo(panel)

    chosen = []
    panel.source_changed.connect(chosen.append)
    panel.set_region(1, (0, 0, 320, 240))  # what the region picker does on OK
    assert chosen[-1].region == (0, 0, 320, 240) and chosen[-1].monitor == 1

    panel.load(AppSettings(source_kind="camera", camera_index=5))  # unplugged since: fall back, do not fail
    assert panel.choice().kind == "test"


def test_model_sizes_are_not_duplicated(qtbot):
    from app.gui.model_panel import ModelPanel

    panel = ModelPanel()
    qtbot.addWidget(panel)
    count = panel.size_combo.count()
    panel.set_size(512, 512)
    panel.set_size(512, 512)
    assert panel.size_combo.count() == count and panel.size() == (512, 512)
    panel.set_size(320, 240)
    assert panel.size_combo.count() == count + 1 and panel.size() == (320, 240)


def test_region_picker_maps_a_drag_to_screen_pixels(qtbot):
    from app.gui.region_picker import RegionPickerDialog

    screenshot = np.zeros((1080, 1920, 3), np.uint8)
    dialog = RegionPickerDialog(screenshot)
    qtbot.addWidget(dialog)
    dialog.resize(1000, 700)
    dialog.show()
    canvas = dialog.canvas
    target = canvas._target()
    start = target.topLeft() + (target.bottomRight() - target.topLeft()) / 4
    end = target.topLeft() + (target.bottomRight() - target.topLeft()) * 3 / 4
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(canvas, end)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=end)
    x, y, w, h = dialog.region()
    assert abs(x - 480) < 8 and abs(y - 270) < 8 and abs(w - 960) < 12 and abs(h - 540) < 12
