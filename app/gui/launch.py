"""Starting the GUI process: logging, the QApplication, the theme, the window, and quitting cleanly on
any stop signal. The command line is parsed before Qt loads, in app/window_options.py."""

from __future__ import annotations

import logging
import os
import signal
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.commands.stop_signals import STOP_SIGNALS
from app.gui import excepthook, icons
from app.gui.theme import apply_theme
from app.gui.settings import SettingsStore
from core.logs import configure_logging


#: How long quitting waits for a model load still in progress before leaving without it.
LOAD_WAIT_ON_EXIT_S = 5.0


def run(options, window_class) -> int:
    """``options``: app.commands.window_options.WindowOptions."""
    configure_logging(logging.DEBUG if options.verbose else logging.INFO,
                      "%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = QApplication.instance() or QApplication(options.qt_args)
    app.setApplicationName("Live Diffusion")
    app.setOrganizationName("livediffusion")
    apply_theme(app)
    app.setWindowIcon(icons.app_icon())
    window = window_class(SettingsStore(options.settings_path), overrides=options.settings,
                          engine_options=options.engine)
    excepthook.install(window.session.bridge.post_error)
    # However the application ends, the settings are saved and a recording is finalized.
    app.aboutToQuit.connect(window.shutdown)
    previous = {}
    # The same signals end `run` cleanly (app/commands/stop_signals.py); here each closes the window.
    for number in STOP_SIGNALS:
        try:
            previous[number] = signal.signal(number, lambda *_: window.close())
        except (OSError, ValueError):  # not settable here (e.g. not the main thread)
            pass
    # Python runs signal handlers only between bytecodes; a timer lets them through the Qt loop.
    wake = QTimer(interval=250)
    wake.timeout.connect(lambda: None)
    wake.start()
    window.show()
    try:
        code = app.exec()
    finally:
        wake.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
        excepthook.uninstall()
    staged = sys.modules.get("core.accel.staged")  # imported only once an engine compiled in the background
    builds_done = staged is None or staged.wait_for_builds(1.0)
    if not (window.session.loader.wait_for_workers(LOAD_WAIT_ON_EXIT_S) and builds_done):
        # A model load or a background compile cannot be interrupted, and ending the interpreter while one
        # runs inside torch aborts the process ("terminate called without an active exception"). Settings and recordings are saved
        # by now, so leave at once without the interpreter's teardown.
        logging.getLogger(__name__).warning("a model was still loading or compiling; quitting without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run_gui(options) -> int:
    """Open the window and run until it closes. ``options``: parsed WindowOptions, or the command line
    (which may or may not start with the program name)."""
    from app.commands.window_options import parse_window_options
    from app.gui.main_window import MainWindow

    if not hasattr(options, "qt_args"):
        options = parse_window_options(list(options))
    return run(options, MainWindow)


if __name__ == "__main__":
    sys.exit(run_gui(sys.argv))
