"""``nt8bridge doctor [--nt8-dir DIR] [--control ENDPOINT] [--json]``: is this desk ready to trade?

One line per check, OK, WARN or FAIL, and under a WARN or FAIL what to do. Exit 0 when nothing
FAILs, 1 otherwise. Checks: the Python version, the installed environment, the configuration, the
ports it names (free, or held by our own sidecar), the sidecar on the control channel and, per live
NT8 session, the clock offset to the NT8 host, NT8's user folder, the NinjaScript installed there and
its wire protocol version, and the database.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.cli.common import add_control_option
from bridge.core.config import Config, ConfigError, load_config, user_config_path

MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python
# The offset includes the one-way latency, so it cannot judge milliseconds; beyond a second the two hosts'
# timestamps in the audit trail no longer order events the way they happened, and the clocks need syncing.
CLOCK_WARN_NS = 1_000_000_000
STATUS_TIMEOUT_MS = 1500


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    advice: str = ""


def _python_version() -> tuple[int, int, int]:
    return sys.version_info[:3]


def check_python() -> Check:
    version = _python_version()
    text = ".".join(map(str, version))
    if version[:2] < MIN_PYTHON:
        return Check("python", "FAIL", f"Python {text} ({sys.executable}); nt8bridge needs "
                     f"{'.'.join(map(str, MIN_PYTHON))} or newer",
                     "run nt8bridge from the environment its installer made (it brings its own Python), or install "
                     "Python 3.11+ and reinstall nt8bridge there")
    return Check("python", "OK", f"Python {text} ({sys.executable})")


def _environment() -> tuple[str, str, str | None]:
    """This interpreter's prefix, its base prefix, and the nt8bridge version installed in it (None: none)."""
    try:
        installed: str | None = importlib.metadata.version("nt8bridge")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    return sys.prefix, sys.base_prefix, installed


def check_environment() -> Check:
    prefix, base, installed = _environment()
    if installed is None:
        return Check("environment", "FAIL", f"nt8bridge is not installed in {prefix} (running {__version__} from "
                     f"{Path(__file__).parents[2]})", "run the nt8bridge command of the installed environment "
                     "(.venv\\Scripts\\nt8bridge.exe), or install it here: pip install -e .")
    if installed != __version__:
        return Check("environment", "FAIL", f"{prefix} has nt8bridge {installed} installed, but the code that runs is "
                     f"{__version__} ({Path(__file__).parents[2]})", "reinstall nt8bridge in this environment "
                     "(run the installer again, or pip install -e .)")
    if prefix == base:
        return Check("environment", "WARN", f"{prefix} is not a virtual environment (nt8bridge {installed})",
                     "the installer puts nt8bridge in its own venv, which the logon task starts: run that "
                     "environment's nt8bridge so that doctor checks what will run")
    return Check("environment", "OK", f"{prefix} (nt8bridge {installed})")


def check_config(path: str | None) -> tuple[Check, Config]:
    """The config as the sidecar would load it; on failure the defaults stand in for the other checks."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        where = path or os.environ.get("NT8BRIDGE_CONFIG") or user_config_path()
        return Check("config", "FAIL", str(exc), f"fix {where}, or write a fresh one: nt8bridge config init --out "
                     f"\"{where}\" --force (the other checks use the defaults)"), Config()
    source = path or os.environ.get("NT8BRIDGE_CONFIG") or (user_config_path() if user_config_path().exists() else None)
    if source is None:
        return Check("config", "WARN", "no config file: the defaults are in force",
                     f"write one for this desk: nt8bridge config init --out \"{user_config_path()}\""), config
    return Check("config", "OK", f"{source} is valid"), config


# --- ports and the running sidecar ---------------------------------------------------------------------

def _status(endpoint: str) -> dict[str, Any] | None:
    from bridge.transport.control import ControlError, send_command
    try:
        return send_command(endpoint, "status", timeout_ms=STATUS_TIMEOUT_MS)
    except ControlError:
        return None


def _bind_target(endpoint: str) -> tuple[socket.AddressFamily, str, int] | None:
    """What binding ``tcp://host:port`` takes; None for other transports and for ``*`` ports."""
    from bridge.transport.control import tcp_host_port
    parsed = tcp_host_port(endpoint)
    if parsed is None:
        return None
    host, port = parsed
    if host == "*":
        host = "0.0.0.0"
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), host, port


def _port_free(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if sys.platform == "win32":  # SO_REUSEADDR on Windows would let this bind succeed over a listener
            s.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:  # a port in TIME_WAIT is free to ZeroMQ, which binds with SO_REUSEADDR too
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _port_of(endpoint: Any) -> int | None:
    target = _bind_target(endpoint) if isinstance(endpoint, str) else None
    return target[2] if target else None


def check_ports(config: Config, sidecar: dict[str, Any] | None) -> list[Check]:
    ours = {}
    if sidecar is not None:
        ours = {"server.bind": _port_of(sidecar.get("endpoint")),
                "server.control_bind": _port_of(sidecar.get("control_endpoint")),
                "metrics.port": sidecar.get("metrics_port")}
    wanted = [("server.bind", config.server.bind), ("server.control_bind", config.server.control_bind)]
    if config.metrics.enabled:
        wanted.append(("metrics.port", f"tcp://{config.metrics.host}:{config.metrics.port}"))
    checks = []
    for key, endpoint in wanted:
        name = f"port {key}"
        if not endpoint:
            checks.append(Check(name, "WARN", "the control channel is disabled: no kill switch, no `nt8bridge stop`",
                                "set server.control_bind (default tcp://127.0.0.1:5556)"))
            continue
        target = _bind_target(endpoint)
        if target is None:
            checks.append(Check(name, "OK", f"{endpoint}: no fixed TCP port to check"))
            continue
        family, host, port = target
        if _port_free(family, host, port):
            checks.append(Check(name, "OK", f"{endpoint} is free"))
        elif ours.get(key) == port:
            checks.append(Check(name, "OK", f"{endpoint} is held by our own sidecar (pid {sidecar['pid']})"))
        else:
            where = f"netstat -ano | findstr :{port}" if sys.platform == "win32" else f"ss -ltnp 'sport = :{port}'"
            extra = " (and the Sidecar endpoint of the NT8 strategy)" if key == "server.bind" else ""
            checks.append(Check(name, "FAIL", f"{endpoint} is taken by another program",
                                f"find it with `{where}` and stop it, or choose another port for {key}{extra}"))
    return checks


def check_sidecar(endpoint: str, sidecar: dict[str, Any] | None) -> list[Check]:
    if not endpoint:
        return []
    if sidecar is None:
        return [Check("sidecar", "WARN", f"no sidecar answers on {endpoint}",
                      "start it: nt8bridge serve (or nt8bridge service install to start it at logon)")]
    detail = (f"running at {sidecar.get('endpoint')}: pid {sidecar.get('pid')}, nt8bridge {sidecar.get('version')}, "
              f"{sidecar.get('state')}, {sidecar.get('sessions')} NT8 sessions")
    if sidecar.get("state") == "HALTED":
        checks = [Check("sidecar", "WARN", detail, "the kill switch is on: trade again with nt8bridge enable "
                        "--operator NAME")]
    elif sidecar.get("version") != __version__:
        checks = [Check("sidecar", "WARN", detail, f"it runs nt8bridge {sidecar.get('version')}, this command is "
                        f"{__version__}: restart it (nt8bridge stop --wait 60, then start it) to run the installed "
                        "version")]
    else:
        checks = [Check("sidecar", "OK", detail)]
    for session in sidecar.get("live_sessions", []):
        checks.append(_clock(session))
    return checks


def _clock(session: dict[str, Any]) -> Check:
    name = f"clock {session.get('instance_id')}"
    offset = session.get("clock_offset_ns")
    if offset is None:
        return Check(name, "WARN", f"session {session.get('session_id')}: no clock sample yet",
                     "it is taken on the first message after HELLO: run doctor again in a moment")
    text = (f"NT8 ({session.get('account')}) sends stamps {offset / 1e6:+.1f} ms from the sidecar's clock "
            "(one-way latency included)")
    if abs(offset) > CLOCK_WARN_NS:
        return Check(name, "WARN", text, "synchronise both hosts' clocks (Windows: w32tm /resync; check the time "
                     "service points at a reliable NTP server): the audit trail stamps events with both clocks")
    return Check(name, "OK", text)


# --- NT8 and the database ------------------------------------------------------------------------------

def check_nt8(nt8_dir: str | None) -> list[Check]:
    from bridge.nt8.deploy import NT8_DIR_ENV, DeployError, find_nt8_folder, installed_ninjascript
    from bridge.protocol.messages import PROTOCOL_VERSION
    given = nt8_dir is not None or bool(os.environ.get(NT8_DIR_ENV))
    try:
        folder = find_nt8_folder(Path(nt8_dir) if nt8_dir else None)
    except DeployError as exc:
        off_windows = sys.platform != "win32" and not given
        status = "WARN" if off_windows else "FAIL"
        return [Check("nt8 folder", status, str(exc), "give --nt8-dir DIR to check an NT8 folder from here"
                      if off_windows else "install NinjaTrader 8 and start it once, or give --nt8-dir DIR"),
                Check("ninjascript", "WARN", "not checked: no NT8 user folder", "")]
    checks = [Check("nt8 folder", "OK", f"{folder.user_dir} (from {folder.source})")]
    installed = installed_ninjascript(folder.custom_dir)
    custom = folder.custom_dir
    if installed.conflicts:
        files = "; ".join(f"{c.path} ({', '.join(c.types)})" for c in installed.conflicts)
        checks.append(Check("ninjascript", "FAIL", f"other files in {custom} declare nt8bridge's types, so NT8 cannot "
                            f"compile any script (CS0101): {files}", "delete them (an older copy or a backup saved "
                            "as .cs), then nt8bridge ninjascript install"))
    elif installed.missing:
        what = "not installed" if not installed.present else f"incomplete, missing {', '.join(installed.missing)}"
        checks.append(Check("ninjascript", "FAIL", f"nt8bridge's NinjaScript is {what} in {custom}",
                            "nt8bridge ninjascript install, then compile in NT8 (NinjaScript Editor, F5)"))
    elif installed.protocol_version != PROTOCOL_VERSION:
        checks.append(Check("ninjascript", "FAIL", f"the installed NinjaScript speaks wire protocol "
                            f"v{installed.protocol_version}, this sidecar v{PROTOCOL_VERSION}: they cannot talk",
                            "nt8bridge ninjascript install (it replaces the old copy), then compile in NT8 "
                            "(NinjaScript Editor, F5)"))
    elif not installed.identical:
        checks.append(Check("ninjascript", "WARN", f"installed in {custom} (wire protocol v{PROTOCOL_VERSION}), but "
                            f"the files differ from those of nt8bridge {__version__} (an older release, or edited)",
                            "nt8bridge ninjascript install to replace them, then compile in NT8 (F5)"))
    else:
        checks.append(Check("ninjascript", "OK", f"nt8bridge {__version__}'s, wire protocol v{PROTOCOL_VERSION}, in "
                            f"{custom}"))
    return checks


def check_security(config: Config) -> Check:
    """Remote mode (docs/security.md): the secret and operator files readable, and nothing exposed beyond
    loopback without them (what `nt8bridge serve` would refuse)."""
    from bridge.transport.security import Security, exposure_problem
    try:
        security = Security.from_config(config.security)
    except ConfigError as exc:
        return Check("security", "FAIL", str(exc), "see docs/security.md")
    problem = exposure_problem(config.server.bind, config.server.control_bind, security)
    if problem is not None:
        return Check("security", "FAIL", problem, "the sidecar refuses to start like this (docs/security.md)")
    if not security.remote:
        return Check("security", "OK", "loopback only, unauthenticated (remote mode off)")
    allow = ", ".join(str(n) for n in security.allow) or "any peer with the secret"
    operators = (f"{len(security.operators)} operators sign control requests" if security.operators is not None
                 else "control requests unsigned (control channel on loopback)")
    warn = not security.allow and security.operators is None
    return Check("security", "WARN" if warn else "OK",
                 f"remote mode: {len(security.secrets)} secret(s), peers: {allow}; {operators}",
                 "consider security.allow (the NT8 machines) and security.operators_file" if warn else "")


def check_database(config: Config) -> Check:
    from bridge.storage.database import StorageError, default_db_url, probe
    url = config.storage.url or default_db_url()
    try:
        return Check("database", "OK", probe(url))
    except StorageError as exc:
        return Check("database", "FAIL", str(exc), "fix storage.url in the config, or make that database reachable")


# --- the command ---------------------------------------------------------------------------------------

def run_checks(config_path: str | None, nt8_dir: str | None, control: str | None) -> list[Check]:
    checks = [check_python(), check_environment()]
    config_check, config = check_config(config_path)
    checks.append(config_check)
    endpoint = control or config.server.control_bind
    sidecar = _status(endpoint) if endpoint else None
    checks += check_ports(config, sidecar)
    checks.append(check_security(config))
    checks += check_sidecar(endpoint, sidecar)
    checks += check_nt8(nt8_dir)
    checks.append(check_database(config))
    return checks


def _print(checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        lines = c.detail.splitlines() or [""]
        print(f"{c.status:<5} {c.name:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<5} {'':<{width}}  {line}")
        if c.advice and c.status != "OK":
            print(f"{'':<5} {'':<{width}}  -> {c.advice}")
    fails, warns = (sum(c.status == s for c in checks) for s in ("FAIL", "WARN"))
    print(f"doctor: {fails} FAIL, {warns} WARN" if fails or warns else "doctor: all OK")


def cmd_doctor(args: argparse.Namespace, _config: Config | None) -> int:
    checks = run_checks(args.config, args.nt8_dir, args.control)
    if args.json:
        print(json.dumps({"ok": not any(c.status == "FAIL" for c in checks), "checks": [asdict(c) for c in checks]},
                         indent=2))
    else:
        _print(checks)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``doctor`` to the main parser."""
    s = sub.add_parser("doctor", help="check this desk: Python, environment, config, ports, sidecar and clocks, NT8 "
                       "folder, NinjaScript, database; exit 1 when any check FAILs")
    s.add_argument("--nt8-dir", metavar="DIR", help="NT8's user folder (default: $NT8BRIDGE_NT8_DIR, else what NT8 "
                   "registered, else Documents\\NinjaTrader 8)")
    add_control_option(s)
    s.add_argument("--json", action="store_true", help="the checks as JSON")
    s.set_defaults(func=cmd_doctor, needs_config=False)
