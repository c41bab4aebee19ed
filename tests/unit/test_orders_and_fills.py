"""The sidecar's order ledger and the Python client's fill model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.config import FillModelConfig
from bridge.nt8.fillmodel import SimBroker
from bridge.engine.orders import BracketRecord, BracketStatus, OrderTracker
from bridge.protocol.messages import (
    EntryType,
    Execution,
    Flatten,
    InstrumentDecl,
    OrderRole,
    OrderState,
    OrderUpdate,
    Side,
    SubmitBracket,
)

ES = InstrumentDecl("ES 06-18", 0.25, 50.0)
NAN = math.nan


def bracket(side: Side = Side.BUY, qty: int = 1, entry: EntryType = EntryType.MARKET, entry_price: float = NAN,
            stop: float = 2668.0, target: float = 2674.0, cid: str = "B1") -> SubmitBracket:
    return SubmitBracket(cid, 0, int(side), qty, int(entry), entry_price, stop, target, 1, "test@1", "D1")


def broker(**cfg) -> SimBroker:
    return SimBroker([ES], FillModelConfig(**({"slippage_ticks": 0, "commission_per_contract": 2.0} | cfg)))


def fills(events) -> list[Execution]:
    return [e for e in events if isinstance(e, Execution)]


# --- fill model -----------------------------------------------------------------------------

def test_market_entry_fills_on_the_next_trade_at_the_opposite_quote_plus_slippage():
    b = broker(slippage_ticks=1)
    b.submit_bracket(bracket(), 0, index=0)
    assert fills(b.on_trade(0, 2670.0, NAN, NAN, 0, index=0)) == []  # same trade as the decision: too early
    ex = fills(b.on_trade(0, 2670.0, 2669.75, 2670.25, 1, index=1))
    assert [(e.role, e.price, e.quantity) for e in ex] == [(OrderRole.ENTRY, 2670.5, 1)]


def test_market_entry_without_a_quote_fills_at_the_trade():
    b = broker()
    b.submit_bracket(bracket(side=Side.SELL, stop=2672.0, target=2666.0), 0, 0)
    assert fills(b.on_trade(0, 2670.0, NAN, NAN, 1, 1))[0].price == 2670.0


def test_limit_fills_only_through_unless_touch_is_allowed():
    for touch, expect in ((False, []), (True, [2669.0])):
        b = broker(fill_limit_on_touch=touch)
        b.submit_bracket(bracket(entry=EntryType.LIMIT, entry_price=2669.0, stop=2667.0, target=2672.0), 0, 0)
        assert [e.price for e in fills(b.on_trade(0, 2669.0, NAN, NAN, 1, 1))] == expect
    b = broker()
    b.submit_bracket(bracket(entry=EntryType.LIMIT, entry_price=2669.0, stop=2667.0, target=2672.0), 0, 0)
    assert [e.price for e in fills(b.on_trade(0, 2668.75, NAN, NAN, 1, 1))] == [2669.0]


def test_a_gap_through_a_stop_fills_at_the_gap():
    b = broker()
    b.submit_bracket(bracket(), 0, 0)
    b.on_trade(0, 2670.0, NAN, NAN, 1, 1)  # entry
    ex = fills(b.on_trade(0, 2666.0, NAN, NAN, 2, 2))  # through the 2668 stop
    assert [(e.role, e.price) for e in ex] == [(OrderRole.STOP, 2666.0)]


def test_target_fill_cancels_the_stop_and_books_pnl_with_commissions():
    b = broker()
    b.submit_bracket(bracket(qty=2), 0, 0)
    b.on_trade(0, 2670.0, NAN, NAN, 1, 1)
    events = b.on_trade(0, 2674.25, NAN, NAN, 2, 2)
    assert [e.role for e in fills(events)] == [OrderRole.TARGET]
    cancelled = [e for e in events if isinstance(e, OrderUpdate) and e.state == OrderState.CANCELLED]
    assert [e.role for e in cancelled] == [OrderRole.STOP]
    assert b.realized_pnl() == {0: (2674.0 - 2670.0) * 2 * 50.0}
    assert b.account.commission == pytest.approx(2 * 2 * 2.0)
    assert b.account.positions[0] == 0 and not b.has_live_orders()


def test_flatten_cancels_everything_and_closes_the_position():
    b = broker()
    b.submit_bracket(bracket(), 0, 0)
    b.on_trade(0, 2670.0, NAN, NAN, 1, 1)
    events = b.flatten(Flatten(0xFFFF, "kill"), 2, 2)
    assert sum(isinstance(e, OrderUpdate) and e.state == OrderState.CANCELLED for e in events) == 2
    ex = fills(b.on_trade(0, 2669.0, NAN, NAN, 3, 3))
    assert [(e.role, e.side) for e in ex] == [(OrderRole.FLATTEN, Side.SELL)]
    assert b.account.positions[0] == 0


@settings(max_examples=200, deadline=None)
@given(prices=st.lists(st.integers(-40, 40), min_size=2, max_size=200), side=st.sampled_from([Side.BUY, Side.SELL]))
def test_never_both_stop_and_target_and_the_position_always_returns_to_flat_or_the_entry(prices, side):
    b = broker()
    sign = side.sign
    b.submit_bracket(bracket(side=side, stop=2670.0 - sign * 2.5, target=2670.0 + sign * 2.5), 0, 0)
    for i, p in enumerate(prices, start=1):
        b.on_trade(0, 2670.0 + 0.25 * p, NAN, NAN, i, i)
    roles = [f.role for f in b.fills]
    assert not ("STOP" in roles and "TARGET" in roles)
    assert b.account.positions.get(0, 0) in (0, sign)
    assert len(b.fills) <= 2


# --- ledger ---------------------------------------------------------------------------------

def record(tracker: OrderTracker, qty: int = 1, side: Side = Side.BUY) -> BracketRecord:
    _, cid = tracker.next_ids()
    b = BracketRecord(cid, "D", 0, side, qty, EntryType.MARKET, NAN, 2668.0, 2674.0, "t@1", 0)
    tracker.add(b)
    return b


def execution(cid: str, role: OrderRole, side: Side, qty: int, xid: str) -> Execution:
    return Execution(xid, cid, int(role), "n", 0, int(side), 2670.0, qty, 0.0, 0)


def update(cid: str, role: OrderRole, state: OrderState) -> OrderUpdate:
    return OrderUpdate(cid, int(role), "n", 0, int(state), 0, 1, 1, 0, NAN, NAN, NAN, 0, 0, "")


def test_a_bracket_lives_from_sent_to_closed_and_flatness_follows():
    t = OrderTracker("S1")
    b = record(t, qty=2)
    assert not t.is_flat(0) and t.working_entry_quantity(0) == 2
    t.on_order_update(update(b.client_order_id, OrderRole.ENTRY, OrderState.WORKING))
    assert b.status is BracketStatus.WORKING
    t.on_execution(execution(b.client_order_id, OrderRole.ENTRY, Side.BUY, 2, "x1"))
    assert b.status is BracketStatus.OPEN and t.position(0) == 2 and t.working_entry_quantity(0) == 0
    t.on_execution(execution(b.client_order_id, OrderRole.TARGET, Side.SELL, 1, "x2"))
    assert b.status is BracketStatus.OPEN and not t.is_flat(0)
    t.on_execution(execution(b.client_order_id, OrderRole.TARGET, Side.SELL, 1, "x3"))
    assert b.status is BracketStatus.CLOSED and t.is_flat(0)


def test_duplicate_executions_are_ignored():
    t = OrderTracker("S1")
    b = record(t)
    assert t.on_execution(execution(b.client_order_id, OrderRole.ENTRY, Side.BUY, 1, "x1"))
    assert not t.on_execution(execution(b.client_order_id, OrderRole.ENTRY, Side.BUY, 1, "x1"))
    assert t.position(0) == 1 and t.duplicate_executions == 1


def test_a_partly_filled_entry_cancelled_closes_when_its_exits_fill():
    t = OrderTracker("S1")
    b = record(t, qty=3)
    t.on_execution(execution(b.client_order_id, OrderRole.ENTRY, Side.BUY, 1, "x1"))
    t.on_order_update(update(b.client_order_id, OrderRole.ENTRY, OrderState.CANCELLED))
    assert b.status is BracketStatus.OPEN
    t.on_execution(execution(b.client_order_id, OrderRole.STOP, Side.SELL, 1, "x2"))
    assert b.status is BracketStatus.CLOSED and t.is_flat(0)


def test_rejected_entry_frees_the_instrument():
    t = OrderTracker("S1")
    b = record(t)
    t.on_order_update(update(b.client_order_id, OrderRole.ENTRY, OrderState.REJECTED))
    assert b.status is BracketStatus.REJECTED and t.is_flat(0) and t.working_entry_quantity(0) == 0


def test_ids_are_unique_and_deterministic():
    a, b = OrderTracker("S9"), OrderTracker("S9")
    assert [a.next_ids() for _ in range(3)] == [b.next_ids() for _ in range(3)]
    assert len({a.next_ids()[1] for _ in range(100)}) == 100
