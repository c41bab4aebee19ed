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
