"""The IB feed's rules without a connection: tick-by-tick lines, request pacing, market data types as
freshness, the front month by the instrument master's roll rule."""

from __future__ import annotations

import datetime as dt

import pytest

from bridge.core.instruments import InstrumentMaster
from bridge.feeds.base import Freshness
from bridge.feeds.ib_rules import Pacer, freshness_of, front_month, plan_lines, session_day

MASTER = InstrumentMaster.default()


def test_tick_by_tick_lines_go_two_per_root_in_order_and_every_root_has_a_source():
    plans = plan_lines(["ES", "NQ", "YM", "RTY"], 3)
    assert [(p.root, p.kinds) for p in plans] == [
        ("ES", ("Last", "BidAsk")), ("NQ", ("Last", "MktData")), ("YM", ("MktData",)), ("RTY", ("MktData",))]
    assert sum(p.tbt_lines for p in plans) == 3
    assert all(p.kinds == ("MktData",) for p in plan_lines(["ES", "NQ"], 0))
    assert sum(p.tbt_lines for p in plan_lines(["ES", "NQ"], 9)) == 4  # never more than the roots can use


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_pacer_spreads_requests_below_ibs_fifty_a_second():
    clock = Clock()
    pacer = Pacer(rate=40.0, clock=clock)
    sent = 0
    while clock.t < 101.0:  # one second of a client that sends whenever allowed
        if pacer.wait_s() == 0:
            pacer.sent()
            sent += 1
        clock.t += 0.001
    assert sent <= 41 < 50


def test_the_pacer_never_repeats_an_identical_request_within_its_spacing():
    clock = Clock()
    pacer = Pacer(rate=40.0, min_repeat_s=2.0, clock=clock)
    pacer.sent(("sub", "ES", "Last"))
    clock.t += 0.5
    assert pacer.wait_s(("sub", "ES", "Last")) == pytest.approx(1.5)
    assert pacer.wait_s(("sub", "NQ", "Last")) == 0  # another request is not held by it


def test_a_pacing_error_holds_everything_with_a_doubling_backoff():
    clock = Clock()
    pacer = Pacer(first_hold_s=1.0, max_hold_s=4.0, clock=clock)
    assert pacer.violation() == 1.0 and pacer.holding and pacer.wait_s() == pytest.approx(1.0)
    clock.t += 1.0
    assert pacer.violation() == 2.0
    clock.t += 2.0
    assert pacer.violation() == 4.0
    clock.t += 4.0
    assert pacer.violation() == 4.0  # capped
    clock.t += 120.0
    assert not pacer.holding and pacer.violation() == 1.0  # a calm spell starts over


@pytest.mark.parametrize("mdt, freshness, delay", [(1, Freshness.REALTIME, 0.0), (2, Freshness.FROZEN, 0.0),
                                                   (3, Freshness.DELAYED, 900.0), (4, Freshness.FROZEN, 900.0),
                                                   (7, Freshness.DELAYED, 900.0)])
def test_market_data_types_as_freshness(mdt, freshness, delay):
    assert freshness_of(mdt) == (freshness, delay)


def test_the_front_month_follows_the_roll_rule_and_the_evening_session_belongs_to_the_next_day():
    es = MASTER.resolve("ES")
    # ES June 2018 rolled on Thursday 2018-06-07 (8 days before its third-Friday expiry)
    assert front_month(es, dt.date(2018, 6, 6)) == ("ES 06-18", "201806")
    assert front_month(es, dt.date(2018, 6, 7)) == ("ES 09-18", "201809")
    # Wednesday 2018-06-06 17:30 Chicago opens Thursday's session: already the September contract
    evening = dt.datetime(2018, 6, 6, 22, 30, tzinfo=dt.timezone.utc).timestamp()
    assert session_day(es, evening) == dt.date(2018, 6, 7)
    assert front_month(es, session_day(es, evening))[0] == "ES 09-18"
    noon = dt.datetime(2018, 6, 6, 17, 0, tzinfo=dt.timezone.utc).timestamp()
    assert session_day(es, noon) == dt.date(2018, 6, 6)
