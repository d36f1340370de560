"""Where the diffusion runs: this computer, or an engine server (``main.py serve``) at an address with its token.

The source, preview, recording and virtual camera stay on this computer either way; with a server, the model,
size and step count are the server's (its ``serve`` options), so the model panel greys them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QLineEdit, QVBoxLayout, QWidget

from app.gui.settings import AppSettings

ENGINE_CHOICES = (("local", "This computer"), ("server", "A server"))


@dataclass(frozen=True)
class RemoteTarget:
    url: str
    token: str


def url_problem(url: str) -> str:
    """Why ``url`` cannot name a server ("" when it can)."""
    if not url:
        return "Type the server's address, for example http://gpu-box:8765"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"“{url}” is not a server address: it starts with http:// or https:// and names a host"
    return ""


class EngineChoice(QWidget):
    changed = Signal()  # the choice, the address or the token was committed

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.combo = QComboBox()
        for key, label in ENGINE_CHOICES:
            self.combo.addItem(label, key)
        self.combo.setToolTip("Run the model on this computer's GPU, or on a server started with "
                              "`python main.py serve` (the camera, preview and outputs stay here)")
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("http://gpu-box:8765")
        self.url_edit.setToolTip("The address `main.py serve` printed (https:// when it runs with --cert/--key)")
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("the token the server printed")
        self.token_edit.setToolTip("The server's token: printed once when it starts, or in its --token-file")
        self.form = QFormLayout()
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.addRow("Address", self.url_edit)
        self.form.addRow("Token", self.token_edit)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addLayout(self.form)
        self.combo.currentIndexChanged.connect(self._on_choice)
        self.url_edit.editingFinished.connect(self._on_edited)
        self.token_edit.editingFinished.connect(self._on_edited)
        self._committed = self._fields()
        self._show_fields()

    def uses_server(self) -> bool:
        return self.combo.currentData() == "server"

    def target(self) -> RemoteTarget | None:
        """The server chosen, or None for this computer."""
        if not self.uses_server():
            return None
        return RemoteTarget(self.url_edit.text().strip().rstrip("/"), self.token_edit.text().strip())

    def load(self, settings: AppSettings) -> None:
        self.blockSignals(True)
        try:
            self.combo.setCurrentIndex(1 if settings.engine == "server" else 0)
            self.url_edit.setText(settings.server_url)
            self.token_edit.setText(settings.server_token)
        finally:
            self.blockSignals(False)
        self._committed = self._fields()
        self._show_fields()

    def store(self, settings: AppSettings) -> None:
        settings.engine = self.combo.currentData()
        settings.server_url = self.url_edit.text().strip()
        settings.server_token = self.token_edit.text().strip()

    def _fields(self) -> tuple:
        return self.combo.currentData(), self.url_edit.text().strip(), self.token_edit.text().strip()

    def _show_fields(self) -> None:
        for field in (self.url_edit, self.token_edit):
            self.form.setRowVisible(field, self.uses_server())

    def _on_choice(self, _index: int) -> None:
        self._show_fields()
        self._on_edited()

    def _on_edited(self) -> None:
        if self._fields() != self._committed:  # leaving a field unchanged asks for nothing
            self._committed = self._fields()
            self.changed.emit()
