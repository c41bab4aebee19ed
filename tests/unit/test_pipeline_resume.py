"""A new session of a strategy instance resumes its ledger: from storage (open brackets, fills, the day's
realized P&L) and from NT8's replay (fills storage has are recognised, entries storage never had are adopted)."""

from __future__ import annotations

import math
from dataclasses import replace

from bridge.engine.pipeline import risk_engine_for
from bridge.protocol.messages import Execution, OrderRole, OrderState, OrderType, OrderUpdate, Side
from bridge.storage.queries import InstanceHistory, StoredBracket
from tests.unit.test_pipeline_exits import ES, T0, make


def stored(cid: str, side: str = "BUY", state: str | None = "FILLED") -> StoredBracket:
    return StoredBracket(cid, 7, f"{cid}-D", "ES 12-23", side, 1, "MARKET", None, 4490.0, 4520.0, "momentum@1",
                         state)


def fill_row(xid: str, cid: str, role: str, side: str, price: float, k: int) -> dict:
    return {"execution_id": xid, "client_order_id": cid, "role": role, "nt8_order_id": f"n-{xid}",
            "instrument": "ES 12-23", "side": side, "price": price, "quantity": 1, "commission": 2.0,
            "ts_event_ns": T0 + k}


def test_an_open_bracket_and_a_closed_one_are_resumed_with_the_realized_pnl():
    p, _, rows = make()
    history = InstanceHistory(
        (stored("S7-B1"), stored("S7-B2", "SELL")),
        (fill_row("x1", "S7-B1", "ENTRY", "BUY", 4500.0, 1), fill_row("x2", "S7-B1", "TARGET", "SELL", 4510.0, 2),
         fill_row("x3", "S7-B2", "ENTRY", "SELL", 4512.0, 3)))
    summary = p.resume(history)
    assert summary["active"] == ["S7-B2"] and summary["closed"] == 1
    assert summary["positions"] == {"ES 12-23": -1}
    assert summary["realized"] == (4510.0 - 4500.0) * 50.0 - 4.0 == p.realized
    b = p.orders.brackets["S7-B2"]
    assert (b.stop_price, b.target_price, b.algorithm_id) == (4490.0, 4520.0, "momentum@1")
    # NT8 replays the fill after WELCOME: recognised, not stored again, no duplicate alarm
    before = len(rows.rows)
    p.on_execution(1, Execution("x3", "S7-B2", int(OrderRole.ENTRY), "n-x3", ES, int(Side.SELL), 4512.0, 1, 2.0, T0 + 3))
    assert p.fills_replayed == 1 and p.orders.position(ES) == -1
    assert not [r for t, r in rows.rows[before:] if t in ("executions", "audit_log")]
    # a fill storage did not have (it happened while no sidecar was up) counts once
    p.on_execution(2, Execution("x4", "S7-B2", int(OrderRole.STOP), "n-x4", ES, int(Side.BUY), 4490.0, 1, 2.0, T0 + 4))
    assert p.orders.position(ES) == 0 and p.orders.brackets["S7-B2"].status == "CLOSED"


def test_a_brackets_fill_in_a_flatten_is_resumed_as_closed():
    p, _, _ = make()
    history = InstanceHistory((stored("S7-B1"),), (fill_row("x1", "S7-B1", "ENTRY", "BUY", 4500.0, 1),
                                                   fill_row("x9", "flatten-1", "FLATTEN", "SELL", 4495.0, 2)))
    summary = p.resume(history)
    assert summary["active"] == [] and summary["positions"] == {}


def test_an_entry_storage_never_had_is_adopted_from_nt8s_report_and_its_legs_fill_it_in():
    p, _, rows = make()
    p.on_order_update(1, OrderUpdate("S9-B4", int(OrderRole.ENTRY), "n1", ES, int(OrderState.FILLED),
                                     int(OrderType.LIMIT), int(Side.BUY), 2, 2, 4501.0, math.nan, 4501.0, T0, 0, ""))
    b = p.orders.brackets["S9-B4"]
    assert (b.side, b.quantity, b.entry_price, b.algorithm_id) == (Side.BUY, 2, 4501.0, "adopted")
    assert [r for t, r in rows.rows if t == "audit_log" and r[2] == "bracket_adopted"]
    # stored, so that a later restart resumes it like any other bracket
    assert [r[:2] for t, r in rows.rows if t == "orders"] == [("S9-B4", 1)]
    p.on_order_update(2, OrderUpdate("S9-B4", int(OrderRole.STOP), "n2", ES, int(OrderState.ACCEPTED),
                                     int(OrderType.STOP_MARKET), int(Side.SELL), 2, 0, math.nan, 4480.0, 0.0, T0, 0, ""))
    assert b.stop_price == 4480.0
    p.on_execution(3, Execution("x1", "S9-B4", int(OrderRole.ENTRY), "n1", ES, int(Side.BUY), 4501.0, 2, 4.0, T0))
    assert p.orders.position(ES) == 2 and p.orders.unknown_order_events == 0


def test_a_report_about_an_order_that_is_not_ours_is_not_adopted():
    p, _, _ = make()
    p.on_order_update(1, OrderUpdate("manual-7", int(OrderRole.ENTRY), "n1", ES, int(OrderState.WORKING),
                                     int(OrderType.LIMIT), int(Side.BUY), 1, 0, 4501.0, math.nan, 0.0, T0, 0, ""))
    assert "manual-7" not in p.orders.brackets and p.orders.unknown_order_events == 1


def test_the_execution_throttle_counts_the_fills_made_before_the_restart():
    p, _, _ = make()
    p.risk = risk_engine_for(replace(p.config, risk=replace(p.config.risk, max_executions_per_window=3,
                                                            execution_window_s=600.0)),
                             list(p.instruments.values()), lambda iid, ts: True)
    fills = tuple(fill_row(f"x{k}", f"S7-B{k}", "ENTRY", "BUY", 4500.0, k) for k in range(3))
    p.resume(InstanceHistory(tuple(stored(f"S7-B{k}") for k in range(3)), fills))
    states = p.risk.states()
    assert any(str(state) == "HALTED" and "3 automated executions" in why for state, why in states.values()), states
