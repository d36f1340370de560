"""The two records that travel through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """A captured frame: RGB uint8 (H, W, 3), its running index and perf_counter() capture time."""

    image: np.ndarray
    index: int
    capture_time: float


@dataclass
class OutputFrame:
    """A frame leaving the pipeline, with the index and capture time of the frame it was made from."""

    image: np.ndarray  # RGB uint8, the engine's output size (or the input size when passed through)
    input: np.ndarray | None  # the captured frame it was made from, if PipelineConfig.keep_input
    index: int
    capture_time: float
    processed: bool = True  # False: no engine, the input passed through
    skipped: bool = False  # the similarity filter re-emitted the previous output
    gpu_ms: float = 0.0
    output_time: float = 0.0  # perf_counter() when all outputs were written

    @property
    def latency_ms(self) -> float:
        return (self.output_time - self.capture_time) * 1000.0
