"""Acceleration back-ends for StreamEngine: compiled graphs, CUDA graphs, TensorRT engines.

``accelerate(engine)`` applies ``engine.config.acceleration`` and never raises for a back-end that
cannot run here: it falls back (tensorrt -> compile -> none) and logs why, and records what actually
runs in ``engine.acceleration``. ``staged=True`` starts compile on its quick path ("graph": the eager
kernels in one CUDA graph) and leaves the Inductor build in ``engine.startup`` for the caller to start.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def accelerate(engine, progress=None, staged: bool = False) -> str:
    from core.accel import fx_threads

    fx_threads.install()  # before any torch.compile wrapper is made, and before builds trace beside the frames
    say = progress or (lambda message: log.info(message))
    wanted = engine.config.acceleration
    engine.acceleration = "none"
    engine.acceleration_note = ""
    if wanted == "none":
        return engine.acceleration
    if engine.device.type != "cuda":
        log.info("acceleration %r needs CUDA; running eager on %s", wanted, engine.device)
        engine.acceleration_note = f"{wanted} needs a CUDA GPU"
        return engine.acceleration
    if wanted == "tensorrt":
        try:
            from core.accel.tensorrt import use_tensorrt

            use_tensorrt(engine, say)
            engine.acceleration = "tensorrt"
            return engine.acceleration
        except Exception as error:  # noqa: BLE001 - any failure falls back, with the reason shown
            log.warning("TensorRT unavailable (%s); falling back to compile", error)
            say(f"TensorRT unavailable ({error}); using compile instead")
            engine.acceleration_note = f"TensorRT unavailable: {error}"
    try:
        from core.accel.compile import use_compile

        use_compile(engine, say, staged=staged)
        if engine.startup is None:
            engine.acceleration = "compile"
    except Exception as error:  # noqa: BLE001
        log.warning("compilation failed (%s: %s); running eager", type(error).__name__, error)
        say(f"compilation failed ({type(error).__name__}); running eager")
        engine.acceleration_note = f"compilation failed: {type(error).__name__}"
        from core.accel.compile import restore_eager

        restore_eager(engine)
    return engine.acceleration
