"""The kill switch: the desk-wide trading state of one sidecar.

``TradingSwitch`` is ACTIVE, or HALTED after a kill. While HALTED no new order leaves (each attempt
is a DENIED decision with reason RISK_KILL_SWITCH); exits and flattens still do. A kill sends
FLATTEN of every instrument to every NT8 session; re-enabling needs a named operator. Every change
is an audit record. Operators reach it through the control channel (``bridge.transport.control``).

Besides the operator's kill, the sidecar itself may put *holds* on the switch while its records cannot
be kept as they should (``bridge.transport.storage_health``): HALTED while the audit journal's disk is
full (no new order until its records are durable again), REDUCING while the database is away and
``storage.on_outage = "reducing"`` (only orders that shrink a position). A hold is lifted by the
sidecar when the cause is gone, without an operator: it never flattens, and it is not a kill. The
pipeline denies what a hold forbids with ``RISK_STATE_HALTED`` / ``RISK_STATE_REDUCING`` and the hold's
source and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bridge.core.errors import ControlError


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"  # only for holds: orders that shrink a position pass
    HALTED = "HALTED"


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    kind: str  # "kill" | "enable"
    operator: str
    reason: str
    ts_ns: int


def reduces(position: int, working: int, side_sign: int, quantity: int) -> bool:
    """Whether an entry of ``quantity`` contracts (``side_sign`` +1 buy, -1 sell) shrinks the exposure
    ``position + working`` (signed contracts held and in working entries) without crossing zero."""
    exposure = position + working
    after = exposure + side_sign * quantity
    return exposure != 0 and abs(after) < abs(exposure) and (after == 0 or (after > 0) == (exposure > 0))


@dataclass(frozen=True, slots=True)
class Hold:
    """The sidecar holding trading back by itself while a cause lasts (see the module docstring)."""

    source: str  # "storage": the database is away; "audit": the audit journal's disk is full
    state: TradingState  # REDUCING or HALTED
    reason: str
    since_ns: int

    def allows(self, position: int, working: int, side_sign: int, quantity: int) -> bool:
        """Whether a new entry may leave while this hold lasts."""
        return self.state is TradingState.REDUCING and reduces(position, working, side_sign, quantity)

    @property
    def denial(self) -> str:
        """What a denied decision records as its reason."""
        return f"RISK_STATE_{self.state} ({self.source}: {self.reason})"


@dataclass
class TradingSwitch:
    state: TradingState = TradingState.ACTIVE
    events: list[SwitchEvent] = field(default_factory=list)
    holds: dict[str, Hold] = field(default_factory=dict)  # source -> hold, set and lifted by the sidecar

    @property
    def halted(self) -> bool:
        return self.state is TradingState.HALTED

    @property
    def hold_in_force(self) -> Hold | None:
        """The most restrictive hold (HALTED before REDUCING), or None."""
        holds = self.holds
        if not holds:
            return None
        return max(holds.values(), key=lambda h: h.state is TradingState.HALTED)

    def hold(self, source: str, state: TradingState, reason: str, ts_ns: int) -> Hold:
        """Hold trading back (REDUCING or HALTED) for ``source`` until :meth:`release`."""
        if state is TradingState.ACTIVE:
            raise ValueError("a hold is REDUCING or HALTED")
        h = Hold(source, state, reason, ts_ns)
        self.holds[source] = h
        return h

    def release(self, source: str) -> Hold | None:
        """Lift ``source``'s hold; returns it (None when there was none)."""
        return self.holds.pop(source, None)

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
