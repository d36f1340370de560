"""Renders the window for the README: ``python -m tools.screenshot docs/screenshot.png``.

No trained weights can be loaded where this runs, so the output pane comes from a stand-in filter
(OpenCV's edge-preserving stylization) rather than the diffusion model, fed by the app's own moving test
pattern rather than a camera; the model field and a badge on the output say so. The window, its controls
and the status line are the real ones. Run it under a display (Xvfb works) to include the window frame's
fonts and sizes as users see them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2

from tools.standin import StandInEngine
from app.sources import TestPattern


STAND_IN_MODEL = "stand-in: OpenCV stylization"


class PaintedLook(StandInEngine):
    def process(self, frame):
        started = time.perf_counter()
        full = self.fit(frame)
        # Stylized at half size: the filter is slow on a CPU and would hold the stream back.
        half = cv2.resize(full, (self.config.width // 2, self.config.height // 2), interpolation=cv2.INTER_AREA)
        painted = cv2.stylization(half, sigma_s=30, sigma_r=0.3)
        out = cv2.resize(painted, (self.config.width, self.config.height), interpolation=cv2.INTER_CUBIC)
        self.last_gpu_ms = (time.perf_counter() - started) * 1000.0
        return self.to_output(cv2.convertScaleAbs(out, alpha=1.08, beta=4))


def render(path: str, seconds: float = 2.0) -> None:
    from PySide6.QtWidgets import QApplication

    from app.gui import icons
    from app.gui.main_window import MainWindow
    from app.gui.notifier import RecordingNotifier
    from app.gui.theme import apply_theme
    from app.gui.settings import AppSettings, SettingsStore

    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_theme(app)
    app.setWindowIcon(icons.app_icon())
    with tempfile.TemporaryDirectory() as folder:
        store = SettingsStore(os.path.join(folder, "settings.ini"))
        store.save(AppSettings(source_kind="test", view="side", preset="Oil painting", prompt=(
            "an oil painting, thick impasto brush strokes, rich saturated colors, gallery lighting, masterpiece"),
            negative_prompt="photo, blurry, low quality, watermark, text", strength=0.55, advanced_open=False,
            model=STAND_IN_MODEL, acceleration="none"))
        window = MainWindow(store, engine_factory=lambda config, progress=None: PaintedLook(config),
                            notifier=RecordingNotifier(), discover=lambda: ([], [{"width": 1920, "height": 1080}] * 2, ""))
        window.resize(1280, 800)
        window.show()
        window.session.set_source(TestPattern(1280, 720, fps=30))
        deadline = time.perf_counter() + 10
        while window.session.engine is None and time.perf_counter() < deadline:
            app.processEvents()
        window.preview.set_model_badge("Stand-in OpenCV filter, not the diffusion model")
        window.session.start()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            app.processEvents()
            time.sleep(0.005)
        window.update_stats()
        app.processEvents()
        window.grab().save(path)
        window.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="docs/screenshot.png")
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    render(args.path)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
