"""Command-line entry: the GUI by default, headless sub-commands otherwise.

Heavy modules (torch, the engine, Qt) are imported only by the command that needs them, so ``--help``
and ``doctor`` answer at once even on a machine where one of them is broken.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "run": "stylize a source into a video file or the virtual camera, without a window",
    "bench": "time the diffusion engine (and diffusers' img2img) on synthetic frames",
    "bench-pipeline": "time the frame pipeline itself with an identity engine",
    "serve": "run the engine as a server for clients on other machines (run --engine URL)",
    "bench-remote": "time the engine server on loopback: added latency, streams per GPU with and without batching",
    "doctor": "check Python, torch, CUDA, TensorRT, cameras, virtual camera, screen capture and model cache",
    "gui": "open the window (the same as giving no command)",
}

USAGE = """usage: main.py [COMMAND] [options]

Live diffusion camera filter. Without a command the window opens; GUI options go after it.

commands:
{commands}

Each command has its own --help, e.g. main.py run --help.
"""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()))


def run_gui(argv: list[str]) -> int:
    from app.commands.qt_check import window_problem
    from app.commands.window_options import UsageError, parse_window_options

    try:
        options = parse_window_options(argv)  # --help prints and exits here, before Qt is touched
    except UsageError as exc:
        print(f"main.py gui: error: {exc}", file=sys.stderr)
        return 2
    # Qt aborts the process when its platform plugin cannot load; find that out first and say what to install.
    problem = window_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    try:
        from app.gui.launch import run_gui as gui_main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("PySide6"):
            print("The window needs PySide6: pip install PySide6-Essentials. Headless use: main.py run --help",
                  file=sys.stderr)
        elif exc.name and exc.name.startswith("app.gui"):
            print("The window is not part of this build (app/gui/main_window.py is missing). "
                  "Headless use: main.py run --help", file=sys.stderr)
        else:
            raise
        return 1
    except ImportError as exc:  # e.g. Qt's platform libraries missing: say so instead of a traceback
        print(f"The window cannot start: {exc}. Headless use: main.py run --help", file=sys.stderr)
        return 1
    return int(gui_main(options) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in ("-h", "--help", "help"):
        print(_usage())
        return 0
    rest = argv[1:]
    if command == "run":
        from app.commands.run import run

        return run(rest)
    if command == "bench":
        try:
            from core.bench import main as bench_main
        except ImportError as exc:
            print(f"The engine benchmark is not available: {exc}", file=sys.stderr)
            return 1
        return int(bench_main(rest) or 0)
    if command == "bench-pipeline":
        from app.commands.bench_pipeline import main as pipeline_bench_main

        return pipeline_bench_main(rest)
    if command == "bench-remote":
        from app.commands.bench_remote import main as remote_bench_main

        return remote_bench_main(rest)
    if command == "serve":
        from app.commands.serve import main as serve_main

        return serve_main(rest)
    if command == "doctor":
        from app.commands.doctor import main as doctor_main

        return doctor_main(rest)
    if command == "gui":
        return run_gui(rest)
    if command is not None and not command.startswith("-"):
        print(f"main.py: unknown command {command!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    return run_gui(argv)
