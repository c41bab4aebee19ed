"""Reconciliation of the sidecar's ledger against NT8's reports: breaks found, crossed reports forgiven."""

from __future__ import annotations

import json

from bridge.protocol.messages import Execution, MarketPosition, OrderRole, Position, Side
from tests.unit.test_pipeline_exits import ES, MIN, NQ, T0, feed, fill, long_es, make


def breaks(rows):
    return [json.loads(r[4]) for t, r in rows.rows if t == "audit_log" and r[2] == "reconciliation_break"]


def position(p, iid, signed, k_s):
    mp = MarketPosition.LONG if signed > 0 else MarketPosition.SHORT if signed < 0 else MarketPosition.FLAT
    p.on_position(0, Position(iid, int(mp), abs(signed), 4500.0, T0 + int(k_s * 1e9)))


def test_a_position_report_ahead_of_its_execution_is_not_a_break():
    p, s, rows = make()
    feed(p, NQ, 0, 15000.0)
    s.next = [long_es()]
    (bracket,) = feed(p, ES, 0, 4500.0)
    position(p, ES, 1, 60.0)  # NT8's position arrives first...
    fill(p, bracket.client_order_id, ES, Side.BUY, 4500.25, 1)  # ...then the execution that explains it
    feed(p, ES, 2, 4501.0)
    assert breaks(rows) == []


def test_a_lasting_position_difference_is_a_break_once():
    p, s, rows = make()
    position(p, ES, 2, 0.0)  # NT8 holds 2 ES the sidecar never bought
    assert breaks(rows) == []  # within the grace period
    feed(p, ES, 1, 4500.0)  # a minute later, still different
    feed(p, ES, 2, 4500.0)
    (b,) = breaks(rows)
    assert b["kind"] == "POSITION_MISMATCH" and "+2" in b["details"] and "+0" in b["details"]
    assert p.reconciler.breaks == 1


def test_a_fill_of_an_order_the_sidecar_never_sent_and_a_changed_replay_are_breaks():
    p, s, rows = make()
    p.on_execution(1, Execution("x-manual", "", int(OrderRole.ENTRY), "nt8-77", ES, int(Side.BUY), 4500.0, 1, 2.09,
                                T0))
    p.on_execution(2, Execution("x-manual", "", int(OrderRole.ENTRY), "nt8-77", ES, int(Side.BUY), 4499.0, 1, 2.09,
                                T0 + MIN))
    assert [b["kind"] for b in breaks(rows)] == ["EXTRA", "DIFFERENT"]


def order_filled(p, nt8_id: str, iid: int, filled: int, k_s: float) -> None:
    from bridge.protocol.messages import OrderState, OrderUpdate
    p.on_order_update(0, OrderUpdate("c1", int(OrderRole.ENTRY), nt8_id, iid, int(OrderState.FILLED), 0, 1, filled,
                                     filled, float("nan"), float("nan"), 4500.0, T0 + int(k_s * 1e9), 0, ""))


def execution(p, nt8_id: str, iid: int, qty: int, k_s: float, xid: str) -> None:
    p.on_execution(0, Execution(xid, "c1", int(OrderRole.ENTRY), nt8_id, iid, int(Side.BUY), 4500.0, qty, 2.09,
                                T0 + int(k_s * 1e9)))


def test_an_order_filled_beyond_its_executions_is_a_missing_fill_break_once():
    p, s, rows = make()
    order_filled(p, "nt-7", ES, 2, 0.0)  # NT8: filled 2
    execution(p, "nt-7", ES, 1, 0.5, "x1")  # only one contract's execution ever arrives
    assert [b for b in breaks(rows) if b["kind"] == "MISSING"] == []  # within the grace period
    feed(p, ES, 1, 4500.0)
    feed(p, ES, 2, 4500.0)
    missing = [b for b in breaks(rows) if b["kind"] == "MISSING"]
    assert len(missing) == 1 and "nt-7" in missing[0]["details"] and "filled 2" in missing[0]["details"]


def test_an_update_ahead_of_its_executions_is_not_a_missing_fill():
    p, s, rows = make()
    order_filled(p, "nt-8", ES, 2, 0.0)
    execution(p, "nt-8", ES, 1, 0.3, "x1")
    execution(p, "nt-8", ES, 1, 0.6, "x2")  # both executions within the grace period
    execution(p, "nt-9", ES, 1, 0.7, "x3")  # executions ahead of their order's update
    order_filled(p, "nt-9", ES, 1, 0.8)
    feed(p, ES, 1, 4500.0)
    feed(p, ES, 2, 4500.0)
    assert [b["kind"] for b in breaks(rows) if b["kind"] == "MISSING"] == []
