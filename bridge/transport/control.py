"""The sidecar's control channel: operator commands on a ZeroMQ REP socket.

The socket (``server.control_bind``, loopback by default) is polled by the server's own loop, so a
command acts between two messages, never concurrently with one. A request is one JSON object:
``{"cmd": "kill" | "enable" | "status", "operator": ..., "reason": ...}`` for the kill switch
(``bridge.risk.switch``), ``{"cmd": "shutdown", "operator": ..., "reason": ...}`` for a clean stop
(the way to stop a sidecar where there are no POSIX signals), or a limit command (``set_limit``,
``override``, ``limits``; see bridge/risk/commands.py), or ``{"cmd": "backup_proof", "proof": {...}}``, by which
``nt8bridge db backup --prove`` has the outcome of a backup's proof recorded in the audit trail; the reply is
``{"ok": true, "state": ..., ...}`` or ``{"ok": false, "error": ...}``. ``nt8bridge kill``,
``enable``, ``status``, ``stop`` and ``risk ...`` send them (``send_command``). With
``security.operators_file`` set, every request carries its operator's signature, and a refused one is
answered ``{"ok": false, "error": ..., "code": 400-404}`` (bridge/transport/operators.py).

A sidecar holds its control endpoint until it has flushed storage and closed its audit journal, so
"nothing listens there any more" (``wait_until_released``) means the stop is complete.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import zmq

from bridge.core.errors import ControlError
from bridge.transport.operators import OperatorKey, approve_request, key_from_env, sign_request

__all__ = ["COMMANDS", "ControlError", "parse_request", "send_command", "tcp_address", "wait_until_released"]


COMMANDS = ("kill", "enable", "status", "shutdown", "set_limit", "override", "limits", "backup_proof")


def parse_request(data: bytes) -> dict[str, Any]:
    try:
        req = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"not a JSON object: {exc}") from None
    if not isinstance(req, dict) or req.get("cmd") not in COMMANDS:
        raise ControlError(f'expected {{"cmd": one of {", ".join(COMMANDS)}, ...}}')
    for key in ("operator", "reason"):
        if not isinstance(req.get(key, ""), str):
            raise ControlError(f"{key} must be a string")
    return req


def send_command(endpoint: str, cmd: str, *, operator: str = "", reason: str = "", timeout_ms: int = 5000,
                 key: OperatorKey | None = None, approver_key: OperatorKey | None = None, **fields: Any) -> dict:
    """Send one control command (with its ``fields``) to a running sidecar and return its reply.

    Signed with ``key`` (else the key file named by $NT8BRIDGE_OPERATOR_KEY, if any) for a sidecar with
    operator keys; ``approver_key`` adds an override's approval (bridge/transport/operators.py)."""
    req: dict[str, Any] = {"cmd": cmd, "operator": operator, "reason": reason, **fields}
    key = key if key is not None else key_from_env()
    if key is not None:
        req = sign_request(req, key)
        if approver_key is not None:
            req = approve_request(req, approver_key)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(req).encode())
        if not sock.poll(timeout_ms):
            raise ControlError(f"no answer from the sidecar's control channel at {endpoint} within "
                               f"{timeout_ms / 1000:g} s: is `nt8bridge serve` running, and is server.control_bind "
                               "the same?")
        reply = json.loads(sock.recv())
    finally:
        sock.close()
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "refused"))
    return reply


def tcp_host_port(endpoint: str) -> tuple[str, int] | None:
    """Host (without IPv6 brackets) and port of a ``tcp://host:port`` endpoint, as written; None for
    other transports or a port chosen at bind time (``*``)."""
    if not endpoint.startswith("tcp://"):
        return None
    host, sep, port = endpoint[len("tcp://"):].rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    """Where a local client reaches a ``tcp://host:port`` endpoint: ``*`` and ``0.0.0.0`` read as
    loopback; None as for :func:`tcp_host_port`."""
    parsed = tcp_host_port(endpoint)
    if parsed is None:
        return None
    host, port = parsed
    return ("127.0.0.1" if host in ("*", "0.0.0.0") else "::1" if host == "::" else host), port


def _listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:  # refused, unreachable or timed out: nothing accepts there
        return False


def wait_until_released(endpoint: str, timeout_s: float) -> bool:
    """Wait until nothing listens on a sidecar's control endpoint any more; True when released in time.

    A TCP endpoint is released when a connection to it is refused: the sidecar closes it last, after
    storage and the audit journal. Other transports are judged by ``status`` going unanswered."""
    deadline = time.monotonic() + timeout_s
    address = tcp_address(endpoint)
    while True:
        if address is not None:
            if not _listening(address):
                return True
        else:
            try:
                send_command(endpoint, "status", timeout_ms=500)
            except ControlError:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
