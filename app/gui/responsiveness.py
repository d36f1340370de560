"""How long the GUI thread stalls while frames flow: ``python -m app.gui.responsiveness [seconds]``.

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

import numpy as np

HEARTBEAT_MS = 1


class StandInEngine:
    """Engine-shaped: the setters record nothing and ``process`` costs about ``gpu_ms``."""

    def __init__(self, config, gpu_ms: float = 12.0):
        self.config = config
        self.gpu_ms = gpu_ms
        self.last_frame_skipped = False
        self.skipped_frames = 0
        self.last_gpu_ms = 0.0

    def prepare(self, prompt, negative_prompt=""):
        pass

    def update_prompt(self, prompt, negative_prompt=None):
        pass

    def set_seed(self, seed):
        pass

    def set_strength(self, strength):
        pass

    def set_guidance(self, guidance_scale=None, delta=None):
        pass

    def set_similarity_filter(self, enabled, threshold=None, max_skip_frames=None):
        pass

    def fit(self, frame: np.ndarray) -> np.ndarray:
        """Centre-crop to the engine's aspect ratio and resize, as the real engine's "crop" mode does."""
        import cv2

        height, width = frame.shape[:2]
        want = self.config.width / self.config.height
        if width / height > want:
            keep = int(round(height * want))
            frame = frame[:, (width - keep) // 2:(width - keep) // 2 + keep]
        else:
            keep = int(round(width / want))
            frame = frame[(height - keep) // 2:(height - keep) // 2 + keep]
        return cv2.resize(frame, (self.config.width, self.config.height), interpolation=cv2.INTER_AREA)

    def process(self, frame: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = self.fit(frame)
        left = self.gpu_ms / 1000.0 - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        self.last_gpu_ms = (time.perf_counter() - started) * 1000.0
        return 255 - out


def measure(window, app, seconds: float) -> dict:
    """Run the heartbeat for ``seconds`` while ``window``'s session streams; returns the figures."""
    from PySide6.QtCore import QElapsedTimer, QTimer

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
    clock.start()
    timer.start()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.0005)
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


def open_streaming_window(settings_dir: str, width: int = 512, height: int = 512, gpu_ms: float = 12.0):
    """A main window on a test pattern with the stand-in engine, started and showing output."""
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow
    from app.gui.notifier import RecordingNotifier
    from app.gui.theme import apply_theme
    from app.settings import AppSettings, SettingsStore

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
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as folder:
        app, window = open_streaming_window(folder, width, height, args.gpu_ms)
        result = measure(window, app, args.seconds)
        window.close()
    print(f"GUI-thread stall while frames flow ({result['seconds']:.0f} s, {result['frames_painted']} frames painted, "
          f"{result['output_fps']:.1f} fps out, {result['beats']} heartbeats of {HEARTBEAT_MS} ms):")
    print(f"  max {result['max_stall_ms']:.1f} ms, p99 {result['p99_stall_ms']:.2f} ms, "
          f"median gap {result['median_gap_ms']:.2f} ms")
    return 0 if result["max_stall_ms"] <= 16.0 else 1


if __name__ == "__main__":
    sys.exit(main())
