"""Reconciliation: the sidecar's own ledger of fills against what NT8 reports.

- POSITION_MISMATCH: NT8's position of an instrument differs from the ledger's (summed from
  executions). Reports can cross on the wire (a POSITION before the EXECUTION that explains it), so
  a difference becomes a break only if it is still there ``grace_s`` of event time later (checked at
  every execution, position report and closed bar); the rule asks for an alert within 5 seconds.
- EXTRA: a fill for an order the sidecar never sent (a manual trade, another strategy on the
  account), other than NT8's own flatten orders.
- DIFFERENT: an execution id seen before with another price or quantity.
- MISSING: NT8 reports an order filled for more contracts than its executions add up to, still
  ``grace_s`` of event time later (an execution lost on the way, or never sent).

A break is returned to the pipeline, which stores it as an audit record of kind
``reconciliation_break``, counts it and logs a warning; the compliance exports list them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Break:
    kind: str  # POSITION_MISMATCH | EXTRA | DIFFERENT | MISSING
    instrument_id: int
    details: str
    ts_ns: int


class Reconciler:
    def __init__(self, grace_s: float = 2.0) -> None:
        self.grace_ns = int(grace_s * 1e9)
        self.reported: dict[int, int] = {}  # NT8's last signed position per instrument
        self._since: dict[int, int] = {}  # instrument -> event time the difference was first seen
        self._flagged: set[int] = set()  # instruments whose current difference was already reported
        self._filled: dict[str, tuple[int, int]] = {}  # NT8 order id -> (instrument, filled as NT8 reports it)
        self._executed: dict[str, int] = {}  # NT8 order id -> contracts in its executions
        self._short_since: dict[str, int] = {}  # orders whose executions fall short -> since (event time)
        self._missing_flagged: set[str] = set()
        self.breaks = 0

    def on_position(self, instrument_id: int, nt8_position: int, ts_ns: int) -> None:
        self.reported[instrument_id] = nt8_position

    def on_order_update(self, nt8_order_id: str, instrument_id: int, filled: int, ts_ns: int) -> None:
        if not nt8_order_id:
            return
        before = self._filled.get(nt8_order_id, (instrument_id, 0))[1]
        self._filled[nt8_order_id] = (instrument_id, max(before, filled))  # updates can arrive out of order
        self._track(nt8_order_id, ts_ns)

    def on_execution(self, nt8_order_id: str, quantity: int, ts_ns: int) -> None:
        if not nt8_order_id:
            return
        self._executed[nt8_order_id] = self._executed.get(nt8_order_id, 0) + quantity
        self._track(nt8_order_id, ts_ns)

    def _track(self, order: str, ts_ns: int) -> None:
        if order in self._filled and self._filled[order][1] > self._executed.get(order, 0):
            self._short_since.setdefault(order, ts_ns)
        else:
            self._short_since.pop(order, None)
            self._missing_flagged.discard(order)

    def check(self, ledger: dict[int, int], ts_ns: int) -> list[Break]:
        """Compare every reported position with the ledger; breaks that outlived the grace period."""
        out = []
        for iid, nt8 in self.reported.items():
            mine = ledger.get(iid, 0)
            if nt8 == mine:
                self._since.pop(iid, None)
                self._flagged.discard(iid)
                continue
            first = self._since.setdefault(iid, ts_ns)
            if ts_ns - first >= self.grace_ns and iid not in self._flagged:
                self._flagged.add(iid)
                self.breaks += 1
                out.append(Break("POSITION_MISMATCH", iid, f"NT8 reports {nt8:+d}, the ledger holds {mine:+d} "
                                 f"(for {(ts_ns - first) / 1e9:.1f} s)", ts_ns))
        for order, first in self._short_since.items():
            if ts_ns - first >= self.grace_ns and order not in self._missing_flagged:
                self._missing_flagged.add(order)
                self.breaks += 1
                iid, filled = self._filled[order]
                out.append(Break("MISSING", iid, f"NT8 reports order {order} filled {filled}, its executions add up "
                                 f"to {self._executed.get(order, 0)} (for {(ts_ns - first) / 1e9:.1f} s)", ts_ns))
        return out

    def fill_break(self, kind: str, instrument_id: int, details: str, ts_ns: int) -> Break:
        self.breaks += 1
        return Break(kind, instrument_id, details, ts_ns)
