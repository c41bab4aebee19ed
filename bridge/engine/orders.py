"""The sidecar's own ledger of brackets, fills and positions, fed by what NT8 reports.

Brackets are created by the order emitter; ORDER_UPDATE and EXECUTION move them. Position per
instrument is summed from executions (drive fills from executions, not order updates, as the Help
Guide says), and duplicate executions, which live brokers do send, are recognised by id and
ignored. Reconciliation (``bridge.audit.reconcile``) compares this ledger with NT8's POSITION reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bridge.protocol.messages import (
    EntryType,
    Execution,
    OrderRole,
    OrderState,
    OrderUpdate,
    Side,
    SubmitBracket,
    TimeInForce,
)


class BracketStatus(StrEnum):
    SENT = "SENT"  # BRACKET sent, no word from NT8 yet
    WORKING = "WORKING"  # entry accepted/working
    OPEN = "OPEN"  # entry (partly) filled, exits working
    CLOSED = "CLOSED"  # exits filled the whole entry quantity
    CANCELLED = "CANCELLED"  # entry cancelled before any fill
    REJECTED = "REJECTED"  # entry rejected


ACTIVE = frozenset({BracketStatus.SENT, BracketStatus.WORKING, BracketStatus.OPEN})


@dataclass(slots=True)
class BracketRecord:
    client_order_id: str
    decision_id: str
    instrument_id: int
    side: Side
    quantity: int
    entry_type: EntryType
    entry_price: float
    stop_price: float
    target_price: float
    algorithm_id: str
    ts_created_ns: int
    status: BracketStatus = BracketStatus.SENT
    entry_filled: int = 0
    exit_filled: int = 0
    entry_value: float = 0.0  # sum of price * quantity of entry fills
    exit_value: float = 0.0
    entry_done: bool = False  # the entry will fill no more (filled, or cancelled after a part fill)
    commission: float = 0.0
    group: str = ""  # legs of one spread share a group
    leg: int = 0
    legs: int = 1
    deadline_ns: int = 0  # event time after which the position is closed at market (0: none)
    exit_requested: bool = False  # a FLATTEN was sent for it (time limit, strategy exit, leg risk)
    ts_entry_ns: int = 0  # event time of the first entry fill

    @property
    def open_quantity(self) -> int:
        """Signed contracts this bracket holds now."""
        return self.side.sign * (self.entry_filled - self.exit_filled)

    def to_message(self) -> SubmitBracket:
        return SubmitBracket(self.client_order_id, self.instrument_id, int(self.side), self.quantity,
                             int(self.entry_type), self.entry_price, self.stop_price,
                             self.target_price, int(TimeInForce.DAY), self.algorithm_id,
                             self.decision_id)


class OrderTracker:
    """One session's brackets and positions."""

    def __init__(self, id_prefix: str) -> None:
        self.id_prefix = id_prefix
        self.brackets: dict[str, BracketRecord] = {}
        # brackets not yet CLOSED, CANCELLED or REJECTED, per instrument: what decisions look at, so
        # their cost does not grow with the session's history
        self._active: dict[int, dict[str, BracketRecord]] = {}
        self.positions: dict[int, int] = {}  # signed contracts per instrument
        self._executions: dict[str, tuple[float, int]] = {}  # execution id -> (price, quantity)
        self.last_duplicate_differs = False
        self._next = 1
        self.duplicate_executions = 0
        self.unknown_order_events = 0
        self.closed: list[BracketRecord] = []  # brackets CLOSED since the pipeline last took them
        self.resumed_executions: set[str] = set()  # fills read back from storage when the session resumed

    def next_ids(self) -> tuple[str, str]:
        """A fresh (decision id, client order id) pair; deterministic within a session."""
        n = self._next
        self._next += 1
        return f"{self.id_prefix}-D{n}", f"{self.id_prefix}-B{n}"

    def add(self, bracket: BracketRecord) -> None:
        self.brackets[bracket.client_order_id] = bracket
        self._active.setdefault(bracket.instrument_id, {})[bracket.client_order_id] = bracket

    def _set_status(self, b: BracketRecord, status: BracketStatus) -> None:
        if b.status is status:
            return  # a report repeated (NT8's replay after a reconnect): closed, and booked, once
        b.status = status
        if status not in ACTIVE:
            self._active.get(b.instrument_id, {}).pop(b.client_order_id, None)
        if status is BracketStatus.CLOSED:
            self.closed.append(b)

    def active(self, instrument_id: int | None = None) -> list[BracketRecord]:
        if instrument_id is not None:
            return list(self._active.get(instrument_id, {}).values())
        return [b for per in self._active.values() for b in per.values()]

    def position_of(self, instrument_id: int, algorithm_id: str) -> int:
        """Signed contracts held on the instrument by one algorithm's brackets."""
        return sum(b.open_quantity for b in self._active.get(instrument_id, {}).values()
                   if b.algorithm_id == algorithm_id)

    def position(self, instrument_id: int) -> int:
        return self.positions.get(instrument_id, 0)

    def working_entry_quantity(self, instrument_id: int) -> int:
        """Signed quantity of entries sent and not yet filled, cancelled or rejected."""
        return sum(b.side.sign * (b.quantity - b.entry_filled) for b in self._active.get(instrument_id, {}).values()
                   if b.status in (BracketStatus.SENT, BracketStatus.WORKING))

    def is_flat(self, instrument_id: int) -> bool:
        return not self.positions.get(instrument_id, 0) and not self._active.get(instrument_id)

    def on_order_update(self, update: OrderUpdate) -> BracketRecord | None:
        b = self.brackets.get(update.client_order_id)
        if b is None:
            self.unknown_order_events += 1
            return None
        if update.role != OrderRole.ENTRY:
            # an adopted bracket learns its exit prices from its legs' reports
            if update.role == OrderRole.STOP and b.stop_price != b.stop_price:
                b.stop_price = update.stop_price
            elif update.role == OrderRole.TARGET and b.target_price != b.target_price:
                b.target_price = update.limit_price
            return b
        state = update.state
        if state in (OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED):
            b.entry_done = True
            if b.entry_filled == 0 and state != OrderState.FILLED:
                self._set_status(b, BracketStatus.REJECTED if state == OrderState.REJECTED
                                 else BracketStatus.CANCELLED)
            else:
                self._close_if_done(b)
        elif b.status is BracketStatus.SENT and state in (OrderState.ACCEPTED, OrderState.WORKING,
                                                          OrderState.TRIGGER_PENDING):
            self._set_status(b, BracketStatus.WORKING)
        return b

    def _close_if_done(self, b: BracketRecord) -> None:
        entry_complete = b.entry_done or b.entry_filled >= b.quantity
        if entry_complete and b.entry_filled and b.exit_filled >= b.entry_filled:
            self._set_status(b, BracketStatus.CLOSED)

    def on_execution(self, execution: Execution) -> bool:
        """Apply a fill; False when its execution id was seen before (a duplicate, ignored)."""
        seen = self._executions.get(execution.execution_id)
        if seen is not None:
            self.duplicate_executions += 1
            self.last_duplicate_differs = seen != (execution.price, execution.quantity)
            return False
        self._executions[execution.execution_id] = (execution.price, execution.quantity)
        signed = Side(execution.side).sign * execution.quantity
        self.positions[execution.instrument_id] = self.positions.get(execution.instrument_id, 0) + signed
        b = self.brackets.get(execution.client_order_id)
        if b is None:
            if execution.role == OrderRole.FLATTEN:
                self._attribute_flatten(execution)
            else:
                self.unknown_order_events += 1
            return True
        value = execution.price * execution.quantity
        b.commission += execution.commission
        if execution.role == OrderRole.ENTRY:
            if not b.entry_filled:
                b.ts_entry_ns = execution.ts_event_ns
            b.entry_filled += execution.quantity
            b.entry_value += value
            self._set_status(b, BracketStatus.OPEN)
        else:
            b.exit_filled += execution.quantity
            b.exit_value += value
            self._close_if_done(b)
        return True

    def _attribute_flatten(self, execution: Execution) -> None:
        """A FLATTEN's fill closes the open brackets of its instrument, oldest first.

        NT8 reports a flatten order under no bracket of ours; without this the brackets it closed
        would stay OPEN and block the instrument for good.
        """
        left = execution.quantity
        sign = Side(execution.side).sign
        for b in sorted(self._active.get(execution.instrument_id, {}).values(), key=lambda b: b.ts_created_ns):
            held = b.open_quantity
            if left <= 0 or not held or (held > 0) == (sign > 0):
                continue
            q = min(left, abs(held))
            b.exit_filled += q
            b.exit_value += execution.price * q
            b.commission += execution.commission * q / execution.quantity
            left -= q
            b.entry_done = True  # a flatten cancels what was still working
            self._close_if_done(b)
