"""Run-time limit changes and temporary overrides: the only ways to change a limit while trading.

Each NT8 session has its own :class:`~bridge.risk.engine.RiskEngine` (built from the config at
HELLO). An operator command from the control channel (``nt8bridge risk set`` / ``risk override``)
is validated once on a scratch engine built from the same config, so a bad command changes
nothing anywhere; then it is applied to every session's engine and kept, so sessions that connect
later start with it too. The server writes each accepted command to the audit trail.

Overrides run on each engine's own event time (a playback's clock is its data), for
``duration_s`` from the engine's latest event; a session that connects later gets what is left
of the override's wall-clock duration, counted from its first event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.core.errors import ControlError
from bridge.risk.engine import RiskEngine

log = logging.getLogger("nt8bridge.risk")

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class LimitCommand:
    """One accepted operator command, as it is replayed on sessions that connect later."""

    kind: str  # "set_limit" | "override"
    scope: str
    field: str
    value: Any
    operator: str  # set_limit: who changed it; override: who asked
    reason: str
    approved_by: str = ""
    duration_s: float = 0.0
    issued_wall_ns: int = 0

    def remaining_s(self, now_wall_ns: int) -> float:
        return self.duration_s - (now_wall_ns - self.issued_wall_ns) / _NS

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scope": self.scope, "field": self.field, "value": self.value,
                "operator": self.operator, "reason": self.reason, "approved_by": self.approved_by,
                "duration_s": self.duration_s, "issued_wall_ns": self.issued_wall_ns}


def _text(req: dict[str, Any], key: str) -> str:
    value = req.get(key, "")
    if not isinstance(value, str) or not value.strip():
        raise ControlError(f"{key!r} is required (a non-empty string)")
    return value.strip()


def command_from_request(req: dict[str, Any]) -> LimitCommand:
    """A control request (``set_limit`` or ``override``) as a command; raises ControlError naming what is wrong."""
    kind = req["cmd"]
    scope, field_name = _text(req, "scope"), _text(req, "field")
    value = req.get("value")
    if kind == "set_limit":
        if isinstance(value, (list, dict)):
            raise ControlError("value must be a number, true/false, text or null (null removes the limit)")
        return LimitCommand(kind, scope, field_name, value, _text(req, "operator"), _text(req, "reason"),
                            issued_wall_ns=time.time_ns())
    duration = req.get("duration_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError("an override needs a numeric value")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0:
        raise ControlError("an override needs duration_s > 0 (it expires by itself)")
    return LimitCommand(kind, scope, field_name, value, _text(req, "who"), _text(req, "why"),
                        _text(req, "approved_by"), float(duration), time.time_ns())


def _apply_at(engine: RiskEngine, cmd: LimitCommand, now: int, duration_s: float | None) -> Any:
    if cmd.kind == "set_limit":
        return engine.set_limit(cmd.scope, cmd.field, cmd.value, cmd.operator, cmd.reason, now_ns=now)
    seconds = cmd.duration_s if duration_s is None else duration_s
    return engine.override(cmd.scope, cmd.field, float(cmd.value), cmd.operator, cmd.reason, cmd.approved_by,
                           now + int(seconds * _NS), now_ns=now)


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """A deferred command the session's engine refused when it ran (validated on the desk's limits, it
    can still clash with a session's own); recorded like the engine's events, never raised on the hot path."""

    command: LimitCommand
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"event": "CommandRefused", "error": self.error, **self.command.to_dict()}


def _apply_later(engine: RiskEngine, cmd: LimitCommand, now: int, duration_s: float | None) -> Any:
    try:
        return _apply_at(engine, cmd, now, duration_s)
    except (ValueError, TypeError) as exc:
        log.error("%s of %s.%s refused by a session's risk engine: %s", cmd.kind, cmd.scope, cmd.field, exc)
        return CommandRefused(cmd, str(exc))


def apply(engine: RiskEngine, cmd: LimitCommand, duration_s: float | None = None) -> dict[str, Any]:
    """Apply one command to one engine at its latest event time; returns the engine's event as a dict.

    An engine that has seen no event yet (a session that has just said HELLO) takes the command at
    its first event (``RiskEngine.at_first_event``): stamping it with the wall clock would drag a
    playback's event-time clock years ahead."""
    now = engine.event_time_ns
    if now is None:
        engine.at_first_event(lambda t: _apply_later(engine, cmd, t, duration_s))
        return {"event": "Deferred", "until": "the session's first event", **cmd.to_dict()}
    return _apply_at(engine, cmd, now, duration_s).to_dict()


@dataclass
class DeskLimitCommands:
    """The commands accepted so far, applied to every session's engine, present and future."""

    scratch_engine: Callable[[], RiskEngine]  # a fresh engine from the config, to validate a command on
    accepted: list[LimitCommand] = field(default_factory=list)

    def submit(self, cmd: LimitCommand, engines: list[RiskEngine]) -> list[dict[str, Any]]:
        """Validate, then apply to every engine; returns each engine's event as a dict."""
        scratch = self.scratch_engine()
        now = time.time_ns()
        try:
            for earlier in self.accepted:  # the scratch engine must be in the state the sessions are in
                if earlier.kind == "set_limit":
                    _apply_at(scratch, earlier, now, None)
            _apply_at(scratch, cmd, now, None)
        except (ValueError, TypeError) as exc:
            raise ControlError(f"{cmd.kind} refused: {exc}") from None
        self.accepted.append(cmd)
        return [apply(engine, cmd) for engine in engines]

    def replay(self, engine: RiskEngine) -> list[dict[str, Any]]:
        """Bring a new session's engine up to date: every limit change, and the overrides still running."""
        events = []
        now_wall = time.time_ns()
        for cmd in self.accepted:
            if cmd.kind == "set_limit":
                events.append(apply(engine, cmd))
            elif (left := cmd.remaining_s(now_wall)) > 0:
                events.append(apply(engine, cmd, duration_s=left))
        return events
