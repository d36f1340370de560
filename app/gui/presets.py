"""Style presets: JSON files with a prompt and the few numbers that go with it.

The shipped ones live in resources/presets; the ones a user saves go to a ``presets`` folder in the
user's config dir and are listed after them. A user preset with the name of a shipped one wins, so
that "save current as preset" can overwrite a shipped style without touching the install.
Qt-free on purpose, so that it can be tested and reused without a display.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "resources" / "presets"


@dataclass(frozen=True)
class StylePreset:
    name: str
    prompt: str
    negative_prompt: str = ""
    strength: float = 0.5
    guidance: float = 1.2
    user: bool = False  # saved by the user rather than shipped

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("user")
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


class PresetError(ValueError):
    pass


def parse_preset(data: object, user: bool = False) -> StylePreset:
    if not isinstance(data, dict):
        raise PresetError("a preset is a JSON object")
    name = data.get("name")
    prompt = data.get("prompt")
    if not isinstance(name, str) or not name.strip():
        raise PresetError("'name' must be a non-empty string")
    prompt = _prompt_text(prompt)
    negative = data.get("negative_prompt", "")
    if not isinstance(negative, str):
        raise PresetError("'negative_prompt' must be a string")
    strength = _bounded(data, "strength", 0.5, 0.0, 1.0)
    guidance = _bounded(data, "guidance", 1.2, 0.0, 20.0)
    return StylePreset(name.strip(), prompt, negative, strength, guidance, user)


def _prompt_text(value: object) -> str:
    """A preset's prompt as the engine takes it: a string as it is, or a list of [text, weight] pairs (or
    {"text", "weight"} objects) as the weighted blend "text:weight | text:weight" (core.prompts)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise PresetError("'prompt' must be a string or a list of [text, weight] pairs")
    parts = []
    for item in value:
        if isinstance(item, dict):
            text, weight = item.get("text"), item.get("weight", 1.0)
        elif isinstance(item, list) and len(item) == 2:
            text, weight = item
        else:
            raise PresetError("each part of a blended 'prompt' is [text, weight] or {\"text\": ..., \"weight\": ...}")
        if not isinstance(text, str) or not text.strip() or "|" in text:
            raise PresetError("each part of a blended 'prompt' needs a text without '|'")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 100:
            raise PresetError("each part of a blended 'prompt' needs a weight above 0")
        parts.append(f"{text.strip()}:{weight:g}")
    return " | ".join(parts)


def _bounded(data: dict, key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise PresetError(f"'{key}' must be a number from {low} to {high}")
    return float(value)


def _why_unreadable(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply to be a preset"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error) or type(error).__name__


def load_folder(folder: Path, user: bool, problems: list[str] | None = None) -> list[StylePreset]:
    """Every valid preset in ``folder``, sorted by name. A file that cannot be read or parsed, whatever
    is wrong with it, is skipped; ``problems`` gets one line per skipped file saying why."""
    presets = []
    if not folder.is_dir():
        return presets
    for path in sorted(folder.glob("*.json")):
        try:
            presets.append(parse_preset(json.loads(path.read_text(encoding="utf-8")), user))
        except Exception as error:  # noqa: BLE001 - a preset file is user data: no content may stop the app
            reason = _why_unreadable(error)
            log.warning("skipping style preset %s: %s", path, reason)
            if problems is not None:
                problems.append(f"{path.name}: {reason}")
    return sorted(presets, key=lambda p: p.name.lower())


def load_presets(user_dir: Path | None, shipped_dir: Path = SHIPPED_DIR,
                 problems: list[str] | None = None) -> list[StylePreset]:
    shipped = load_folder(shipped_dir, user=False, problems=problems)
    users = load_folder(user_dir, user=True, problems=problems) if user_dir else []
    user_names = {p.name.lower() for p in users}
    return [p for p in shipped if p.name.lower() not in user_names] + users


def file_name_for(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return (slug or "preset") + ".json"


def save_preset(preset: StylePreset, user_dir: Path) -> Path:
    user_dir.mkdir(parents=True, exist_ok=True)
    path = user_dir / file_name_for(preset.name)
    # Write then rename, so that a crash mid-write never leaves half a JSON file behind.
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(preset.to_json(), encoding="utf-8")
    os.replace(temporary, path)
    return path
