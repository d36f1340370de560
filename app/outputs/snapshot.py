"""A single frame saved as a picture."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from app.outputs.base import OutputError


def snapshot(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Save one RGB frame as PNG (or any extension cv2.imwrite knows). Raises OutputError."""
    target = Path(path)
    if not target.parent.is_dir():
        raise OutputError(f"Cannot save {target}: folder {target.parent} does not exist")
    try:
        ok = cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error as exc:
        raise OutputError(f"Cannot save {target}: {exc}") from exc
    if not ok:
        raise OutputError(f"Cannot save {target}: unwritable folder, full disk or unknown extension")
    return target
