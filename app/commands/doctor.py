"""``python main.py doctor``: what this machine has for the app, and what to do about what it lacks.

Each check is independent and catches its own failures, so one broken component (a torch without CUDA,
a display that refuses connections) never hides the answers about the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

OK, WARN, MISSING = "ok", "warn", "missing"


@dataclass
class Check:
    name: str
    status: str  # ok | warn (works, but slow or optional part absent) | missing (the app needs it)
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 10):
        return Check("Python", MISSING, version, "Install Python 3.10 or newer")
    return Check("Python", OK, f"{version} ({sys.executable})")


def check_packages() -> Check:
    found, absent = [], []
    for module, package in (("cv2", "opencv-python-headless"), ("mss", "mss"), ("pyvirtualcam", "pyvirtualcam"),
                            ("diffusers", "diffusers"), ("transformers", "transformers"), ("PySide6", "PySide6-Essentials")):
        try:
            found.append(f"{module} {getattr(importlib.import_module(module), '__version__', '?')}")
        except Exception:  # noqa: BLE001 - a package that fails to import is as missing as an absent one
            absent.append(package)
    if absent:
        return Check("Packages", MISSING, ", ".join(found), f"pip install {' '.join(absent)}")
    return Check("Packages", OK, ", ".join(found))


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return [Check("torch", MISSING, f"cannot import: {exc}",
                      "pip install torch (a CUDA build from https://pytorch.org for GPU use)")]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    checks = [Check("torch", OK, f"{torch.__version__} ({build})")]
    if not torch.cuda.is_available():
        fix = ("Install the NVIDIA driver, then a CUDA build of torch "
               "(pip install torch --index-url https://download.pytorch.org/whl/cu128); "
               "the app runs on the CPU meanwhile, far too slowly for live use")
        if torch.version.cuda:
            fix = "torch has CUDA but sees no GPU: check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
        checks.append(Check("CUDA", WARN, "no usable GPU", fix))
        return checks
    driver = _nvidia_smi("driver_version") or "unknown driver"
    checks.append(Check("CUDA", OK, f"runtime {torch.version.cuda}, driver {driver}"))
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        try:
            free, total = torch.cuda.mem_get_info(index)
            memory = f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
        except Exception:  # noqa: BLE001
            memory = f"{props.total_memory / 2**30:.1f} GiB"
        status, fix = OK, ""
        if props.total_memory < 6 * 2**30:
            status, fix = WARN, "Under 6 GiB: use 512x512 or smaller, 1 step, the tiny VAE"
        checks.append(Check(f"GPU {index}", status, f"{props.name}, compute {props.major}.{props.minor}, {memory}", fix))
    return checks


def _nvidia_smi(field: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def check_window() -> Check:
    """Whether Qt can open a window: the libraries its platform plugin needs, then a real start."""
    from app.commands.qt_check import install_hint, missing_libraries, qt_folder, xcb_files

    qt = qt_folder()
    if qt is None:
        return Check("Window (Qt)", MISSING, "PySide6 is not installed", "pip install PySide6-Essentials")
    if sys.platform.startswith("linux"):
        missing = missing_libraries(xcb_files(qt))
        if missing:
            return Check("Window (Qt)", MISSING, f"the X11 platform plugin cannot load: {', '.join(missing)} missing",
                         install_hint(missing).replace("\n", "; "))
    # A real start tells the rest: no display, a broken driver, a plugin that will not load.
    probe = "from PySide6.QtWidgets import QApplication; app = QApplication([]); print(app.platformName())"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("Window (Qt)", WARN, f"could not try Qt: {exc}")
    if done.returncode != 0 and "could not connect to display" in done.stderr:
        where = f"at DISPLAY={os.environ['DISPLAY']}" if os.environ.get("DISPLAY") else "(DISPLAY is not set)"
        return Check("Window (Qt)", WARN, f"no X server answers {where}",
                     "Start the app from a desktop session; the headless commands work without one")
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return Check("Window (Qt)", MISSING, f"Qt could not start (exit {done.returncode}): "
                     f"{lines[-1] if lines else 'no message'}",
                     "Run with QT_DEBUG_PLUGINS=1 to see which library is missing")
    return Check("Window (Qt)", OK, f"platform plugin '{done.stdout.strip()}' starts")


def check_tensorrt() -> Check:
    try:
        import tensorrt
    except Exception:  # noqa: BLE001
        return Check("TensorRT", WARN, "not installed (optional: --acceleration tensorrt)",
                     'pip install -e ".[tensorrt]" on a CUDA machine; --acceleration compile needs nothing extra')
    return Check("TensorRT", OK, tensorrt.__version__)


def check_cameras() -> Check:
    from app.sources import list_cameras

    try:
        cameras = list_cameras()
    except Exception as exc:  # noqa: BLE001
        return Check("Cameras", WARN, f"cannot list: {exc}", "Check the camera driver")
    real = [c for c in cameras if not c.virtual]
    if not real:
        fix = "Connect a webcam"
        if sys.platform.startswith("linux"):
            fix += "; it should appear as /dev/video*, readable by your user (group 'video')"
        elif sys.platform == "darwin":
            fix += " and allow camera access in System Settings > Privacy & Security > Camera"
        return Check("Cameras", WARN, "none found (the test pattern and screen capture still work)", fix)
    return Check("Cameras", OK, "; ".join(c.label() for c in cameras))


def check_virtualcam() -> Check:
    from app.outputs import virtualcam_available, virtualcam_setup_hint

    ok, detail = virtualcam_available()
    if ok:
        return Check("Virtual camera", OK, f"writes to {detail}")
    reason, _, _ = detail.partition(" To set one up:")
    fix = virtualcam_setup_hint() if "busy" not in reason.lower() else "Close the program that uses it"
    return Check("Virtual camera", WARN, reason, fix)


def check_recording() -> Check:
    """Which H.264 encoder recordings will use, and why a faster one is passed over."""
    from app.outputs.h264 import ENCODER_OPTIONS, encoder_problem

    problems = {name: encoder_problem(name) for name in ENCODER_OPTIONS}
    usable = [name for name, problem in problems.items() if problem is None]
    passed_over = "; ".join(f"{name}: {problem}" for name, problem in problems.items() if problem)
    if not usable:
        return Check("Recording", MISSING, f"no H.264 encoder opens ({passed_over})",
                     "pip install --force-reinstall av (its wheels carry FFmpeg with x264)")
    detail = f"H.264 with {usable[0]}" + (f" ({passed_over})" if usable[0] != "h264_nvenc" else "")
    return Check("Recording", OK, detail)


def check_screen() -> Check:
    from app.sources import SourceError, list_monitors

    try:
        monitors = list_monitors()
    except SourceError as exc:
        return Check("Screen capture", WARN, str(exc))
    screens = [f"{i}: {m['width']}x{m['height']}" for i, m in enumerate(monitors) if i > 0]
    return Check("Screen capture", OK, "; ".join(screens) or "no screen")


def check_model_cache() -> Check:
    from core.config import DEFAULT_MODEL

    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception as exc:  # noqa: BLE001 - a missing cache folder raises CacheNotFound
        return Check("Model cache", WARN, f"empty ({type(exc).__name__})",
                     f"The first run downloads {DEFAULT_MODEL} (a few GB); or give --model a local folder/.safetensors, "
                     "or preset:sd-turbo to test speed with random weights offline")
    models = sorted((r for r in info.repos if r.repo_type == "model"), key=lambda r: r.repo_id)
    listed = ", ".join(f"{r.repo_id} ({r.size_on_disk / 2**30:.1f} GiB)" for r in models)
    if not any(r.repo_id == DEFAULT_MODEL for r in models):
        return Check("Model cache", WARN, listed or "no models",
                     f"The first run downloads {DEFAULT_MODEL} (a few GB); it is then used offline")
    return Check("Model cache", OK, listed)


def check_several_gpus() -> Check:
    """How ``--gpus`` would spread the work here: frames at 1 step, AsyncDiff's UNet stages at 2-4 (core.parallel)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return Check("several GPUs", OK, f"{count} GPU(s): --gpus needs two or more; one engine runs")
    from core.parallel import split_plan

    return Check("several GPUs", OK, f"{count} GPUs: --gpus {count} deals frames to one engine per GPU at 1 step; at "
                                     f"2-4 steps (asyncdiff) the sd-turbo UNet splits as {split_plan(gpus=count)}")


CHECKS: list[Callable[[], Check | list[Check]]] = [
    check_python, check_packages, check_torch, check_several_gpus, check_tensorrt, check_window, check_cameras, check_virtualcam,
    check_recording, check_screen, check_model_cache,
]


def run_checks() -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        try:
            outcome = check()
        except Exception as exc:  # noqa: BLE001 - a crashing check is itself a finding
            outcome = Check(check.__name__.removeprefix("check_"), WARN, f"the check failed: {exc!r}")
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


def check_server(url: str, token_file: str | None) -> Check:
    """A server's /health with the token: reachable, token accepted, and what it serves."""
    import urllib.error
    import urllib.request

    try:
        token = (Path(token_file).read_text().strip().splitlines() or [""])[0].strip() if token_file else \
            os.environ.get("LIVEDIFFUSION_TOKEN", "")
    except OSError as exc:
        return Check("Server", MISSING, f"cannot read the token: {exc}", "give --token-file with the server's token")
    request = urllib.request.Request(url.rstrip("/") + "/health", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            info = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return Check("Server", MISSING, f"{url} refused the token", "use the token the server printed at start")
        return Check("Server", MISSING, f"{url} answered {exc.code}", "is it main.py serve?")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Check("Server", MISSING, f"{url} is not reachable: {exc}",
                     "start it with main.py serve, and check the address, the port and any firewall")
    return Check("Server", OK, f"{url}: {info.get('model', '?')} at {info.get('size', '?')}, {info.get('steps', '?')} "
                               f"step(s) on {info.get('gpu', '?')}; {info.get('sessions', 0)} of "
                               f"{info.get('max_sessions', '?')} sessions in use")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="main.py doctor", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--server", metavar="URL", help="also check a server (main.py serve): reachable, token, model")
    parser.add_argument("--token-file", help="with --server: its token (default: $LIVEDIFFUSION_TOKEN)")
    args = parser.parse_args(argv)
    from app.sources.camera import quiet_opencv

    with quiet_opencv():
        results = run_checks()
    if args.server:
        results.append(check_server(args.server, args.token_file))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        marks = {OK: "ok  ", WARN: "warn", MISSING: "MISS"}
        width = max(len(r.name) for r in results)
        for r in results:
            print(f"[{marks[r.status]}] {r.name:<{width}}  {r.detail}")
            if r.fix:
                print(f"       {'':<{width}}  -> {r.fix}")
    return 1 if any(r.status == MISSING for r in results) else 0
