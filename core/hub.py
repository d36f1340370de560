"""Whether the model hub can be reached, asked at most once per process.

huggingface_hub retries every request five times with back-off when the network is down, so a machine
without internet waited about half a minute of silence before any error. Instead, the first time a model
is not in the local cache, one short request tells whether the hub answers; if it does not, the process
switches huggingface_hub to offline mode, and every later load fails (or succeeds from the cache) at once.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
import urllib.request

log = logging.getLogger(__name__)

#: How long the one check may take. DNS lookups ignore socket timeouts, so the check runs on a thread
#: and is abandoned after this long.
CHECK_TIMEOUT_S = 2.0

_lock = threading.Lock()
_reachable: bool | None = None  # None: not asked yet in this process
_offline_reason = ""


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # noqa: BLE001 - an unusual hub version: fall back to the public address
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline_by_setting() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return False


def probe(url: str, timeout: float = CHECK_TIMEOUT_S) -> bool:
    """True if anything at ``url`` answers HTTP (any status: even a 404 proves the network works).
    urllib honours the usual *_proxy variables, as huggingface_hub does."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _probe_in_time(url: str, timeout: float) -> bool:
    answer: list[bool] = []
    worker = threading.Thread(target=lambda: answer.append(probe(url, timeout)), name="hub-check", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(answer and answer[0])


def go_offline(reason: str) -> None:
    """Offline mode for the rest of the process: huggingface_hub then raises at once instead of retrying."""
    global _reachable, _offline_reason
    _reachable, _offline_reason = False, reason
    os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries imported later
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub's HTTP session
    except Exception:  # noqa: BLE001
        pass
    log.warning("The model hub cannot be reached (%s): models load from the local cache only", reason)


def hub_reachable() -> bool:
    """Ask once whether the hub answers; on no answer switch to offline mode. Later calls answer at once."""
    global _reachable
    with _lock:
        if _reachable is not None:
            return _reachable
        if _offline_by_setting():
            _reachable = False
            return False
        endpoint = hub_endpoint()
        if _probe_in_time(endpoint, CHECK_TIMEOUT_S):
            _reachable = True
        else:
            go_offline(f"{endpoint} did not answer; checked once, offline for the rest of this run")
        return bool(_reachable)


def offline_reason() -> str:
    """Why downloads are off, for messages: the check's finding, the user's setting, or ''."""
    if _offline_reason:
        return _offline_reason
    if _offline_by_setting():
        return "offline mode is on (HF_HUB_OFFLINE)"
    return ""


def forget() -> None:
    """Ask again next time (tests, and a GUI retry after the network came back)."""
    global _reachable, _offline_reason
    with _lock:
        _reachable, _offline_reason = None, ""
