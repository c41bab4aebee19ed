"""The kill switch and the sidecar's control channel.

``TradingSwitch`` is the desk-wide trading state of one sidecar: ACTIVE, or HALTED after a kill.
While HALTED no new order leaves (each attempt is a DENIED decision with reason
RISK_KILL_SWITCH); exits and flattens still do. A kill sends FLATTEN of every instrument to every
NT8 session; re-enabling needs a named operator. Every change is an audit record.

The control channel is a ZeroMQ REP socket (``server.control_bind``, loopback by default) polled
by the server's own loop, so a command acts between two messages, never concurrently with one.
A request is one JSON object: ``{"cmd": "kill" | "enable" | "status", "operator": ..., "reason": ...}``,
or a limit command (``set_limit``, ``override``, ``limits``; see bridge/risk_commands.py);
the reply is ``{"ok": true, "state": ..., ...}`` or ``{"ok": false, "error": ...}``.
``nt8bridge kill``, ``enable``, ``status`` and ``risk ...`` send them (``send_command``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import zmq


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    HALTED = "HALTED"


class ControlError(RuntimeError):
    """A control command could not be delivered or was refused; the message says why."""


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    kind: str  # "kill" | "enable"
    operator: str
    reason: str
    ts_ns: int


@dataclass
class TradingSwitch:
    state: TradingState = TradingState.ACTIVE
    events: list[SwitchEvent] = field(default_factory=list)

    @property
    def halted(self) -> bool:
        return self.state is TradingState.HALTED

    def kill(self, operator: str, reason: str, ts_ns: int) -> SwitchEvent:
        """Halt new orders (a kill while halted is recorded again: each one is an event)."""
        event = SwitchEvent("kill", operator.strip() or "unnamed", reason.strip() or "kill switch", ts_ns)
        self.state = TradingState.HALTED
        self.events.append(event)
        return event

    def enable(self, operator: str, reason: str, ts_ns: int) -> SwitchEvent:
        """Trade again; refused without a named operator."""
        if not operator.strip():
            raise ControlError("re-enabling trading needs a named operator (--operator NAME)")
        event = SwitchEvent("enable", operator.strip(), reason.strip() or "re-enabled", ts_ns)
        self.state = TradingState.ACTIVE
        self.events.append(event)
        return event


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
