"""Helpers for the tests that export the engine's networks to ONNX and run them with onnxruntime, which
stands in for TensorRT engines on the CPU (the same call convention as trt_runtime.EngineRunner)."""

import warnings

import torch


def quiet_engine(components, config, **changes):
    """A StreamEngine on the CPU, without the "running on the CPU" warning."""
    from core.stream import StreamEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StreamEngine(components, config.replace(**changes))


class OrtRunner:
    """An onnxruntime session with the call convention of trt_runtime.EngineRunner."""

    def __init__(self, path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.calls = 0

    def __call__(self, feeds):
        self.calls += 1
        arrays = {name: feeds[name].detach().to(torch.float32).contiguous().numpy() for name in self.inputs}
        names = [o.name for o in self.session.get_outputs()]
        return {name: torch.from_numpy(value) for name, value in zip(names, self.session.run(names, arrays))}
