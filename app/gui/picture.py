"""The picture's shape and motion in the window: the generated size that follows the source's shape, the
output size, crop or letterbox, mirror and bypass for the outputs, steadiness and transitions.

Kept out of main_window.py: it is one concern (what the frames look like as frames, not as a style), and
it is where the source's shape meets the engine's size.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from core.sizes import generation_size

#: Assumed until the source's first frame says otherwise: most webcams and screens are 16:9 today.
ASSUMED_SOURCE = (1280, 720)


class PictureControls(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        session, model, output, style = window.session, window.model_panel, window.output_panel, window.style_panel
        model.quality_changed.connect(self._on_quality)
        session.source_shape_changed.connect(self._on_source_shape)
        output.output_size_changed.connect(session.set_output_size)
        output.fit_changed.connect(lambda mode: session.set_letterbox(mode == "letterbox"))
        output.output_mirror_changed.connect(session.set_output_mirror)
        output.bypass_toggled.connect(self._on_bypass)
        style.smoothing_changed.connect(session.set_smoothing)
        style.feature_reuse_changed.connect(session.set_feature_reuse)
        style.transition_changed.connect(lambda seconds: session.set_transition_frames(self.transition_frames(seconds)))

    def apply_settings(self, settings) -> None:
        """Hand the saved picture settings to the session (before any engine exists)."""
        session, output = self.window.session, self.window.output_panel
        session.params.output_width, session.params.output_height = output.output_size()
        session.params.smoothing = settings.smoothing
        session.params.feature_reuse = settings.feature_reuse
        session.params.transition_frames = self.transition_frames(settings.transition_s)
        session.letterbox = settings.resize_mode == "letterbox"
        session.params.resize_mode = settings.resize_mode
        session.set_output_mirror(settings.mirror_output)
        self.show_generated_size()

    # ------------------------------------------------------------------------------------ sizes

    def generated_size(self) -> tuple[int, int]:
        """(width, height) for the next engine: the custom size, or the quality's size for the source's shape."""
        model = self.window.model_panel
        if model.quality() == "custom":
            return model.size()
        width, height = self.window.session.source_shape or self._declared_source_size() or ASSUMED_SOURCE
        return generation_size(width, height, model.quality())

    def _declared_source_size(self) -> tuple[int, int] | None:
        # A test pattern or a camera asked for a mode says its size before the first frame.
        source = self.window.session.pipeline.source
        width, height = getattr(source, "width", None), getattr(source, "height", None)
        return (width, height) if isinstance(width, int) and isinstance(height, int) and width and height else None

    def show_generated_size(self) -> None:
        if self.window.model_panel.quality() != "custom":
            self.window.model_panel.show_picked_size(*self.generated_size())

    def transition_frames(self, seconds: float) -> int:
        fps = getattr(self.window.session.pipeline.source, "fps", None)
        return min(600, round(seconds * (fps if fps and fps > 0 else 30.0)))

    def _on_quality(self, _quality: str) -> None:
        self.show_generated_size()
        self.window.request_reload()

    def _on_source_shape(self, _width: int, _height: int) -> None:
        """A new source, or a camera mode change: re-pick the size (a background reload) when it differs."""
        session = self.window.session
        transition = self.window.style_panel.transition_spin.value()
        session.set_transition_frames(self.transition_frames(transition))  # the new source's frame rate
        if self.window.model_panel.quality() == "custom":
            return
        self.show_generated_size()
        config = session.engine_config
        if config is None or (config.width, config.height) != self.generated_size():
            self.window.request_reload()

    def _on_bypass(self, on: bool) -> None:
        self.window.session.set_bypass(on)
        self.window.status.show_note("Bypass on: the outputs get the source without the effect" if on
                                     else "Bypass off: the effect is back")
