"""The model hub is asked once; unreachable, the process goes offline and each library line is logged once.

Network traffic here goes only to loopback: a tiny HTTP server of the test's own, or a closed port.
"""

import http.server
import io
import logging
import socket
import threading

import pytest

from core import hub
from core.config import StreamConfig
from core.logs import configure_logging
from core.models import ModelLoadError, load_components


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_hub(monkeypatch):
    """Online as far as settings go, with the hub's address on a closed loopback port."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    hub.forget()
    yield constants
    hub.forget()


def test_probe_tells_a_server_from_a_closed_port():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Any HTTP answer counts, even an error status: the network works.
        assert hub.probe(f"http://127.0.0.1:{server.server_address[1]}/", timeout=2)
    finally:
        server.shutdown()
        server.server_close()
    assert not hub.probe(f"http://127.0.0.1:{closed_port()}/", timeout=2)


def test_an_unreachable_hub_is_asked_once_then_the_process_is_offline(fresh_hub, monkeypatch):
    asked = []

    def probe(url, timeout=hub.CHECK_TIMEOUT_S):
        asked.append(url)
        return False

    monkeypatch.setattr(hub, "probe", probe)
    config = StreamConfig(model="nobody-here/no-such-model-xyz", width=64, height=64, device="cpu")
    for _ in range(2):
        with pytest.raises(ModelLoadError) as err:
            load_components(config)
        text = str(err.value)
        assert "could not be reached" in text and "did not answer" in text
        assert "hf download nobody-here/no-such-model-xyz" in text
    assert asked == [fresh_hub.ENDPOINT]
    assert fresh_hub.HF_HUB_OFFLINE and hub.hub_reachable() is False and len(asked) == 1


def test_a_reachable_hub_is_not_switched_off(fresh_hub, monkeypatch):
    monkeypatch.setattr(hub, "probe", lambda url, timeout=0: True)
    assert hub.hub_reachable() and not fresh_hub.HF_HUB_OFFLINE and hub.offline_reason() == ""


def test_an_offline_setting_skips_the_check(fresh_hub, monkeypatch):
    monkeypatch.setattr(fresh_hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "probe", lambda *a, **k: pytest.fail("no request when offline mode is set"))
    assert hub.hub_reachable() is False and "HF_HUB_OFFLINE" in hub.offline_reason()


def test_library_lines_are_printed_once():
    import huggingface_hub.utils.logging  # noqa: F401 - attaches the library's own handler

    handler = configure_logging(logging.WARNING)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        library = logging.getLogger("huggingface_hub")
        assert not [h for h in library.handlers if type(h) is logging.StreamHandler]
        assert stream.getvalue().count("Retrying in 1s") == 1
    finally:
        handler.setStream(previous)
        logging.getLogger().removeHandler(handler)
