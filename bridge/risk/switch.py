"""The kill switch: the desk-wide trading state of one sidecar.

``TradingSwitch`` is ACTIVE, or HALTED after a kill. While HALTED no new order leaves (each attempt
is a DENIED decision with reason RISK_KILL_SWITCH); exits and flattens still do. A kill sends
FLATTEN of every instrument to every NT8 session; re-enabling needs a named operator. Every change
is an audit record. Operators reach it through the control channel (``bridge.transport.control``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bridge.core.errors import ControlError


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    HALTED = "HALTED"


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
