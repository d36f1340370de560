"""A stand-in for the ``tensorrt`` module: the slice of the TensorRT 10 Python API the back-end calls.

No machine of this project has TensorRT, so this fake is how the back-end's own control flow runs in
tests: parse, build flags, timing cache, progress monitor, plan files, the engine cache, named-tensor
binding with ``set_tensor_address`` and ``execute_async_v3`` in torch's stream, and CUDA graph capture.
It checks the back-end against this file's reading of the API, not against TensorRT itself.

"Parsing" reads the ONNX file's I/O with the onnx package; "executing" looks up a torch module registered
in ``MODULES`` under the tuple of input names and runs it on views of the bound device addresses, in
the stream passed in (so a CUDA graph captures it like a real enqueue).
"""

from __future__ import annotations

import enum
import json
import types

import torch

__version__ = "10.99.0-fake"
MODULES: dict[tuple[str, ...], torch.nn.Module] = {}
STATS = {"builds": 0, "parses": 0, "executions": 0}
FAIL = {"parse": False, "build": False}


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    BF16 = 17


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self):
        pass


class IProgressMonitor:
    def __init__(self):
        pass


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 7: DataType.INT64, 6: DataType.INT32}
_TORCH = {DataType.FLOAT: torch.float32, DataType.HALF: torch.float16, DataType.INT64: torch.int64,
          DataType.INT32: torch.int32}
_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.int64: "<i8", torch.int32: "<i4"}


class _Network:
    def __init__(self, flags):
        self.flags = flags
        self.io: list[tuple[str, list[int], int, int]] = []
        self.num_layers = 0


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.logger, self.errors = network, logger, []

    def parse_from_file(self, path):
        import onnx

        STATS["parses"] += 1
        if FAIL["parse"]:
            self.errors.append("In node 3 (Foo): UNSUPPORTED_NODE: no importer for op Foo")
            return False
        model = onnx.load(path, load_external_data=False)
        for value, mode in [(v, TensorIOMode.INPUT) for v in model.graph.input] + \
                           [(v, TensorIOMode.OUTPUT) for v in model.graph.output]:
            tensor_type = value.type.tensor_type
            shape = [d.dim_value for d in tensor_type.shape.dim]
            self.network.io.append((value.name, shape, int(_ONNX_TYPES[tensor_type.elem_type]), int(mode)))
        self.network.num_layers = len(model.graph.node)
        self.logger.log(ILogger.Severity.INFO, f"parsed {path}")
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, index):
        return self.errors[index]


class _TimingCache:
    def __init__(self, blob):
        if blob and not bytes(blob).startswith(b"fake-timing"):
            raise RuntimeError("timing cache blob from another version")
        self.blob = bytes(blob) or b"fake-timing:"

    def serialize(self):
        return self.blob + b"x"


class _Config:
    def __init__(self):
        self.flags, self.pools, self.timing_cache, self.progress_monitor = set(), {}, None, None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def create_timing_cache(self, blob):
        return _TimingCache(blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class Builder:
    last_config: _Config | None = None
    last_network: _Network | None = None

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return _Network(flags)

    def create_builder_config(self):
        return _Config()

    def build_serialized_network(self, network, config):
        Builder.last_config, Builder.last_network = config, network
        STATS["builds"] += 1
        if config.progress_monitor is not None:
            config.progress_monitor.phase_start("Building engine", None, 2)
            for step in range(2):
                config.progress_monitor.step_complete("Building engine", step)
            config.progress_monitor.phase_finish("Building engine")
        if FAIL["build"]:
            self.logger.log(ILogger.Severity.ERROR, "out of memory while timing tactic 7")
            return None
        return json.dumps({"io": network.io}).encode()


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan):
        try:
            return _Engine(json.loads(bytes(plan)))
        except ValueError:
            self.logger.log(ILogger.Severity.ERROR, "engine plan is corrupt")
            return None


class _Engine:
    def __init__(self, plan):
        self.io = [(name, tuple(shape), DataType(dtype), TensorIOMode(mode)) for name, shape, dtype, mode in plan["io"]]
        self.num_io_tensors = len(self.io)
        self.by_name = {entry[0]: entry for entry in self.io}

    def get_tensor_name(self, index):
        return self.io[index][0]

    def get_tensor_shape(self, name):
        return self.by_name[name][1]

    def get_tensor_dtype(self, name):
        return self.by_name[name][2]

    def get_tensor_mode(self, name):
        return self.by_name[name][3]

    def create_execution_context(self):
        return _Context(self)


def _view(address, shape, dtype):
    """A torch tensor over device memory given by address only, as TensorRT sees a binding."""
    holder = types.SimpleNamespace(__cuda_array_interface__={
        "shape": tuple(shape), "typestr": _TYPESTR[dtype], "data": (address, False), "version": 2})
    return torch.as_tensor(holder, device="cuda")


class _Context:
    def __init__(self, engine):
        self.engine, self.addresses = engine, {}

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle):
        STATS["executions"] += 1
        views = {name: _view(self.addresses[name], shape, _TORCH[dtype]) for name, shape, dtype, _ in self.engine.io}
        inputs = [name for name, _, _, mode in self.engine.io if mode == TensorIOMode.INPUT]
        outputs = [name for name, _, _, mode in self.engine.io if mode == TensorIOMode.OUTPUT]
        module = MODULES[tuple(inputs)]
        with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)), torch.no_grad():
            views[outputs[0]].copy_(module(*[views[name] for name in inputs]))
        return True


def reset() -> None:
    MODULES.clear()
    STATS.update(builds=0, parses=0, executions=0)
    FAIL.update(parse=False, build=False)
    Builder.last_config = Builder.last_network = None
