import os

import numpy as np
import pytest

# No test may reach the model hub: the machines that run them cannot.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def assert_frames_close(actual: np.ndarray, expected: np.ndarray, atol: int = 1) -> None:
    """uint8 frames from the same model and input: equal up to a rounding step. Two runs of the same
    arithmetic may sum in another order (thread count, CPU kernels), which can move a value across a
    rounding boundary, so frames are never compared bit for bit."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual.astype(np.int16), expected.astype(np.int16), rtol=0, atol=atol)


@pytest.fixture(scope="session")
def tiny_config():
    from core.config import StreamConfig

    return StreamConfig(model="preset:tiny", width=64, height=64, device="cpu", t_index_list=(20, 35))


@pytest.fixture(scope="session")
def tiny_components(tiny_config):
    from core.models import load_components

    return load_components(tiny_config)


@pytest.fixture(scope="session")
def tiny_sdxl_components(tiny_config):
    from core.models import load_components

    return load_components(tiny_config.replace(model="preset:tiny-sdxl"))


@pytest.fixture
def make_frame():
    def make(seed: int = 0, height: int = 64, width: int = 64) -> np.ndarray:
        rng = np.random.default_rng(seed)
        # Smooth content, so that VAE round trips and similarity behave as on camera frames.
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
        ys = np.linspace(0, 3, height)[:, None]
        xs = np.linspace(0, 3, width)[None, :]
        y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
        fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
        top = base[y0, x0] * (1 - fx) + base[y0, x0 + 1] * fx
        bottom = base[y0 + 1, x0] * (1 - fx) + base[y0 + 1, x0 + 1] * fx
        return (top * (1 - fy) + bottom * fy).astype(np.uint8)

    return make


@pytest.fixture
def open_window(qtbot, tmp_path):
    """Opens windows on a temporary settings file with stand-in engines (see tests/gui_support.py)."""
    from app.gui.main_window import MainWindow
    from app.gui.notifier import RecordingNotifier
    from app.gui.settings import SettingsStore
    from tests.gui_support import FakeFactory, no_devices, until

    def make(settings=None, factory=None, settings_file="settings.ini", wait_engine=True,
             **window_options):
        store = SettingsStore(str(tmp_path / settings_file))
        if settings is not None:
            store.save(settings)
            store = SettingsStore(str(tmp_path / settings_file))
        factory = factory or FakeFactory()
        window = MainWindow(store, engine_factory=factory, notifier=RecordingNotifier(), discover=no_devices,
                            **window_options)
        window.factory = factory
        qtbot.addWidget(window)
        window.show()
        if wait_engine:
            until(qtbot, lambda: window.session.engine is not None)
        return window

    return make


class FakeVirtualCamera:
    """Stands in for pyvirtualcam.Camera: records every device opened (size, fps) and every frame sent."""

    opened: list = []
    sent: list = []
    fail: str | None = None

    def __init__(self, width, height, fps, fmt=None, device=None, backend=None):
        if FakeVirtualCamera.fail:
            raise RuntimeError(FakeVirtualCamera.fail)
        self.width, self.height, self.fps, self.device = width, height, fps, device or "/dev/video7"
        FakeVirtualCamera.opened.append((width, height, fps))

    def send(self, frame):
        FakeVirtualCamera.sent.append(frame.copy())

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def fake_pyvirtualcam(monkeypatch):
    import sys
    import types

    module = types.SimpleNamespace(Camera=FakeVirtualCamera, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "pyvirtualcam", module)
    FakeVirtualCamera.opened, FakeVirtualCamera.sent, FakeVirtualCamera.fail = [], [], None
    return FakeVirtualCamera


def prepared_engine(components, config, prompt: str = "a cat", negative_prompt: str = "blurry"):
    """A StreamEngine on ``components`` with the prompts encoded."""
    from core.stream import StreamEngine

    engine = StreamEngine(components, config)
    engine.prepare(prompt, negative_prompt)
    return engine


def wait_until(predicate, timeout: float = 10.0, poll_s: float = 0.01) -> bool:
    """Whether ``predicate()`` turns true within ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())
