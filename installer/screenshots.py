"""Screenshots of the setup's wizard for the docs, taken under Wine on a virtual X display.

    .venv/bin/python installer/screenshots.py dist/nt8bridge-setup-0.1.0.exe [--out docs/img]

Runs the setup in a throwaway Wine prefix with the stand-in desk Python of the tests
(tests/installer/wine.py), clicks through it the way a desk would (Next, Next, Install, Next) and
saves the welcome, configuration, progress and finish pages as PNGs (setup-welcome.png,
setup-config.png, setup-install.png, setup-finish.png). Needs Debian's xvfb, xauth, imagemagick and
wine wine64 (fonts-wine makes the text look as on Windows; without it Wine falls back on DejaVu).
Takes about two minutes: the install itself runs in the middle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.installer.wine import StandinPython, Wine, zpath  # noqa: E402

# Runs under Wine with the stand-in Python: finds the setup's window, reads its buttons, clicks them.
UI = r'''
import ctypes, sys, time
from ctypes import wintypes
u = ctypes.windll.user32
u.GetDlgItem.restype = wintypes.HWND
u.GetDlgItem.argtypes = [wintypes.HWND, ctypes.c_int]
PROC = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.HWND, wintypes.LPARAM)

def text(h):
    n = u.GetWindowTextLengthW(h)
    buf = ctypes.create_unicode_buffer(n + 1)
    u.GetWindowTextW(h, buf, n + 1)
    return buf.value

def answer(text):
    with open(out + ".tmp", "w") as f:
        f.write(text)
    import os
    os.replace(out + ".tmp", out)  # whole answers only: the caller polls for the file
    sys.exit(0)

def find(title):
    found = []
    def cb(h, _):
        if u.IsWindowVisible(h) and text(h).startswith(title):
            found.append(h)
        return True
    u.EnumWindows(PROC(cb), 0)
    return found[0] if found else None

out, cmd, title, want = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""
deadline = time.time() + 600
while time.time() < deadline:
    h = find(title)
    if h:
        button = u.GetDlgItem(h, 1)  # NSIS: 1 is Next / Install / Finish
        if cmd == "click":
            u.PostMessageW(h, 0x0111, 1, 0)  # WM_COMMAND IDOK, as a click on that button
            answer("clicked")
        if button and u.IsWindowEnabled(button) and want in text(button):
            r = wintypes.RECT()
            u.GetWindowRect(h, ctypes.byref(r))
            answer("%d %d %d %d" % (r.left, r.top, r.right - r.left, r.bottom - r.top))
    time.sleep(0.5)
answer("timed out waiting for " + title + " / " + want)
'''

PAGES = [  # file, the Next button's label once the page is ready, then click it
    ("setup-welcome.png", "Next"),
    ("setup-config.png", "Install"),
    ("setup-install.png", "Next"),
    ("setup-finish.png", "Finish"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setup", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args()
    for tool, package in (("xvfb-run", "xvfb xauth"), ("import", "imagemagick"), ("convert", "imagemagick"),
                          ("wine", "wine wine64")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install {package}")
    if not os.environ.get("NT8BRIDGE_SCREENSHOTS_DISPLAY"):  # start again inside a virtual X display
        return subprocess.call(["xvfb-run", "-a", "-s", "-screen 0 1024x768x24", "env",
                                "NT8BRIDGE_SCREENSHOTS_DISPLAY=1", sys.executable, *sys.argv])
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="nt8bridge-shots-"))
    wine = Wine(root)
    wine.env["DISPLAY"] = os.environ["DISPLAY"]
    try:
        wine.boot()
        python = StandinPython(wine, root / "cache")
        (root / "cache").mkdir()
        python.install()
        # Wine's own fonts (fonts-wine), Marlett for the title bar's buttons among them
        fonts = Path("/usr/share/wine/fonts")
        if fonts.is_dir():
            for font in fonts.glob("*.ttf"):
                shutil.copy(font, wine.prefix / "drive_c" / "windows" / "Fonts" / font.name)
        # NT8 as a desk has it after its first start (else the setup stops, rightly, at the NinjaScript step)
        wine.unix(wine.profile / "Documents" / "NinjaTrader 8" / "bin" / "Custom" / "Strategies").mkdir(parents=True)
        ui = root / "ui.py"
        ui.write_text(UI, encoding="utf-8")
        answer = root / "answer.txt"

        def in_desktop(*cmd: str) -> subprocess.Popen:
            """Start in one Wine virtual desktop (the window gets a title bar, as on Windows); a program sees
            only the windows of its own desktop, so the setup and ui.py share it. Returns at once."""
            return subprocess.Popen(["wine", "explorer", "/desktop=shots,1024x768", *cmd], env=wine.env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ui_do(*cmd: str) -> str:
            answer.unlink(missing_ok=True)
            in_desktop(str(python.home / "python.exe"), zpath(ui), zpath(answer), *cmd)
            deadline = time.monotonic() + 660
            while not answer.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            return answer.read_text(encoding="utf-8") if answer.exists() else "no answer"

        setup = in_desktop(zpath(args.setup.resolve()))
        title = "nt8bridge"
        for name, ready in PAGES:
            reply = ui_do("wait", title, ready)
            if not reply[:1].isdigit():
                subprocess.run(["import", "-window", "root", str(args.out / "failed.png")], env=os.environ)
                sys.exit(f"{name}: {reply} (the screen is in {args.out / 'failed.png'})")
            time.sleep(1.0)  # let the page finish painting
            x, y, w, h = map(int, reply.split())
            full = root / "full.png"
            subprocess.run(["import", "-window", "root", str(full)], check=True, env=os.environ)
            subprocess.run(["convert", str(full), "-crop", f"{w}x{h}+{x}+{y}", "+repage", str(args.out / name)],
                           check=True)
            print(f"{args.out / name} ({w}x{h})", flush=True)
            if name != PAGES[-1][0]:
                ui_do("click", title)
        setup.kill()
    finally:
        wine.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
