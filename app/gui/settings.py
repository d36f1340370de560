"""Settings that persist between runs of the GUI, kept in an INI file through QSettings.

The INI format is used on every OS (not the Windows registry) so that one file can be checked,
copied or thrown away, and so that tests can point the store at a temporary path.

"Corrupt" is decided here, since Qt's INI reader accepts nearly anything without complaint:
- the whole store is reset when the file cannot be read (permissions, a directory in its place,
  bytes that are not UTF-8 text) or QSettings itself reports an error;
- a single value that does not parse as its type, or lies outside its range, is reset to its default
  and the others are kept.
Either way ``SettingsStore.warnings`` lists what was reset, for the window to show once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

from core.config import ACCELERATIONS, CFG_TYPES, DEFAULT_MODEL, MAX_SMOOTHING, RESIZE_MODES, StreamConfig
from core.sizes import DEFAULT_OUTPUT_SIZE, OUTPUT_SIZES, QUALITIES, parse_size

log = logging.getLogger(__name__)

ORGANIZATION = "livediffusion"
APPLICATION = "livediffusion"
SOURCE_KINDS = ("camera", "screen", "region", "video", "test")
QUALITY_CHOICES = (*QUALITIES, "custom")  # custom: the width and height typed or picked by the user
VIEWS = ("output", "input", "side")
SCHEMA_VERSION = 1


@dataclass
class AppSettings:
    prompt: str = "an oil painting, thick brush strokes, vivid colors"
    negative_prompt: str = "blurry, low quality"
    strength: float = 0.5
    steps: int = 1
    cfg_type: str = "none"
    guidance: float = StreamConfig.guidance_scale
    delta: float = StreamConfig.delta
    seed: int = StreamConfig.seed
    similarity_filter: bool = False
    similarity_threshold: float = StreamConfig.similarity_threshold
    model: str = DEFAULT_MODEL
    quality: str = "balanced"  # the generated size follows the source's shape, except "custom"
    width: int = StreamConfig.width  # the custom size
    height: int = StreamConfig.height
    acceleration: str = StreamConfig.acceleration  # eager on machines without CUDA
    gpus: int = StreamConfig.gpus  # several GPUs: the model panel shows the choice where there are two or more
    engine: str = "local"  # or "server": the engine of `main.py serve` at server_url (app/gui/engine_choice.py)
    server_url: str = ""
    server_token: str = ""  # the settings file is then made readable by its owner only (POSIX)
    source_kind: str = "test"
    camera_index: int = 0
    monitor: int = 1
    region: str = ""  # "x,y,w,h" in screen pixels, empty when no region is chosen
    follow_mouse: bool = False
    video_path: str = ""
    view: str = "output"
    mirror: bool = False  # the preview only
    mirror_output: bool = False  # the virtual camera and recordings
    output_size: str = DEFAULT_OUTPUT_SIZE  # a key of core.sizes.OUTPUT_SIZES or WxH
    resize_mode: str = StreamConfig.resize_mode
    smoothing: float = StreamConfig.smoothing
    feature_reuse: bool = StreamConfig.feature_reuse  # deep-feature reuse at 2-4 steps (live)
    transition_s: float = 0.5  # prompt, preset and seed changes blend in over this time
    virtual_camera: bool = False
    output_dir: str = ""
    advanced_open: bool = False
    preset: str = ""
    geometry: QByteArray = field(default_factory=QByteArray)
    splitter: QByteArray = field(default_factory=QByteArray)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not text")
    return value


def _model(value: Any) -> str:
    text = _text(value).strip()
    if not text:
        raise ValueError("empty model")
    return text


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = int(str(value).strip())
        if not low <= number <= high:
            raise ValueError(f"{number} outside {low}..{high}")
        return number

    return parse


def _number(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = float(str(value).strip())
        if not low <= number <= high:  # also rejects NaN
            raise ValueError(f"{number} outside {low}..{high}")
        return number

    return parse


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"{value!r} is not true/false")


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} not in {options}")
        return value

    return parse


def _size(value: Any) -> int:
    number = _integer(64, 2048)(value)
    if number % 8:
        raise ValueError("not a multiple of 8")
    return number


def _output_size(value: Any) -> str:
    text = _text(value).strip().lower()
    if text not in OUTPUT_SIZES:
        width, height = parse_size(text)
        if width % 2 or height % 2 or not (64 <= width <= 4096 and 64 <= height <= 4096):
            raise ValueError(f"{text} is not an even size from 64 to 4096")
    return text


def _region(value: Any) -> str:
    text = _text(value).strip()
    if text:
        parse_region(text)
    return text


def _bytes(value: Any) -> QByteArray:
    if isinstance(value, QByteArray):
        return value
    if isinstance(value, (bytes, bytearray)):
        return QByteArray(bytes(value))
    raise ValueError("not a byte array")


PARSERS: dict[str, Callable[[Any], Any]] = {
    "prompt": _text,
    "negative_prompt": _text,
    "strength": _number(0.0, 1.0),
    "steps": _integer(1, 4),
    "cfg_type": _choice(CFG_TYPES),
    "guidance": _number(0.0, 20.0),
    "delta": _number(0.0, 5.0),
    "seed": _integer(0, 2**63 - 1),
    "similarity_filter": _flag,
    "similarity_threshold": _number(0.0, 1.0),
    "model": _model,
    "quality": _choice(QUALITY_CHOICES),
    "width": _size,
    "height": _size,
    "acceleration": _choice(ACCELERATIONS),
    "gpus": _integer(1, 16),
    "engine": _choice(("local", "server")),
    "server_url": _text,
    "server_token": _text,
    "source_kind": _choice(SOURCE_KINDS),
    "camera_index": _integer(0, 63),
    "monitor": _integer(0, 64),
    "region": _region,
    "follow_mouse": _flag,
    "video_path": _text,
    "view": _choice(VIEWS),
    "mirror": _flag,
    "mirror_output": _flag,
    "output_size": _output_size,
    "resize_mode": _choice(RESIZE_MODES),
    "smoothing": _number(0.0, MAX_SMOOTHING),
    "feature_reuse": _flag,
    "transition_s": _number(0.0, 10.0),
    "virtual_camera": _flag,
    "output_dir": _text,
    "advanced_open": _flag,
    "preset": _text,
    "geometry": _bytes,
    "splitter": _bytes,
}


def parse_region(text: str) -> tuple[int, int, int, int]:
    """"x,y,w,h" -> a tuple; raises ValueError for anything else (negative size, wrong count)."""
    parts = [int(part.strip()) for part in text.split(",")]
    if len(parts) != 4 or parts[2] <= 0 or parts[3] <= 0:
        raise ValueError(f"a region is x,y,width,height with a positive size, got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def format_region(region: tuple[int, int, int, int]) -> str:
    return ",".join(str(int(v)) for v in region)


def default_settings_path() -> str:
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return os.path.join(base or os.path.expanduser("~/.config"), APPLICATION, "settings.ini")


class SettingsStore:
    """Loads and saves ``AppSettings``; ``path`` None means the user's config dir."""

    def __init__(self, path: str | None = None):
        self.path = path or default_settings_path()
        self.warnings: list[str] = []
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._qsettings = self._open()

    @property
    def config_dir(self) -> str:
        """Where user files (saved presets) live: next to the settings file."""
        return os.path.dirname(os.path.abspath(self.path))

    def _open(self) -> QSettings:
        problem = _unreadable_reason(self.path)
        settings = QSettings(self.path, QSettings.Format.IniFormat) if problem is None else None
        if settings is not None and settings.status() != QSettings.Status.NoError:
            problem = f"Qt reported {settings.status().name}"
        if problem is None:
            return settings
        self._warn(f"The settings file {self.path} could not be read ({problem}); all settings were reset.")
        _set_aside(self.path)
        return QSettings(self.path, QSettings.Format.IniFormat)

    def load(self) -> AppSettings:
        defaults = AppSettings()
        values: dict[str, Any] = {}
        bad: list[str] = []
        for name, parse in PARSERS.items():
            if not self._qsettings.contains(name):
                continue
            raw = self._qsettings.value(name)
            try:
                values[name] = parse(raw)
            except (TypeError, ValueError, OverflowError):
                bad.append(name)
                self._qsettings.remove(name)
        if bad:
            self._warn("These settings had invalid values and were reset to their defaults: " + ", ".join(bad) + ".")
        return dataclasses.replace(defaults, **values)

    def save(self, settings: AppSettings) -> None:
        self._qsettings.setValue("version", SCHEMA_VERSION)
        for name in PARSERS:
            value = getattr(settings, name)
            self._qsettings.setValue(name, value)
        self._qsettings.sync()
        if settings.server_token and os.name == "posix":  # a token is a password to the user's GPU server
            try:
                os.chmod(self.path, 0o600)
            except OSError as error:
                log.warning("could not make %s private: %s", self.path, error)
        if self._qsettings.status() != QSettings.Status.NoError:
            log.warning("settings could not be written to %s: %s", self.path, self._qsettings.status().name)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)


def _unreadable_reason(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        return "it is a folder"
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return error.strerror or str(error)
    if b"\x00" in data:
        return "it holds binary data"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    return None


def _set_aside(path: str) -> None:
    """Keep the bad file as .corrupt for a bug report rather than deleting the user's data outright."""
    if not os.path.exists(path):
        return
    try:
        os.replace(path, path + ".corrupt")
    except OSError as error:
        log.warning("could not move the unreadable settings file aside: %s", error)


class StartOverrides:
    """Settings given on the command line for one start: applied over the saved ones, and not saved
    back unless the user changed them in the window (then the user's value is saved)."""

    def __init__(self, overrides: dict, settings: AppSettings):
        self.values = dict(overrides)
        self._saved = {name: getattr(settings, name) for name in self.values}
        for name, value in self.values.items():
            setattr(settings, name, value)

    def keep_saved_values(self, settings: AppSettings) -> None:
        for name, value in self.values.items():
            if getattr(settings, name) == value:
                setattr(settings, name, self._saved[name])
