"""The Qt GUI. Importing it guards against a PySide6 emit() reference bug first (see qtfix)."""

from app.gui.qtfix import ensure_emit_is_safe

ensure_emit_is_safe()
