"""Shared ticks of several streams (core.multi_stream) replayed from CUDA graphs that survive a change of group.

Run eagerly, a tick of four sd-turbo streams spent 12.4 ms launching the four fronts and backs and 29.4 ms in
the eager UNet at batch 4, against 26.5 ms for the four streams' own captured graphs one after another (lent
H100, BENCHMARKS.md): the launches, not the GPU, were the cost. One graph of a whole group's tick took 17.5 ms,
but through the real server a tick's group is whichever sessions' frames arrived during the last one, so groups
kept changing and each new one was a capture.

So the graphs are of parts that do not depend on the group:
- each session's front (preprocess, encode, noise: its UNet rows out) and back (the step, decode, uint8 from
  its noise), captured once per session and input size;
- the UNet over ``rows`` rows, captured once per row count (with the UNet compiled for any count once a build
  process has stored it: core.accel.tick_store, core.accel.tick_unets).
A tick replays every member's front, gathers their rows, timesteps and prompt embeddings into the UNet graph's
inputs (one copy each), replays it, and hands each member its slice of the noise for its back: two launches per
member and a few copies, whatever the group.

A graph reads the tensors it was captured on. The engines overwrite their state in place, so strength and
smoothing reach the graphs; the prompt is copied in at every tick. An engine whose accelerated parts were
replaced (a background build swapped in) or that closed makes its graphs stale: they are captured again at its
next tick, or dropped. No capture runs beside another thread's build (core.accel.capture_guard): while one
runs, a tick that needs a capture runs eagerly and asks again at the next.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from core.accel.compile import FrameGraph, record_graph
from core.accel.examples import example_values
from core.accel.tick_store import StoredTickUNet
from core.accel.tick_unets import TickUNets
from core.multi_stream import concat_conditioning

log = logging.getLogger(__name__)


@dataclass
class SessionGraphs:
    """One engine's front and back as graphs, for one input key; they share a memory pool of their own (the
    back runs after the front, always), so another session's graphs never write over their live buffers."""
    engine: object
    parts: object  # the engine's AcceleratedParts at capture: a swap makes these stale
    front: object
    back: object
    frame_in: torch.Tensor | None  # the static frame the front reads
    rows_out: torch.Tensor  # the front's UNet input rows
    begun: tuple  # what the front keeps for the back (StreamBatch.pending)
    eps_in: torch.Tensor  # the static noise the back reads
    frame_out: torch.Tensor

    def current(self) -> bool:
        return not self.engine.closed and self.engine.accelerated is self.parts


@dataclass
class UNetGraph:
    """The UNet over one row count; its inputs are filled at every tick, its output copied out at once (the
    UNet graphs share one pool: the next one to replay may write over this one's output)."""
    graph: object
    model: object  # the shared eager UNet module these rows belong to
    unet: object  # what was captured: ``model`` or the UNet compiled for this row count
    latents: torch.Tensor
    timesteps: torch.Tensor
    hidden: torch.Tensor
    added: dict | None
    noise: torch.Tensor


class CudaGraphRecorder:
    """Records ``fn()`` into a CUDA graph in ``pool`` (core.accel.compile.record_graph: warm-ups, then the
    capture); ``CaptureBusy`` at once while another thread's build runs."""

    def __init__(self, warmup_runs: int = 2):
        self.warmup_runs = warmup_runs

    @staticmethod
    def supports(device) -> bool:
        return torch.device(device).type == "cuda"

    def __call__(self, fn: Callable[[], list], device, pool=None) -> tuple[object, list]:
        return record_graph(fn, fn, device, pool, self.warmup_runs, blocking=False)


def compiled_unets(engine) -> TickUNets:
    """Shared ticks' UNets compiled in this process, in the background: one build with a symbolic row count for
    every group, or one build per row count with ``LIVEDIFFUSION_TICK_DYNAMIC=0``. The server's groups keep
    changing, and each build holds captures off for its minute: one build beat 5% faster ticks (8 streams on
    the lent H100: 36.5 ms a tick against 34.6 ms, BENCHMARKS.md)."""
    return TickUNets(engine.unet, dynamic_batch=os.environ.get("LIVEDIFFUSION_TICK_DYNAMIC", "1") == "1")


def stored_unets(engine) -> TickUNets:
    """The shared ticks' UNet built in a process of its own and stored (core.accel.tick_store): no build in this
    process takes the interpreter from the ticks."""
    return TickUNets(engine.unet, compile_fn=StoredTickUNet(engine), dynamic_batch=True)


class TickGraphs:
    """``run(engines, batches)``: a shared tick (core.multi_stream.run_shared) from graphs; each member's device
    uint8 output (a static buffer: copy it before the member's next tick)."""

    def __init__(self, recorder=None, limit: int = 64, unets_for: Callable | None = None):
        self.recorder = recorder or CudaGraphRecorder()
        self.limit = limit  # sessions' graphs kept (a session per input size); the UNet graphs: a quarter
        # unets_for(engine) -> TickUNets: the UNet compiled for the ticks' rows on that engine's model, swapped in
        # when built
        self.unets_for = unets_for
        self.unets: dict[tuple, TickUNets] = {}
        self.sessions: OrderedDict[tuple, SessionGraphs] = OrderedDict()
        self.unet_graphs: OrderedDict[tuple, UNetGraph] = OrderedDict()
        self.session_captures = 0
        self.unet_captures = 0
        self._unet_pool = None
        self.disabled = ""  # why shared ticks run eagerly instead (a capture failed)

    def supports(self, device) -> bool:
        return self.recorder.supports(device)

    def run(self, engines, batches) -> list[torch.Tensor]:
        self._drop_stale(engines)
        sessions = [self._session(engine, batch) for engine, batch in zip(engines, batches)]
        graph = self._unet_graph(engines, sessions)
        for session, batch in zip(sessions, batches):
            if session.frame_in is not None:
                session.frame_in.copy_(batch, non_blocking=True)
            session.front.replay()
        torch.cat([s.rows_out for s in sessions], out=graph.latents)
        torch.cat([e.batch.unet_timesteps for e in engines], out=graph.timesteps)
        torch.cat([e.conditioning.encoder_hidden_states for e in engines], out=graph.hidden)
        for key, out in (graph.added or {}).items():
            torch.cat([e.conditioning.added_cond_kwargs[key] for e in engines], out=out)
        graph.graph.replay()
        outputs = []
        for session, noise in zip(sessions, graph.noise.split([len(s.rows_out) for s in sessions])):
            session.eps_in.copy_(noise)
            session.back.replay()
            outputs.append(session.frame_out)
        return outputs

    # ----- a session's front and back --------------------------------------------------------------

    def _session(self, engine, batch) -> SessionGraphs:
        key = (id(engine), FrameGraph.key_for(engine, batch))
        session = self.sessions.get(key)
        if session is None or not session.current():
            self.sessions.pop(key, None)
            session = self.sessions[key] = self._capture_session(engine, batch)
            while len(self.sessions) > self.limit:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(key)
        return session

    def _capture_session(self, engine, batch) -> SessionGraphs:
        # Warm-ups move the stream on: it is put back as it was, whether the captures work or not.
        saved = engine.snapshot_stream()
        frame_in = None if batch is None else batch.clone()
        try:
            front, (rows_out, *begun) = self.recorder(
                lambda: [engine.frame_front(frame_in), *engine.batch.pending], engine.device)
            eps_in = torch.zeros_like(rows_out)

            def back():
                engine.batch.pending = tuple(begun)
                return [engine.frame_back(eps_in)]

            back_graph, (frame_out,) = self.recorder(back, engine.device, _pool_of(front))
        finally:
            engine.batch.pending = None
            engine.restore_stream(saved)
        self.session_captures += 1
        log.info("captured a session's front and back for shared ticks (%d sessions' graphs kept)",
                 len(self.sessions) + 1)
        return SessionGraphs(engine, engine.accelerated, front, back_graph, frame_in, rows_out, tuple(begun),
                             eps_in, frame_out)

    # ----- the UNet per row count ------------------------------------------------------------------

    def _unet_graph(self, engines, sessions) -> UNetGraph:
        first = engines[0]
        rows = sum(len(s.rows_out) for s in sessions)
        conds = [e.conditioning for e in engines]
        added_shapes = None if conds[0].added_cond_kwargs is None else tuple(
            (k, tuple(v.shape[1:])) for k, v in sorted(conds[0].added_cond_kwargs.items()))
        key = (id(first.unet), rows, first.latent_shape, first.dtype, str(first.device),
               tuple(conds[0].encoder_hidden_states.shape[1:]), added_shapes)
        unets = self._unets_of(first)
        compiled = None if unets is None else unets.built(rows)
        wanted = first.unet if compiled is None else compiled  # never truthiness: a compiled module raises
        graph = self.unet_graphs.get(key)
        if graph is None or graph.unet is not wanted:
            self.unet_graphs.pop(key, None)
            graph = self.unet_graphs[key] = self._capture_unet(engines, rows, wanted)
            while len(self.unet_graphs) > max(1, self.limit // 4):
                self.unet_graphs.popitem(last=False)
        self.unet_graphs.move_to_end(key)
        if unets is not None and compiled is None:  # after the captures: its build must not hold them off
            unets.for_rows(rows, lambda: self._example(engines, rows))
        return graph

    def _capture_unet(self, engines, rows: int, unet) -> UNetGraph:
        first = engines[0]
        (latents, timesteps), kwargs = self._example(engines, rows)
        hidden, added = kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]
        graph, (noise,) = self.recorder(
            lambda: [unet(latents, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added,
                          return_dict=False)[0]], first.device, self._unet_pool)
        self._unet_pool = _pool_of(graph)
        self.unet_captures += 1
        log.info("captured the UNet for shared ticks of %d rows (%s)", rows,
                 "eager" if unet is first.unet else "compiled for them")
        return UNetGraph(graph, first.unet, unet, latents, timesteps, hidden, added, noise)

    @staticmethod
    def _example(engines, rows: int) -> tuple[tuple, dict]:
        """UNet arguments of the tick's shapes, in tensors of their own (the graph's static inputs)."""
        first = engines[0]
        hidden, added = concat_conditioning(engines)
        latents = example_values((rows, *first.latent_shape), first.device, first.dtype)
        timesteps = torch.cat([e.batch.unet_timesteps for e in engines])
        return (latents, timesteps), {"encoder_hidden_states": hidden, "added_cond_kwargs": added,
                                      "return_dict": False}

    def _unets_of(self, engine) -> TickUNets | None:
        """Per model and shapes: a stored build serves one size and prompt shape (other sizes are other keys)."""
        if self.unets_for is None:
            return None
        key = (id(engine.unet), engine.latent_shape, str(engine.dtype),
               tuple(engine.conditioning.encoder_hidden_states.shape[1:]))
        if key not in self.unets:
            self.unets[key] = self.unets_for(engine)
        return self.unets[key]

    def _drop_stale(self, engines) -> None:
        # A closed engine's session ended, a swapped one will be captured again: let their buffers go.
        for key in [k for k, session in self.sessions.items() if not session.current()]:
            del self.sessions[key]
        models = {id(s.engine.unet) for s in self.sessions.values()} | {id(engines[0].unet)}
        for key in [k for k, graph in self.unet_graphs.items() if id(graph.model) not in models]:
            del self.unet_graphs[key]
        for key in [k for k in self.unets if k[0] not in models]:  # a model no session uses any more
            self.unets.pop(key).close()


def _pool_of(graph):
    pool = getattr(graph, "pool", None)
    return None if pool is None else pool()
