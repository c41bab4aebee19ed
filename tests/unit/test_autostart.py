"""Starting the sidecar at logon (bridge/transport/autostart.py): the command lines, built on any
platform. Registering them with Windows is exercised on Windows (under Wine by the installer's tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import PureWindowsPath

import pytest

from bridge.cli.main import build_parser
from bridge.transport.autostart import (NAME, RUN_KEY, AutostartError, pythonw_for, run_value, schtasks_create,
                                        schtasks_delete, schtasks_query, serve_command)

VENV_PYTHON = PureWindowsPath(r"C:\Program Files\nt8bridge\.venv\Scripts\python.exe")
CONFIG = PureWindowsPath(r"C:\Users\Ann Lee\AppData\Roaming\nt8bridge\config.toml")


def test_the_logon_command_runs_the_venvs_pythonw_and_quotes_paths_with_spaces():
    pythonw = pythonw_for(VENV_PYTHON)
    assert pythonw == PureWindowsPath(r"C:\Program Files\nt8bridge\.venv\Scripts\pythonw.exe")
    assert pythonw_for(pythonw) == pythonw
    command = serve_command(pythonw, CONFIG)
    assert command == ('"C:\\Program Files\\nt8bridge\\.venv\\Scripts\\pythonw.exe" -m bridge.cli serve --config '
                       '"C:\\Users\\Ann Lee\\AppData\\Roaming\\nt8bridge\\config.toml"')


def test_the_task_and_the_run_key_carry_that_command():
    command = serve_command(pythonw_for(VENV_PYTHON), CONFIG)
    assert schtasks_create(command) == ["schtasks", "/Create", "/SC", "ONLOGON", "/TN", "nt8bridge-sidecar",
                                        "/TR", command, "/F"]
    assert schtasks_delete() == ["schtasks", "/Delete", "/TN", "nt8bridge-sidecar", "/F"]
    assert schtasks_query() == ["schtasks", "/Query", "/TN", "nt8bridge-sidecar"]
    assert run_value(command) == (r"Software\Microsoft\Windows\CurrentVersion\Run", NAME, command)
    assert RUN_KEY.startswith("Software\\Microsoft") and NAME == "nt8bridge-sidecar"


def test_a_command_too_long_for_schtasks_is_refused_with_the_way_out():
    deep = PureWindowsPath("C:\\" + "\\".join(["a-rather-long-folder-name"] * 10) + "\\config.toml")
    with pytest.raises(AutostartError, match="--method runkey"):
        schtasks_create(serve_command(pythonw_for(VENV_PYTHON), deep))


def test_serve_takes_config_after_the_command_as_the_logon_task_writes_it():
    args = build_parser().parse_args(["serve", "--config", "after.toml"])
    assert args.config == "after.toml"
    args = build_parser().parse_args(["--config", "before.toml", "serve"])
    assert args.config == "before.toml"  # not undone by the subcommand's own --config
    args = build_parser().parse_args(["--config", "before.toml", "ninjascript", "install", "--config", "after.toml"])
    assert args.config == "after.toml"


@pytest.mark.skipif(sys.platform == "win32", reason="off Windows the service commands refuse")
@pytest.mark.parametrize("command", ["install", "uninstall", "status"])
def test_off_windows_the_service_commands_exit_2_saying_they_are_for_windows(command):
    out = subprocess.run([sys.executable, "-m", "bridge.cli", "service", command, "--method", "runkey"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "works only there" in out.stderr and "Windows" in out.stderr


def test_without_stderr_as_under_pythonw_errors_go_to_the_log_file_in_the_data_folder(tmp_path):
    code = ("import sys; sys.stderr = None\n"  # what pythonw.exe gives a program
            "from bridge.cli.main import main\n"
            f"sys.exit(main(['--config', {str(tmp_path / 'missing.toml')!r}, 'serve']))")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and out.stderr == ""
    log = (tmp_path / "data" / "nt8bridge" / "nt8bridge.log").read_text(encoding="utf-8")
    assert "missing.toml does not exist" in log
