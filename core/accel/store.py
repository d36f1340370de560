"""The on-disk side of stored compiled engines (AOTInductor packages, torch.compile's precompiled functions):
one folder per artifact key under ``<cache>/compiled/``, written aside and renamed into place, its files
checked against the checksums written with them before anything is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from core.accel.keys import digest
from core.cache import cache_root

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
# Each stored engine (a model architecture at one size and step count) is 60-70 MB; a user who tries many sizes
# and models would otherwise fill the disk. The least recently used go first.
DEFAULT_LIMIT_MB = 2048
ABANDONED_BUILD_S = 6 * 3600.0  # far longer than any build: a folder left by a killed process
DEAD_BUILD_MIN_AGE_S = 3600.0
IN_USE_S = 600.0  # an engine used this recently may be loading in another process: never evicted


def stored_root() -> Path:
    return cache_root() / "compiled"


def artifact_dir(key: dict) -> Path:
    return stored_root() / digest(key)[:24]


def sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def write_folder(key: dict, writers: dict[str, Callable[[Path], None]], say=None) -> Path:
    """Each ``writers[name](path)`` writes one file into a folder beside the key's; the key file with their
    checksums goes last, then the folder replaces any stale or broken one. Nothing half-written is left."""
    folder = artifact_dir(key)
    building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    hashes = {}
    try:
        for name, write in writers.items():
            if say is not None:
                say(f"compiling the {name.split('.')[0]} ahead of time")
            write(building / name)
            hashes[name] = sha256(building / name)
        (building / KEY_FILE).write_text(json.dumps({"key": key, "sha256": hashes}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    log.info("compiled artifacts written to %s", folder)
    try:
        tidy(keep=folder)
    except Exception as exc:  # noqa: BLE001 - the engine is stored; tidying can wait for the next build
        log.info("could not tidy the stored compiled engines: %s: %s", type(exc).__name__, exc)
    return folder


def checked_files(folder: Path, names) -> dict[str, Path] | None:
    """The folder's files by name, once each matches the checksum written with it; None when nothing is stored
    there. Raises ValueError for a file that does not match (a torn write, a disk error)."""
    if not (folder / KEY_FILE).exists():
        return None
    recorded = json.loads((folder / KEY_FILE).read_text())["sha256"]
    for name in names:
        if sha256(folder / name) != recorded[name]:
            raise ValueError(f"{name} does not match the checksum written with it")
    _mark_used(folder)
    return {name: folder / name for name in names}


def discard(folder: Path, error: Exception) -> None:
    log.warning("compiled artifacts in %s could not be used (%s: %s); removing them to rebuild",
                folder, type(error).__name__, error)
    shutil.rmtree(folder, ignore_errors=True)


def _mark_used(folder: Path) -> None:
    try:
        os.utime(folder / KEY_FILE)  # the key file's time is the folder's last use, for eviction
    except OSError:
        pass  # a read-only cache still loads


def limit_bytes() -> int:
    try:
        return int(float(os.environ.get("LIVEDIFFUSION_STORED_MAX_MB", DEFAULT_LIMIT_MB)) * 2**20)
    except ValueError:
        return DEFAULT_LIMIT_MB * 2**20


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _build_abandoned(folder: Path, now: float) -> bool:
    """A ``*.building-<pid>`` folder whose writer is gone: past six hours whatever its PID (a folder is written
    within minutes, and a container may give every run the same PID); else its process must have ended, as far as
    this system can tell, and the folder be an hour old (a writer in another container sharing the cache shows
    as ended: the hour keeps its folder while it writes)."""
    pid = folder.name.rpartition(".building-")[2]
    if not pid.isdigit():
        return False
    age = now - folder.stat().st_mtime
    if age > ABANDONED_BUILD_S:
        return True
    if int(pid) == os.getpid():
        return False
    # Signal 0 only asks whether the process exists; on Windows it would be CTRL_C_EVENT, so there only the age
    # counts.
    if age < DEAD_BUILD_MIN_AGE_S or sys.platform == "win32":
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # exists, owned by someone else; or no PID of this system
    return False


def _remove(folder: Path) -> bool:
    """Out of sight first (renamed aside, so no reader takes a half-removed folder for a stored engine), then
    removed; a leftover ``.evicting-`` folder (a file held open on Windows) goes at the next tidy."""
    aside = folder.with_name(f"{folder.name}.evicting-{os.getpid()}")
    try:
        os.replace(folder, aside)
    except OSError:
        return False  # in use or gone: nothing was removed
    shutil.rmtree(aside, ignore_errors=True)
    return True


def tidy(keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Remove folders left half-written by a process that died, then the least recently used stored engines
    until the rest fit in ``limit`` bytes (``LIVEDIFFUSION_STORED_MAX_MB``, 2048 by default). ``keep``, and any
    engine used in the last ``IN_USE_S`` (another process may be loading it), stay whatever their size. Returns
    what was removed. A folder that cannot be read or removed (another process got there first) is skipped."""
    root, now = stored_root(), time.time()
    limit = limit_bytes() if limit is None else limit
    removed, stored = [], []
    try:
        entries = list(root.iterdir()) if root.is_dir() else []
    except OSError as exc:
        log.info("could not tidy the stored compiled engines in %s: %s", root, exc)
        return removed
    for entry in entries:
        try:
            if not entry.is_dir():
                continue
            if ".evicting-" in entry.name:
                shutil.rmtree(entry, ignore_errors=True)
            elif ".building-" in entry.name:
                if _build_abandoned(entry, now) and _remove(entry):
                    removed.append(entry)
            elif (entry / KEY_FILE).exists():
                stored.append(((entry / KEY_FILE).stat().st_mtime, _folder_bytes(entry), entry))
        except OSError:
            continue
    total = sum(size for _, size, _ in stored)
    for used, size, entry in sorted(stored, key=lambda item: item[0]):  # oldest use first
        if total <= limit:
            break
        if (keep is not None and entry.resolve() == keep.resolve()) or now - used < IN_USE_S:
            continue
        if _remove(entry):
            total -= size
            removed.append(entry)
    if removed:
        log.info("removed %d stored compiled engine folder(s) from %s (least recently used past %d MB, or "
                 "left by a process that stopped mid-build)", len(removed), root, limit // 2**20)
    return removed
