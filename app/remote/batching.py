"""The server's one engine thread when sessions are batched (``serve --batch``): each tick takes the frame
every waiting session brought and runs them together (core.multi_stream: one UNet call for the sessions that
share the model and size), so one GPU serves several streams. No tick waits for anyone: the frames that arrive
while one runs make up the next, so a lone session runs as fast as alone.

Closing an engine goes through the same thread, between two ticks, never under a frame. A batch that fails
fails each of its frames (their sessions end; a client reconnects): its engines' stream states have moved on,
so the frames are not run again one by one.

Each tick is replayed from CUDA graphs that survive a change of group (core.accel.tick_graph): each session's
front and back, captured once, around the UNet captured once per row count. Through the real server on a lent
H100 (bench-remote, sd-turbo 512x512, 1280x720 clients, BENCHMARKS.md): 4 of 4 streams sustained at 30 fps (p95
85 ms) against 0 of 4 (9.4 fps) for the eager tick. At 8 streams neither sustained 30 fps: batched 18.8 fps each
with the eager UNet in the graphs, one thread per session 19.0.
``LIVEDIFFUSION_TICK_GRAPHS=0`` runs the ticks eagerly.

The UNet in those graphs is compiled for any row count from 2 up by a process of its own and stored
(core.accel.tick_store); until it is done the ticks run the eager UNet. Built in this process instead
(``LIVEDIFFUSION_TICK_COMPILE=here``), that build took 163 s on a cold machine and the sessions that joined
meanwhile got a frame every few seconds (its Python work took the interpreter from the ticks' launches). On the
lent H100: 8 streams' tick 36.4 ms with the stored UNet against 43.4 with the eager one (the probe), and through
the server 19.4 fps each at 8 streams once it was loaded; 4 streams stayed sustained while it was built.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from typing import Any, Callable

from core.multi_stream import process_together

log = logging.getLogger(__name__)


def batchable(engine) -> bool:
    """A StreamEngine (its frame in parts around the UNet); anything else runs its own ``process``."""
    return all(hasattr(engine, name) for name in ("begin_step", "frame_front", "frame_back", "end_step"))


TICK_UNETS = ("stored", "here", "eager")  # LIVEDIFFUSION_TICK_COMPILE's choices; "1" and "0" as before


def tick_unet_choice() -> str:
    """Where the ticks' UNet is compiled: ``stored`` (default) in a process of its own and kept on disk, ``here``
    in this process beside the sessions, ``eager`` nowhere. A torch that cannot precompile takes ``eager``, and
    says so: ``here`` starved the sessions while it built."""
    asked = os.environ.get("LIVEDIFFUSION_TICK_COMPILE", "stored").strip().lower()
    choice = {"1": "here", "0": "eager"}.get(asked, asked)
    if choice not in TICK_UNETS:
        log.warning("LIVEDIFFUSION_TICK_COMPILE=%s is none of %s; the stored build is used", choice,
                    ", ".join(TICK_UNETS))
        choice = "stored"
    if choice != "eager" and os.environ.get("LIVEDIFFUSION_INDUCTOR", "1") != "1":
        log.warning("Inductor is off (LIVEDIFFUSION_INDUCTOR=0): shared ticks run the eager UNet in their graphs")
        return "eager"
    if choice == "stored":
        from core.accel import precompiled
        from core.accel.stored import stored_format

        if not (stored_format() and precompiled.available()):
            log.warning("compiled functions are not stored here (LIVEDIFFUSION_STORED is off, or this torch cannot "
                        "precompile): shared ticks run the eager UNet in their graphs (LIVEDIFFUSION_TICK_COMPILE=here "
                        "compiles it in the server, slowing the sessions meanwhile)")
            return "eager"
    return choice


def graphed_ticks(tick_unets: str = "eager") -> Callable[[list, list], list]:
    """``process_together`` with the ticks replayed from CUDA graphs (core.accel.tick_graph), kept for the
    batcher's life, with the UNet compiled for the ticks' rows once built (``tick_unets``, tick_unet_choice's
    choices); on the CPU the same ticks run eagerly."""
    from core.accel.tick_graph import TickGraphs, compiled_unets, stored_unets

    unets_for = {"stored": stored_unets, "here": compiled_unets, "eager": None}[tick_unets]
    return functools.partial(process_together, graphs=TickGraphs(unets_for=unets_for))


def default_ticks() -> Callable[[list, list], list]:
    """Graphed shared ticks with the UNet from tick_unet_choice (``LIVEDIFFUSION_TICK_GRAPHS=0``: eager ticks);
    see the module's text."""
    if os.environ.get("LIVEDIFFUSION_TICK_GRAPHS", "1") != "1":
        return process_together
    return graphed_ticks(tick_unet_choice())


class SessionBatcher:
    def __init__(self, run_together: Callable[[list, list], list] | None = None):
        self.run_together = run_together or default_ticks()
        self._cond = threading.Condition()
        self._frames: list[tuple[Any, Any, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._calls: list[tuple[Callable[[], Any], asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._closed = False
        self.ticks = 0
        self.largest_tick = 0  # the most frames one tick has run (for the log and the tests)
        self._thread = threading.Thread(target=self._run, name="engine-batch", daemon=True)
        self._thread.start()

    async def process(self, engine, image):
        """``engine``'s output for ``image``, computed in the next tick with the other sessions' frames."""
        return await self._enqueue(self._frames, (engine, image))

    async def call(self, fn: Callable[[], Any]):
        """``fn()`` on the engine thread between two ticks (closing an engine)."""
        return await self._enqueue(self._calls, (fn,))

    async def _enqueue(self, queue: list, item: tuple):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            queue.append((*item, future, loop))
            self._cond.notify()
        return await future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(10.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._frames or self._calls or self._closed):
                    self._cond.wait()
                frames, self._frames = self._frames, []
                calls, self._calls = self._calls, []
                closed = self._closed
            if frames:  # before the calls: a frame that came before its session's close still runs
                self._tick(frames)
            for fn, future, loop in calls:
                _settle(future, loop, fn)
            if closed:
                for *_item, future, loop in self._frames:
                    _settle(future, loop, _shutting_down)
                return

    def _tick(self, frames: list) -> None:
        self.ticks += 1
        self.largest_tick = max(self.largest_tick, len(frames))
        together = [item for item in frames if batchable(item[0])]
        results: dict[int, Any] = {}
        if together:
            try:
                outputs = self.run_together([item[0] for item in together], [item[1] for item in together])
                results = {id(item): (out, None) for item, out in zip(together, outputs)}
            except Exception as exc:  # noqa: BLE001 - the stream states moved on: no second run of these frames
                log.warning("a batch of %d frames failed: %s: %s", len(together), type(exc).__name__, exc)
                results = {id(item): (None, exc) for item in together}
        for item in frames:
            engine, image, future, loop = item
            if id(item) in results:
                _settle(future, loop, lambda result=results[id(item)]: _result(*result))
            else:
                _settle(future, loop, lambda engine=engine, image=image: engine.process(image))


def _result(output, error):
    if error is not None:
        raise error
    return output


def _shutting_down():
    raise RuntimeError("the server is shutting down")


def _settle(future: asyncio.Future, loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> None:
    """``fn()``'s result or exception into ``future`` on its loop (a session closed meanwhile: dropped)."""
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - handed to the awaiting session
        result, error = None, exc

    def settle():
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits
        pass
