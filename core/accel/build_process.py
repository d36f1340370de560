"""A build run in a process of its own beside a server (core.accel.tick_store's UNet for shared ticks): started
below the server's priority in a process group of its own (a Ctrl+C meant for the server does not cut it short;
the server stops it), ended with the server however the server ends (it watches the pipe on its stdin), and
waited for by whoever asks for the same key. A failure the build itself reports is kept beside the key for a day,
so that a build that cannot succeed is not run again at every start; a failure that may pass (out of memory, a
full disk, the build stopped or killed) is not kept.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.accel import store
from core.accel.keys import digest

log = logging.getLogger(__name__)

KEY_MISMATCH_EXIT = 3  # the build's model is not the server's: kept (the same start would give it again)
TRANSIENT_EXIT = 4  # out of memory, a full disk: not kept
BUILD_FAILED_EXIT = 5  # the compile raised: kept
SERVER_GONE_EXIT = 6
KEPT_FAILURES = (KEY_MISMATCH_EXIT, BUILD_FAILED_EXIT)
BUILD_TIMEOUT_S = 3600.0  # a cold build took 163 s on the lent H100; far beyond that is a hung process
FAILURE_KEPT_S = 24 * 3600.0
ROOT = Path(__file__).resolve().parents[2]
_running: dict[str, "BuildProcess"] = {}
_running_lock = threading.Lock()


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this project first on the path: the server's working folder (kept, for
    relative paths) may hold a package of the same name."""
    launch = f"import runpy, sys; sys.path.insert(0, {str(ROOT)!r}); runpy.run_module({module!r}, run_name='__main__')"
    return [sys.executable, "-c", launch, *args]


def failure_file(key: dict) -> Path:
    return store.stored_root() / f"{digest(key)[:24]}.build-failed"


def earlier_failure(key: dict) -> str | None:
    """Why the last build for ``key`` failed, if it did within a day (then: not tried again before)."""
    path = failure_file(key)
    try:
        if time.time() - path.stat().st_mtime < FAILURE_KEPT_S:
            return path.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    return None


def keep_failure(key: dict, reason: str) -> None:
    try:
        failure_file(key).parent.mkdir(parents=True, exist_ok=True)
        failure_file(key).write_text(reason + "\n", encoding="utf-8")
    except OSError as error:  # a read-only or full cache: the next start tries again
        log.info("could not note the failed build: %s", error)


class BuildProcess:
    """One build process and what it printed, for everyone who waits on its key."""

    def __init__(self, command: list[str]):
        if sys.platform == "win32":
            detached = {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS | subprocess.CREATE_NEW_PROCESS_GROUP}
        else:  # niceness is set by the build itself (it is inherited by its compile workers)
            detached = {"start_new_session": True}
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        # stdin stays open for the build's life: its end tells the build that the server is gone.
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env, **detached)
        self.output = ""
        self.stopped = threading.Event()  # by the server (its exit, the time limit): never a kept failure
        self.ended = threading.Event()
        threading.Thread(target=self._collect, name="build-process-output", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        if self.process.poll() is None:
            try:
                if sys.platform == "win32":
                    self.process.kill()
                else:  # the build and its compile workers
                    os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass

    def _collect(self) -> None:
        # Not communicate(): it would close stdin, which the build reads as the server's end.
        late = threading.Timer(BUILD_TIMEOUT_S, self.stop)
        late.daemon = True
        late.start()
        try:
            output = self.process.stdout.read()
            self.process.wait()
            if self.stopped.is_set():
                output += b"\n(stopped by the server)"
            self.output = output.decode("utf-8", errors="replace")
        finally:
            late.cancel()
            self.ended.set()


def run(key: dict, command: list[str]) -> None:
    """Run the build process for ``key`` (or wait for the one already running) until it ends; RuntimeError with
    the end of its output when it fails, kept beside the key when the build reported it (KEPT_FAILURES)."""
    with _running_lock:
        child = _running.get(digest(key))
        if child is None or child.ended.is_set():
            child = _running[digest(key)] = BuildProcess(command)
    child.ended.wait()
    code = child.process.returncode
    if code != 0:
        reason = f"the build process failed (exit {code}): {child.output.strip()[-800:]}"
        if code in KEPT_FAILURES and not child.stopped.is_set():
            keep_failure(key, reason)
        raise RuntimeError(reason)


@atexit.register
def stop_all() -> None:
    for child in list(_running.values()):
        child.stop()


# ----- in the build process ---------------------------------------------------------------------------


def exit_code_for(error: BaseException) -> int:
    """TRANSIENT_EXIT for what may pass (memory, disk), else BUILD_FAILED_EXIT."""
    text = str(error).lower()
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or "out of memory" in text \
            or "alloc_failed" in text:
        return TRANSIENT_EXIT
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return TRANSIENT_EXIT
    return BUILD_FAILED_EXIT


def exit_with_server() -> None:
    """Ends this process when the server's end of its stdin closes: a server killed outright leaves no build."""
    try:
        stdin = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return

    def watch():
        # os.read, not sys.stdin: a daemon thread blocked in the buffered reader aborts the interpreter's exit.
        try:
            while os.read(stdin, 4096):
                pass
        except OSError:
            pass
        print("the server is gone: build stopped", file=sys.stderr, flush=True)
        os._exit(SERVER_GONE_EXIT)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()
