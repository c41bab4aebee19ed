"""Starting the sidecar at logon on Windows (``nt8bridge service install | uninstall | status``).

Two ways, both for the current user: a Task Scheduler task run at logon (``schtasks``), or a value
under the user's Run key (``HKCU\\...\\CurrentVersion\\Run``), which needs no administrator rights.
Either starts ``<venv>\\Scripts\\pythonw.exe -m bridge.cli serve --config <config>``: pythonw, so that
no console window opens at logon (and none can be closed by mistake, which would stop the sidecar).

The command lines are pure functions of their inputs, tested on any platform; ``register``,
``unregister`` and ``registered`` run them and exist only on Windows.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import PureWindowsPath

__all__ = ["METHODS", "NAME", "RUN_KEY", "AutostartError", "Registration", "pythonw_for", "register",
           "registered", "require_windows", "run_value", "schtasks_create", "schtasks_delete", "schtasks_query",
           "serve_command", "unregister"]

NAME = "nt8bridge-sidecar"  # the task's name and the Run key's value name
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
METHODS = ("task", "runkey")
SCHTASKS_TR_MAX = 261  # schtasks refuses a /TR longer than this


class AutostartError(RuntimeError):
    """Registration failed or is impossible here; the message says what to do."""


def pythonw_for(python: PureWindowsPath) -> PureWindowsPath:
    """The windowless interpreter beside ``python`` (a venv's Scripts\\python.exe has pythonw.exe next to it)."""
    if python.name.lower() == "pythonw.exe":
        return python
    return python.with_name("pythonw.exe")


def serve_command(pythonw: PureWindowsPath, config: PureWindowsPath) -> str:
    """The command line that runs the sidecar, quoted for Windows."""
    return subprocess.list2cmdline([str(pythonw), "-m", "bridge.cli", "serve", "--config", str(config)])


def schtasks_create(command: str) -> list[str]:
    if len(command) > SCHTASKS_TR_MAX:
        raise AutostartError(f"the command line is {len(command)} characters, and schtasks takes at most "
                             f"{SCHTASKS_TR_MAX}: install nt8bridge or the config in a shorter folder, or use "
                             "--method runkey")
    return ["schtasks", "/Create", "/SC", "ONLOGON", "/TN", NAME, "/TR", command, "/F"]


def schtasks_delete() -> list[str]:
    return ["schtasks", "/Delete", "/TN", NAME, "/F"]


def schtasks_query() -> list[str]:
    return ["schtasks", "/Query", "/TN", NAME]


def run_value(command: str) -> tuple[str, str, str]:
    """(key under HKCU, value name, data) of the Run key entry."""
    return RUN_KEY, NAME, command


@dataclass(frozen=True)
class Registration:
    method: str
    registered: bool
    detail: str  # the task's query output, or the Run value's command line


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise AutostartError(f"{cmd[0]} could not run: {exc}") from None


def register(method: str, command: str) -> None:
    """Register ``command`` to run at logon (Windows only)."""
    require_windows()
    if method == "task":
        proc = _run(schtasks_create(command))
        if proc.returncode != 0:
            raise AutostartError(f"schtasks /Create failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
                                 " (a task at logon may need an administrator prompt; --method runkey does not)")
        return
    import winreg
    key, name, data = run_value(command)
    with winreg.CreateKey(winreg.HKEY_CURRENT_USER, key) as k:
        winreg.SetValueEx(k, name, 0, winreg.REG_SZ, data)


def unregister(method: str) -> bool:
    """Remove the registration; False when there was none (Windows only)."""
    require_windows()
    if method == "task":
        if not registered(method).registered:
            return False
        proc = _run(schtasks_delete())
        if proc.returncode != 0:
            raise AutostartError(f"schtasks /Delete failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        return True
    import winreg
    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as k:
            winreg.DeleteValue(k, NAME)
    except FileNotFoundError:
        return False
    return True


def registered(method: str) -> Registration:
    """Whether the sidecar is registered to start at logon this way (Windows only)."""
    require_windows()
    if method == "task":
        proc = _run(schtasks_query())
        found = proc.returncode == 0
        return Registration(method, found, (proc.stdout if found else proc.stderr).strip())
    import winreg
    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as k:
            data, _kind = winreg.QueryValueEx(k, NAME)
    except FileNotFoundError:
        return Registration(method, False, "")
    return Registration(method, True, str(data))


def require_windows() -> None:
    if sys.platform != "win32":
        raise AutostartError("nt8bridge service registers the sidecar with Windows (Task Scheduler or the Run key) and "
                             "works only there; elsewhere start `nt8bridge serve` from your own supervisor (e.g. a "
                             "systemd user unit)")
