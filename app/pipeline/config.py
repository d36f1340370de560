"""The pipeline's settings, and what it needs from an engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Engine(Protocol):
    """What the pipeline needs from core.stream.StreamEngine (a fake with these members works too)."""

    def process(self, frame: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class OutputShape:
    """The size frames have when they reach the outputs without passing through the engine."""

    width: int
    height: int
    letterbox: bool = False


@dataclass
class PipelineConfig:
    #: Blocking slots: drop nothing, keep order (file-to-file). Lossy (default) for live use.
    lossless: bool = False
    #: Back-off when a source is lost (camera unplugged): first wait, doubling up to the maximum.
    retry_initial_s: float = 0.5
    retry_max_s: float = 8.0
    #: Window of the rolling statistics.
    stats_window_s: float = 2.0
    #: Attach the input image to each OutputFrame (side-by-side preview); costs nothing, it is a reference.
    keep_input: bool = True
    #: How long stop() waits for each thread.
    join_timeout_s: float = 10.0
    #: Consecutive engine failures after which the engine is released (an out-of-memory releases at once).
    max_engine_failures: int = 3
