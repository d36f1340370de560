"""The window's actions: toolbar buttons, menu entries and keyboard shortcuts in one place."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow, QPushButton, QSizePolicy, QToolBar, QWidget

from app.gui import icons


@dataclass
class WindowActions:
    start: QAction
    snapshot: QAction
    record: QAction
    random_seed: QAction
    focus_prompt: QAction
    fullscreen: QAction
    quit: QAction
    start_button: QPushButton


def build_actions(window: QMainWindow) -> WindowActions:
    def action(text: str, shortcuts: list[str], tip: str, icon=None, checkable: bool = False) -> QAction:
        act = QAction(text, window)
        act.setShortcuts([QKeySequence(s) for s in shortcuts])
        # Window-wide, so that the keys work whichever panel has focus (text fields still get Space).
        act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.setToolTip(f"{tip} ({' / '.join(shortcuts)})" if shortcuts else tip)
        act.setCheckable(checkable)
        if icon is not None:
            act.setIcon(icon)
        window.addAction(act)
        return act

    start = action("Start", ["Space", "Ctrl+R"], "Start or stop the stream", icons.play())
    snapshot = action("Snapshot", ["Ctrl+S"], "Save the current output as PNG", icons.camera())
    record = action("Record", ["Ctrl+Shift+R"], "Start or stop recording", icons.record(), checkable=True)
    random_seed = action("Random seed", ["Ctrl+D"], "Pick a random seed", icons.dice())
    focus_prompt = action("Edit prompt", ["Ctrl+L"], "Jump to the prompt")
    fullscreen = action("Full screen", ["F11"], "Show only the preview, full screen (Esc leaves)",
                        icons.fullscreen(), checkable=True)
    quit_ = action("Quit", ["Ctrl+Q"], "Quit")
    quit_.setMenuRole(QAction.MenuRole.QuitRole)

    start_button = QPushButton(icons.play(), "Start")
    start_button.setObjectName("primary")
    start_button.setCheckable(True)
    start_button.setMinimumWidth(110)
    start_button.setToolTip(start.toolTip())
    start_button.clicked.connect(start.trigger)
    return WindowActions(start, snapshot, record, random_seed, focus_prompt, fullscreen, quit_, start_button)


def build_toolbar(window: QMainWindow, actions: WindowActions) -> QToolBar:
    bar = QToolBar("Main", window)
    bar.setObjectName("main-toolbar")
    bar.setMovable(False)
    bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    bar.addWidget(actions.start_button)
    bar.addSeparator()
    bar.addAction(actions.snapshot)
    bar.addAction(actions.record)
    bar.addAction(actions.random_seed)
    spacer = QWidget()
    spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    bar.addWidget(spacer)
    bar.addAction(actions.fullscreen)
    window.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
    return bar


def set_stopping_look(actions: WindowActions) -> None:
    """Between Stop and the threads having stopped (the frame in the model finishes first)."""
    actions.start.setText("Stopping…")
    actions.start_button.setText("Stopping…")
    actions.start.setEnabled(False)
    actions.start_button.setEnabled(False)


def set_running_look(actions: WindowActions, running: bool) -> None:
    actions.start.setEnabled(True)
    actions.start_button.setEnabled(True)
    actions.start.setText("Stop" if running else "Start")
    actions.start_button.setText("Stop" if running else "Start")
    actions.start_button.setIcon(icons.stop() if running else icons.play())
    actions.start_button.setChecked(running)
