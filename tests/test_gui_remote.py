"""The window's engine choice (app/gui/engine_choice.py, engine_control.py): an engine server at an address with
its token, used through the same session as a local model; a lost server shows, passes the source through and
comes back; a server that cannot be reached offers this computer instead."""

import os
import stat
import time

import numpy as np
import pytest

from tests.gui_support import small

pytest.importorskip("aiortc")
from app.gui.engine_control import LOST_BADGE  # noqa: E402
from tests.test_remote import LIMITS, TOKEN, Inverting, Serving  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def serving():
    server = Serving(Inverting, LIMITS)
    yield server
    server.stop()


def choose_server(window, url, token=TOKEN):
    choice = window.model_panel.engine_choice
    choice.url_edit.setText(url)
    choice.token_edit.setText(token)
    choice.combo.setCurrentIndex(1)  # commits the three fields: one reload


def test_a_server_chosen_in_the_window_runs_the_stream_and_its_settings_are_kept(open_window, serving, tmp_path):
    window = open_window(small())
    local = window.session.engine
    choose_server(window, serving.url)
    window.reload_engine()  # what the reload timer does
    _until(window, lambda: window.session.engine is not local)
    engine = window.session.engine
    assert engine.target == (serving.url, TOKEN) and engine.connected and len(serving.sessions) == 1
    assert not window.model_panel.model_combo.isEnabled() and not window.model_panel.accel_combo.isEnabled()
    assert window.model_panel.status_label.text().startswith(f"Using the engine server at {serving.url}")
    window.session.set_strength(0.8)  # a live setting travels as before
    window.reload_engine()  # the same address and token: no second session
    assert window.session.engine is engine and len(serving.sessions) == 1

    window.save_settings()
    saved = window.store.load()
    assert (saved.engine, saved.server_url, saved.server_token) == ("server", serving.url, TOKEN)
    if os.name == "posix":  # the token is a password: the file is the user's alone
        assert stat.S_IMODE(os.stat(window.store.path).st_mode) == 0o600

    window.model_panel.engine_choice.combo.setCurrentIndex(0)  # back to this computer: a local engine again
    window.reload_engine()
    _until(window, lambda: window.session.engine is not engine and getattr(window.session.engine, "target", None) is None)
    assert window.model_panel.model_combo.isEnabled()
    _until(window, lambda: not serving.sessions)  # the server's session ended with the swap


def test_a_lost_server_shows_and_passes_the_source_through_until_it_returns(open_window, serving, monkeypatch):
    from app.remote import client

    monkeypatch.setattr(client, "SILENCE_S", 1.0)
    window = open_window(small(engine="server", server_url=serving.url, server_token=TOKEN))
    _until(window, lambda: getattr(window.session.engine, "target", None) is not None)
    engine = window.session.engine
    engine.delays = (0.2,)
    frame = np.full((64, 64, 3), 40, np.uint8)
    serving.stop()
    deadline = time.monotonic() + 10
    while engine.connected and time.monotonic() < deadline:
        engine.submit(frame)
        time.sleep(0.05)
    assert not engine.submit(frame)[0].processed  # the source, unfiltered
    window.update_stats()
    assert window.preview.badge() == LOST_BADGE
    assert "server lost" in window.model_panel.status_label.text()
    _until(window, lambda: "Lost the engine server" in window.status.currentMessage())
    restarted = Serving(Inverting, LIMITS, port=serving.port)
    try:
        _until(window, lambda: engine.connected, 30)
        window.update_stats()
        assert window.preview.badge() != LOST_BADGE
    finally:
        restarted.stop()
        window.session.shutdown()


def test_an_unreachable_server_offers_this_computer(open_window):
    window = open_window(small())
    local = window.session.engine
    choose_server(window, "http://127.0.0.1:9")
    window.reload_engine()
    notifier = window.notifier
    _until(window, lambda: "Use this computer" in notifier.choices)
    assert "cannot reach http://127.0.0.1:9" in notifier.texts("error")[-1]
    assert window.session.engine is local  # the stream kept its engine
    builds = len(window.factory.built)
    notifier.choices["Use this computer"]()
    window.reload_engine()
    assert window.model_panel.engine_target() is None and window.model_panel.model_combo.isEnabled()
    assert window.session.engine is local and len(window.factory.built) == builds  # nothing to load again


def test_an_address_that_is_not_one_is_said_and_starts_nothing(open_window):
    window = open_window(small())
    engine = window.session.engine
    choose_server(window, "gpu-box:8765")
    window.reload_engine()
    assert "is not a server address" in window.model_panel.status_label.text()
    assert window.session.engine is engine and not window.session.loader.is_busy()


def _until(window, condition, timeout_s=15):
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if condition():
            return
        time.sleep(0.02)
    assert condition()


def test_going_back_to_the_running_engine_drops_a_load_begun_meanwhile(open_window, serving):
    import threading

    from tests.gui_support import FakeFactory

    gate = threading.Event()
    window = open_window(small(model="slow/model", engine="server", server_url=serving.url, server_token=TOKEN),
                         factory=FakeFactory(gate=gate))
    _until(window, lambda: getattr(window.session.engine, "target", None) is not None)
    remote = window.session.engine
    window.model_panel.engine_choice.combo.setCurrentIndex(0)  # this computer: a slow local load begins
    window.reload_engine()
    assert window.session.loader.is_busy()
    window.model_panel.engine_choice.combo.setCurrentIndex(1)  # back to the server, which still runs
    window.reload_engine()
    assert not window.session.loader.is_busy()
    gate.set()
    time.sleep(0.3)
    _until(window, lambda: True)
    assert window.session.engine is remote  # the local engine, built anyway, was not swapped in
