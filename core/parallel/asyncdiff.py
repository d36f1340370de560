"""AsyncDiff (arXiv 2406.06911) inside Stream Batch: the UNet split into stages on several devices, all
stages running at once.

AsyncDiff breaks the chain between a denoiser's parts by feeding each part the previous denoising step's
output of the part before it (stride 1): consecutive steps' activations are close. In a Stream Batch the
previous step of the sample in row i + frame_buffer_size is the sample in row i one frame earlier, so:

- stage 1 (on the engine's own device, beside the VAE and the step math) runs on this frame's latents;
- stage j > 1 runs on the hand-off stage j-1 produced one frame earlier, shifted one sample along its row
  group (``shift_rows``; the rows of new frames, which have no earlier step, take the previous frame's);
- the noise is the last stage's output. Every stage reads its own device's copy of the timesteps and the
  prompt embeddings of this frame; only the hand-offs are one frame (one step) stale.

After a change that makes carried features stale (``StreamBatch.epoch``: prompt, seed, strength, reset) one
frame runs the stages one after another on fresh hand-offs; that first frame costs a whole UNet's time.

On CUDA each device's work is a captured graph (eager kernels, or compiled ones with ``compile``), the
hand-offs move as one tensor per stage with torch's device-to-device copies, which order themselves on
both devices' streams; one host thread launches it all. Elsewhere the same steps run eagerly.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from core.accel.capture_guard import CAPTURE_GUARD, CaptureBusy
from core.parallel.unet_stages import UNetStage, split_units, stage_copy, unet_units

log = logging.getLogger(__name__)


def shift_rows(dst: torch.Tensor, src: torch.Tensor, groups: list[int], frame_buffer_size: int) -> None:
    """``dst`` = ``src`` one step on: within each row group, row i + fb takes row i; the group's first fb rows
    (new frames) take their own rows of ``src`` (the previous frame at the same step)."""
    start, fb = 0, frame_buffer_size
    for size in groups:
        head = min(fb, size)
        dst[start : start + head].copy_(src[start : start + head])
        if size > fb:
            dst[start + fb : start + size].copy_(src[start : start + size - fb])
        start += size


class Packing:
    """The tensors of a hand-off laid side by side per row, (rows, features): one device copy moves it, and a
    row shift is a slice copy."""

    def __init__(self, tensors: tuple, channels_last: bool = False):
        self.channels_last = channels_last  # the stages' weights' layout: their inputs follow it
        self.shapes = [tuple(t.shape[1:]) for t in tensors]
        self.sizes = [t[0].numel() for t in tensors]
        self.rows, self.dtype = tensors[0].shape[0], tensors[0].dtype

    def empty(self, device) -> torch.Tensor:
        return torch.zeros((self.rows, sum(self.sizes)), device=device, dtype=self.dtype)

    def pack(self, tensors: tuple, into: torch.Tensor) -> torch.Tensor:
        torch.cat([t.reshape(self.rows, -1) for t in tensors], dim=1, out=into)
        return into

    def unpack(self, flat: torch.Tensor) -> tuple:
        parts = torch.split(flat, self.sizes, dim=1)
        return tuple(p.reshape(self.rows, *shape).contiguous(memory_format=self._layout(shape))
                     for p, shape in zip(parts, self.shapes))

    def _layout(self, shape) -> torch.memory_format:
        return torch.channels_last if self.channels_last and len(shape) == 3 else torch.contiguous_format


class AsyncDiffRunner:
    """The engine's frame runner (``AcceleratedParts.frame_runner``) over ``devices``: stage j on device j."""

    runs_its_own_unet = True  # the engine's UNet paths (feature reuse) do not apply

    def __init__(self, engine, devices: list[torch.device], starts: tuple[int, ...], graphs: bool,
                 compile_stages: bool = False):
        self.engine = engine
        self.home = canonical(engine.device)
        self.devices = [canonical(d) for d in devices]
        units = unet_units(engine.unet)
        self.starts = tuple(starts)
        latent_hw = engine.latent_shape[1:]
        runs = split_units(units, self.starts)
        # Each other device holds only the layers its stages run (and the small embedding layers).
        needed: dict[torch.device, list] = {}
        for device, run in zip(self.devices, runs):
            needed.setdefault(device, []).extend(run)
        unets = {device: engine.unet if device == self.home else stage_copy(engine.unet, wanted).to(device)
                 for device, wanted in needed.items()}
        self.stages = [UNetStage(unets[device], run, latent_hw) for device, run in zip(self.devices, runs)]
        self.calls = [stage for stage in self.stages]
        if compile_stages:
            from core.accel.compile import configure_inductor

            configure_inductor()
            self.calls = [torch.compile(stage.__call__, dynamic=False) for stage in self.stages]
        self.graphs_wanted = graphs
        weight = engine.unet.conv_in.weight
        self.channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        self.groups = list(engine.batch.features.groups)
        self.fb = engine.config.frame_buffer_size
        self.epoch_seen: int | None = None  # the stream's epoch the hand-offs belong to
        self.packings: list[Packing] = []
        self.outputs: list[torch.Tensor] = []  # per stage, its packed output (the noise for the last)
        self.staging: list[torch.Tensor | None] = []  # per stage > 0, the previous stage's output on this device
        self.handoffs: list[torch.Tensor | None] = []  # per stage > 0, its input (staging shifted)
        self.conds: list[tuple] = []
        self.graphs: dict = {}
        self.stage_graphs: list | None = None
        self.last_input_shape = None
        self._keep = None

    def describe(self) -> str:
        return " | ".join(f"{device}: {stage}" for device, stage in zip(self.devices, self.stages))

    # ----- the pieces of a frame, each on one device ---------------------------------------------------

    def _conditioning(self, j: int) -> tuple:
        """Stage j's timesteps and prompt tensors on its device (static buffers, refreshed every frame)."""
        engine = self.engine
        cond = engine.conditioning
        here = (engine.batch.unet_timesteps, cond.encoder_hidden_states, cond.added_cond_kwargs)
        if self.devices[j] == self.home:
            return here
        if len(self.conds) <= j or self.conds[j] is None:
            device = self.devices[j]
            added = None if here[2] is None else {k: v.to(device) for k, v in here[2].items()}
            while len(self.conds) <= j:
                self.conds.append(None)
            self.conds[j] = (here[0].to(device), here[1].to(device), added)
        return self.conds[j]

    def _refresh_conditioning(self) -> None:
        engine = self.engine
        cond = engine.conditioning
        for j in range(len(self.stages)):
            if self.devices[j] == self.home:
                continue
            t, ehs, added = self._conditioning(j)
            t.copy_(engine.batch.unet_timesteps)
            ehs.copy_(cond.encoder_hidden_states)
            for name, value in (added or {}).items():
                value.copy_(cond.added_cond_kwargs[name])

    def _allocate(self, x_in: torch.Tensor) -> None:
        """Buffers sized by one eager pass of the chain (at the first frame)."""
        handoff, self.packings = (x_in,), []
        for j, call in enumerate(self.calls):
            handoff = tuple(t.to(self.devices[j]) for t in handoff)
            handoff = self.stages[j](handoff, *self._conditioning(j))
            self.packings.append(Packing(handoff, self.channels_last))
        self.outputs = [p.empty(d) for p, d in zip(self.packings, self.devices)]
        self.staging = [None] + [self.packings[j - 1].empty(self.devices[j]) for j in range(1, len(self.stages))]
        self.handoffs = [None] + [self.packings[j - 1].empty(self.devices[j]) for j in range(1, len(self.stages))]
        self.eps = torch.empty_like(self.outputs[-1], device=self.home)

    def front(self, frames_u8) -> torch.Tensor:
        """Device 0: the frame up to the UNet, then stage 1 on it (packed)."""
        x_in = self.engine.frame_front(frames_u8)
        return self.packings[0].pack(self.calls[0]((x_in,), *self._conditioning(0)), self.outputs[0])

    def stage(self, j: int) -> torch.Tensor:
        """Device j: stage j on its hand-off (packed)."""
        handoff = self.packings[j - 1].unpack(self.handoffs[j])
        return self.packings[j].pack(self.calls[j](handoff, *self._conditioning(j)), self.outputs[j])

    def back(self) -> torch.Tensor:
        """Device 0: the step, decode and uint8 from the last stage's noise."""
        return self.engine.frame_back(self.packings[-1].unpack(self.eps)[0])

    def _move(self, j: int) -> None:
        """Stage j-1's output to device j (torch orders the copy after both devices' queued work)."""
        self.staging[j].copy_(self.outputs[j - 1], non_blocking=True)

    # ----- a frame ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, frames_u8):
        with _on(self.engine.device):
            try:
                return self._frame(frames_u8)
            except CaptureBusy:  # another thread builds or loads: this frame runs eagerly, captures wait for the next
                with CAPTURE_GUARD.work(short=True):
                    return self._frame(frames_u8, capture=False)

    def _frame(self, frames_u8, capture: bool = True):
        engine = self.engine
        self.last_input_shape = None if frames_u8 is None else tuple(frames_u8.shape)
        if not self.packings:
            self._allocate(engine.frame_front(frames_u8))
            engine.batch.pending = None
        if capture and self.graphs_wanted and self.stage_graphs is None:
            self._capture_stages(frames_u8)
        front, back = self._frame_graphs(frames_u8) if capture else self.graphs.get(self._graph_key(frames_u8),
                                                                                      (self.front, self.back))
        self._refresh_conditioning()
        last = len(self.stages) - 1
        if self.epoch_seen != engine.batch.epoch or len(self.stages) == 1:
            # Fresh hand-offs: every stage after the one before it, this frame.
            front(frames_u8)
            for j in range(1, last + 1):
                self._move(j)
                with _on(self.devices[j]):
                    self.handoffs[j].copy_(self.staging[j])
                    self._run_stage(j)
        else:
            for j in range(1, last + 1):  # their inputs are last frame's: they start first, side by side
                with _on(self.devices[j]):
                    self._run_stage(j)
            front(frames_u8)
        self.eps.copy_(self.outputs[last], non_blocking=True)
        for j in range(1, last + 1):  # next frame's hand-offs
            self._move(j)
            with _on(self.devices[j]):
                shift_rows(self.handoffs[j], self.staging[j], self.groups, self.fb)
        self.epoch_seen = engine.batch.epoch
        return back()

    def _run_stage(self, j: int) -> None:
        if self.stage_graphs is None:
            self.stage(j)
        else:
            self.stage_graphs[j].replay()

    # ----- captured graphs (CUDA) ------------------------------------------------------------------------

    def _graph_key(self, frames_u8):
        from core.accel.compile import FrameGraph

        return FrameGraph.key_for(self.engine, frames_u8)

    def _frame_graphs(self, frames_u8):
        if not self.graphs_wanted:
            return self.front, self.back
        key = self._graph_key(frames_u8)
        if key not in self.graphs:
            self.graphs[key] = self._capture_frame(frames_u8)
        return self.graphs[key]

    def _capture_stages(self, frames_u8) -> None:
        # All of them or none: without waiting for another thread's build (CaptureBusy before any is captured).
        with CAPTURE_GUARD.capture(blocking=False):
            graphs = [None]
            for j in range(1, len(self.stages)):
                graphs.append(_capture(self.devices[j], lambda j=j: self.stage(j)))
        self.stage_graphs = graphs

    def _capture_frame(self, frames_u8):
        engine = self.engine
        with CAPTURE_GUARD.capture(blocking=False):  # CaptureBusy before anything ran, as in _capture_stages
            saved = engine.snapshot_stream()
            try:
                static_in = None if frames_u8 is None else frames_u8.clone()
                front_graph = _capture(engine.device, lambda: self.front(static_in), keep_begun=engine.batch)
                begun = engine.batch.pending
                self._keep = (self._keep, begun)  # read by the back graph: must outlive the capture
                back_out: list = []

                def back():
                    engine.batch.pending = begun
                    out = self.back()
                    back_out[:] = [out]
                    return out

                back_graph = _capture(engine.device, back, pool=front_graph.pool())
            finally:
                engine.batch.pending = None
                engine.restore_stream(saved)
                self.epoch_seen = None  # the throwaway runs moved the hand-offs on

        def run_front(frames):
            if static_in is not None:
                static_in.copy_(frames, non_blocking=True)
            front_graph.replay()

        def run_back():
            back_graph.replay()
            return back_out[0]

        return run_front, run_back

    def part_times_ms(self, frames_u8, repeats: int = 20) -> dict[str, float]:
        """Each device's share of a frame, replayed alone (CUDA graphs only): the balance of the split."""
        if self.stage_graphs is None:
            return {}
        try:
            front, back = self._frame_graphs(frames_u8)
        except CaptureBusy:  # a build runs: nothing to time now
            return {}
        saved = self.engine.snapshot_stream()
        jobs = {f"{self.devices[0]} front+{self.stages[0]}": (self.devices[0], lambda: front(frames_u8))}
        for j in range(1, len(self.stages)):
            jobs[f"{self.devices[j]} {self.stages[j]}"] = (self.devices[j], self.stage_graphs[j].replay)
        times = {}
        for name, (device, job) in jobs.items():
            with _on(device):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                job()
                start.record()
                for _ in range(repeats):
                    job()
                end.record()
                end.synchronize()
                times[name] = start.elapsed_time(end) / repeats
        self.engine.batch.pending = None
        self.engine.restore_stream(saved)
        self.epoch_seen = None
        return times


def canonical(device) -> torch.device:
    """``cuda`` as ``cuda:N`` (the current GPU), so that one GPU spelled two ways is one device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        return torch.device("cpu")
    return device


def _on(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _capture(device: torch.device, fn, pool=None, keep_begun=None):
    """``fn`` (no arguments, static buffers only) warmed up on a side stream and captured in a CUDA graph."""
    from core.accel.compile import capture_stream

    with CAPTURE_GUARD.capture(), torch.cuda.device(device), torch.no_grad():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
                if keep_begun is not None:
                    keep_begun.pending = None
        side.synchronize()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=capture_stream(device), capture_error_mode="thread_local"):
            fn()
    return graph
