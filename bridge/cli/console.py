"""``nt8bridge console``: the operator console's web server, and ``nt8bridge console user`` to add its users.
Registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from bridge.core.config import Config
from bridge.core.errors import UserError

INSTALL_HINT = "the console needs FastAPI and uvicorn: pip install nt8bridge[console]"
MIN_PASSWORD = 8
log = logging.getLogger("nt8bridge.console")


def cmd_console(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "console_command", None) == "user":
        return cmd_console_user(args, config)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    from bridge.console.app import create_app
    from bridge.console.auth import exposure_problem, parse_bind
    from bridge.console.server import ConsoleServer, bind_socket
    from bridge.storage.database import StorageError

    bind = args.bind or config.console.bind
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    refusal = exposure_problem(config.console, bind)
    if refusal is not None:
        raise UserError(refusal)
    tls = config.console.tls_cert and config.console.tls_key
    for key in ("tls_cert", "tls_key"):
        path = getattr(config.console, key)
        if path and not Path(path).is_file():
            raise UserError(f"console.{key} {path} is not a file: give the PEM file, or leave console.{key} empty "
                            "on loopback")
    try:
        app = create_app(config, db_url=args.db, control_endpoint=args.sidecar, events_endpoint=args.events, bind=bind)
    except StorageError as exc:
        raise UserError(str(exc)) from None
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        if args.open and _console_answers(host, port, bool(tls)):
            # the Start-menu entry clicked while a console runs already: show that one
            from bridge.console.server import open_in_browser
            open_in_browser(_url(host, port, bool(tls)), wait=True)
            print(f"a console already runs on {_url(host, port, bool(tls))}: opened it in the browser")
            return 0
        raise UserError(f"cannot listen on {bind}: {exc.strerror or exc}; another program holds it: set console.bind "
                        "or give --bind HOST:PORT") from None
    if config.console.below_normal_priority:
        from bridge.console.server import yield_cpu
        log.info("console: %s (console.below_normal_priority)", yield_cpu())
    server = ConsoleServer(app, sock, ssl_certfile=config.console.tls_cert if tls else None,
                           ssl_keyfile=config.console.tls_key if tls else None,
                           ready_file=Path(args.ready_file) if args.ready_file else None,
                           log_level="debug" if args.log_level == "debug" else "warning", open_browser=args.open)
    return server.run()


def _url(host: str, port: int, tls: bool) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{'https' if tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}/"


def _console_answers(host: str, port: int, tls: bool) -> bool:
    """Whether what holds the port is an nt8bridge console (its status answers as one)."""
    import json
    import ssl
    import urllib.request

    ctx = ssl._create_unverified_context() if tls else None  # only asking who it is, sending nothing secret
    try:
        with urllib.request.urlopen(_url(host, port, tls) + "api/v1/status", timeout=2, context=ctx) as resp:
            return "console_version" in json.load(resp)
    except (OSError, ValueError):
        return False


def cmd_console_user(args: argparse.Namespace, _config: Config | None) -> int:
    from bridge.console.auth import write_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ: nothing written")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a console password needs at least {MIN_PASSWORD} characters: nothing written")
    new = write_user(args.file, args.name, password)
    print(f"{'added' if new else 'changed the password of'} {args.name} {'to' if new else 'in'} {args.file} (readable by "
          f"you only); set console.users_file = \"{args.file}\" for the console")
    return 0


def register(sub: argparse._SubParsersAction, db_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``console`` (and ``console user``) to the main parser."""
    s = sub.add_parser("console", help="the operator console: a web page showing the sidecar live and its history, "
                       "with the kill switch (http://127.0.0.1:8080 by default)")
    s.add_argument("--bind", metavar="HOST:PORT", help="where the web server listens (default: console.bind, "
                   "127.0.0.1:8080; anything but loopback needs credentials and TLS, docs/console.md)")
    s.add_argument("--sidecar", metavar="ENDPOINT", help="the sidecar's control channel, where KILL, ENABLE and limit "
                   "changes go (default: server.control_bind)")
    s.add_argument("--events", metavar="ENDPOINT", help="the sidecar's event stream (default: server.events_bind)")
    s.add_argument("--open", action="store_true", help="open the console in the default browser once it answers "
                   "(or the console already running on that address)")
    s.add_argument("--ready-file", metavar="FILE", help="write the console's URL to this file once it answers")
    db_option(s)
    s.set_defaults(func=cmd_console)
    csub = s.add_subparsers(dest="console_command", metavar="SUBCOMMAND")
    d = csub.add_parser("user", help="add a console user (or change their password) in a users file")
    d.add_argument("name", help="the user's name: the operator named in the audit trail for what they do")
    d.add_argument("--file", required=True, metavar="FILE", help="the users file (console.users_file); created if "
                   "missing, readable by you only")
    d.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin "
                   "instead of asking")
    d.set_defaults(func=cmd_console_user, needs_config=False)
