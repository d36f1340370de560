"""A shared tick of several streams (core.multi_stream) replayed from one CUDA graph.

Run eagerly, a tick of four sd-turbo streams spent 12.4 ms launching the four fronts and backs and 29.4 ms in
the eager UNet at batch 4, against 26.5 ms for the four streams' own captured graphs one after another (lent
H100, BENCHMARKS.md): the launches, not the GPU, were the cost. Here each group of streams (the same engines in
the same order, with the same input sizes) gets one graph of its whole tick: every member's front, one UNet call
over all their rows, every member's back. Replaying it is one launch.

A graph reads the tensors it was captured on. The engines overwrite their state and conditioning in place, so
prompt and strength changes reach it; an engine whose accelerated parts or conditioning object were replaced
(a background build swapped in, a new model), or that closed, makes its groups' graphs stale: they are captured
again at the next tick. Graphs of the groups seen lately are kept (a similarity filter that skips one stream
changes the group), the least recently used dropped past ``limit``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from core.accel.compile import CAPTURE_LOCK, FrameGraph, record_graph
from core.accel.examples import example_values
from core.accel.tick_unets import TickUNets
from core.multi_stream import concat_conditioning

log = logging.getLogger(__name__)


@dataclass
class TickEntry:
    graph: object  # torch.cuda.CUDAGraph, or a stand-in with replay() (tests on the CPU)
    engines: list
    parts: list  # each engine's AcceleratedParts at capture: a swap makes the entry stale
    conditionings: list
    inputs: list  # static device uint8 frames the graph reads
    outputs: list  # static device uint8 outputs the graph writes
    unet: object = None  # the compiled UNet it was captured with (None: the eager one)

    def current(self, engines, unet=None) -> bool:
        return unet is self.unet and all(
            a is b and not a.closed and a.accelerated is parts and a.conditioning is cond
            for a, b, parts, cond in zip(self.engines, engines, self.parts, self.conditionings))


def compiled_unets(unet) -> TickUNets:
    """Shared ticks' UNets compiled per batch in the background (``LIVEDIFFUSION_TICK_COMPILE=0``: eager)."""
    return TickUNets(unet, lock=CAPTURE_LOCK)


class CudaGraphRecorder:
    """Records ``fn()`` into a CUDA graph (core.accel.compile.record_graph: warm-ups, then the capture, one at a
    time in the process), sharing one memory pool across this recorder's graphs (outputs are copied out before
    the next replay)."""

    def __init__(self, warmup_runs: int = 2):
        self.warmup_runs = warmup_runs
        self.pool = None

    @staticmethod
    def supports(device) -> bool:
        return torch.device(device).type == "cuda"

    def __call__(self, fn: Callable[[], list], device) -> tuple[object, list]:
        graph, outputs = record_graph(fn, fn, device, self.pool, self.warmup_runs)
        self.pool = graph.pool()
        return graph, outputs


class TickGraphs:
    """``run(engines, batches, tick)``: ``tick(engines, batches)`` (the shared tick, core.multi_stream) replayed
    from the group's graph, captured at its first tick; each member's device uint8 output."""

    def __init__(self, recorder=None, limit: int = 16, unets_for: Callable | None = None):
        self.recorder = recorder or CudaGraphRecorder()
        self.limit = limit
        # unets_for(unet module) -> TickUNets: a compiled UNet per tick batch, swapped in when built
        self.unets_for = unets_for if os.environ.get("LIVEDIFFUSION_TICK_COMPILE", "1") == "1" else None
        self.unets: dict[int, TickUNets] = {}
        self.entries: OrderedDict[tuple, TickEntry] = OrderedDict()
        self.captures = 0
        self.disabled = ""  # why shared ticks run eagerly instead (a capture failed)

    def supports(self, device) -> bool:
        return self.recorder.supports(device)

    @staticmethod
    def key(engines, batches) -> tuple:
        # Engines by identity: an entry holds its engines, so their ids are not reused while it lives.
        return tuple((id(engine), FrameGraph.key_for(engine, batch)) for engine, batch in zip(engines, batches))

    def run(self, engines, batches, tick) -> list[torch.Tensor]:
        self._drop_stale(engines)
        key = self.key(engines, batches)
        entry = self.entries.get(key)
        unet = self._compiled_unet(engines)
        if entry is None or not entry.current(engines, unet):
            self.entries.pop(key, None)
            entry = self._capture(engines, batches, tick if unet is None else functools.partial(tick, unet=unet))
            entry.unet = unet
            self.entries[key] = entry
            while len(self.entries) > self.limit:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        for static, batch in zip(entry.inputs, batches):
            static.copy_(batch, non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, engines, batches, tick) -> TickEntry:
        # Warm-up runs advance each stream: put every one back as it was, whether the capture works or not.
        saved = [engine.snapshot_stream() for engine in engines]
        inputs = [batch.clone() for batch in batches]
        try:
            graph, outputs = self.recorder(lambda: tick(engines, inputs), engines[0].device)
        finally:
            for engine, snapshot in zip(engines, saved):
                engine.restore_stream(snapshot)
        self.captures += 1
        log.info("captured a shared tick of %d streams (%d graphs kept)", len(engines), len(self.entries) + 1)
        return TickEntry(graph, list(engines), [e.accelerated for e in engines], [e.conditioning for e in engines],
                         inputs, list(outputs))

    def _compiled_unet(self, engines):
        if self.unets_for is None:
            return None
        module = engines[0].unet
        unets = self.unets.get(id(module))
        if unets is None:
            unets = self.unets[id(module)] = self.unets_for(module)
        rows = sum(engine.unet_batch_size for engine in engines)

        def example():
            first = engines[0]
            hidden, added = concat_conditioning(engines)
            latents = example_values((rows, *first.latent_shape), first.device, first.dtype)
            timesteps = torch.cat([engine.batch.unet_timesteps for engine in engines])
            return (latents, timesteps), {"encoder_hidden_states": hidden, "added_cond_kwargs": added,
                                          "return_dict": False}

        return unets.for_rows(rows, example)

    def _drop_stale(self, engines) -> None:
        # A closed engine's session ended, a swapped one will be captured again: let their buffers go.
        for key in [k for k, entry in self.entries.items() if not entry.current(entry.engines, entry.unet)]:
            del self.entries[key]
        models = {id(e.unet) for entry in self.entries.values() for e in entry.engines} | {id(engines[0].unet)}
        for model in [m for m in self.unets if m not in models]:  # a model no session uses any more
            self.unets.pop(model).close()
