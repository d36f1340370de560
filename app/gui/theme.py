"""The dark look: Fusion style, a dark palette, and resources/style.qss for the finer touches."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

log = logging.getLogger(__name__)

STYLE_SHEET = Path(__file__).resolve().parents[2] / "resources" / "style.qss"
ACCENT = QColor(124, 92, 255)


def dark_palette() -> QPalette:
    palette = QPalette()
    window, base, text = QColor(30, 32, 38), QColor(22, 23, 28), QColor(228, 230, 236)
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: QColor(38, 40, 47),
        QPalette.ColorRole.ToolTipBase: QColor(45, 47, 56),
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: QColor(128, 132, 145),
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: QColor(44, 46, 54),
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor(255, 90, 90),
        QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: QColor(255, 255, 255),
        QPalette.ColorRole.Link: QColor(150, 130, 255),
        QPalette.ColorRole.Light: QColor(60, 62, 72),
        QPalette.ColorRole.Midlight: QColor(50, 52, 60),
        QPalette.ColorRole.Mid: QColor(36, 38, 44),
        QPalette.ColorRole.Dark: QColor(18, 19, 23),
        QPalette.ColorRole.Shadow: QColor(0, 0, 0),
    }
    for role, color in roles.items():
        palette.setColor(role, color)
    disabled = QColor(110, 113, 124)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Highlight, QColor(70, 70, 80))
    return palette


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    try:
        app.setStyleSheet(STYLE_SHEET.read_text(encoding="utf-8"))
    except OSError as error:
        # The palette alone is a usable dark theme; the sheet only refines it.
        log.warning("style sheet %s not loaded: %s", STYLE_SHEET, error)
