"""How long the GUI thread stalls while frames flow: ``python -m tools.responsiveness [seconds]``.

A 1 ms heartbeat timer runs in the GUI thread of the real main window while a test pattern streams
through the pipeline into a stand-in engine (it sleeps for a GPU-like time and returns a resized
frame, so the GUI sees the same traffic as with a real model). Each gap between two beats beyond the
timer's own interval is time the GUI thread was busy; the largest one and the 99th percentile are what
a user would feel as stutter. Runs offscreen when no display is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from tools.standin import StandInEngine

HEARTBEAT_MS = 1


def measure(window, app, seconds: float) -> dict:
    """Run the heartbeat for ``seconds`` in a real event loop while ``window``'s session streams."""
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer

    gaps: list[float] = []
    clock = QElapsedTimer()
    last = [0]

    def beat() -> None:
        now = clock.nsecsElapsed()
        if last[0]:
            gaps.append((now - last[0]) / 1e6)
        last[0] = now

    timer = QTimer()
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(beat)
    shown_before = window.preview.frames_shown
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    clock.start()
    timer.start()
    loop.exec()  # the event loop as the app runs it: blocking in the OS until events arrive
    timer.stop()
    stalls = sorted(max(0.0, gap - HEARTBEAT_MS) for gap in gaps)
    stats = window.session.pipeline.stats()
    return {
        "seconds": seconds,
        "beats": len(gaps),
        "frames_painted": window.preview.frames_shown - shown_before,
        "output_fps": stats.output_fps,
        "max_stall_ms": stalls[-1] if stalls else float("nan"),
        "p99_stall_ms": stalls[int(0.99 * (len(stalls) - 1))] if stalls else float("nan"),
        "median_gap_ms": sorted(gaps)[len(gaps) // 2] if gaps else float("nan"),
    }


def open_streaming_window(settings_dir: str, width: int = 512, height: int = 512, gpu_ms: float = 12.0,
                          fps: float = 30.0, stream: bool = True):
    """A main window on a test pattern with the stand-in engine, started and showing output
    (or, with ``stream`` False, open and idle: the baseline of the machine's own noise)."""
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow
    from app.gui.notifier import RecordingNotifier
    from app.gui.theme import apply_theme
    from app.gui.settings import AppSettings, SettingsStore

    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_theme(app)
    store = SettingsStore(os.path.join(settings_dir, "settings.ini"))
    store.save(AppSettings(source_kind="test", model="preset:stand-in", width=width, height=height, view="side"))
    window = MainWindow(
        store,
        engine_factory=lambda config, progress=None: StandInEngine(config, gpu_ms),
        notifier=RecordingNotifier(),
        discover=lambda: ([], [], "not listed in this measurement"),
    )
    window.resize(1280, 800)
    window.show()
    deadline = time.perf_counter() + 10
    while window.session.engine is None and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.005)
    if not stream:
        return app, window
    from app.sources import TestPattern

    window.session.set_source(TestPattern(640, 480, fps=fps))
    window.session.start()
    while window.preview.frames_shown < 5 and time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.005)
    return app, window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=10.0)
    parser.add_argument("--size", default="512x512", help="engine output size, WxH")
    parser.add_argument("--gpu-ms", type=float, default=12.0, help="time the stand-in engine takes per frame")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of the test pattern")
    parser.add_argument("--idle", action="store_true", help="measure with the window open but no frames (baseline)")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as folder:
        app, window = open_streaming_window(folder, width, height, args.gpu_ms, args.fps, stream=not args.idle)
        result = measure(window, app, args.seconds)
        window.close()
    what = "with no frames (baseline)" if args.idle else "while frames flow"
    print(f"GUI-thread stall {what} ({result['seconds']:.0f} s, {result['frames_painted']} frames painted, "
          f"{result['output_fps']:.1f} fps out, {result['beats']} heartbeats of {HEARTBEAT_MS} ms):")
    print(f"  max {result['max_stall_ms']:.1f} ms, p99 {result['p99_stall_ms']:.2f} ms, "
          f"median gap {result['median_gap_ms']:.2f} ms")
    return 0 if result["max_stall_ms"] <= 16.0 else 1


if __name__ == "__main__":
    sys.exit(main())
