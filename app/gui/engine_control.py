"""The window's engine: the configuration its controls describe, when a change needs a new engine, where it runs
(this computer or an engine server, app/gui/engine_choice.py), and what the user is told as a load ends.
"""

from __future__ import annotations

import gc

from app.gui.engine_choice import url_problem
from core.config import ConfigError, StreamConfig
from core.model_errors import is_out_of_memory
from core.presets import stand_in_preset
from core.schedule import strength_to_t_index_list

LOST_BADGE = "Engine server lost: showing the source unfiltered, reconnecting"


class EngineControl:
    def __init__(self, window):
        self.window = window

    def requested_config(self) -> StreamConfig:
        """The engine configuration the controls describe; raises ConfigError for a bad combination."""
        w = self.window
        width, height = w.picture.generated_size()
        params = w.session.params
        return StreamConfig(
            model=w.model_panel.model(),
            width=width,
            height=height,
            t_index_list=strength_to_t_index_list(params.strength, w.style_panel.steps_spin.value()),
            cfg_type=w.style_panel.cfg_combo.currentText(),
            guidance_scale=w.style_panel.guidance_spin.value(),
            delta=w.style_panel.delta_spin.value(),
            seed=w.style_panel.seed_spin.value(),
            similarity_filter=w.style_panel.filter_check.isChecked(),
            similarity_threshold=w.style_panel.threshold_spin.value(),
            acceleration=w.model_panel.acceleration(), gpus=w.model_panel.gpus(),
            resize_mode="letterbox" if w.output_panel.letterbox() else "crop",
            output_width=params.output_width,
            output_height=params.output_height,
            smoothing=params.smoothing,
            transition_frames=params.transition_frames,
            **w.engine_options,
        )

    def reload(self) -> None:
        """A new engine if the controls ask for one (the window stops its pending reload first)."""
        w = self.window
        try:
            config = self.requested_config()
        except (ConfigError, ValueError) as exc:
            w.notifier.error("Invalid model settings", str(exc))
            return
        target = w.model_panel.engine_target()
        if target is not None:
            self._connect(config, target)
            return
        running, engine = w.session.engine_config, w.session.engine
        if (running is not None and engine is not None and getattr(engine, "target", None) is None
                and not running.needs_new_engine(config)):
            self._keep_running(f"Running {running.model}")  # a load begun for another choice must not land
            return
        w.session.load_engine(config)
        w.model_panel.set_busy(True, f"Loading {config.model}…")
        w.status.show_note(f"Loading {config.model} in the background; the current stream keeps running")

    def _connect(self, config: StreamConfig, target) -> None:
        """A server's engine: a new session only for another address or token (the server owns the model, size and
        steps; the live settings reach it as they change)."""
        w = self.window
        problem = url_problem(target.url)
        if problem:
            w.model_panel.set_busy(False, problem)
            return
        if getattr(w.session.engine, "target", None) == (target.url, target.token):
            self._keep_running(f"Using the engine server at {target.url}")
            return
        w.session.load_engine(config, remote=(target.url, target.token))
        w.model_panel.set_busy(True, f"Connecting to {target.url}…")
        w.status.show_note(f"Connecting to the engine server at {target.url}; the current stream keeps running")

    def _keep_running(self, text: str) -> None:
        """The running engine is what the controls ask for again: a load begun since (for another choice) is
        dropped, or it would replace it."""
        w = self.window
        if w.session.loader.is_busy():
            w.session.cancel_load()
            w.model_panel.set_busy(False, text)

    def cancel(self) -> None:
        w = self.window
        w.session.cancel_load()
        config = w.session.engine_config
        w.model_panel.set_busy(False, f"Cancelled; still running {config.model}" if config else "Cancelled")

    def on_ready(self, config: StreamConfig, engine) -> None:
        w = self.window
        # A model brings many long-lived objects; frozen, they are skipped by every later full
        # collection, which would otherwise hold the GIL (and so the GUI) for 100 ms and more.
        gc.freeze()
        target = getattr(engine, "target", None)
        steps = len(config.t_index_list)
        if target is not None:
            text = f"Using the engine server at {target[0]}: its model, size and steps"
        else:
            text = f"Ready: {config.model} at {config.width}×{config.height}, {steps} step{'s' * (steps > 1)}"
            out_h, out_w = config.output_size
            if (out_w, out_h) != (config.width, config.height):
                text += f", output {out_w}×{out_h}"
        runs = w.model_panel.show_engine(text, engine)
        w.status.show_note(f"{text} ({runs})" if runs else text)
        random = target is None and (getattr(getattr(engine, "components", None), "random_weights", False)
                                     or config.model.startswith("preset:"))
        w.preview.set_model_badge("Random weights: real speed, no real style" if random else "")

    def on_failed(self, message: str, exc) -> None:
        w = self.window
        previous = w.session.engine_config
        keeps = f"\n\nStill running the previous model ({previous.model})." if previous else ""
        w.model_panel.set_busy(False, "Loading failed; " + (
            f"still running {previous.model}" if previous else "frames pass through unchanged until a model loads"))
        w.status.show_error(f"Model not loaded: {message}")
        if w.model_panel.engine_target() is not None:
            w.notifier.error_with_choices("The engine server could not be used", message + keeps,
                                          [("Use this computer", self.use_this_computer)])
            return
        choices = [("Open a model…", w.model_panel.browse_button.showMenu)]
        stand_in = stand_in_preset(w.model_panel.model())
        if stand_in is not None and not is_out_of_memory(exc):
            choices.insert(0, ("Try without weights", lambda: self.try_without_weights(stand_in)))
        w.notifier.error_with_choices("The model could not be loaded", message + keeps, choices)

    def use_this_computer(self) -> None:
        self.window.model_panel.engine_choice.combo.setCurrentIndex(0)  # asks for a reload, as a user's pick does

    def try_without_weights(self, preset: str) -> None:
        """Load the random-weight build of the same architecture: the app works, the images are noise."""
        w = self.window
        w.model_panel.set_model(preset)
        w.status.show_note(f"Loading {preset}: random weights, for trying the program, not for real images")
        w.reload_engine()

    def follow(self, engine) -> None:
        """Each stats tick: a start in stages moves on, a server comes and goes."""
        w = self.window
        w.model_panel.follow_stage(engine)
        lost = getattr(engine, "target", None) is not None and not engine.connected
        w.preview.set_alert(LOST_BADGE if lost else "")
