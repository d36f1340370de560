"""The GPU thread: takes the newest captured frame, runs the engine on it between queued setting
changes, and hands the result on. Also the engine error policy and engine release."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING

import numpy as np

from app.frame_slot import END
from app.frames import Frame, OutputFrame

if TYPE_CHECKING:
    from app.pipeline import Pipeline


def gpu_loop(pipe: "Pipeline") -> None:
    in_slot, out_slot = pipe._in_slot, pipe._out_slot
    batch: list[Frame] = []
    while not pipe._stop.is_set():
        if pipe._tasks:
            pipe._run_pending_tasks()
        item = in_slot.get(0.25)
        if item is None:
            continue
        if item is END:
            if batch:  # a finite source ended mid-batch: pad it, emit only the real frames
                _emit(out_slot, process_frames(pipe, batch))
                batch = []
            out_slot.put(END)
            continue
        if batch and batch[-1].image.shape != item.image.shape:
            # The source changed size mid-batch (a switch): the older frames cannot share a call.
            pipe._extra_dropped += len(batch)
            batch = []
        batch.append(item)
        if len(batch) >= frames_per_call(pipe._engine):
            _emit(out_slot, process_frames(pipe, batch))
            batch = []


def _emit(out_slot, outputs: list[OutputFrame]) -> None:
    # Frames of one engine call arrive together; waiting keeps the lossy slot from discarding all but one.
    for i, out in enumerate(outputs):
        out_slot.put(out, wait=i < len(outputs) - 1)


def frames_per_call(engine) -> int:
    config = getattr(engine, "config", None)
    return int(getattr(config, "frame_buffer_size", 1) or 1) if engine is not None else 1


def process_frames(pipe: "Pipeline", frames: list[Frame]) -> list[OutputFrame]:
    engine = pipe._engine
    keep = pipe.config.keep_input

    def passthrough() -> list[OutputFrame]:
        return [OutputFrame(f.image, f.image if keep else None, f.index, f.capture_time, processed=False) for f in frames]

    if engine is None:
        return passthrough()
    wanted = frames_per_call(engine)
    try:
        if wanted == 1 and len(frames) == 1:
            images = [engine.process(frames[0].image)]
        else:
            stack = [f.image for f in frames[:wanted]]
            stack += [stack[-1]] * (wanted - len(stack))
            images = list(engine.process(np.stack(stack)))[: len(frames)]
    except Exception as exc:  # noqa: BLE001 - the stream must survive a bad frame or an out-of-memory
        engine_failed(pipe, engine, exc)
        return passthrough()
    pipe._engine_failures = 0
    skipped = bool(getattr(engine, "last_frame_skipped", False))
    pipe._skipped = int(getattr(engine, "skipped_frames", pipe._skipped + skipped))
    gpu_ms = float(getattr(engine, "last_gpu_ms", 0.0) or 0.0) / len(images)
    return [
        OutputFrame(image, f.image if keep else None, f.index, f.capture_time, True, skipped, gpu_ms)
        for f, image in zip(frames, images)
    ]


def engine_failed(pipe: "Pipeline", engine, exc: Exception) -> None:
    pipe._engine_failures += 1
    message = engine_error_message(exc, getattr(engine, "config", None))
    # After an out-of-memory the engine's buffers may be half-allocated; only a fresh load is safe,
    # and unloading gives the memory back for it. Other errors get a few chances first.
    if is_out_of_memory(exc) or pipe._engine_failures >= pipe.config.max_engine_failures:
        pipe._install_engine(None)
        message += " The model was unloaded and frames pass through unchanged; load it again to continue."
    pipe.report_error(message, exc)


def is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom_type is not None and isinstance(exc, oom_type)) or type(exc).__name__ == "OutOfMemoryError"


def engine_error_message(exc: BaseException, config=None) -> str:
    """A sentence for the user; out-of-memory gets the advice that actually helps."""
    if is_out_of_memory(exc):
        where = ""
        if config is not None:
            where = f" at {config.width}x{config.height} with {len(config.t_index_list)} step(s)"
        return (
            f"The GPU ran out of memory{where}. Choose a smaller size or fewer steps, turn on the tiny VAE, "
            "or close other programs that use the GPU."
        )
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
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:
            pass


ACCELERATION_NAMES = {"none": "eager PyTorch", "compile": "compiled", "tensorrt": "TensorRT"}


def engine_device(engine) -> str:
    """"GPU", "CPU" or "" (no engine, or one that does not say), for labelling the engine's time."""
    device = getattr(engine, "device", None)
    kind = getattr(device, "type", None) or (str(device) if device else "")
    return {"cuda": "GPU", "cpu": "CPU", "mps": "GPU"}.get(kind, kind.upper())


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
    return " · ".join(parts)
