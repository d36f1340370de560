"""The TensorRT side of the ``tensorrt`` back-end: engine builds from ONNX, and running an engine on torch tensors.

Written against the TensorRT 10 Python API (named I/O tensors, ``execute_async_v3``), and careful about
TensorRT 11, which drops the precision builder flags: there the network is built strongly typed and the
ONNX file's own float16 types carry the precision.

Everything TensorRT prints during a build goes to a log file beside the engine, so that a failed build
can name the file that says why.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from pathlib import Path

import torch

from core.cache import write_atomic

log = logging.getLogger(__name__)

INSTALL_HINT = (
    'TensorRT is not installed: install it with pip install -e ".[tensorrt]" on a machine with a CUDA GPU '
    "(NVIDIA's wheels need an NVIDIA driver and CUDA 12)"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be used in this process (not installed, too old, no CUDA)."""


class TensorRTBuildError(RuntimeError):
    """Producing or loading an engine failed; names the stage and the log that tells more."""

    def __init__(self, stage: str, label: str, detail: str, log_path: Path | None):
        where = f"; log: {log_path}" if log_path else ""
        super().__init__(f"TensorRT {stage} of the {label} failed: {detail}{where}")
        self.stage = stage
        self.log_path = log_path


def import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as error:  # OSError: the wheel is there but libnvinfer cannot load
        raise TensorRTUnavailable(f"{INSTALL_HINT} ({type(error).__name__}: {error})") from error
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old; version 10 or later is needed")
    return trt


# ----- logging ----------------------------------------------------------------------------------------

_LOGGER = None
_SEVERITY = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


def trt_logger(trt):
    """The process's one TensorRT logger (TensorRT keeps the first logger it sees for every later object)."""
    global _LOGGER
    if _LOGGER is not None:
        return _LOGGER

    class FileLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lock = threading.Lock()
            self.file = None
            self.errors: collections.deque[str] = collections.deque(maxlen=5)

        def log(self, severity, msg):
            rank = int(severity)  # 0 internal error, 1 error, 2 warning, 3 info, 4 verbose
            with self.lock:
                if self.file is not None and rank <= 3:
                    self.file.write(f"[{time.strftime('%H:%M:%S')}] {_SEVERITY[min(rank, 4)]}: {msg}\n")
                    self.file.flush()
                if rank <= 1:
                    self.errors.append(msg)
            if rank <= 2:
                log.log(logging.ERROR if rank <= 1 else logging.WARNING, "TensorRT: %s", msg)

        @contextlib.contextmanager
        def writing_to(self, path: Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                with self.lock:
                    self.file = handle
                    self.errors.clear()
                try:
                    yield self
                finally:
                    with self.lock:
                        self.file = None

    _LOGGER = FileLogger()
    return _LOGGER


def progress_monitor(trt, say, label: str, every_s: float = 15.0):
    """Top-level build phases through ``say``, plus a step count now and then (builds take minutes)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.lock = threading.Lock()  # TensorRT may call from several builder threads
            self.totals: dict[str, int] = {}
            self.last = time.monotonic()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                self.totals[phase_name] = num_steps
            if parent_phase is None:
                say(f"TensorRT {label}: {phase_name}")

        def step_complete(self, phase_name, step):
            now = time.monotonic()
            with self.lock:
                if now - self.last < every_s:
                    return True
                self.last = now
                total = self.totals.get(phase_name, 0)
            say(f"TensorRT {label}: {phase_name} {step + 1}/{total}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()


# ----- build ------------------------------------------------------------------------------------------


def build_plan(trt, onnx_path: Path, plan_path: Path, *, label: str, dtype: torch.dtype, log_path: Path,
               timing_cache_path: Path, workspace_bytes: int, say) -> None:
    """ONNX file in, serialized engine (plan) on disk; raises TensorRTBuildError naming parse or build."""
    logger = trt_logger(trt)
    with logger.writing_to(log_path):
        builder = trt.Builder(logger)
        # TensorRT 11 has no precision flags: the network is strongly typed and follows the ONNX types,
        # which the export already set to the engine's dtype.
        weakly_typed = hasattr(trt.BuilderFlag, "FP16")
        flags = 0
        strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if not weakly_typed and strongly is not None:
            flags |= 1 << int(strongly)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            detail = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no parser message"
            raise TensorRTBuildError("parse", label, detail, log_path)

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if weakly_typed and dtype == torch.float16:
            config.set_flag(trt.BuilderFlag.FP16)
        elif weakly_typed and dtype == torch.bfloat16 and hasattr(trt.BuilderFlag, "BF16"):
            config.set_flag(trt.BuilderFlag.BF16)
        timing_cache = _load_timing_cache(config, timing_cache_path)
        monitor = progress_monitor(trt, say, label)
        if monitor is not None:
            config.progress_monitor = monitor

        say(f"TensorRT {label}: building the engine ({network.num_layers} layers; this takes minutes)")
        started = time.monotonic()
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            detail = " | ".join(logger.errors) or "the builder returned no engine"
            raise TensorRTBuildError("build", label, detail, log_path)
        if timing_cache is not None:
            try:
                write_atomic(timing_cache_path, config.get_timing_cache().serialize())
            except OSError as error:
                log.warning("could not save the TensorRT timing cache %s: %s", timing_cache_path, error)
        write_atomic(plan_path, plan)
        say(f"TensorRT {label}: built in {time.monotonic() - started:.0f} s")


def _load_timing_cache(config, path: Path):
    """The shared tactic timings make later builds (other shapes, the VAE after the UNet) much faster."""
    blob = b""
    if path.is_file():
        blob = path.read_bytes()
    try:
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
        return cache
    except Exception as error:  # noqa: BLE001 - a stale or foreign cache only costs build time
        log.warning("ignoring the TensorRT timing cache %s (%s)", path, error)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        return cache


# ----- run --------------------------------------------------------------------------------------------


def torch_dtype(trt, trt_type) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    for name, dtype in (("BF16", torch.bfloat16), ("INT64", torch.int64), ("UINT8", torch.uint8)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = dtype
    if trt_type not in table:
        raise TypeError(f"no torch dtype for TensorRT type {trt_type}")
    return table[trt_type]


class EngineRunner:
    """One deserialized engine run on torch tensors, in torch's current CUDA stream.

    Outputs live in buffers allocated once and bound for good; a call returns those same tensors, so the
    caller must consume them before the next call (the stream engine does). Static buffers and an
    enqueue that only reads bound addresses are what make the call capturable in a CUDA graph.
    """

    def __init__(self, trt, plan: bytes, device: torch.device, label: str):
        self.label = label
        self.device = device
        self.runtime = trt.Runtime(trt_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.inputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = torch_dtype(trt, self.engine.get_tensor_dtype(name))
            if any(size < 0 for size in shape):
                raise RuntimeError(f"engine tensor {name} has a dynamic shape {shape}; engines here are static")
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = (shape, dtype)
            else:
                buffer = torch.empty(shape, dtype=dtype, device=device)
                self.outputs[name] = buffer
                self.context.set_tensor_address(name, buffer.data_ptr())

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        held = []  # converted inputs must outlive the enqueue below
        for name, (shape, dtype) in self.inputs.items():
            tensor = feeds[name]
            if tuple(tensor.shape) != shape:
                raise ValueError(f"TensorRT {self.label}: input {name} has shape {tuple(tensor.shape)}, "
                                 f"the engine was built for {shape}")
            tensor = tensor.to(self.device, dtype).contiguous()
            held.append(tensor)
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT {self.label}: execute_async_v3 failed (see the log for TensorRT's error)")
        return self.outputs
