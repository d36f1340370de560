"""The moving test pattern: the default source when no camera is found, and the tests' source."""

from __future__ import annotations

import numpy as np

from app.sources.base import Pacer, Source


class TestPattern(Source):
    """A moving colour pattern made with numpy: the default when no camera is found, and the source of
    tests and benchmarks. Each frame is a fresh array (a slice of a precomputed strip plus a moving box),
    so generating one costs about one memory copy."""

    __test__ = False  # not a pytest class despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: float | None = 30.0, limit: int | None = None):
        self.width, self.height = width, height
        self._fps = fps
        self.live = bool(fps)
        self.limit = limit
        self.name = f"Test pattern {width}x{height}"
        self._pacer = Pacer(fps)
        self._count = 0
        self._strip: np.ndarray | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if self._strip is not None:
            return
        # Two periods wide so that any horizontal offset is a plain slice, no wrap-around copy.
        xs = np.arange(2 * self.width, dtype=np.float32) * (2 * np.pi / self.width)
        ys = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None]
        strip = np.empty((self.height, 2 * self.width, 3), dtype=np.uint8)
        strip[..., 0] = (127.5 + 127.5 * np.sin(xs))[None, :]
        strip[..., 1] = (255 * ys).astype(np.uint8)
        strip[..., 2] = (127.5 + 127.5 * np.cos(xs * 0.5))[None, :] * (1 - ys) + 40 * ys
        self._strip = strip
        self._count = 0

    def read(self) -> np.ndarray | None:
        if self._strip is None:
            self.open()
        if self.limit is not None and self._count >= self.limit:
            return None
        self._pacer.wait()
        shift = (self._count * 4) % self.width
        frame = self._strip[:, shift : shift + self.width].copy()
        box = max(8, min(self.width, self.height) // 6)
        bx = (self._count * 7) % max(1, self.width - box)
        by = (self.height - box) // 2
        frame[by : by + box, bx : bx + box] = 255
        self._count += 1
        return frame

    def close(self) -> None:
        self._strip = None
