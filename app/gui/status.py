"""The status bar's statistics line and how errors read there."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QStatusBar

from app.pipeline_stats import PipelineStats


def format_stats(stats: PipelineStats, running: bool) -> str:
    if not running:
        return "stopped"
    memory = "–" if stats.gpu_memory_mb is None else f"{stats.gpu_memory_mb / 1024:.1f} GB"
    return (
        f"in {stats.input_fps:5.1f} fps · out {stats.output_fps:5.1f} fps · "
        f"latency {stats.latency_ms:4.0f} ms · GPU {stats.gpu_ms:5.1f} ms · "
        f"skipped {stats.skipped_frames} · dropped {stats.dropped_frames} · GPU mem {memory}"
    )


class StatusBar(QStatusBar):
    """Messages on the left (timed), the statistics on the right (always there)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.stats_label = QLabel("stopped")
        self.stats_label.setObjectName("stats")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stats_label.setToolTip(
            "Input and output frame rates, capture-to-output latency, GPU time per frame, frames the "
            "similarity filter skipped, frames dropped by slower stages, GPU memory held"
        )
        self.addPermanentWidget(self.stats_label)

    def show_stats(self, stats: PipelineStats, running: bool) -> None:
        self.stats_label.setText(format_stats(stats, running))

    def show_error(self, message: str) -> None:
        # Errors stay longer than ordinary notes: the user may look away from the window.
        # One line only: the full text (with its how-to-fix steps) is in the dialog and the log.
        first = message.strip().splitlines()[0] if message.strip() else message
        self.showMessage("⚠ " + first, 15000)

    def show_note(self, message: str) -> None:
        self.showMessage(message, 6000)
