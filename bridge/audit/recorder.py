"""Turns the pipeline's events into storage rows for the writer thread.

Rows are positional tuples in the column order of ``bridge.storage.schema.COLUMNS`` (``ROW_FIELDS``
below spells the order out; a test holds the two equal), because building a dict per tick costs
more than the rest of the tick's storage work. Optional prices travel as NaN; the writer stores
NULL for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Protocol

from bridge.protocol.messages import (
    Account,
    Execution,
    MarketPosition,
    OrderRole,
    OrderState,
    OrderUpdate,
    Position,
    Side,
    Tick,
)

ROW_FIELDS: dict[str, tuple[str, ...]] = {
    "ticks": ("session_id", "seq", "instrument", "kind", "price", "size", "bid", "ask",
              "ts_exchange_ns", "ts_receive_ns", "ts_sidecar_ns"),
    "bars": ("session_id", "instrument", "period_s", "ts_open_ns", "ts_close_ns", "open", "high", "low",
             "close", "volume", "tick_count", "source"),
    "quality_events": ("session_id", "seq", "instrument", "reason", "detail", "ts_event_ns",
                       "ts_sidecar_ns", "payload"),
    "decisions": ("decision_id", "session_id", "instrument", "strategy", "ts_event_ns", "ts_sidecar_ns",
                  "outcome", "rationale", "inputs"),
    "orders": ("client_order_id", "session_id", "decision_id", "instrument", "side", "quantity",
               "entry_type", "entry_price", "stop_price", "target_price", "time_in_force",
               "algorithm_id", "ts_created_ns"),
    "order_updates": ("session_id", "seq", "client_order_id", "role", "nt8_order_id", "state", "quantity",
                      "filled", "limit_price", "stop_price", "avg_fill_price", "ts_event_ns", "error_code",
                      "comment"),
    "executions": ("session_id", "seq", "execution_id", "client_order_id", "role", "nt8_order_id",
                   "instrument", "side", "price", "quantity", "commission", "ts_event_ns"),
    "positions": ("session_id", "seq", "instrument", "market_position", "quantity", "avg_price",
                  "ts_event_ns"),
    "account_values": ("session_id", "seq", "account", "cash_value", "realized_pnl", "unrealized_pnl",
                       "buying_power", "ts_event_ns"),
    "audit_log": ("session_id", "ts_sidecar_ns", "kind", "subject_id", "payload"),
    "audit_chain": ("seq", "ts_us", "kind", "subject_id", "session_id", "payload", "prev_hash", "hash"),
    "instruments": ("name", "root", "tick_size", "point_value", "currency", "exchange", "first_seen_ns"),
    "sessions": ("session_id", "instance_id", "account", "peer", "protocol_version", "started_ns",
                 "ended_ns", "end_reason", "clock_offset_ns"),
}


class RowSink(Protocol):
    """What the recorder needs of the storage writer."""

    def write(self, table: str, row: tuple) -> None: ...

    def update(self, table: str, key: Any, values: dict[str, Any]) -> None: ...


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def json_ready(v: Any) -> Any:
    """``v`` with every non-finite float, however deep, replaced by None: JSON has no NaN."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    return v


def _json(obj: Any) -> str:
    """Canonical JSON (sorted keys; a NaN or infinity becomes null) for payload columns.

    The C encoder runs first and refuses non-finite numbers; only then is the payload walked in
    Python to replace them (the walk cost two thirds of a decision's 170 us when always run)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(json_ready(obj), sort_keys=True, separators=(",", ":"))


class Recorder:
    """Everything one session stores."""

    def __init__(self, sink: RowSink, session_id: int, store_ticks: bool = True, chain: Any = None) -> None:
        self.sink = sink
        self.session_id = session_id
        self.store_ticks = store_ticks
        self.chain = chain  # bridge.audit.chain.AuditChain; None: plain audit_log rows (tests, tools)
        self._names: dict[int, str] = {}

    def set_instruments(self, names: dict[int, str]) -> None:
        self._names = dict(names)

    def session_started(self, instance_id: str, account: str, peer: str, version: int, started_ns: int,
                        clock_offset_ns: int) -> None:
        self.sink.write("sessions", (self.session_id, instance_id, account, peer, version, started_ns,
                                     None, None, clock_offset_ns))

    def session_ended(self, ended_ns: int, reason: str) -> None:
        self.sink.update("sessions", self.session_id, {"ended_ns": ended_ns, "end_reason": reason})

    def instrument(self, name: str, root: str, tick_size: float, point_value: float, currency: str,
                   exchange: str, now_ns: int) -> None:
        self.sink.write("instruments", (name, root, tick_size, point_value, currency, exchange, now_ns))

    def tick(self, seq: int, t: Tick, now_ns: int) -> None:
        if self.store_ticks:
            self.sink.write("ticks", (self.session_id, seq, self._names[t.instrument_id], t.kind, t.price,
                                      t.size, t.bid, t.ask, t.ts_exchange_ns, t.ts_receive_ns, now_ns))

    def bar(self, instrument_id: int, bar: Any, source: str) -> None:
        self.sink.write("bars", (self.session_id, self._names[instrument_id], bar.period_s, bar.ts_open_ns,
                                 bar.ts_close_ns, bar.open, bar.high, bar.low, bar.close, bar.volume,
                                 bar.tick_count, source))

    def quality_event(self, seq: int, instrument_id: int | None, reason: str, detail: str, ts_event_ns: int,
                      now_ns: int, payload: dict[str, Any]) -> None:
        name = self._names.get(instrument_id) if instrument_id is not None else None
        self.sink.write("quality_events", (self.session_id, seq, name, reason, detail, ts_event_ns, now_ns,
                                           _json(payload)))

    def decision(self, decision_id: str, instrument_id: int, strategy: str, ts_event_ns: int, now_ns: int,
                 outcome: str, rationale: str, inputs: dict[str, Any]) -> None:
        text = _json(inputs)
        self.sink.write("decisions", (decision_id, self.session_id, self._names[instrument_id], strategy,
                                      ts_event_ns, now_ns, outcome, rationale, text))
        # the inputs live in the decisions row (subject_id links them); the audit record carries their
        # SHA-256, so a changed row is found without serialising them twice
        self.audit("decision", decision_id, now_ns, {
            "outcome": outcome, "strategy": strategy, "rationale": rationale, "ts_event_ns": ts_event_ns,
            "instrument": self._names[instrument_id], "inputs_sha256": hashlib.sha256(text.encode()).hexdigest()})

    def order(self, b: Any, now_ns: int) -> None:
        self.sink.write("orders", (b.client_order_id, self.session_id, b.decision_id,
                                   self._names[b.instrument_id], Side(b.side).name, b.quantity,
                                   b.entry_type.name, b.entry_price, b.stop_price, b.target_price, "DAY",
                                   b.algorithm_id, now_ns))
        self.audit("order_sent", b.client_order_id, now_ns,
                   {"decision_id": b.decision_id, "instrument": self._names[b.instrument_id], "side": Side(b.side).name,
                    "quantity": b.quantity, "entry_type": b.entry_type.name,
                    "entry_price": finite_or_none(b.entry_price), "stop_price": b.stop_price,
                    "target_price": b.target_price, "time_in_force": "DAY", "algorithm_id": b.algorithm_id,
                    "manual_order_indicator": "N"})

    def adopted_order(self, b: Any, now_ns: int) -> None:
        """The orders row of a bracket taken on from NT8's report (no decision of this session sent it): a later
        restart resumes it from storage like any other. Its audit record is the caller's (bracket_adopted)."""
        self.sink.write("orders", (b.client_order_id, self.session_id, None, self._names[b.instrument_id],
                                   Side(b.side).name, b.quantity, b.entry_type.name, b.entry_price, b.stop_price,
                                   b.target_price, "DAY", b.algorithm_id, now_ns))

    def order_update(self, seq: int, u: OrderUpdate) -> None:
        row = (self.session_id, seq, u.client_order_id, OrderRole(u.role).name, u.nt8_order_id,
               OrderState(u.state).name, u.quantity, u.filled, u.limit_price, u.stop_price, u.avg_fill_price,
               u.ts_event_ns, u.error_code, u.comment)
        self.sink.write("order_updates", row)
        if self.chain is not None:  # acknowledgements, rejects, cancels: client and NT8 ids linked
            self.audit("order_update", u.client_order_id, time.time_ns(), dict(zip(ROW_FIELDS["order_updates"][1:], row[1:])))

    def execution(self, seq: int, e: Execution) -> None:
        row = (self.session_id, seq, e.execution_id, e.client_order_id, OrderRole(e.role).name, e.nt8_order_id,
               self._names[e.instrument_id], Side(e.side).name, e.price, e.quantity, e.commission, e.ts_event_ns)
        self.sink.write("executions", row)
        if self.chain is not None:
            self.audit("execution", e.execution_id, time.time_ns(), dict(zip(ROW_FIELDS["executions"][1:], row[1:])))

    def position(self, seq: int, p: Position) -> None:
        self.sink.write("positions", (self.session_id, seq, self._names[p.instrument_id],
                                      MarketPosition(p.market_position).name, p.quantity, p.avg_price,
                                      p.ts_event_ns))

    def account(self, seq: int, a: Account) -> None:
        self.sink.write("account_values", (self.session_id, seq, a.account, a.cash_value, a.realized_pnl,
                                           a.unrealized_pnl, a.buying_power, a.ts_event_ns))

    def audit(self, kind: str, subject_id: str, now_ns: int, payload: dict[str, Any]) -> None:
        """One audit record: chained and journaled (bridge/audit/chain.py) before this returns, then stored."""
        if self.chain is None:
            self.sink.write("audit_log", (self.session_id, now_ns, kind, subject_id, _json(payload)))
            return
        r = self.chain.append(kind, subject_id, self.session_id, payload, ts_us=now_ns // 1000)
        self.sink.write("audit_chain", (r.seq, r.ts_us, r.kind, r.subject_id, r.session_id, r.payload_json(),
                                        r.prev_hash, r.hash))
