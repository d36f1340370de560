"""The one folder for everything this program caches on disk (compiled kernels, TensorRT plans):
``$LIVEDIFFUSION_CACHE``, else ``~/.cache/livediffusion``. Model weights stay in the Hugging Face cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LIVEDIFFUSION_CACHE", Path.home() / ".cache" / "livediffusion"))


def write_atomic(path: Path, data) -> None:
    """Readers (another app instance, the next start) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
