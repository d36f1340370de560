"""What the pipeline does with an engine, apart from running it: how many frames it takes per call,
what a failure tells the user, how a swapped-out engine is released, and what to say about what runs."""

from __future__ import annotations

import gc
import sys

import numpy as np

from app.outputs.base import fit_frame
from app.pipeline.config import OutputShape
from app.pipeline.frames import Frame, OutputFrame
from core.model_errors import is_out_of_memory, out_of_memory_while_running

ACCELERATION_NAMES = {"none": "eager PyTorch", "graph": "CUDA graph of the eager kernels", "compile": "compiled",
                      "tensorrt": "TensorRT"}


def frames_per_call(engine) -> int:
    config = getattr(engine, "config", None)
    return int(getattr(config, "frame_buffer_size", 1) or 1) if engine is not None else 1


def passthrough(frames: list[Frame], keep_input: bool, shape: "OutputShape | None" = None) -> list[OutputFrame]:
    """No model, or the effect bypassed: each frame leaves unprocessed, fitted to ``shape`` when one is set
    (so that a virtual camera keeps its size and aspect while the effect is off)."""
    def fitted(image):
        return image if shape is None else fit_frame(image, shape.width, shape.height, shape.letterbox)

    return [OutputFrame(fitted(f.image), f.image if keep_input else None, f.index, f.capture_time, processed=False)
            for f in frames]


def run_engine(engine, frames: list[Frame], keep_input: bool) -> list[OutputFrame]:
    """One engine call on ``frames`` (padded to the engine's frame buffer with the last frame, whose
    extra outputs are dropped). Raises whatever the engine raises."""
    wanted = frames_per_call(engine)
    if hasattr(engine, "submit") and wanted == 1:  # several GPUs, frames in flight: earlier frames come out
        done = [out for f in frames for out in engine.submit(f.image, tag=f)]
        return emitted_frames(engine, done, keep_input)
    if wanted == 1 and len(frames) == 1:
        images = [engine.process(frames[0].image)]
    else:
        stack = [f.image for f in frames[:wanted]]
        stack += [stack[-1]] * (wanted - len(stack))
        images = list(engine.process(np.stack(stack)))[: len(frames)]
    skipped = bool(getattr(engine, "last_frame_skipped", False))
    gpu_ms = float(getattr(engine, "last_gpu_ms", 0.0) or 0.0) / len(images)
    return [OutputFrame(image, f.image if keep_input else None, f.index, f.capture_time, True, skipped, gpu_ms)
            for f, image in zip(frames, images)]


def emitted_frames(engine, done, keep_input: bool) -> list[OutputFrame]:
    """Outputs of a frame-parallel engine (core.parallel.frame_parallel.Emitted), each with its own frame's data."""
    gpu_ms = float(getattr(engine, "last_gpu_ms", 0.0) or 0.0)
    return [OutputFrame(out.image, out.tag.image if keep_input else None, out.tag.index, out.tag.capture_time,
                        getattr(out, "processed", True), out.skipped, gpu_ms) for out in done]


def flush_engine(engine, keep_input: bool) -> list[OutputFrame]:
    """At the end of a finite source: the frames still in flight in a frame-parallel engine."""
    if engine is None or not hasattr(engine, "flush"):
        return []
    return emitted_frames(engine, engine.flush(), keep_input)


def engine_error_message(exc: BaseException, config=None) -> str:
    """A sentence for the user; out-of-memory gets the advice that actually helps."""
    if is_out_of_memory(exc):
        return out_of_memory_while_running(config)
    text = str(exc).strip() or type(exc).__name__
    return f"The model failed on a frame: {text}."


def release_engine(engine) -> None:
    """Let an engine free what it holds; the caller drops its last reference, then calls free_gpu_memory()."""
    close = getattr(engine, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass


def free_gpu_memory() -> None:
    """Return cached GPU blocks of dropped engines to the driver, so the next model has room."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            from core.accel.capture_guard import empty_cache

            empty_cache()
        except Exception:
            pass


def engine_device(engine) -> str:
    """"GPU", "CPU" or "" (an engine that does not say), for labelling the engine's time."""
    device = getattr(engine, "device", None)
    kind = getattr(device, "type", None) or (str(device) if device else "")
    return {"cuda": "GPU", "cpu": "CPU", "mps": "GPU"}.get(kind, kind.upper())


def changing_stage(engine) -> str:
    """The stage of an engine whose stage changes while it runs (a start in stages: quick start, compiling,
    full speed; a server's engine: connected, lost, reconnecting); "" for any other."""
    if getattr(engine, "startup", None) is not None or getattr(engine, "reports_stage", False):
        return engine.stage
    return ""


def describe_engine(engine) -> str:
    """What actually runs: the device, the acceleration in use, and why it differs from the request."""
    if engine is None:
        return "no model"
    parts = []
    device = getattr(engine, "device", None)
    if device is not None:
        parts.append(str(device))
    acceleration = getattr(engine, "acceleration", None)
    if acceleration is not None:
        text = ACCELERATION_NAMES.get(acceleration, acceleration)
        note = getattr(engine, "acceleration_note", "")
        parts.append(f"{text} ({note})" if note else text)
    stage = changing_stage(engine)
    if stage:
        parts.append(stage)
    parallel = getattr(engine, "parallel", "")
    if isinstance(parallel, str) and parallel:  # several GPUs: the mode and the devices (the split in the log)
        parts.append(parallel.split(": ", 1)[0])
    return " · ".join(parts)
