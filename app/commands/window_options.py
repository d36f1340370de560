"""The window's command line: ``main.py [gui] [options]``.

The engine options are the ones ``run`` takes (one definition, in core/cli_options.py). Given on the
command line, an option overrides the saved setting for that start only: unless the user changes it in
the window, the saved value is kept when the window saves its settings. Qt-free, so that ``--help``
and a usage error answer even where Qt cannot start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from core.cli_options import add_engine_arguments, config_from_args, parse_index_list, parse_lora
from core.config import ConfigError

#: Engine option (argparse dest) -> the window setting it overrides (app.gui.settings.AppSettings field).
SETTING_OPTIONS = {
    "model": "model", "width": "width", "height": "height", "steps": "steps", "strength": "strength",
    "prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "cfg_type": "cfg_type",
    "guidance": "guidance", "delta": "delta", "similarity_filter": "similarity_filter",
    "similarity_threshold": "similarity_threshold", "acceleration": "acceleration", "quality": "quality",
    "smoothing": "smoothing", "transition": "transition_s", "resize": "resize_mode", "gpus": "gpus",
    "feature_reuse": "feature_reuse",
}
#: Engine options the window has no control for: they go into every engine it loads in this start.
ENGINE_OPTIONS = {
    "device": "device", "dtype": "dtype", "tiny_vae": "use_tiny_vae", "tiny_vae_model": "tiny_vae",
    "allow_pickle": "allow_pickle",
    "cache_dir": "cache_dir", "model_config": "single_file_config",
    "frame_buffer": "frame_buffer_size", "mode": "mode", "max_skip": "max_skip_frames",
    "num_inference_steps": "num_inference_steps", "quick_start": "quick_start",
    "feature_reuse_interval": "feature_reuse_interval", "feature_reuse_depth": "feature_reuse_depth", "parallel": "parallel", "split_at": "split_at",
}


class UsageError(ValueError):
    """A bad command line; the message names the option."""


@dataclass
class WindowOptions:
    settings_path: str | None = None
    verbose: bool = False
    #: Arguments for Qt itself (single-dash ones such as -style, -platform), program name first.
    qt_args: list[str] = field(default_factory=lambda: ["livediffusion"])
    #: AppSettings field -> value, for this start.
    settings: dict = field(default_factory=dict)
    #: StreamConfig field -> value, for every engine of this start.
    engine: dict = field(default_factory=dict)


class _Parser(argparse.ArgumentParser):
    # argparse prints usage errors and exits; the window's launcher wants the message instead.
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="main.py gui",
        description="Open the window. Options given here override the saved settings for this start.",
        epilog="Example: main.py --model preset:sd-turbo --prompt 'oil painting' --source camera:0. "
        "Single-dash options (-style, -platform) are passed to Qt.",
    )
    parser.add_argument("--source", help="camera:N, screen:N, screen:N:x,y,w,h, test or a video file")
    parser.add_argument("--settings", help="settings file to use instead of the one in the user's config dir")
    parser.add_argument("--verbose", action="store_true", help="log details to stderr")
    add_engine_arguments(parser)
    return parser


def parse_window_options(argv: list[str]) -> WindowOptions:
    """Parse ``argv`` (with or without the program name first). Raises UsageError; ``--help`` prints
    the help and raises SystemExit(0), as argparse does."""
    args = list(argv)
    program = "livediffusion"
    if args and not args[0].startswith("-"):
        program = args.pop(0)
    parser = build_parser()
    full, rest = parser.parse_known_args(args)
    unknown = [a for a in rest if a.startswith("--")]
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see main.py gui --help)")
    # A second parser whose defaults are all "absent" tells which options were really given.
    given_parser = build_parser()
    for action in given_parser._actions:  # noqa: SLF001 - argparse has no public way to do this
        action.default = argparse.SUPPRESS
    given = vars(given_parser.parse_known_args(args)[0])
    try:
        config_from_args(full)  # the same validation `run` gives, before any window opens
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    options = WindowOptions(given.pop("settings", None), given.pop("verbose", False), [program, *rest])
    source = given.pop("source", None)
    if source is not None:
        options.settings.update(source_settings(source))
    _map_engine_options(given, full, options)
    return options


def _map_engine_options(given: dict, defaults: argparse.Namespace, options: WindowOptions) -> None:
    if "t_index_list" in given:
        from core.schedule import t_index_list_to_strength

        indices = parse_index_list(given.pop("t_index_list"))
        steps = given.get("num_inference_steps", defaults.num_inference_steps)
        options.settings["steps"] = len(indices)
        options.settings["strength"] = round(t_index_list_to_strength(indices, steps), 3)
    if "output_size" in given:
        width, height = given.pop("output_size")
        options.settings["output_size"] = f"{width}x{height}" if width else "generated"
    if ("width" in given or "height" in given) and "quality" not in given:
        options.settings["quality"] = "custom"  # a size typed on the command line is meant as it is
    loras = given.pop("lora", None)
    if loras:
        options.engine["loras"] = tuple(parse_lora(spec) for spec in loras)
    for dest, value in given.items():
        if dest in SETTING_OPTIONS:
            options.settings[SETTING_OPTIONS[dest]] = value
        elif dest in ENGINE_OPTIONS:
            options.engine[ENGINE_OPTIONS[dest]] = value


def source_settings(spec: str) -> dict:
    """The window's source settings for a ``run``-style source spec (parsed by the same code as ``run``'s).
    Raises UsageError."""
    from app import sources

    try:
        source = sources.parse_source(spec)
    except sources.SourceError as exc:
        raise UsageError(f"--source: {exc}") from exc
    if isinstance(source, sources.Camera):
        if not isinstance(source.device, int):
            raise UsageError(f"--source {spec}: the window takes a camera by its number, e.g. camera:0")
        return {"source_kind": "camera", "camera_index": source.device}
    if isinstance(source, sources.Screen):
        if source.region is None:
            return {"source_kind": "screen", "monitor": source.monitor}
        return {"source_kind": "region", "monitor": source.monitor, "region": ",".join(map(str, source.region))}
    if isinstance(source, sources.TestPattern):
        return {"source_kind": "test"}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--source {spec}: no such video file (sources: camera:N, screen:N, "
                         "screen:N:x,y,w,h, test or a video file)")
    return {"source_kind": "video", "video_path": str(path.resolve())}
