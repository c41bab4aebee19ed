"""The sidecar's control channel: operator commands on a ZeroMQ REP socket.

The socket (``server.control_bind``, loopback by default) is polled by the server's own loop, so a
command acts between two messages, never concurrently with one. A request is one JSON object:
``{"cmd": "kill" | "enable" | "status", "operator": ..., "reason": ...}`` for the kill switch
(``bridge.risk.switch``), or a limit command (``set_limit``, ``override``, ``limits``; see
bridge/risk/commands.py); the reply is ``{"ok": true, "state": ..., ...}`` or
``{"ok": false, "error": ...}``. ``nt8bridge kill``, ``enable``, ``status`` and ``risk ...`` send
them (``send_command``).
"""

from __future__ import annotations

import json
from typing import Any

import zmq

from bridge.core.errors import ControlError

__all__ = ["COMMANDS", "ControlError", "parse_request", "send_command"]


COMMANDS = ("kill", "enable", "status", "set_limit", "override", "limits")


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
                 **fields: Any) -> dict:
    """Send one control command (with its ``fields``) to a running sidecar and return its reply."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps({"cmd": cmd, "operator": operator, "reason": reason, **fields}).encode())
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
