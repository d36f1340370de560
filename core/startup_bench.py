"""``python main.py bench --startup``: how long a user waits, from process start to full speed.

Follows what the app does with a new engine (``StreamEngine.from_config``: load, accelerate, warm up; then
the prompt) and then feeds frames as fast as the engine takes them, timing each, until the background
build is swapped in and a steady stretch at full speed has been timed. Then a steps change: a second
engine from the same weights, timed to its first frame and to full speed. The first engine is closed before
the second is built; the window keeps the old one running meanwhile, which this leaves out. Run it twice with
the same cache folder for the warm start (the second process finds what the first compiled). The first
frame counts among the quick-path frames: where the input is not at the model size, it includes capturing
the quick graph for that input.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

_MODULE_STARTED = time.monotonic()
log = logging.getLogger(__name__)


def process_age_s() -> float:
    """Seconds since this process started (Linux reads it from /proc; elsewhere since this module loaded)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _MODULE_STARTED


class ProcessAge(logging.Filter):
    """Stamps each log line with the seconds since process start, so that a start's log is its timeline."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.age = process_age_s()
        return True


def stamp_log_lines(handler: logging.Handler) -> None:
    handler.addFilter(ProcessAge())
    handler.setFormatter(logging.Formatter("%(age)7.2f s %(levelname)s %(name)s: %(message)s"))


@dataclass
class StartupTimeline:
    """Seconds since process start, and frame times (ms) by stage."""

    name: str
    model_ready_s: float = 0.0  # weights loaded
    load_s: float = 0.0  # of which reading (or building) the weights; what comes before is Python's start and imports
    first_frame_s: float = 0.0  # the first stylized frame handed out
    full_speed_s: float | None = None  # the first frame on the compiled graph
    quick_ms: list[float] = field(default_factory=list)  # frames before the swap
    swap_ms: list[float] = field(default_factory=list)  # the frame that installed the build, and the next two
    full_ms: list[float] = field(default_factory=list)  # the steady stretch after
    stage_at_first_frame: str = ""

    def row(self) -> dict:
        def median(values):
            return round(statistics.median(values), 2) if values else None

        return {
            "name": self.name,
            "model ready s": round(self.model_ready_s, 2),
            "load s": round(self.load_s, 2),
            "first frame s": round(self.first_frame_s, 2),
            "full speed s": None if self.full_speed_s is None else round(self.full_speed_s, 2),
            "quick median ms": median(self.quick_ms),
            "quick max ms": round(max(self.quick_ms), 1) if self.quick_ms else None,
            "swap max ms": round(max(self.swap_ms), 1) if self.swap_ms else None,
            "full median ms": median(self.full_ms),
            "full fps": round(1000.0 / statistics.median(self.full_ms), 1) if self.full_ms else None,
            "quick frames": len(self.quick_ms),
        }


def run_until_full_speed(engine, frames, timeline: StartupTimeline, t0: float, steady_frames: int,
                         limit_s: float) -> None:
    """Frames through ``engine`` until its build is installed (or ``limit_s`` passes), then ``steady_frames``
    more. ``t0`` is the process-age origin the timeline's seconds count from."""
    startup = engine.startup
    index, swap_left = 0, 0
    deadline = time.monotonic() + limit_s
    while True:
        frame = frames[index % len(frames)]
        index += 1
        started = time.perf_counter()
        engine.process(frame)
        ms = (time.perf_counter() - started) * 1000.0
        if index == 1:
            log.info("first frame out (%s, %.0f ms)", engine.stage, ms)
            timeline.first_frame_s = process_age_s() - t0
            timeline.stage_at_first_frame = engine.stage
            if startup is None and engine.stage == "full speed":  # a stored engine loaded: no quick path
                timeline.full_speed_s = timeline.first_frame_s
        if startup is not None and startup.state == "installed" and timeline.full_speed_s is None:
            timeline.full_speed_s = process_age_s() - t0
            swap_left = 3
        if swap_left:
            timeline.swap_ms.append(ms)
            swap_left -= 1
        elif timeline.full_speed_s is not None or startup is None:
            timeline.full_ms.append(ms)
            if len(timeline.full_ms) >= steady_frames:
                return
        else:
            timeline.quick_ms.append(ms)
            if startup.state == "failed" or time.monotonic() > deadline:
                return


def startup_bench(config, frames, steady_frames: int = 300, switch_steps: int | None = 2,
                  limit_s: float = 240.0) -> list[StartupTimeline]:
    from core.models import load_components
    from core.schedule import strength_to_t_index_list
    from core.stream import StreamEngine

    prompt = ("oil painting of a person in a room, cinematic light", "blurry, low quality")
    launch = StartupTimeline("launch")
    started = process_age_s()
    components = load_components(config)
    launch.model_ready_s = process_age_s()
    launch.load_s = launch.model_ready_s - started
    engine = StreamEngine(components, config)
    _accelerate_and_start(engine, config)
    engine.prepare(*prompt)
    log.info("engine ready; the first frame next")
    run_until_full_speed(engine, frames, launch, 0.0, steady_frames, limit_s)
    _report(launch)
    timelines = [launch]
    if switch_steps:
        engine.close()
        switch = StartupTimeline(f"steps change to {switch_steps}")
        t0 = process_age_s()
        changed = config.replace(t_index_list=strength_to_t_index_list(0.5, switch_steps))
        engine = StreamEngine(components, changed)
        _accelerate_and_start(engine, changed)
        engine.prepare(*prompt)
        run_until_full_speed(engine, frames, switch, t0, steady_frames, limit_s)
        _report(switch)
        timelines.append(switch)
        engine.close()
    return timelines


def _accelerate_and_start(engine, config) -> None:
    """What ``StreamEngine.from_config`` does after loading the weights."""
    if config.acceleration != "none":
        from core.accel import accelerate

        if accelerate(engine, staged=config.quick_start) != "none":
            engine.warm_up()
        if engine.startup is not None:
            engine.startup.start()


def _report(timeline: StartupTimeline) -> None:
    print(f"{timeline.name}: " + ", ".join(f"{k} {v}" for k, v in timeline.row().items() if k != "name"),
          file=sys.stderr)


def print_startup(timelines: list[StartupTimeline], file=sys.stdout) -> None:
    rows = [t.row() for t in timelines]
    keys = [k for k in rows[0] if k != "name"]
    print("\nstartup: seconds since process start (a steps change: since the change), frame times in ms",
          file=file)
    print("| | " + " | ".join(keys) + " |", file=file)
    print("| --- " * (len(keys) + 1) + "|", file=file)
    for row in rows:
        print(f"| {row['name']} | " + " | ".join("-" if row[k] is None else str(row[k]) for k in keys) + " |",
              file=file)


def main_from_bench_args(args, base, settings, output_size, input_size) -> int:
    """``bench --startup``: the first setting, timed from process start, printed and written as JSON."""
    import torch

    from core.bench_probes import synthetic_frames
    from core.schedule import strength_to_t_index_list

    steps, cfg_type = settings[0]
    config = base.replace(t_index_list=strength_to_t_index_list(0.5, steps), cfg_type=cfg_type,
                          output_width=output_size[0], output_height=output_size[1],
                          source_width=input_size[0], source_height=input_size[1],
                          quick_start=not args.no_quick_start)
    # A camera hands over its frames; making many here (2 s for 30 at 1280x720 on the lent machine) would count
    # as the user's wait.
    frames = synthetic_frames(6, input_size[1], input_size[0])
    timelines = startup_bench(config, frames, steady_frames=args.frames, switch_steps=args.switch_steps or None)
    device = torch.device(config.resolved_device())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nmodel {args.model}, device {gpu}, torch {torch.__version__}, {args.width}x{args.height}, "
          f"{steps} step {cfg_type}, quick start {'off' if args.no_quick_start else 'on'}")
    print_startup(timelines)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": gpu, "torch": torch.__version__, "startup": [t.row() for t in timelines]}, fh,
                      indent=2)
    return 0
