"""A frame thread next to a busy Python thread, at the default and at the build's switch interval (CPU).

``python -m tools.switch_interval`` prints the median frame time of four 256x256 torch matmuls (each releases
the interpreter lock) while another thread runs pure Python, as a background compile's tracing does.
"""

import statistics
import sys
import threading
import time

import torch


def frame(a: torch.Tensor) -> None:
    for _ in range(4):
        (a @ a).sum()


def frame_times(a: torch.Tensor, count: int = 200) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        frame(a)
        times.append((time.perf_counter() - started) * 1000)
    return times


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i * i


def main() -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    saved = sys.getswitchinterval()
    for interval in (0.005, 0.0005):
        sys.setswitchinterval(interval)
        stop = threading.Event()
        thread = threading.Thread(target=busy, args=(stop,))
        thread.start()
        beside = frame_times(a)
        stop.set()
        thread.join()
        alone = frame_times(a)
        print(f"| {interval * 1000:g} ms | {statistics.median(beside):.2f} | {sorted(beside)[190]:.2f} | "
              f"{statistics.median(alone):.2f} |")
    sys.setswitchinterval(saved)


if __name__ == "__main__":
    main()
