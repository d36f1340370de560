"""The status bar's statistics line and how errors read there."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QStatusBar

from app.pipeline.stats import PipelineStats


def format_stats(stats: PipelineStats, running: bool, device: str | None = "", stopping: bool = False) -> str:
    """``device``: where the model runs ("GPU", "CPU", "" unknown), None when no model is loaded."""
    if stopping:
        return "stopping…"
    if not running:
        return "stopped"
    engine = "no model" if device is None else f"{device or 'engine'} {stats.gpu_ms:5.1f} ms"
    text = (
        f"in {stats.input_fps:5.1f} fps · out {stats.output_fps:5.1f} fps · "
        f"latency {stats.latency_ms:4.0f} ms · {engine} · "
        f"skipped {stats.skipped_frames} · dropped {stats.dropped_frames}"
    )
    if stats.gpu_memory_mb is not None:
        text += f" · GPU mem {stats.gpu_memory_mb / 1024:.1f} GB"
    return text


class StatusBar(QStatusBar):
    """Messages on the left (timed), the statistics on the right (always there)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.stats_label = QLabel("stopped")
        self.stats_label.setObjectName("stats")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stats_label.setToolTip(
            "Input and output frame rates, capture-to-output latency, the model's time per frame on its "
            "device (GPU or CPU), frames the similarity filter skipped, frames dropped by slower stages, "
            "GPU memory held"
        )
        self.addPermanentWidget(self.stats_label)

    def show_stats(self, stats: PipelineStats, running: bool, device: str | None = "", stopping: bool = False) -> None:
        self.stats_label.setText(format_stats(stats, running, device, stopping))

    def show_error(self, message: str) -> None:
        # Errors stay longer than ordinary notes: the user may look away from the window.
        # One line only: the full text (with its how-to-fix steps) is in the dialog and the log.
        first = message.strip().splitlines()[0] if message.strip() else message
        self.showMessage("⚠ " + first, 15000)

    def show_note(self, message: str) -> None:
        self.showMessage(message, 6000)
