"""``python main.py run``: the pipeline without a window, from a source to a file or the virtual camera."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.outputs import Output, OutputError, Recorder, VirtualCamera, video_path_problem
from app.pipeline import OutputShape, Pipeline, PipelineConfig
from app.pipeline.engine_loader import build_engine
from app.pipeline.engine_policy import changing_stage, describe_engine
from app.commands.progress import Progress
from app.commands.run_summary import RunSummary, summary_text
from app.commands.stop_signals import StopSignals
from app.sources import LimitedSource, Source, SourceError, TestPattern, VideoFile, parse_source
from core.cli_options import add_engine_arguments, config_from_args, positive_float, positive_int
from core.config import ConfigError
from core.logs import configure_logging
from core.model_errors import is_explained, load_failure_message

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

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
    io.add_argument("--output", default="none",
                    help="a video file (.mp4, .mov, .mkv, .avi), virtualcam, or none (default: none)")
    io.add_argument("--frames", type=positive_int, default=None, help="stop after N input frames")
    io.add_argument("--seconds", type=positive_float, default=None, help="stop after S seconds")
    io.add_argument("--fps", type=positive_float, default=None,
                    help="capture rate of camera / screen / test, and the rate written to outputs (default: the "
                    "source's); a video file processed frame by frame keeps its own rate")
    io.add_argument("--loop", action="store_true", help="loop a video file (stop with --frames, --seconds or Ctrl+C)")
    io.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=None,
                    help="process every input frame in order instead of dropping stale ones "
                    "(default: on for a video file source not sent to the virtual camera; "
                    "with a test source it also turns off its real-time pacing)")
    io.add_argument("--mirror", action="store_true", help="flip the output left to right, like a mirror")
    io.add_argument("--no-engine", action="store_true",
                    help="pass frames through unchanged: checks sources and outputs without loading a model")
    io.add_argument("--engine", metavar="URL",
                    help="use the engine of a server (main.py serve) instead of loading a model here")
    io.add_argument("--token-file", help="with --engine: the server's token (default: $LIVEDIFFUSION_TOKEN)")
    io.add_argument("--quiet", action="store_true", help="no progress bar")
    io.add_argument("--verbose", action="store_true", help="log details and tracebacks to stderr")
    add_engine_arguments(parser)
    return parser


def load_engine(config, prompt: str, negative_prompt: str, say):
    """Build and prepare the engine (the loader the window shares); returns (engine, None) or (None, message)."""
    try:
        return build_engine(config, prompt, negative_prompt, say), None
    except Exception as exc:  # noqa: BLE001 - ModelLoadError carries the user-facing sentence
        if not is_explained(exc):
            logging.getLogger(__name__).debug("engine load failed", exc_info=True)
        return None, load_failure_message(exc)


def connect_remote(args, config, say):
    """The engine of a server (app.remote.client) with this command's prompt and settings; (engine, None) or
    (None, message)."""
    from app.remote.security import SecurityError, read_token

    try:
        token = read_token(args.token_file) if args.token_file else os.environ.get("LIVEDIFFUSION_TOKEN", "")
        from app.remote.client import RemoteEngine
        from app.remote.reconnect import ReconnectingEngine

        say(f"connecting to {args.engine} ...")
        engine = ReconnectingEngine(lambda: RemoteEngine(args.engine, token), args.engine,
                                    on_event=lambda message: say(f"note: {message}"))
    except ImportError as exc:
        return None, f"--engine needs the remote extra ({exc}): pip install -e \".[remote]\""
    except (SecurityError, ConnectionError, TimeoutError) as exc:
        return None, str(exc) or type(exc).__name__
    try:
        engine.update_prompt(args.prompt, args.negative_prompt)
        engine.set_strength(schedule_strength(config))
        engine.set_seed(config.seed)
        engine.set_guidance(config.guidance_scale, config.delta)
        engine.set_smoothing(config.smoothing)
    except ValueError as exc:  # a setting the server would refuse (app.remote.protocol)
        engine.close()
        return None, str(exc)
    return engine, None


def schedule_strength(config) -> float:
    from core.schedule import t_index_list_to_strength

    return t_index_list_to_strength(config.t_index_list, config.num_inference_steps)


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.INFO if args.verbose else logging.CRITICAL)
    progress = Progress(enabled=not args.quiet)
    # Installed before anything slow, so a signal while the model loads also ends the run cleanly.
    with StopSignals() as signals:
        try:
            code = _run(args, progress, signals)
        except KeyboardInterrupt:  # only reaches here before streaming began: nothing was written
            progress.close()
            print("interrupted before any frame was processed: nothing was written", file=sys.stderr)
            code = signals.exit_code(interrupted=True)
    staged = sys.modules.get("core.accel.staged")
    if staged is not None and not staged.wait_for_builds(1.0):
        # A run shorter than the background compile: the outputs are final, and ending the interpreter while
        # the build is inside torch would abort the process. Leave without the interpreter's teardown.
        print("note: the full-speed build was still running; it is cached for the next start", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


class Refused(Exception):
    """A check before any work failed: the message is for the user, ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Plan:
    """What the command line asks for, in the terms the checks below need."""

    file_source: bool
    to_file: bool
    to_virtualcam: bool
    lossless: bool

    @classmethod
    def of(cls, args) -> _Plan:
        file_source = args.source.split(":", 1)[0].lower() not in ("camera", "screen", "test")
        to_virtualcam = args.output.lower() == "virtualcam"
        to_file = not to_virtualcam and args.output.lower() != "none"
        lossless = args.lossless if args.lossless is not None else file_source and not to_virtualcam
        return cls(file_source, to_file, to_virtualcam, lossless)


def _same_file(source: str, output: str) -> bool:
    src, out = Path(source), Path(output)
    if src.exists() and out.exists():
        try:
            return os.path.samefile(src, out)  # also catches hard links and case-insensitive names
        except OSError:
            pass
    return src.resolve() == out.resolve()


def _check_usage(args, plan: _Plan):
    """Refuse what is wrong on the command line itself; returns the engine config (None: --no-engine)."""
    if plan.to_file and plan.file_source and _same_file(args.source, args.output):
        raise Refused(f"--output {args.output} is the --source file: recording there would destroy the input; "
                      "give another output name", EXIT_USAGE)
    config = None
    if not args.no_engine:
        try:
            config = config_from_args(args)
        except (ConfigError, ValueError) as exc:
            raise Refused(str(exc), EXIT_USAGE) from exc
    if plan.to_file and (problem := video_path_problem(args.output)):
        raise Refused(problem, EXIT_USAGE)
    return config


def _open_source(args, plan: _Plan) -> tuple[Source, int | None]:
    """The source, limited by --frames / --seconds, and the number of frames expected (None: unknown)."""
    try:
        source = parse_source(args.source, loop=args.loop, paced=not plan.lossless, fps=args.fps)
    except SourceError as exc:
        raise Refused(str(exc), EXIT_USAGE) from exc
    try:
        if isinstance(source, VideoFile):
            source.open()  # fail fast with the reason, and learn the frame count and rate
            source.close()
    except SourceError as exc:
        raise Refused(str(exc)) from exc
    total = getattr(source, "frame_count", None) if not args.loop else None
    if args.frames is not None or args.seconds is not None:
        total = min(total, args.frames) if total and args.frames else args.frames
        source = LimitedSource(source, args.frames, args.seconds)
    return source, total


def _source_size(source: Source) -> tuple[int, int] | None:
    """(width, height) of the source's frames, read from its first frame (the pipeline opens it again)."""
    inner = source.inner if isinstance(source, LimitedSource) else source
    if isinstance(inner, TestPattern):
        return inner.width, inner.height
    try:
        with inner:
            frame = inner.read()
    except SourceError as exc:
        raise Refused(str(exc)) from exc
    return None if frame is None else (frame.shape[1], frame.shape[0])


def _engine_config(args, source: Source):
    """The engine config for this source: the generated size follows its shape unless --width/--height
    were given, --transition counts in its frames, and the load captures its graph for the source's size."""
    size = _source_size(source)
    try:
        config = config_from_args(args, size if args.width is None and args.height is None else None,
                                  source.fps or args.fps)
    except (ConfigError, ValueError) as exc:
        raise Refused(str(exc), EXIT_USAGE) from exc
    return config if size is None else config.replace(source_width=size[0], source_height=size[1])


def _recording_timing(source: Source, lossless: bool, fps: float | None) -> tuple[str, float]:
    """The recorder's timing mode and frame rate for this run."""
    if lossless and not source.live:
        # Every frame is processed, none is paced: one frame per input frame at the input's rate keeps
        # the output exactly as long as the input, however long the processing took.
        return "frames", source.fps or fps or 30.0
    # Live: the pipeline drops frames and the engine may be slower than the source, so frames are
    # placed by their capture time to keep the recording in real time.
    return "clock", fps or source.fps or 30.0


def _prepare_recorder(args, plan: _Plan, source: Source, say) -> Recorder:
    timing, fps = _recording_timing(source, plan.lossless, args.fps)
    if args.fps and timing == "frames" and plan.file_source:
        say(f"note: --fps applies to live sources; the recording keeps the file's own {fps:g} fps")
    recorder = Recorder(args.output, fps=fps, timing=timing)
    try:
        recorder.preflight()  # before the model loads: a bad target must not cost a minute of loading
    except OutputError as exc:
        raise Refused(str(exc)) from exc
    return recorder


def _run(args, progress: Progress, signals: StopSignals) -> int:
    say = progress.message
    plan = _Plan.of(args)
    outputs: list[Output] = []
    try:
        config = _check_usage(args, plan)
        source, total = _open_source(args, plan)
        if config is not None:
            config = _engine_config(args, source)
        if plan.to_file:
            outputs.append(_prepare_recorder(args, plan, source, say))
    except Refused as exc:
        say(f"error: {exc}")
        return exc.code
    if (args.loop or not plan.file_source) and args.frames is None and args.seconds is None:
        say("note: running until Ctrl+C (give --frames or --seconds to stop on its own)")

    engine = None
    inner = source.inner if isinstance(source, LimitedSource) else source
    # Unknown for cameras and screens until the first frame.
    width, height = (inner.width, inner.height) if isinstance(inner, TestPattern) else (None, None)
    letterbox = config is not None and config.resize_mode == "letterbox"
    if config is not None and args.engine:
        engine, problem = connect_remote(args, config, say)
        if engine is None:
            say(f"error: {problem}")
            return EXIT_ERROR
        config = None  # the server's size and steps: the frames say what they are
    if config is not None:
        say(f"loading {config.model} ...")
        engine, problem = load_engine(config, args.prompt, args.negative_prompt, say)
        if engine is None:
            say(f"error: {problem}")
            return EXIT_ERROR
        height, width = config.output_size
        say(f"running on {describe_engine(engine)} at {config.width}x{config.height}"
            + (f", output {width}x{height}" if (height, width) != (config.height, config.width) else ""))

    if plan.to_virtualcam:
        out_fps = args.fps or source.fps or 30.0
        camera = VirtualCamera(width, height, fps=out_fps, letterbox=letterbox)
        try:
            if width and height:
                say(f"virtual camera: {camera.open()} ({width}x{height} at {out_fps:g} fps)")
        except OutputError as exc:
            say(f"error: {exc}")
            return EXIT_ERROR
        outputs.append(camera)

    pipe = Pipeline(engine, source, PipelineConfig(lossless=plan.lossless, keep_input=False))
    pipe.set_output_mirror(args.mirror)
    if config is not None:  # frames that miss the engine (a failed frame) keep the outputs' size
        pipe.set_output_shape(OutputShape(width, height, letterbox))
    try:
        return _stream(pipe, outputs, total, progress, signals, engine)
    finally:
        if args.engine and engine is not None:
            engine.close()  # ends the server's session now, not at its idle watchdog


def _stream(pipe: Pipeline, outputs, total, progress: Progress, signals: StopSignals, engine=None) -> int:
    say = progress.message
    progress.total = total
    failure = threading.Event()
    errors: list[str] = []
    delivered = RunSummary()  # counts and a bounded sample, never the frames: runs may last hours

    def on_error(message: str, exc) -> None:
        errors.append(message)
        say(f"error: {message}")
        failure.set()  # headless: any error ends the run; the outputs are still finalized

    pipe.on_frame, pipe.on_error, pipe.on_status = delivered.add, on_error, lambda m: say(f"note: {m}")
    for output in outputs:
        pipe.add_output(output)
    started = time.perf_counter()
    interrupted = False
    shown_stage = None
    try:
        pipe.start()
        while not failure.is_set():
            if pipe.wait(0.2):
                break
            stats = pipe.stats()
            stage = changing_stage(engine)
            if stage and stage.split(",")[0] != shown_stage:  # quick start, full speed, a failed build, a lost server
                shown_stage = stage.split(",")[0]
                say(f"engine: {stage}")
            progress.update(stats.frames_out, f"{stats.output_fps:5.1f} fps  {stats.latency_ms:6.1f} ms"
                            + (f"  {stage}" if stage else ""))
    except KeyboardInterrupt:  # Ctrl+C, or a stop signal (see StopSignals)
        interrupted = True
        say("interrupted: finishing the outputs")
    finally:
        signals.disarm()  # from here a signal must not cut the finalizing short
        pipe.stop()  # closes the outputs, which finalizes a recording on every path
    elapsed = time.perf_counter() - started
    stats = pipe.stats()
    progress.update(stats.frames_out, f"{stats.output_fps:5.1f} fps", force=True)
    progress.close()
    print(summary_text(delivered, elapsed, pipe), file=sys.stderr)
    for output in outputs:
        if isinstance(output, Recorder):
            _report_recording(output, errors)
    if errors:
        return EXIT_ERROR
    return signals.exit_code(interrupted) or EXIT_OK


def _report_recording(recorder: Recorder, errors: list[str]) -> None:
    """Say what the finished file really holds, read back from it: another program (or a second run
    aimed at the same name) may have replaced it, and the recorder's own counters would not know."""
    if recorder.close_error:
        message = recorder.close_error
    elif recorder.finalized_path is None:
        print(f"note: nothing was recorded to {recorder.path}: no frame arrived", file=sys.stderr)
        return
    elif (info := recorder.info()) is None:
        message = f"{recorder.finalized_path} was written but cannot be read back; it may be damaged"
    else:
        retimed = ""
        if recorder.frames_repeated or recorder.frames_dropped:
            retimed = (f"; to keep real time {recorder.frames_repeated} frames were repeated and "
                       f"{recorder.frames_dropped} dropped")
        print(f"wrote {recorder.finalized_path} ({info.frames} frames, {info.width}x{info.height}, "
              f"{info.fps:.4g} fps, {info.duration_s:.2f} s{retimed})", file=sys.stderr)
        return
    print(f"error: {message}", file=sys.stderr)
    errors.append(message)
