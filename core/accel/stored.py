"""Which way this process keeps compiled engines between starts (core.accel.precompiled, core.accel.aoti)."""

from __future__ import annotations

import functools
import logging
import os

import torch

from core.accel import aoti, precompiled

log = logging.getLogger(__name__)


def stored_format() -> str:
    """How compiled engines are kept between starts: "precompiled" (torch.compile's own precompiled functions,
    the default where this torch has them), "aoti" (AOTInductor packages: ``LIVEDIFFUSION_STORED=aoti`` or
    ``LIVEDIFFUSION_AOTI=1``; experimental, its loader crashed on the lent H100 with torch 2.11), or "" (each
    start compiles: ``LIVEDIFFUSION_STORED=off``, an older torch, or an AOTInductor loader that crashed here)."""
    legacy = "aoti" if os.environ.get("LIVEDIFFUSION_AOTI", "0") == "1" else "precompiled"
    choice = os.environ.get("LIVEDIFFUSION_STORED", legacy)
    if choice == "aoti":
        crashed = aoti.loader_crashed()
        if crashed:
            log.info("stored compiled engines stay off: %s on them before", crashed)
        return "" if crashed else "aoti"
    if choice == "precompiled" and precompiled.available():
        return "precompiled"
    if choice == "precompiled":
        _say_once(f"torch {torch.__version__} cannot store compiled engines (precompiling needs a newer torch; "
                  "2.11 works): every start compiles again")
    return ""


@functools.cache
def _say_once(message: str) -> None:
    log.info(message)
