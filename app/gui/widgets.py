"""Small reusable widgets for the control panels."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (QAbstractScrollArea, QAbstractSlider, QAbstractSpinBox, QApplication, QComboBox,
                               QHBoxLayout, QLabel, QSlider, QToolButton, QVBoxLayout, QWidget)


class CollapsibleSection(QWidget):
    """A header button that shows or hides a body widget (the "Advanced" section)."""

    toggled = Signal(bool)

    def __init__(self, title: str, body: QWidget, expanded: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.body = body
        self.header = QToolButton(text=title, checkable=True)
        self.header.setObjectName("section")
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.toggled.connect(self._on_toggled)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.header)
        layout.addWidget(body)
        self.header.setChecked(expanded)
        self._on_toggled(expanded)

    def is_expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        self.header.setChecked(expanded)

    def _on_toggled(self, expanded: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)
        self.toggled.emit(expanded)


class ValueSlider(QWidget):
    """A horizontal slider over a float range with its value printed beside it.

    The slider works in integer steps (``resolution`` per unit); ``value()`` and ``valueChanged``
    speak floats so that callers never see the scaling.
    """

    valueChanged = Signal(float)

    def __init__(self, low: float, high: float, resolution: int = 100, decimals: int = 2, parent: QWidget | None = None):
        super().__init__(parent)
        self._low, self._resolution, self._decimals = low, resolution, decimals
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, int(round((high - low) * resolution)))
        self.slider.setPageStep(max(1, resolution // 10))
        self.label = QLabel()
        self.label.setObjectName("value")
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.label)
        self.slider.valueChanged.connect(self._on_changed)
        self._on_changed(self.slider.value())

    def value(self) -> float:
        return self._low + self.slider.value() / self._resolution

    def setValue(self, value: float) -> None:  # noqa: N802 (Qt naming, like the widgets it wraps)
        self.slider.setValue(int(round((value - self._low) * self._resolution)))

    def _on_changed(self, _raw: int) -> None:
        value = self.value()
        self.label.setText(f"{value:.{self._decimals}f}")
        self.valueChanged.emit(value)


def find_data(combo, value) -> int:
    """Index of the item whose data equals ``value``, or -1.

    QComboBox.findData compares Python objects (tuples here) by identity, not by value, so equal
    tuples made at different times are not found by it.
    """
    for index in range(combo.count()):
        if combo.itemData(index) == value:
            return index
    return -1


def hint_label(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setObjectName("hint")
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class WheelGuard(QObject):
    """Lets the mouse wheel scroll the side panel instead of changing whatever control is under the
    pointer: a control takes the wheel only once it has focus (a click or Tab gives it focus).

    The event is handed to the scroll area around the control explicitly: Qt passes an ignored wheel
    event on to the parent only for events from the platform, not for ones sent by the program.
    """

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt naming)
        if event.type() != QEvent.Type.Wheel or not isinstance(watched, QWidget) or watched.hasFocus():
            return False
        area = watched.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:
            QApplication.sendEvent(area.viewport(), event)
        event.accept()
        return True


def guard_wheel(root: QWidget) -> WheelGuard:
    """Install one WheelGuard on every combo box, spin box and slider under ``root``."""
    guard = WheelGuard(root)
    for kind in (QComboBox, QAbstractSpinBox, QAbstractSlider):
        for widget in root.findChildren(kind):
            # The wheel must not hand out focus either, or the first turn would arm the control.
            if widget.focusPolicy() == Qt.FocusPolicy.WheelFocus:
                widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            widget.installEventFilter(guard)
    return guard
