"""The window as a newcomer meets it: command-line options, what the window says about the model and the
stream, the mouse wheel over the panels, stopping, broken presets, stop signals and a missing Qt library."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from app.commands.cli import main
from tools.standin import StandInEngine
from app.pipeline.stats import StatsCollector
from app.gui.settings import AppSettings, SettingsStore
from app.commands.window_options import parse_window_options
from core.models import ModelLoadError
from tests.gui_support import FakeFactory, small, until

ROOT = Path(__file__).resolve().parent.parent


def start_window(open_window, argv, saved: AppSettings, factory=None):
    options = parse_window_options(argv)
    return open_window(saved, factory=factory, overrides=options.settings, engine_options=options.engine)


# ------------------------------------------------------------------------------------ command line


def test_the_window_takes_the_engine_options_for_this_start_only(qtbot, open_window, tmp_path):
    saved = small(model="saved/model", prompt="saved prompt", seed=1)
    window = start_window(open_window, [
        "--model", "cli/model", "--width", "192", "--height", "128", "--steps", "2", "--prompt", "a cat",
        "--seed", "9", "--device", "cpu", "--acceleration", "none", "--source", "test",
    ], saved)
    engine = window.session.engine
    config = engine.config
    assert (config.model, config.width, config.height, len(config.t_index_list)) == ("cli/model", 192, 128, 2)
    assert (config.device, config.acceleration, config.seed) == ("cpu", "none", 9)
    assert engine.calls[0] == ("prepare", "a cat", saved.negative_prompt)
    # The user changes the prompt in the window; the model is left as the command line gave it.
    window.style_panel.prompt_edit.setPlainText("a dog")
    window.close()
    stored = SettingsStore(str(tmp_path / "settings.ini")).load()
    assert stored.model == "saved/model" and stored.seed == 1  # untouched overrides are not saved
    assert stored.prompt == "a dog"  # what the user changed is


def test_gui_help_prints_and_opens_nothing(capsys):
    with pytest.raises(SystemExit) as done:
        main(["gui", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--source" in out and "--prompt" in out


def test_gui_usage_errors_are_reported_before_qt(capsys):
    assert main(["gui", "--width", "13"]) == 2
    assert main(["--modle", "x"]) == 2
    assert main(["gui", "--source", "camera:abc"]) == 2
    err = capsys.readouterr().err
    assert "multiple of 8" in err and "--modle" in err and "camera:0" in err


# ------------------------------------------------------------------------------------ what runs


def test_the_model_panel_and_status_bar_say_what_actually_runs(qtbot, open_window):
    class CpuEngine(StandInEngine):
        device = torch.device("cpu")
        acceleration = "none"
        acceleration_note = "tensorrt needs a CUDA GPU"

    factory = FakeFactory(make=lambda config: CpuEngine(config, gpu_ms=5))
    window = open_window(small(acceleration="tensorrt"), factory=factory)
    until(qtbot, lambda: "tensorrt needs a CUDA GPU" in window.model_panel.status_label.text())
    assert "cpu" in window.model_panel.status_label.text() and "eager" in window.model_panel.status_label.text()
    window.session.start()
    until(qtbot, lambda: "CPU" in window.status.stats_label.text())
    assert "GPU " not in window.status.stats_label.text()


def test_the_model_panel_follows_the_start_stage_to_full_speed(qtbot, open_window):
    class Startup:
        text = "quick start, compiling ~10%"

        def stage(self):
            return self.text

    class StagedEngine(StandInEngine):
        acceleration = "graph"
        startup = Startup()

        @property
        def stage(self):
            return self.startup.stage()

    window = open_window(small(), factory=FakeFactory(make=lambda c: StagedEngine(c, gpu_ms=5)))
    label = window.model_panel.status_label
    until(qtbot, lambda: "quick start, compiling ~10%" in label.text())
    assert "CUDA graph of the eager kernels" in label.text()
    StagedEngine.startup.text = "quick start, compiling ~55%"
    until(qtbot, lambda: "compiling ~55%" in label.text())
    StagedEngine.startup.text = "full speed"
    StagedEngine.acceleration = "compile"
    until(qtbot, lambda: "full speed" in label.text() and "compiled" in label.text())


def test_rates_do_not_read_zero_while_slow_frames_flow():
    stats = StatsCollector(window_s=2.0)
    for i in range(4):  # one frame every 2.5 s: slower than the window is long
        stats.record_input(i * 2.5)
        stats.record_output(i * 2.5 + 0.5, 0.5, 400.0)
    snap = stats.snapshot(0, 0, now=8.2)
    assert snap.output_fps == pytest.approx(0.4, rel=0.01) and snap.input_fps == pytest.approx(0.4, rel=0.01)
    assert snap.latency_ms == pytest.approx(500) and snap.gpu_ms == pytest.approx(400)
    # A stream that stopped reads as slowing down, towards zero.
    assert stats.snapshot(0, 0, now=60).output_fps < 0.1


def test_a_badge_says_when_no_model_filters_the_picture(qtbot, open_window):
    factory = FakeFactory(failures={"fake/model": ModelLoadError("not downloaded")})
    window = open_window(small(), factory=factory, wait_engine=False)
    until(qtbot, lambda: window.notifier.messages)
    window.session.start()
    until(qtbot, lambda: window.preview.frames_shown >= 2)
    assert "No model" in window.preview.badge()
    window.try_without_weights("preset:tiny")
    until(qtbot, lambda: window.session.engine is not None)
    shown = window.preview.frames_shown
    until(qtbot, lambda: window.preview.frames_shown >= shown + 2)
    assert "Random weights" in window.preview.badge()


def test_a_model_that_is_not_downloaded_offers_the_preset_and_a_file(qtbot, open_window):
    factory = FakeFactory(failures={"stabilityai/sd-turbo": ModelLoadError("not downloaded, hub unreachable")})
    window = open_window(small(model="stabilityai/sd-turbo"), factory=factory, wait_engine=False)
    until(qtbot, lambda: window.notifier.choices)
    assert set(window.notifier.choices) == {"Try without weights", "Open a model…"}
    window.notifier.choices["Try without weights"]()
    until(qtbot, lambda: window.session.engine is not None)
    assert window.session.engine.config.model == "preset:sd-turbo"
    assert window.model_panel.model() == "preset:sd-turbo"


# ------------------------------------------------------------------------------------ controls


def wheel(widget, steps=-1):
    center = QPointF(widget.rect().center())
    event = QWheelEvent(center, QPointF(widget.mapToGlobal(center.toPoint())), QPoint(0, 0), QPoint(0, 120 * steps),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


def test_the_wheel_scrolls_the_panel_not_an_unfocused_control(qtbot, open_window):
    window = open_window(small(acceleration="none"))
    window.resize(900, 420)  # short enough that the side panel scrolls
    combo = window.model_panel.accel_combo
    bar = window.side.verticalScrollBar()
    until(qtbot, lambda: bar.maximum() > 0)
    bar.setValue(0)
    before = combo.currentIndex()
    wheel(combo)
    assert combo.currentIndex() == before and window.model_panel.acceleration() == "none"
    assert bar.value() > 0  # the panel scrolled instead
    assert len(window.factory.built) == 1  # and no model reload started
    window.activateWindow()
    combo.setFocus()
    until(qtbot, combo.hasFocus)
    wheel(combo)
    assert combo.currentIndex() != before  # a focused control still takes the wheel


def test_stop_says_stopping_until_it_has_stopped(qtbot, open_window):
    window = open_window(small(), factory=FakeFactory(make=lambda c: StandInEngine(c, gpu_ms=600)))
    window.session.start()
    until(qtbot, lambda: window.preview.frames_shown >= 1)
    window.actions.start.trigger()
    looks = (window.actions.start_button.text(), window.status.stats_label.text())
    assert looks == ("Stopping…", "stopping…") and not window.actions.start_button.isEnabled()
    until(qtbot, lambda: window.actions.start_button.text() == "Start")
    assert window.status.stats_label.text() == "stopped" and window.actions.start_button.isEnabled()


def test_an_unreadable_preset_is_skipped_and_named(qtbot, open_window, tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "deep.json").write_text("[" * 100000 + "]" * 100000, encoding="utf-8")
    (folder / "mine.json").write_text(json.dumps({"name": "Mine", "prompt": "a cat"}), encoding="utf-8")
    window = open_window(small())
    names = [p.name for p in window.presets]
    assert "Mine" in names
    warnings = " ".join(window.notifier.texts("warning"))
    assert "deep.json" in warnings and "nested too deeply" in warnings


# ------------------------------------------------------------------------------------ processes


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "DISPLAY")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ldd and the xcb plugin are Linux things")
def test_a_missing_qt_library_prints_the_install_line_instead_of_aborting(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ldd").write_text("#!/bin/sh\nprintf '\\tlibxcb-icccm.so.4 => not found\\n\\tlibc.so.6 => /lib/libc.so.6\\n'\n")
    (fake / "ldd").chmod(0o755)
    env = _env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", DISPLAY=":0")
    done = subprocess.run([sys.executable, "main.py", "--settings", str(tmp_path / "s.ini")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "sudo apt install libxcb-icccm4" in done.stderr and "xcb-util-wm" in done.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_closes_the_window_and_saves_the_settings(tmp_path, signame):
    settings = tmp_path / "settings.ini"
    log = tmp_path / "log.txt"
    command = [sys.executable, "main.py", "--settings", str(settings), "--model", "preset:tiny", "--device", "cpu",
               "--acceleration", "none", "--width", "64", "--height", "64", "--source", "test"]
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, env=_env(QT_QPA_PLATFORM="offscreen"), stderr=err,
                                   stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while "Model ready" not in log.read_text() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert "Model ready" in log.read_text(), log.read_text()[-2000:]
        process.send_signal(getattr(signal, signame))
        assert process.wait(60) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert settings.is_file() and "geometry" in settings.read_text()


def test_run_gui_opens_and_quits(tmp_path):
    """In a child process: QApplication.exec() and quit() leave a process unfit for further Qt tests."""
    settings = tmp_path / "run" / "settings.ini"
    SettingsStore(str(settings)).save(AppSettings(model=str(tmp_path / "no-such-model"), prompt="from the file"))
    script = (
        "import sys\n"
        "from PySide6.QtCore import QTimer\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication(['livediffusion'])\n"
        "from app.gui.main_window import MainWindow\n"
        "from app.gui.launch import run_gui\n"
        "def quit_():\n"
        "    windows = [w for w in app.topLevelWidgets() if isinstance(w, MainWindow)]\n"
        "    print('prompt:', windows[0].style_panel.prompt())\n"
        "    windows[0].actions.quit.trigger()\n"
        "QTimer.singleShot(1500, quit_)\n"
        f"sys.exit(run_gui(['--settings', {str(settings)!r}]))\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prompt: from the file" in done.stdout
    assert "geometry" in settings.read_text()  # saved on quit


def test_the_gpus_choice_shows_only_with_several_gpus_and_reaches_the_engine(qtbot, open_window, monkeypatch):
    from app.gui import model_panel

    window = open_window(small())
    assert window.model_panel.gpus_spin.isHidden() or not window.model_panel.gpus_spin.isVisible()
    assert window.factory.built[-1].config.gpus == 1
    window.close()
    monkeypatch.setattr(model_panel, "gpu_count", lambda: 4)
    window = open_window(small(), settings_file="four.ini")
    assert window.model_panel.gpus_spin.isVisible() and window.model_panel.gpus_spin.maximum() == 4
    built = len(window.factory.built)
    window.model_panel.gpus_spin.setValue(2)
    until(qtbot, lambda: len(window.factory.built) > built and window.session.engine is window.factory.built[-1])
    assert window.factory.built[-1].config.gpus == 2


def test_the_reuse_choice_is_live_saved_and_only_for_several_steps(qtbot, open_window, tmp_path):
    window = open_window(small(steps=2))
    style = window.style_panel
    assert style.reuse_check.isEnabled() and not style.reuse_check.isChecked()
    engine = window.session.engine
    style.reuse_check.setChecked(True)
    until(qtbot, lambda: engine.last("set_feature_reuse") == ("set_feature_reuse", True))
    assert window.session.engine is engine  # live: no reload
    window.save_settings()
    assert SettingsStore(str(tmp_path / "settings.ini")).load().feature_reuse is True
    style.steps_spin.setValue(1)
    assert not style.reuse_check.isEnabled()


def test_a_prepared_step_count_switches_without_a_load(qtbot, open_window):
    window = open_window(small(steps=1))
    window.session.prepared.should_prepare = lambda engine, config: True
    window.style_panel.steps_spin.setValue(2)  # a load; once it runs, the other counts are prepared
    until(qtbot, lambda: window.session.engine_config.denoising_steps == 2)
    until(qtbot, lambda: window.session.prepared.ready_steps() == [1, 3, 4])
    built = len(window.factory.built)
    window.session.set_prompt("a dog in the rain", "")  # changed after the engines were prepared
    window.session.set_seed(77)
    window.style_panel.steps_spin.setValue(4)
    until(qtbot, lambda: window.session.engine_config.denoising_steps == 4)
    engine = window.session.engine
    assert engine in window.factory.built[:built]  # one of the prepared engines, not a new load
    assert engine.config.denoising_steps == 4
    assert engine.last("update_prompt")[1] == "a dog in the rain" and engine.last("set_seed") == ("set_seed", 77)
    assert not window.model_panel.progress.isVisible()
    window.close()
