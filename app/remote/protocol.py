"""Live-setting messages from a remote client: one JSON object per data-channel message, checked before any of
it reaches the engine, applied between two frames by the engine's own thread-safe setters.

A message names any of ``FIELDS``; a value out of range, an unknown field, a message over
``MAX_MESSAGE_BYTES`` or anything that is not a JSON object raises ``ProtocolError`` (the server answers with
the reason and, for garbage, closes the session). The step count is not here: it needs another engine.
"""

from __future__ import annotations

import json
import math

from core.config import MAX_SMOOTHING

MAX_MESSAGE_BYTES = 16 * 1024
MAX_PROMPT_CHARS = 2000


class ProtocolError(ValueError):
    """A client's message that cannot be applied; the text says why. ``garbage``: not a message of ours at all
    (not JSON, too large), which ends the session."""

    def __init__(self, message: str, garbage: bool = False):
        super().__init__(message)
        self.garbage = garbage


def _text(value):
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        raise ProtocolError(f"must be text of at most {MAX_PROMPT_CHARS} characters")
    return value


def _number(low: float, high: float):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ProtocolError(f"must be a number from {low} to {high}")
        return float(value)
    return check


def _seed(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProtocolError("must be an integer from 0 to 2**63-1")
    return value


def _flag(value):
    if not isinstance(value, bool):
        raise ProtocolError("must be true or false")
    return value


FIELDS = {
    "prompt": _text,
    "negative_prompt": _text,
    "strength": _number(0.0, 1.0),
    "seed": _seed,
    "guidance": _number(0.0, 20.0),
    "delta": _number(0.0, 5.0),
    "smoothing": _number(0.0, MAX_SMOOTHING),
    "similarity_filter": _flag,
}


def parse_message(data: str | bytes) -> dict:
    """The checked changes in one message."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message may have at most {MAX_MESSAGE_BYTES} bytes, this one has {len(raw)}",
                            garbage=True)
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}", garbage=True) from None
    if not isinstance(message, dict) or not message:
        raise ProtocolError("a message is a JSON object naming one or more settings")
    unknown = sorted(set(message) - set(FIELDS))
    if unknown:
        raise ProtocolError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    changes = {}
    for name, value in message.items():
        try:
            changes[name] = FIELDS[name](value)
        except ProtocolError as exc:
            raise ProtocolError(f"{name}: {exc}") from None
    return changes


def apply_changes(engine, changes: dict) -> None:
    """``changes`` (from ``parse_message``) through the engine's setters; they take effect at its next frame."""
    if "prompt" in changes or "negative_prompt" in changes:
        engine.update_prompt(changes.get("prompt", engine.prompt), changes.get("negative_prompt"))
    if "strength" in changes:
        engine.set_strength(changes["strength"])
    if "seed" in changes:
        engine.set_seed(changes["seed"])
    if "guidance" in changes or "delta" in changes:
        engine.set_guidance(guidance_scale=changes.get("guidance"), delta=changes.get("delta"))
    if "smoothing" in changes:
        engine.set_smoothing(changes["smoothing"])
    if "similarity_filter" in changes:
        engine.set_similarity_filter(changes["similarity_filter"])


def encode_message(**changes) -> str:
    """A client's message, checked the way the server will check it."""
    text = json.dumps(changes)
    parse_message(text)
    return text
