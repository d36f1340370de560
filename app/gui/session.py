"""The GUI's side of the frame pipeline: one object that owns the pipeline, the engine loader and the
outputs, and turns their thread callbacks into Qt signals.

Everything slow (stopping threads, opening the virtual camera, writing a PNG) runs on a short-lived
worker thread and reports back through a signal, so the GUI thread only ever does bookkeeping.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from PySide6.QtCore import QObject, QTimer, Signal

from app.gui.bridge import FrameBridge
from app.gui.loader import EngineLoader
from app.outputs import Recorder, VirtualCamera, snapshot, virtualcam_available
from app.pipeline import OutputFrame, OutputShape, Pipeline, PipelineConfig
from app.pipeline.engine_loader import remote_engine_factory
from app.pipeline.engine_policy import release_engine
from app.pipeline.live_params import LiveParams
from app.pipeline.prepared import PreparedEngines, same_but_steps
from core.config import StreamConfig
from core.model_errors import user_message

log = logging.getLogger(__name__)


class Session(QObject):
    running_changed = Signal(bool)
    stopping = Signal()  # Stop was asked for; running_changed(False) follows once the threads are joined
    engine_ready = Signal(object, object)  # the engine's StreamConfig, the engine
    engine_failed = Signal(str, object)  # message, exception; the previous engine keeps running
    recording_changed = Signal(bool, str)  # recording, a message (the file saved, or why it stopped)
    virtual_camera_changed = Signal(bool, str)  # on, device or reason
    virtual_camera_probed = Signal(bool, str)  # driver available, device or reason with set-up step
    snapshot_saved = Signal(str)
    source_shape_changed = Signal(int, int)  # width, height of the source's frames, when they change
    _work_done = Signal(object)  # a callable to run in the GUI thread after a worker finished

    def __init__(self, engine_factory=None, parent: QObject | None = None):
        super().__init__(parent)
        self.bridge = FrameBridge(self)
        self.loader = EngineLoader(engine_factory, self)
        self.loader.loaded.connect(self._on_loaded)
        self.loader.failed.connect(self.engine_failed)
        # The other step counts, built once the running engine is at full speed: the steps control then
        # switches at once (a test may set ``prepared.should_prepare``).
        self.prepared = PreparedEngines(lambda config, **kwargs: self.loader.factory(config, **kwargs))
        self.params = LiveParams()
        self.pipeline = Pipeline(
            config=PipelineConfig(keep_input=True),
            on_frame=self._on_frame,
            on_error=self.bridge.post_error,
            on_status=self.bridge.post_status,
        )
        self.engine_config: StreamConfig | None = None
        self._shut_down = False
        self.last_output = None
        self._state = "stopped"  # stopped, running, stopping
        self._restart_after_stop = False
        self._recorder: Recorder | None = None
        self._vcam: VirtualCamera | None = None
        self.letterbox = False  # how frames that skip the engine fit the output size (the engine's resize mode)
        self.source_shape: tuple[int, int] | None = None  # (width, height), known after the first frame
        # Bound methods (not lambdas): Qt then runs them in this object's thread, the GUI thread.
        self._work_done.connect(self._run_done)
        self.source_shape_changed.connect(lambda *_shape: self._apply_output_shape())
        self.bridge.error.connect(self._check_outputs)
        self.bridge.frame_ready.connect(self._remember)

    # ------------------------------------------------------------------------------------- engine

    @property
    def engine(self):
        return self.pipeline.engine

    def load_engine(self, config: StreamConfig, remote: tuple[str, str] | None = None) -> None:
        """A new engine for ``config`` in the background; with ``remote`` (url, token), a server's engine."""
        if remote is not None:
            self.prepared.clear()
            params = LiveParams(**vars(self.params))
            self.loader.load(config, params.prompt, params.negative_prompt, setup=params.apply_to,
                             factory=remote_engine_factory(*remote, on_event=self.bridge.post_status))
            return
        if self.source_shape is not None:  # the load captures its graph for the frames that will arrive
            config = config.replace(source_width=self.source_shape[0], source_height=self.source_shape[1])
        engine = self.prepared.take(config)
        if engine is not None:  # after the caller's own bookkeeping, as a load's result would come
            self.loader.cancel()
            QTimer.singleShot(0, lambda: self._take_prepared(engine, config))
            return
        if self.engine_config is not None and not same_but_steps(self.engine_config, config):
            self.prepared.clear()  # another model or size: make room for it first
        params = LiveParams(**vars(self.params))
        self.loader.load(config, params.prompt, params.negative_prompt, setup=params.apply_to)

    def cancel_load(self) -> None:
        self.loader.cancel()

    def _take_prepared(self, engine, config: StreamConfig) -> None:
        if self._shut_down:
            release_engine(engine)
            return
        self._on_loaded(engine, config)

    def _on_loaded(self, engine, config: StreamConfig) -> None:
        # Settings changed while the model loaded are applied again, so none is lost in the swap.
        self._call_engine(self.params.apply_to, engine)
        self._call_engine(lambda e: e.update_prompt(self.params.prompt, negative_prompt=self.params.negative_prompt), engine)
        self.pipeline.set_engine(engine)
        self.engine_config = config
        self._apply_output_shape()
        self.engine_ready.emit(config, engine)
        params = LiveParams(**vars(self.params))
        self.prepared.prepare_for(engine, config, params.prompt, params.negative_prompt, params.apply_to)

    def _call_engine(self, action, engine=None) -> None:
        engine = engine if engine is not None else self.pipeline.engine
        if engine is None:
            return
        try:
            action(engine)
        except Exception as exc:  # noqa: BLE001 - a rejected value must not take the window down
            self.bridge.post_error(f"The setting could not be applied: {user_message(exc)}", exc)

    def set_prompt(self, prompt: str, negative_prompt: str) -> None:
        self.params.prompt, self.params.negative_prompt = prompt, negative_prompt
        self._call_engine(lambda e: e.update_prompt(prompt, negative_prompt=negative_prompt))

    def set_strength(self, strength: float) -> None:
        self.params.strength = strength
        self._call_engine(lambda e: e.set_strength(strength))

    def set_seed(self, seed: int) -> None:
        self.params.seed = seed
        self._call_engine(lambda e: e.set_seed(seed))

    def set_guidance(self, guidance: float, delta: float) -> None:
        self.params.guidance, self.params.delta = guidance, delta
        self._call_engine(lambda e: e.set_guidance(guidance_scale=guidance, delta=delta))

    def set_filter(self, enabled: bool, threshold: float) -> None:
        self.params.similarity_filter, self.params.similarity_threshold = enabled, threshold
        self._call_engine(lambda e: e.set_similarity_filter(enabled, threshold=threshold))

    def set_smoothing(self, smoothing: float) -> None:
        self.params.smoothing = smoothing
        self._call_engine(lambda e: e.set_smoothing(smoothing))

    def set_feature_reuse(self, enabled: bool) -> None:
        self.params.feature_reuse = enabled
        self._call_engine(lambda e: e.set_feature_reuse(enabled))

    def set_transition_frames(self, frames: int) -> None:
        self.params.transition_frames = frames
        self._call_engine(lambda e: e.set_transition_frames(frames))

    def set_output_size(self, width: int, height: int) -> None:
        """The size preview, recordings and the virtual camera get (0, 0: the generated size). The engine
        upscales to it on the GPU; the virtual camera reopens at it; nothing stops."""
        self.params.output_width, self.params.output_height = width, height
        self._call_engine(lambda e: e.set_output_size(width, height))
        self._apply_output_shape()

    def set_letterbox(self, on: bool) -> None:
        """Crop or letterbox where the source's shape and the output's differ: in the engine (live, a new
        graph at the next frame), for frames that skip it, and in the virtual camera."""
        self.letterbox = on
        self.params.resize_mode = "letterbox" if on else "crop"
        self._call_engine(lambda e: e.set_resize_mode(self.params.resize_mode))
        self._apply_output_shape()

    def set_bypass(self, on: bool) -> None:
        self.pipeline.set_bypass(on)

    def set_output_mirror(self, on: bool) -> None:
        self.pipeline.set_output_mirror(on)

    # ---------------------------------------------------------------------------------- running

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def is_stopping(self) -> bool:
        return self._state == "stopping"

    def set_source(self, source) -> None:
        self.pipeline.set_source(source)

    def start(self) -> None:
        if self._state == "stopping":
            self._restart_after_stop = True
            return
        if self._state == "running":
            return
        self._state = "running"
        self.bridge.reset()
        if self._vcam is not None:
            self.pipeline.add_output(self._vcam)
        self.pipeline.start()
        self.running_changed.emit(True)

    def stop(self) -> None:
        """Stop in the background: joining the threads waits for the frame in the engine."""
        if self._state != "running":
            return
        self._state = "stopping"
        self.stopping.emit()
        recorder, self._recorder = self._recorder, None
        self._in_worker(lambda: self.pipeline.stop(close_outputs=False), lambda _r: self._stopped(recorder))

    def _stopped(self, recorder: Recorder | None) -> None:
        self._state = "stopped"
        self._finish_recording(recorder)
        if self._vcam is not None:
            self.pipeline.remove_output(self._vcam, close=False)
        self.running_changed.emit(False)
        if self._restart_after_stop:
            self._restart_after_stop = False
            self.start()

    def toggle(self) -> None:
        self.stop() if self._state == "running" else self.start()

    def shutdown(self) -> None:
        """Stop everything now, on the calling thread: used on quit, when blocking is expected."""
        self.loader.cancel()
        self._shut_down = True
        self.prepared.clear()
        recorder, self._recorder = self._recorder, None
        self.pipeline.stop(close_outputs=True)
        self._finish_recording(recorder)
        if self._vcam is not None:
            self._vcam.close()
            self._vcam = None
        self._state = "stopped"

    # ------------------------------------------------------------------------------------ outputs

    def output_size(self) -> tuple[int, int] | None:
        """(width, height) the outputs get: the chosen output size, else the generated size, else the
        source's (None before the first frame when nothing else says)."""
        if self.params.output_width:
            return self.params.output_width, self.params.output_height
        if self.engine_config is not None:
            return self.engine_config.width, self.engine_config.height
        return self.source_shape

    def _apply_output_shape(self) -> None:
        size = self.output_size()
        self.pipeline.set_output_shape(OutputShape(*size, self.letterbox) if size else None)
        if size and self._vcam is not None and (self._vcam.width, self._vcam.height, self._vcam.letterbox) != (
                *size, self.letterbox):
            self._vcam.resize(*size, letterbox=self.letterbox)
            self.virtual_camera_changed.emit(True, f"Writing to {self._vcam.device} at {size[0]}×{size[1]}")

    def probe_virtual_camera(self) -> None:
        self._in_worker(virtualcam_available, lambda result: self.virtual_camera_probed.emit(*result))

    def set_virtual_camera(self, on: bool) -> None:
        if not on:
            camera, self._vcam = self._vcam, None
            if camera is not None:
                self.pipeline.remove_output(camera, close=True)
            self.virtual_camera_changed.emit(False, "")
            return
        if self._vcam is not None:
            return
        width, height = self.output_size() or (1280, 720)
        source_fps = getattr(self.pipeline.source, "fps", None)
        camera = VirtualCamera(width, height, fps=source_fps if source_fps and source_fps > 0 else 30.0,
                               letterbox=self.letterbox)

        def opened(result) -> None:
            if isinstance(result, BaseException):
                self.virtual_camera_changed.emit(False, user_message(result))
                return
            self._vcam = camera
            if self.running:
                self.pipeline.add_output(camera)
            self.virtual_camera_changed.emit(True, f"Writing to {result} at {camera.width}×{camera.height}, "
                                                   f"{camera.fps:g} fps")

        self._in_worker(camera.open, opened)

    def start_recording(self, folder: str) -> None:
        if self._recorder is not None:
            return
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            self.recording_changed.emit(False, f"Cannot create {folder}: {exc.strerror or exc}")
            return
        path = os.path.join(folder, time.strftime("livediffusion-%Y%m%d-%H%M%S.mp4"))
        # Clock timing places each frame by its capture time, so the file plays at the real speed even
        # when the engine is slower than the source or its rate changes mid-recording.
        source_fps = getattr(self.pipeline.source, "fps", None)
        self._recorder = Recorder(path, fps=source_fps if source_fps and source_fps > 0 else 30.0, timing="clock")
        self.pipeline.add_output(self._recorder)
        self.recording_changed.emit(True, f"Recording to {path}")

    def stop_recording(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        self.pipeline.remove_output(recorder, close=False)
        self._in_worker(recorder.close, lambda _r: self._finish_recording(recorder))

    def _finish_recording(self, recorder: Recorder | None) -> None:
        if recorder is None:
            return
        recorder.close()  # idempotent: finalizes the file if nobody did yet
        if recorder.close_error:
            message = recorder.close_error
        elif recorder.finalized_path:
            message = f"Saved {recorder.finalized_path} ({recorder.frames_written} frames)"
        else:
            message = "Nothing was recorded: no frame arrived"
        self.recording_changed.emit(False, message)

    def _check_outputs(self, _message: str, _exc) -> None:
        """The pipeline drops an output that failed (and closes it); bring the toggles in line."""
        outputs = self.pipeline.outputs
        if self._recorder is not None and self.running and self._recorder not in outputs:
            recorder, self._recorder = self._recorder, None
            self._finish_recording(recorder)
        if self._vcam is not None and self.running and self._vcam not in outputs:
            self._vcam = None
            self.virtual_camera_changed.emit(False, "The virtual camera stopped (see the message)")

    def take_snapshot(self, folder: str, image=None) -> None:
        image = image if image is not None else self.last_output
        if image is None:
            self.snapshot_saved.emit("No frame to save yet: start the stream first")
            return
        path = os.path.join(folder, time.strftime("snapshot-%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}.png")

        def save():
            os.makedirs(folder, exist_ok=True)
            return snapshot(image, path)

        self._in_worker(save, lambda result: self.snapshot_saved.emit(
            user_message(result) if isinstance(result, BaseException) else f"Saved {result}"))

    # ------------------------------------------------------------------------------------ plumbing

    def _on_frame(self, item: OutputFrame) -> None:
        if item.input is not None:
            shape = (item.input.shape[1], item.input.shape[0])
            if shape != self.source_shape:  # read on the postprocess thread; the signal crosses to the GUI
                self.source_shape = shape
                self.source_shape_changed.emit(*shape)
        self.bridge.post_frame(item.input, item.image, item.processed)

    def _remember(self, packet) -> None:
        if packet.output is not None:
            self.last_output = packet.output

    def _run_done(self, fn) -> None:
        fn()

    def _in_worker(self, work, done) -> None:
        """Run ``work`` on a thread, then ``done(result or exception)`` on the GUI thread."""

        def run():
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - handed to ``done``
                result = exc
            self._work_done.emit(lambda: done(result))

        threading.Thread(target=run, name="gui-worker", daemon=True).start()
