"""``python main.py run``: the pipeline without a window, from a source to a file or the virtual camera."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

from app.outputs import Output, OutputError, Recorder, VirtualCamera
from app.pipeline import OutputFrame, Pipeline, PipelineConfig
from app.progress import Progress
from app.sources import LimitedSource, SourceError, TestPattern, VideoFile, parse_source
from core.cli_options import add_engine_arguments, config_from_args
from core.config import ConfigError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py run",
        description="Stylize a camera, screen, test pattern or video file into a video file or the virtual camera.",
        epilog="Examples: main.py run --source camera:0 --output virtualcam --prompt 'oil painting'  |  "
        "main.py run --source in.mp4 --output out.mp4 --prompt 'pencil sketch'",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--source", required=True,
                    help="camera:N[:WxH], screen:N, screen:N:x,y,w,h, test[:WxH] or a video file")
    io.add_argument("--output", default="none", help="a video file (.mp4, .avi), virtualcam, or none (default: none)")
    io.add_argument("--frames", type=int, default=None, help="stop after N input frames")
    io.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    io.add_argument("--fps", type=float, default=None,
                    help="capture rate of camera / screen / test, and the rate written to outputs (default: the source's)")
    io.add_argument("--loop", action="store_true", help="loop a video file (stop with --frames, --seconds or Ctrl+C)")
    io.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=None,
                    help="process every input frame in order instead of dropping stale ones "
                    "(default: on for a video file source not sent to the virtual camera; "
                    "with a test source it also turns off its real-time pacing)")
    io.add_argument("--no-engine", action="store_true",
                    help="pass frames through unchanged: checks sources and outputs without loading a model")
    io.add_argument("--quiet", action="store_true", help="no progress bar")
    io.add_argument("--verbose", action="store_true", help="log details and tracebacks to stderr")
    add_engine_arguments(parser)
    return parser


def load_engine(config, prompt: str, negative_prompt: str, say):
    """Build and prepare the engine; returns (engine, None) or (None, message for the user)."""
    try:
        from core.stream import StreamEngine
    except ImportError as exc:
        return None, f"The engine is not available: {exc}"
    try:
        engine = StreamEngine.from_config(config, progress=say)
        engine.prepare(prompt, negative_prompt)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError carries the user-facing sentence
        if type(exc).__name__ == "OutOfMemoryError":
            return None, "The GPU ran out of memory while loading the model: try a smaller --width/--height or fewer --steps"
        if type(exc).__name__ in ("ModelLoadError", "ConfigError"):
            return None, str(exc)
        logging.getLogger(__name__).debug("engine load failed", exc_info=True)
        return None, f"Loading the model failed: {type(exc).__name__}: {exc}"
    return engine, None


def _summary(frames: list[OutputFrame], elapsed: float, pipe: Pipeline) -> str:
    stats = pipe.stats()
    lines = [f"frames: {stats.frames_in} in, {stats.frames_out} out, {stats.dropped_frames} dropped, "
             f"{stats.skipped_frames} skipped by the similarity filter"]
    if frames:
        latencies = sorted(f.latency_ms for f in frames)
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
        span = frames[-1].output_time - frames[0].output_time
        fps = (len(frames) - 1) / span if len(frames) > 1 and span > 0 else 0.0
        lines.append(f"output: {fps:.1f} fps over {elapsed:.1f} s; latency capture to output median "
                     f"{statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms")
        gpu = [f.gpu_ms for f in frames if f.processed and f.gpu_ms]
        if gpu:
            lines.append(f"engine: {statistics.median(gpu):.1f} ms per frame (median)")
    if stats.gpu_memory_mb is not None:
        lines.append(f"GPU memory held: {stats.gpu_memory_mb:.0f} MB")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = Progress(enabled=not args.quiet)
    say = progress.message

    kind = args.source.split(":", 1)[0].lower()
    file_source = kind not in ("camera", "screen", "test")
    to_virtualcam = args.output.lower() == "virtualcam"
    to_file = not to_virtualcam and args.output.lower() != "none"
    lossless = args.lossless if args.lossless is not None else file_source and not to_virtualcam
    try:
        source = parse_source(args.source, loop=args.loop, paced=not lossless, fps=args.fps)
        if isinstance(source, VideoFile):
            source.open()  # fail fast with the reason, and learn the frame count and rate
            source.close()
    except SourceError as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    if (args.loop or not file_source) and args.frames is None and args.seconds is None:
        say("note: running until Ctrl+C (give --frames or --seconds to stop on its own)")
    total = getattr(source, "frame_count", None) if not args.loop else None
    source_size = (source.width, source.height) if isinstance(source, TestPattern) else (None, None)
    if args.frames is not None or args.seconds is not None:
        total = min(total, args.frames) if total and args.frames else args.frames
        source = LimitedSource(source, args.frames, args.seconds)
    out_fps = args.fps or source.fps or 30.0

    if to_file and not Path(args.output).resolve().parent.is_dir():
        say(f"error: the folder of {args.output} does not exist")
        return EXIT_ERROR

    engine = None
    width = height = None
    if not args.no_engine:
        try:
            config = config_from_args(args)
        except (ConfigError, ValueError) as exc:
            say(f"error: {exc}")
            return EXIT_USAGE
        say(f"loading {config.model} ...")
        engine, problem = load_engine(config, args.prompt, args.negative_prompt, say)
        if engine is None:
            say(f"error: {problem}")
            return EXIT_ERROR
        width, height = config.width, config.height
    else:
        width, height = source_size  # unknown for cameras and screens until the first frame

    outputs: list[Output] = []
    try:
        if to_virtualcam:
            camera = VirtualCamera(width, height, fps=out_fps)
            if width and height:
                say(f"virtual camera: {camera.open()} ({width}x{height} at {out_fps:g} fps)")
            outputs.append(camera)
        elif to_file:
            outputs.append(Recorder(args.output, fps=out_fps))
    except OutputError as exc:
        say(f"error: {exc}")
        return EXIT_ERROR

    return _stream(source, engine, outputs, lossless, total, progress, args)


def _stream(source, engine, outputs, lossless, total, progress: Progress, args) -> int:
    say = progress.message
    progress.total = total
    failure = threading.Event()
    errors: list[str] = []
    delivered: list[OutputFrame] = []

    def on_error(message: str, exc) -> None:
        errors.append(message)
        say(f"error: {message}")
        failure.set()  # headless: any error ends the run; the outputs are still finalized

    pipe = Pipeline(engine, source, PipelineConfig(lossless=lossless, keep_input=False),
                    on_frame=delivered.append, on_error=on_error, on_status=lambda m: say(f"note: {m}"))
    for output in outputs:
        pipe.add_output(output)
    started = time.perf_counter()
    interrupted = False
    pipe.start()
    try:
        while not failure.is_set():
            if pipe.wait(0.2):
                break
            stats = pipe.stats()
            progress.update(stats.frames_out, f"{stats.output_fps:5.1f} fps  {stats.latency_ms:6.1f} ms")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: finishing the outputs")
    finally:
        pipe.stop()  # closes the outputs, which finalizes a recording on every path
    elapsed = time.perf_counter() - started
    stats = pipe.stats()
    progress.update(stats.frames_out, f"{stats.output_fps:5.1f} fps", force=True)
    progress.close()
    print(_summary(delivered, elapsed, pipe), file=sys.stderr)
    for output in outputs:
        if isinstance(output, Recorder):
            if output.close_error:
                print(f"error: {output.close_error}", file=sys.stderr)
                errors.append(output.close_error)
            elif output.finalized_path:
                w, h = output.size
                print(f"wrote {output.finalized_path} ({output.frames_written} frames, {w}x{h}, "
                      f"{output.fps:g} fps)", file=sys.stderr)
    if errors:
        return EXIT_ERROR
    return EXIT_INTERRUPTED if interrupted else EXIT_OK
