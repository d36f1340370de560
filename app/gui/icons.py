"""Small icons painted with QPainter, so the app ships no image files and they match the palette.

Emoji and font glyphs are not safe on a bare Linux desktop (no emoji font), and Qt's standard icons
look out of place on the dark theme, hence these.
"""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap, QPolygonF

INK = QColor(228, 230, 236)
RED = QColor(235, 72, 92)
SIZE = 64


def _canvas():
    pixmap = QPixmap(SIZE, SIZE)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    return pixmap, painter


def _finish(pixmap: QPixmap, painter: QPainter) -> QIcon:
    painter.end()
    return QIcon(pixmap)


@lru_cache(maxsize=None)
def dice() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(QPen(INK, 5))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawRoundedRect(QRectF(8, 8, 48, 48), 10, 10)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(INK)
    for x, y in ((21, 21), (32, 32), (43, 43), (43, 21), (21, 43)):
        painter.drawEllipse(QPointF(x, y), 4.5, 4.5)
    return _finish(pixmap, painter)


@lru_cache(maxsize=None)
def record() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(QPen(INK, 4))
    painter.setBrush(RED)
    painter.drawEllipse(QPointF(32, 32), 20, 20)
    return _finish(pixmap, painter)


@lru_cache(maxsize=None)
def play() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(INK)
    painter.drawPolygon(QPolygonF([QPointF(20, 12), QPointF(52, 32), QPointF(20, 52)]))
    return _finish(pixmap, painter)


@lru_cache(maxsize=None)
def stop() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(INK)
    painter.drawRoundedRect(QRectF(16, 16, 32, 32), 4, 4)
    return _finish(pixmap, painter)


@lru_cache(maxsize=None)
def camera() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(QPen(INK, 5))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    body = QPainterPath()
    body.addRoundedRect(QRectF(6, 18, 52, 34), 7, 7)
    painter.drawPath(body)
    painter.drawRect(QRectF(22, 11, 20, 7))
    painter.drawEllipse(QPointF(32, 35), 10, 10)
    return _finish(pixmap, painter)


@lru_cache(maxsize=None)
def fullscreen() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(QPen(INK, 5, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    for (x, y), (dx, dy) in (((10, 10), (1, 1)), ((54, 10), (-1, 1)), ((10, 54), (1, -1)), ((54, 54), (-1, -1))):
        painter.drawLine(QPointF(x, y), QPointF(x + 14 * dx, y))
        painter.drawLine(QPointF(x, y), QPointF(x, y + 14 * dy))
    return _finish(pixmap, painter)


@lru_cache(maxsize=None)
def app_icon() -> QIcon:
    pixmap, painter = _canvas()
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(124, 92, 255))
    painter.drawRoundedRect(QRectF(2, 2, 60, 60), 14, 14)
    painter.setBrush(QColor(255, 255, 255, 235))
    painter.drawEllipse(QPointF(32, 32), 15, 15)
    painter.setBrush(QColor(124, 92, 255))
    painter.drawEllipse(QPointF(32, 32), 7, 7)
    painter.setBrush(QColor(255, 214, 102))
    painter.drawEllipse(QPointF(47, 17), 6, 6)
    return _finish(pixmap, painter)
