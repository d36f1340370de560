"""The stored compiled engines' folder: least recently used engines evicted past the size limit, folders of
builds whose process died removed, the engine being used kept."""

import json
import os
import subprocess
import sys
import time

import pytest

from core.accel import store

MB = 2**20


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path))
    monkeypatch.delenv("LIVEDIFFUSION_STORED_MAX_MB", raising=False)
    return store.stored_root()


def stored_engine(key: dict, used_s_ago: float):
    """A stored engine of 1 MB through the real writer, last used ``used_s_ago`` seconds ago."""
    folder = store.write_folder(key, {"piece.bin": lambda path: path.write_bytes(os.urandom(MB))})
    stamp = time.time() - used_s_ago
    os.utime(folder / store.KEY_FILE, (stamp, stamp))
    return folder


def test_least_recently_used_engines_go_first_past_the_limit(root):
    old = stored_engine({"n": 1}, 3000)
    middle = stored_engine({"n": 2}, 2000)
    new = stored_engine({"n": 3}, 1000)
    removed = store.tidy(limit=int(2.5 * MB))
    assert removed == [old]
    assert not old.exists() and middle.exists() and new.exists()


def test_a_load_marks_the_engine_used(root):
    old = stored_engine({"n": 1}, 3000)
    middle = stored_engine({"n": 2}, 2000)
    assert store.checked_files(old, ["piece.bin"]) is not None  # what a load does first
    store.tidy(limit=int(1.5 * MB))
    assert old.exists() and not middle.exists()


def test_the_engine_in_use_is_kept_even_when_it_alone_passes_the_limit(root):
    old = stored_engine({"n": 1}, 3000)
    new = stored_engine({"n": 2}, 1000)
    assert store.tidy(keep=old, limit=MB // 2) == [new]
    assert old.exists()


def test_writing_an_engine_evicts_under_the_configured_limit(root, monkeypatch):
    old = stored_engine({"n": 1}, 3000)
    monkeypatch.setenv("LIVEDIFFUSION_STORED_MAX_MB", "1.5")
    new = stored_engine({"n": 2}, 0)
    assert new.exists() and not old.exists()
    assert json.loads((new / store.KEY_FILE).read_text())["key"] == {"n": 2}


def test_folders_of_dead_builds_are_removed_and_live_ones_kept(root):
    root.mkdir(parents=True)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = finished.stdout.strip()
    dead, recent = root / f"abc.building-{dead_pid}", root / f"abf.building-{dead_pid}"
    mine = root / f"abd.building-{os.getpid()}"
    for folder in (dead, recent, mine):
        folder.mkdir()
        (folder / "piece.bin").write_bytes(b"half")
    for folder in (dead, mine):  # two hours old: a dead process's, and this live one's
        stamp = time.time() - 2 * 3600
        os.utime(folder, (stamp, stamp))
    removed = store.tidy()
    assert mine.exists() and recent.exists()  # alive; and too recent to judge (another container's PID?)
    if sys.platform != "win32":
        assert removed == [dead] and not dead.exists()


def test_an_engine_used_in_the_last_minutes_is_kept_and_leftovers_of_an_eviction_go(root):
    busy = stored_engine({"n": 1}, 60)  # another process may be loading it
    old = stored_engine({"n": 2}, 3000)
    leftover = root / f"abc.evicting-{os.getpid()}"
    leftover.mkdir()
    assert store.tidy(limit=MB // 2) == [old]
    assert busy.exists() and not leftover.exists()
    assert not list(root.glob("*.evicting-*"))


def test_an_old_build_folder_is_removed_whatever_its_process(root):
    root.mkdir(parents=True)
    stale = root / f"abe.building-{os.getppid()}"  # a live process, but a build never takes six hours
    stale.mkdir()
    stamp = time.time() - store.ABANDONED_BUILD_S - 60
    os.utime(stale, (stamp, stamp))
    assert store.tidy() == [stale]


def test_the_limit_setting(monkeypatch):
    monkeypatch.setenv("LIVEDIFFUSION_STORED_MAX_MB", "100")
    assert store.limit_bytes() == 100 * MB
    monkeypatch.setenv("LIVEDIFFUSION_STORED_MAX_MB", "lots")
    assert store.limit_bytes() == store.DEFAULT_LIMIT_MB * MB
