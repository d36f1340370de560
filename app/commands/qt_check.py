"""Can Qt open a window here? Checked before Qt starts, because Qt answers a missing system library by
aborting the whole process (rc 134) with a message that names the wrong package.

On Linux the X11 platform plugin (libqxcb.so) and the Qt libraries behind it need system libraries
that a stock Debian or Ubuntu lacks (libxcb-icccm4 and libxcb-keysyms1 among them). ``ldd`` lists what
the dynamic loader cannot find; each missing library is turned into the package that provides it.
Qt-free: nothing here imports Qt, so it can run where Qt cannot.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: Verified on a Debian 12 minbase root (2026-11-25): with these installed the xcb plugin loads and a
#: window opens under Xvfb. The README's Run section names the same list.
DEBIAN_PACKAGES = (
    "libegl1 libgl1 libglib2.0-0 libdbus-1-3 libfontconfig1 libfreetype6 libx11-xcb1 libxkbcommon0 "
    "libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render0 "
    "libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xkb1"
)
FEDORA_PACKAGES = (
    "mesa-libEGL mesa-libGL glib2 dbus-libs fontconfig freetype libX11-xcb libxkbcommon libxkbcommon-x11 "
    "xcb-util-cursor xcb-util-wm xcb-util-image xcb-util-keysyms xcb-util-renderutil xcb-util libxcb"
)

# Library file stem -> Debian package, where the name is not the usual "stem + soversion".
_DEBIAN_NAMES = {
    "libEGL": "libegl1", "libGL": "libgl1", "libGLX": "libglx0", "libOpenGL": "libopengl0",
    "libglib-2.0": "libglib2.0-0", "libgthread-2.0": "libglib2.0-0", "libgobject-2.0": "libglib2.0-0",
    "libdbus-1": "libdbus-1-3", "libX11-xcb": "libx11-xcb1", "libX11": "libx11-6",
}
# Library file stem -> Fedora package (Fedora groups the xcb utility libraries differently).
_FEDORA_NAMES = {
    "libEGL": "mesa-libEGL", "libGL": "mesa-libGL", "libGLX": "libglvnd-glx", "libOpenGL": "libglvnd-opengl",
    "libglib-2.0": "glib2", "libgthread-2.0": "glib2", "libgobject-2.0": "glib2", "libdbus-1": "dbus-libs",
    "libfontconfig": "fontconfig", "libfreetype": "freetype", "libX11-xcb": "libX11-xcb", "libX11": "libX11",
    "libxkbcommon": "libxkbcommon", "libxkbcommon-x11": "libxkbcommon-x11", "libxcb-cursor": "xcb-util-cursor",
    "libxcb-icccm": "xcb-util-wm", "libxcb-ewmh": "xcb-util-wm", "libxcb-keysyms": "xcb-util-keysyms",
    "libxcb-image": "xcb-util-image", "libxcb-render-util": "xcb-util-renderutil", "libxcb-util": "xcb-util",
}
_SONAME = re.compile(r"^(?P<stem>.+?)\.so\.(?P<version>\d+)")


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships ``soname`` (e.g. libxcb-icccm.so.4 -> libxcb-icccm4)."""
    match = _SONAME.match(soname)
    if not match:
        return soname
    stem, version = match["stem"], match["version"]
    if stem in _DEBIAN_NAMES:
        return _DEBIAN_NAMES[stem]
    # Debian's rule: the soname's version is appended, after a dash when the name ends in a digit.
    return f"{stem.lower()}{'-' if stem[-1].isdigit() else ''}{version}"


def fedora_package(soname: str) -> str:
    match = _SONAME.match(soname)
    stem = match["stem"] if match else soname
    if stem in _FEDORA_NAMES:
        return _FEDORA_NAMES[stem]
    return "libxcb" if stem.startswith("libxcb") else stem


def qt_folder() -> Path | None:
    """PySide6's Qt folder, found without importing PySide6 (whose import may itself fail)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "Qt"


def missing_libraries(files: list[Path]) -> list[str]:
    """Sonames the dynamic loader cannot find for ``files`` (ldd follows dependencies of dependencies).
    Empty when nothing is missing or when ldd is not there to ask."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    missing: list[str] = []
    for path in files:
        if not path.is_file():
            continue
        try:
            out = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            name, _, where = line.strip().partition("=>")
            if "not found" in where and name.strip() not in missing:
                missing.append(name.strip())
    return missing


def xcb_files(qt: Path) -> list[Path]:
    return [qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6Gui.so.6", qt / "lib" / "libQt6Widgets.so.6"]


def install_hint(missing: list[str]) -> str:
    debian = sorted(dict.fromkeys(debian_package(name) for name in missing))
    fedora = sorted(dict.fromkeys(fedora_package(name) for name in missing))
    return (f"Debian/Ubuntu: sudo apt install {' '.join(debian)}\n"
            f"Fedora: sudo dnf install {' '.join(fedora)}")


def window_problem(environ=None, platform: str = sys.platform) -> str | None:
    """Why Qt could not open a window here, with what to do; None when nothing stands in the way (or
    when it cannot be told without starting Qt: other systems, another platform plugin chosen)."""
    env = os.environ if environ is None else environ
    if not platform.startswith("linux"):
        return None
    chosen = env.get("QT_QPA_PLATFORM", "")
    if chosen and not chosen.startswith("xcb"):
        return None  # offscreen, wayland, eglfs...: the user picked a plugin this check does not cover
    if not chosen and env.get("WAYLAND_DISPLAY"):
        return None  # Qt may use its Wayland plugin, which needs none of the X11 libraries
    qt = qt_folder()
    if qt is not None:
        missing = missing_libraries(xcb_files(qt))
        if missing:
            return ("The window cannot open: Qt's X11 support needs system libraries that are missing here: "
                    f"{', '.join(missing)}.\nInstall them, then start again:\n{install_hint(missing)}\n"
                    "Headless use works without them: main.py run --help")
    if not env.get("DISPLAY"):
        return ("The window cannot open: no display was found (DISPLAY is not set). Start it from a desktop "
                "session, or use the headless commands: main.py run --help")
    return None
