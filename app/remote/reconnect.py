"""A server's engine that survives losing the server: while it is gone, frames pass through unfiltered and a
thread tries again with back-off; once a session is back, the live settings given meanwhile are sent to it and
the stylized frames resume. The window and ``run --engine`` both use it.

Only the first connection can fail the load (a wrong address or token is the user's to fix); after that a lost
server is an event, never an error of the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from app.remote.client import RemoteError, Returned

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # waits before each try; the last repeats
STEADY_FRAMES = 300  # frames back from one session (10 s at 30 fps) before a later loss starts the back-off afresh


def backoff_delay(attempt: int, delays: tuple[float, ...] = BACKOFF_S) -> float:
    """The wait before try number ``attempt`` (1 for the first try after the loss)."""
    return delays[min(attempt, len(delays)) - 1]


class ReconnectingEngine:
    """``connect()`` makes a connected engine (app.remote.client.RemoteEngine); ``on_event(text)`` hears of a
    loss and of each reconnection (called from whichever thread noticed)."""

    reports_stage = True  # its stage changes while it runs (app.pipeline.engine_policy.changing_stage)

    def __init__(self, connect: Callable[[], object], url: str, on_event: Callable[[str], None] | None = None,
                 delays: tuple[float, ...] = BACKOFF_S):
        self.url, self.delays = url, delays
        self._connect = connect
        self._on_event = on_event or log.warning
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._settings: dict[str, tuple[str, tuple, dict]] = {}  # kind -> (setter, args, kwargs), in order given
        self._retry: threading.Thread | None = None
        self._lost_reason = ""
        self._next_try = 0.0
        self._attempt = 0  # tries since the last session that held (a server that drops each new one backs off)
        self._frames_at_connect = 0
        self.reconnections = 0
        self._remote = connect()  # the first connection's failure is the load's
        self.device, self.acceleration, self.acceleration_note = "remote", "remote", ""
        self.parallel = f"engine at {self.url}"
        self.last_frame_skipped, self.last_gpu_ms = False, 0.0
        self._passed = 0  # frames passed through unfiltered while the server was gone

    # ----- state ----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._remote is not None

    @property
    def stage(self) -> str:
        if self._remote is not None:
            return f"connected to {self.url}"
        wait = max(0.0, self._next_try - time.monotonic())
        doing = f"reconnecting in {wait:.0f} s" if wait >= 0.5 else "reconnecting"
        return f"server lost ({self._lost_reason}); unfiltered, {doing}"

    @property
    def skipped_frames(self) -> int:
        remote = self._remote
        return getattr(remote, "skipped_frames", 0) if remote is not None else 0

    @property
    def frames_processed(self) -> int:
        remote = self._remote
        return getattr(remote, "frames_processed", 0) if remote is not None else 0

    # ----- frames -----------------------------------------------------------------------------------------

    def submit(self, frame: np.ndarray, tag=None) -> list[Returned]:
        remote = self._remote
        if remote is not None:
            try:
                return remote.submit(frame, tag)
            except RemoteError as exc:
                self._lose(remote, str(exc))
        self._passed += 1
        return [Returned(tag, frame, processed=False)]

    def flush(self, timeout_s: float = 1.0) -> list[Returned]:
        remote = self._remote
        if remote is None:
            return []
        try:
            return remote.flush(timeout_s)
        except RemoteError as exc:
            self._lose(remote, str(exc))
            return []

    def process(self, frame: np.ndarray) -> np.ndarray:
        """One frame and its own output (unfiltered while the server is gone)."""
        remote = self._remote
        if remote is not None:
            try:
                return remote.process(frame)
            except RemoteError as exc:
                self._lose(remote, str(exc))
        return frame

    # ----- live settings: kept, to be sent again to a new session ----------------------------------------------

    def _setting(self, kind: str, setter: str, *args, **kwargs) -> None:
        with self._lock:
            remote = self._remote
            if remote is not None:
                getattr(remote, setter)(*args, **kwargs)  # a value the server would refuse raises here, unkept
            self._settings.pop(kind, None)  # re-inserted last: replayed in the order last given
            self._settings[kind] = (setter, args, kwargs)

    def update_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        if negative_prompt is None and "prompt" in self._settings:  # keep the negative prompt last given
            negative_prompt = self._settings["prompt"][1][1]
        self._setting("prompt", "update_prompt", prompt, negative_prompt)

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        self.update_prompt(prompt, negative_prompt)

    def set_strength(self, strength: float) -> None:
        self._setting("strength", "set_strength", strength)

    def set_seed(self, seed: int) -> None:
        self._setting("seed", "set_seed", seed)

    def set_guidance(self, guidance_scale: float | None = None, delta: float | None = None) -> None:
        for kind, value in (("guidance", guidance_scale), ("delta", delta)):
            if value is not None:
                self._setting(kind, "set_guidance", **{"guidance_scale" if kind == "guidance" else kind: value})

    def set_smoothing(self, smoothing: float) -> None:
        self._setting("smoothing", "set_smoothing", smoothing)

    def set_similarity_filter(self, enabled: bool, threshold=None, max_skip_frames=None) -> None:
        self._setting("similarity_filter", "set_similarity_filter", enabled)

    # The server's engine keeps its own size, reuse and transitions (its `serve` options); the outputs here fit
    # what comes back to their own size.
    def set_output_size(self, width: int, height: int) -> None:
        pass

    def set_resize_mode(self, mode: str) -> None:
        pass

    def set_feature_reuse(self, enabled: bool) -> None:
        pass

    def set_transition_frames(self, frames: int) -> None:
        pass

    # ----- losing and finding the server ------------------------------------------------------------------------

    def _lose(self, remote, reason: str) -> None:
        with self._lock:
            if self._remote is not remote:
                return  # another thread noticed first
            self._remote = None
            held = getattr(remote, "frames_processed", 0) - self._frames_at_connect >= STEADY_FRAMES
            self._lost_reason, self._attempt = reason, 0 if held else self._attempt
            self._next_try = time.monotonic() + backoff_delay(self._attempt + 1, self.delays)
            self._retry = threading.Thread(target=self._reconnect, name="remote-reconnect", daemon=True)
            self._retry.start()
        threading.Thread(target=remote.close, name="remote-close", daemon=True).start()  # takes up to seconds
        self._on_event(f"Lost the engine server at {self.url} ({reason}). The preview shows the unfiltered "
                       f"source; reconnecting in the background.")

    def _reconnect(self) -> None:
        while not self._closed.is_set():
            self._attempt += 1
            if self._closed.wait(max(0.0, self._next_try - time.monotonic())):
                return
            try:
                remote = self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure is one more try later
                self._lost_reason = str(exc) or type(exc).__name__
                self._next_try = time.monotonic() + backoff_delay(self._attempt + 1, self.delays)
                log.info("reconnecting to %s failed (try %d): %s", self.url, self._attempt, exc)
                continue
            with self._lock:
                for kind, (setter, args, kwargs) in list(self._settings.items()):
                    try:
                        getattr(remote, setter)(*args, **kwargs)
                    except Exception as exc:  # noqa: BLE001 - a value the server refuses: dropped, said once
                        del self._settings[kind]
                        log.warning("the %s setting was not sent again (%s)", kind, exc)
                if not self._closed.is_set():
                    self._remote, remote = remote, None
                    self._frames_at_connect = 0
                    self.reconnections += 1
            if remote is not None:  # closed meanwhile
                remote.close()
            if self._remote is not None:
                self._on_event(f"Reconnected to the engine server at {self.url}; stylized frames resume.")
            return

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()
        # The reconnect thread is not waited for (a try may take 15 s): it closes whatever it connects from now.
