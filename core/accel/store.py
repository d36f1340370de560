"""The on-disk side of stored compiled engines (AOTInductor packages, torch.compile's precompiled functions):
one folder per artifact key under ``<cache>/compiled/``, written aside and renamed into place, its files
checked against the checksums written with them before anything is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from core.accel.keys import digest
from core.cache import cache_root

log = logging.getLogger(__name__)

KEY_FILE = "key.json"


def artifact_dir(key: dict) -> Path:
    return cache_root() / "compiled" / digest(key)[:24]


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
    return {name: folder / name for name in names}


def discard(folder: Path, error: Exception) -> None:
    log.warning("compiled artifacts in %s could not be used (%s: %s); removing them to rebuild",
                folder, type(error).__name__, error)
    shutil.rmtree(folder, ignore_errors=True)
