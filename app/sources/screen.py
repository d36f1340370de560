"""Screen capture through mss (a monitor or a region, optionally following the mouse), plus the
platform glue it needs: an mss instance across mss versions, the mouse position without a GUI toolkit
(the pipeline is Qt-free), and a hint explaining why a grab may fail."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Callable

import cv2
import mss
import numpy as np

from app.sources.base import Source, SourceError, Pacer


def new_mss():
    """An mss grabber. mss 10 deprecates the ``mss.mss()`` factory in favour of the ``MSS`` class."""
    factory = getattr(mss, "MSS", None) or mss.mss
    return factory()


def grab_error_hint() -> str:
    """Why screen capture tends to fail here, and what to do about it."""
    if sys.platform.startswith("linux"):
        if os.environ.get("XDG_SESSION_TYPE", "").lower() == "wayland" or (
            os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY")
        ):
            return (
                "This is a Wayland session, where programs may not read the screen directly; "
                "log in with an X11 (Xorg) session, or capture a window through OBS and use its virtual camera"
            )
        if not os.environ.get("DISPLAY"):
            return "No X display is set (DISPLAY is empty); screen capture needs a running X server"
        return "Check that the X server allows this program to connect (xhost / XAUTHORITY)"
    if sys.platform == "darwin":
        return "Allow screen recording for this program in System Settings > Privacy & Security > Screen Recording"
    return "Check that the screen is not locked and that the display driver is running"


# ------------------------------------------------------------------------------------ mouse position

_local = threading.local()


class _XPointer:
    """Queries the pointer through libX11 directly: a tiny cost per call and no extra package."""

    def __init__(self):
        path = ctypes.util.find_library("X11") or "libX11.so.6"
        lib = ctypes.CDLL(path)
        lib.XOpenDisplay.restype = ctypes.c_void_p
        lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
        lib.XDefaultRootWindow.restype = ctypes.c_ulong
        lib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        lib.XQueryPointer.argtypes = [ctypes.c_void_p, ctypes.c_ulong] + [ctypes.c_void_p] * 7
        lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.display = lib.XOpenDisplay(None)
        if not self.display:
            raise OSError("cannot open the X display")
        self.root = lib.XDefaultRootWindow(self.display)

    def position(self) -> tuple[int, int] | None:
        root_ret, child_ret = ctypes.c_ulong(), ctypes.c_ulong()
        rx, ry, wx, wy = (ctypes.c_int() for _ in range(4))
        mask = ctypes.c_uint()
        ok = self.lib.XQueryPointer(
            self.display, self.root, ctypes.byref(root_ret), ctypes.byref(child_ret),
            ctypes.byref(rx), ctypes.byref(ry), ctypes.byref(wx), ctypes.byref(wy), ctypes.byref(mask),
        )
        return (rx.value, ry.value) if ok else None


def _windows_position() -> tuple[int, int] | None:
    class POINT(ctypes.Structure):
        _fields_ = [("x", ctypes.c_long), ("y", ctypes.c_long)]

    point = POINT()
    if ctypes.windll.user32.GetCursorPos(ctypes.byref(point)):  # type: ignore[attr-defined]
        return point.x, point.y
    return None


def _mac_position() -> tuple[int, int] | None:
    class CGPoint(ctypes.Structure):
        _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]

    quartz = ctypes.CDLL("/System/Library/Frameworks/ApplicationServices.framework/ApplicationServices")
    quartz.CGEventCreate.restype = ctypes.c_void_p
    quartz.CGEventCreate.argtypes = [ctypes.c_void_p]
    quartz.CGEventGetLocation.restype = CGPoint
    quartz.CGEventGetLocation.argtypes = [ctypes.c_void_p]
    quartz.CFRelease.argtypes = [ctypes.c_void_p]
    event = quartz.CGEventCreate(None)
    if not event:
        return None
    try:
        point = quartz.CGEventGetLocation(event)
        return int(point.x), int(point.y)
    finally:
        quartz.CFRelease(event)


def cursor_position() -> tuple[int, int] | None:
    """Pointer position in virtual-screen coordinates, or None when it cannot be read (the region then
    stays where it was configured rather than failing the capture)."""
    try:
        if sys.platform.startswith("win"):
            return _windows_position()
        if sys.platform == "darwin":
            return _mac_position()
        # One X connection per thread: Xlib connections must not be shared across threads.
        pointer = getattr(_local, "x_pointer", None)
        if pointer is None:
            pointer = _XPointer()
            _local.x_pointer = pointer
        return pointer.position()
    except Exception:
        return None



def list_monitors() -> list[dict]:
    """mss monitors: index 0 is the union of all screens, 1.. each physical one (keys left, top,
    width, height). Raises SourceError when the display cannot be reached."""
    try:
        with new_mss() as grabber:
            return [dict(m) for m in grabber.monitors]
    except Exception as exc:
        raise SourceError(f"Cannot list screens: {exc}. {grab_error_hint()}") from exc


class Screen(Source):
    """A monitor or a region of it through mss.

    ``region`` is (x, y, w, h) relative to the chosen monitor. With ``follow_mouse`` the region keeps its
    size and is centred on the pointer (clamped to the monitor). ``fps`` caps the grab rate so that a
    fast grabber does not burn a core for frames the GPU will drop anyway.
    """

    live = True

    def __init__(
        self,
        monitor: int = 1,
        region: tuple[int, int, int, int] | None = None,
        follow_mouse: bool = False,
        fps: float = 30.0,
        cursor: Callable[[], tuple[int, int] | None] | None = None,
    ):
        self.monitor = monitor
        self.region = region
        self.follow_mouse = follow_mouse
        self._fps = fps
        self._cursor = cursor or cursor_position
        self._grabber = None
        self._bounds: dict | None = None
        self._pacer = Pacer(fps)
        where = f" ({region[0]},{region[1]} {region[2]}x{region[3]})" if region else ""
        self.name = f"Screen {monitor}{where}" + (" following the mouse" if follow_mouse else "")

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if self._grabber is not None:
            return
        try:
            grabber = new_mss()
            monitors = grabber.monitors
        except Exception as exc:
            raise SourceError(f"Screen capture is not available: {exc}. {grab_error_hint()}") from exc
        if not 0 <= self.monitor < len(monitors):
            grabber.close()
            raise SourceError(f"Screen {self.monitor} does not exist; screens 1 to {len(monitors) - 1} are available")
        self._grabber = grabber
        self._bounds = dict(monitors[self.monitor])

    def capture_box(self) -> dict:
        """The absolute rectangle the next read() grabs."""
        mon = self._bounds
        if self.region is None:
            return {"left": mon["left"], "top": mon["top"], "width": mon["width"], "height": mon["height"]}
        x, y, w, h = self.region
        w, h = min(w, mon["width"]), min(h, mon["height"])
        if self.follow_mouse:
            pos = self._cursor()
            if pos is not None:
                x, y = pos[0] - mon["left"] - w // 2, pos[1] - mon["top"] - h // 2
        x = min(max(x, 0), mon["width"] - w)
        y = min(max(y, 0), mon["height"] - h)
        return {"left": mon["left"] + x, "top": mon["top"] + y, "width": w, "height": h}

    def read(self) -> np.ndarray | None:
        if self._grabber is None:
            self.open()
        self._pacer.wait()
        try:
            shot = self._grabber.grab(self.capture_box())
        except Exception as exc:
            raise SourceError(f"Screen capture failed: {exc}. {grab_error_hint()}") from exc
        bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)

    def close(self) -> None:
        grabber, self._grabber = self._grabber, None
        if grabber is not None:
            try:
                grabber.close()
            except Exception:
                pass
