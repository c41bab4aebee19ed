"""Reconciliation: the sidecar's own ledger of fills against what NT8 reports.

- POSITION_MISMATCH: NT8's position of an instrument differs from the ledger's (summed from
  executions). Reports can cross on the wire (a POSITION before the EXECUTION that explains it), so
  a difference becomes a break only if it is still there ``grace_s`` of event time later (checked at
  every execution, position report and closed bar); the rule asks for an alert within 5 seconds.
- EXTRA: a fill for an order the sidecar never sent (a manual trade, another strategy on the
  account), other than NT8's own flatten orders.
- DIFFERENT: an execution id seen before with another price or quantity.

A break is returned to the pipeline, which stores it as an audit record of kind
``reconciliation_break``, counts it and logs a warning; the compliance exports list them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Break:
    kind: str  # POSITION_MISMATCH | EXTRA | DIFFERENT
    instrument_id: int
    details: str
    ts_ns: int


class Reconciler:
    def __init__(self, grace_s: float = 2.0) -> None:
        self.grace_ns = int(grace_s * 1e9)
        self.reported: dict[int, int] = {}  # NT8's last signed position per instrument
        self._since: dict[int, int] = {}  # instrument -> event time the difference was first seen
        self._flagged: set[int] = set()  # instruments whose current difference was already reported
        self.breaks = 0

    def on_position(self, instrument_id: int, nt8_position: int, ts_ns: int) -> None:
        self.reported[instrument_id] = nt8_position

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
        return out

    def fill_break(self, kind: str, instrument_id: int, details: str, ts_ns: int) -> Break:
        self.breaks += 1
        return Break(kind, instrument_id, details, ts_ns)
