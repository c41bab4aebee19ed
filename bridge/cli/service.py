"""``nt8bridge service install | uninstall | status [--method task|runkey]``: start the sidecar at logon on
Windows (bridge/transport/autostart.py). Elsewhere each exits 2 saying it is for Windows."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path, PureWindowsPath

from bridge.core.config import Config, user_config_path
from bridge.core.errors import UserError


def config_path(args: argparse.Namespace) -> Path:
    """The config the logon task will use: the one in force now, as an absolute path."""
    path = Path(args.config or os.environ.get("NT8BRIDGE_CONFIG") or user_config_path())
    if not path.is_file():
        raise UserError(f"the sidecar would start at logon with {path}, which does not exist: write it first "
                        f"(nt8bridge config init --out \"{path}\"), or give --config FILE")
    return path.resolve()


def cmd_service(args: argparse.Namespace, config: Config) -> int:
    from bridge.transport.autostart import (METHODS, AutostartError, pythonw_for, register, registered,
                                            require_windows, serve_command, unregister)
    try:
        require_windows()
        if args.service_command == "install":
            method = args.method or "task"
            command = serve_command(pythonw_for(PureWindowsPath(sys.executable)), PureWindowsPath(config_path(args)))
            register(method, command)
            print(f"the sidecar starts at logon ({method}): {command}")
            return 0
        methods = [args.method] if args.method else list(METHODS)
        if args.service_command == "uninstall":
            removed = [m for m in methods if unregister(m)]
            print(f"removed: {', '.join(removed)}" if removed else "nothing was registered")
            return 0
        found = [registered(m) for m in methods]
        for r in found:
            print(f"{r.method}: {'registered' if r.registered else 'not registered'}"
                  + (f"\n  {r.detail}" if r.registered and r.detail else ""))
        return 0 if any(r.registered for r in found) else 1
    except AutostartError as exc:
        raise UserError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``service`` to the main parser."""
    s = sub.add_parser("service", help="start the sidecar at logon (Windows: Task Scheduler or the Run key)")
    ssub = s.add_subparsers(dest="service_command", required=True, metavar="SUBCOMMAND")
    for name, text in (("install", "register `nt8bridge serve --config FILE` to start at logon (default method: task)"),
                       ("uninstall", "remove the registration (default: both methods)"),
                       ("status", "whether it is registered (default: both methods); exit 1 when it is not")):
        d = ssub.add_parser(name, help=text)
        d.add_argument("--method", choices=["task", "runkey"], help="task: a Task Scheduler task at logon; runkey: "
                       "HKCU\\...\\CurrentVersion\\Run (no administrator rights needed)")
        d.set_defaults(func=cmd_service)
