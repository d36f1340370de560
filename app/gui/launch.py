"""Starting the GUI process: arguments, logging, the QApplication, the theme and quitting cleanly."""

from __future__ import annotations

import argparse
import logging
import signal

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.gui import excepthook, icons
from app.gui.theme import apply_theme
from app.settings import SettingsStore


def parse_args(argv: list[str]) -> tuple[list[str], argparse.Namespace]:
    """(arguments for Qt, our options); ``argv`` may or may not start with the program name."""
    args = list(argv)
    if not args or args[0].startswith("-"):
        args.insert(0, "livediffusion")
    parser = argparse.ArgumentParser(prog=args[0], add_help=False)
    parser.add_argument("--settings", help="settings file to use instead of the one in the user's config dir")
    parser.add_argument("--verbose", action="store_true")
    options, qt_args = parser.parse_known_args(args[1:])
    return [args[0], *qt_args], options


def run(argv: list[str], window_class) -> int:
    qt_args, options = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if options.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = QApplication.instance() or QApplication(qt_args)
    app.setApplicationName("Live Diffusion")
    app.setOrganizationName("livediffusion")
    apply_theme(app)
    app.setWindowIcon(icons.app_icon())
    window = window_class(SettingsStore(options.settings))
    excepthook.install(window.session.bridge.post_error)
    # However the application ends, the settings are saved and a recording is finalized.
    app.aboutToQuit.connect(window.shutdown)
    previous = signal.signal(signal.SIGINT, lambda *_: window.close())
    # Python runs signal handlers only between bytecodes; a timer lets Ctrl+C through the Qt loop.
    wake = QTimer(interval=250)
    wake.timeout.connect(lambda: None)
    wake.start()
    window.show()
    try:
        return app.exec()
    finally:
        wake.stop()
        signal.signal(signal.SIGINT, previous)
        excepthook.uninstall()
