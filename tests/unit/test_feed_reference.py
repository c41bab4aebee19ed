"""The reference book (bridge/feeds/reference.py): staleness, divergence, the ETF ratio, the reference with
its hysteresis, the NT8-down state and the delayed-data policy, driven by a clock the test holds."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from bridge.core.instruments import InstrumentMaster
from bridge.feeds.base import FeedQuote, Freshness, Health
from bridge.feeds.reference import ReferenceBook

S = 1_000_000_000
T0 = 1_700_000_000 * S  # any wall time: the tests' market is open unless a test closes it
MASTER = InstrumentMaster.default()


def book(**kw) -> tuple[ReferenceBook, set[int]]:
    """A book whose market is open except inside the [start, end) windows a test adds to ``closed``."""
    closed: set[tuple[int, int]] = set()

    def market_open(root: str, ts: int) -> bool:
        return not any(a <= ts < b for a, b in closed)

    args = dict(tick_size=lambda root: MASTER.resolve(root).tick_size, market_open=market_open,
                stale_after_s=5.0, divergence_ticks=8.0, switch_after_s=2.0)
    args.update(kw)
    return ReferenceBook(**args), closed


def ib(price: float, at: int, freshness: Freshness = Freshness.REALTIME, delay_s: float = 0.0,
       root: str = "ES") -> FeedQuote:
    return FeedQuote("ib", root, "ESZ3", price, price - 0.25, price, 1, at, at, freshness, delay_s)


def av(price: float, at: int, freshness: Freshness = Freshness.DELAYED, delay_s: float = 900.0) -> FeedQuote:
    return FeedQuote("alpha_vantage", "ES", "SPY", price, math.nan, math.nan, 0, at, at, freshness, delay_s)


def run(b: ReferenceBook, start: int, end: int, step: int = S // 4, nt8: float | None = None,
        ib_price: float | None = None, ib_fresh: Freshness = Freshness.REALTIME, ib_delay: float = 0.0) -> list:
    """Evaluate every ``step`` from ``start`` to ``end`` (exclusive), NT8 and IB delivering a value at each
    step when given; returns the switches."""
    out = []
    t = start
    while t < end:
        if nt8 is not None:
            b.on_nt8("ES", nt8, t)
        if ib_price is not None:
            b.on_quote(ib(ib_price, t, ib_fresh, ib_delay))
        out += b.evaluate(t)
        t += step
    return out


def started(**kw) -> ReferenceBook:
    b, _ = book(**kw)
    b.watch_nt8(["ES"], T0)
    assert not run(b, T0, T0 + 10 * S, nt8=4500.0, ib_price=4500.25)
    return b


def test_both_healthy_nt8_is_the_reference_and_ib_is_live() -> None:
    b = started()
    ref = b.reference("ES")
    assert (ref.feed, ref.price, ref.healthy, ref.delayed) == ("nt8", 4500.0, True, False)
    assert ref.entry_denial() is None
    rep = b.report(T0 + 10 * S)["ES"]
    assert rep["feeds"]["ib"]["health"] == "live" and rep["feeds"]["ib"]["divergence_ticks"] == 1.0
    assert rep["entries"] == "allowed" and b.nt8_down == {}


def test_nt8_stale_switches_to_ib_after_the_hysteresis_and_back_once_it_has_been_healthy_that_long() -> None:
    b = started()
    t = T0 + 10 * S
    # NT8 goes quiet: stale after 5 s, and the reference leaves it 2 s later, not before
    early = run(b, t, t + 7 * S - S // 4, ib_price=4501.0)
    assert early == [] and b.reference("ES").feed == "nt8"
    assert b.report(t + 7 * S)["ES"]["feeds"]["nt8"]["health"] == "stale"
    switches = run(b, t + 7 * S - S // 4, t + 12 * S, ib_price=4501.0)
    assert [(s.from_feed, s.to_feed, s.delayed) for s in switches] == [("nt8", "ib", False)]
    assert "nt8 stale: no tick for" in switches[0].reason
    assert b.reference("ES").feed == "ib" and b.reference("ES").price == 4501.0
    assert set(b.nt8_down) == {"ES"} and "stale" in b.nt8_down["ES"]
    # NT8 is back: the reference returns only once NT8 has been healthy for 2 s, and NT8-down clears with it
    t = t + 12 * S
    back_early = run(b, t, t + 2 * S - S // 4, nt8=4501.0, ib_price=4501.0)
    assert back_early == [] and b.reference("ES").feed == "ib" and b.nt8_down
    back = run(b, t + 2 * S - S // 4, t + 4 * S, nt8=4501.0, ib_price=4501.0)
    assert [(s.from_feed, s.to_feed) for s in back] == [("ib", "nt8")]
    assert b.nt8_down == {} and b.switches == {("ES", "ib"): 1, ("ES", "nt8"): 1}


def test_a_flapping_nt8_never_moves_the_reference() -> None:
    b = started()
    t = T0 + 10 * S
    out = []
    for k in range(20):  # 6.5 s quiet (stale for 1.5 s, less than the 2 s hysteresis), then one tick
        out += run(b, t, t + 6 * S + S // 2, ib_price=4500.25)
        t += 6 * S + S // 2
        b.on_nt8("ES", 4500.0, t)
    assert out == [] and b.reference("ES").feed == "nt8" and b.nt8_down == {}


def test_a_closed_market_makes_no_feed_stale() -> None:
    b, closed = book()
    b.watch_nt8(["ES"], T0)
    run(b, T0, T0 + 5 * S, nt8=4500.0, ib_price=4500.0)
    closed.add((T0 + 5 * S, T0 + 3600 * S))
    assert run(b, T0 + 5 * S, T0 + 120 * S, step=S) == []
    rep = b.report(T0 + 120 * S)["ES"]
    assert rep["feeds"]["nt8"]["health"] == "live" and rep["feeds"]["ib"]["health"] == "live"
    assert b.nt8_down == {}


def test_delayed_ib_becomes_the_reference_but_decides_no_entry() -> None:
    b = started()
    t = T0 + 10 * S
    run(b, t, t + 4 * S, nt8=4500.0, ib_price=4500.0, ib_fresh=Freshness.DELAYED, ib_delay=900.0)
    assert b.report(t + 4 * S)["ES"]["feeds"]["ib"]["health"] == "delayed"
    switches = run(b, t + 4 * S, t + 20 * S, ib_price=4500.0, ib_fresh=Freshness.DELAYED, ib_delay=900.0)
    assert [(s.to_feed, s.delayed) for s in switches] == [("ib", True)]
    assert "no new entry" in switches[0].reason
    ref = b.reference("ES")
    assert ref.delayed and ref.freshness is Freshness.DELAYED
    assert ref.entry_denial().startswith("RISK_FEED_DELAYED (ES: the reference is ib, delayed, 900 s behind")
    assert b.report(t + 20 * S)["ES"]["entries"].startswith("refused: RISK_FEED_DELAYED")


def test_real_time_beats_delayed_and_frozen_is_never_for_entries() -> None:
    b = started()
    t = T0 + 10 * S
    # IB frozen (a closed market's last value) while NT8 is quiet: the only healthy feed is not real time
    switches = run(b, t, t + 10 * S, ib_price=4500.0, ib_fresh=Freshness.FROZEN)
    assert [(s.to_feed, s.delayed) for s in switches] == [("ib", True)]
    assert b.reference("ES").entry_denial() is not None
    # the same IB turns live: it is the same feed, now real time, so entries are allowed again
    run(b, t + 10 * S, t + 11 * S, ib_price=4500.0)
    assert b.reference("ES").feed == "ib" and b.reference("ES").entry_denial() is None


def test_two_feeds_that_disagree_the_preferred_one_is_believed() -> None:
    b = started()
    t = T0 + 10 * S
    switches = run(b, t, t + 10 * S, nt8=4500.0, ib_price=4505.0)  # 20 ticks apart, limit 8
    assert switches == [] and b.reference("ES").feed == "nt8"
    rep = b.report(t + 10 * S)["ES"]["feeds"]
    assert rep["ib"]["health"] == "diverging" and "20.0 ticks from nt8" in rep["ib"]["reason"]
    assert rep["ib"]["divergence_ticks"] == 20.0 and rep["nt8"]["health"] == "live"
    assert b.feed_health("ib") is Health.DIVERGING
    # NT8 then goes quiet: its last value is no longer current, so nothing contradicts IB any more
    switches = run(b, t + 10 * S, t + 20 * S, ib_price=4505.0)
    assert [s.to_feed for s in switches] == ["ib"] and b.nt8_down
    assert b.report(t + 20 * S)["ES"]["feeds"]["ib"]["health"] == "live"


def learn_ratio(b: ReferenceBook, t: int, n: int = 4, es: float = 4500.0) -> int:
    """Real-time SPY at ES/10 - 0.5 while NT8 and IB agree; returns the time after."""
    for _ in range(n):
        b.on_nt8("ES", es, t)
        b.on_quote(ib(es, t))
        b.on_quote(av(es / 10 - 0.5, t, Freshness.REALTIME, 0.0))
        b.evaluate(t)
        t += S
    return t


def test_the_etf_ratio_is_learnt_while_both_are_healthy_and_judges_nt8() -> None:
    b = started()
    t = learn_ratio(b, T0 + 10 * S)
    ratio = b.report(t)["ES"]["feeds"]["alpha_vantage"]["ratio"]
    assert ratio == pytest.approx(4500.0 / 449.5)
    # NT8 drifts 20 ticks away while IB and the ETF (through its ratio) agree: NT8 is the odd one out
    switches = []
    for _ in range(12):
        b.on_nt8("ES", 4505.0, t)
        b.on_quote(ib(4500.0, t))
        b.on_quote(av(449.5, t, Freshness.REALTIME, 0.0))
        switches += b.evaluate(t)
        t += S // 2
    feeds = b.report(t)["ES"]["feeds"]
    assert feeds["nt8"]["health"] == "diverging" and "from ib's" in feeds["nt8"]["reason"]
    assert feeds["alpha_vantage"]["health"] == "live" and feeds["ib"]["health"] == "live"
    assert [(s.from_feed, s.to_feed) for s in switches] == [("nt8", "ib")]
    assert "nt8 diverging" in switches[0].reason
    assert b.nt8_down == {}  # diverging is not down: no REDUCING for it, the reference moved instead


def test_a_delayed_etf_is_compared_with_the_futures_as_they_were_when_its_value_was_current() -> None:
    b, _ = book(stale_after_by_feed={"alpha_vantage": 60.0})
    b.watch_nt8(["ES"], T0)

    def es(k: int) -> float:  # ES rising a tick every 2 s
        return 4500.0 + 0.25 * (k // 2)

    t = T0
    for k in range(1260):  # 21 minutes; from minute 20 on, the ETF delayed by 15 minutes says ES/10 as it was then
        b.on_nt8("ES", es(k), t)
        b.on_quote(ib(es(k), t))
        if k >= 1200 and k % 10 == 0:
            b.on_quote(av(es(k - 900) / 10, t))
        b.evaluate(t)
        t += S
    feeds = b.report(t)["ES"]["feeds"]
    assert feeds["alpha_vantage"]["ratio"] == pytest.approx(10.0, rel=1e-4)
    assert feeds["alpha_vantage"]["health"] == "delayed"
    # now vs the ETF's 15-minute-old value would be 450 ticks; against then, it is within a tick or two
    assert feeds["alpha_vantage"]["divergence_ticks"] == pytest.approx(0.0, abs=2)
    # an ETF value that disagrees with the ES of its own time is a divergence
    b.on_quote(av(es(1260 - 900) / 10 + 5.0, t))
    b.evaluate(t)
    assert b.report(t)["ES"]["feeds"]["alpha_vantage"]["health"] == "diverging"


def test_an_etf_without_a_learnt_ratio_is_not_judged_nor_believed() -> None:
    b = started()
    t = T0 + 10 * S
    b.set_feed_health("ib", Health.DOWN, "connection refused by 127.0.0.1:4002")
    b.on_quote(av(449.5, t, Freshness.REALTIME, 0.0))
    # only one ETF value: its ratio cannot be learnt while IB is down and NT8 quiet... it was learnt from NT8
    switches = run(b, t, t + 20 * S)
    feeds = b.report(t + 20 * S)["ES"]["feeds"]
    assert feeds["ib"]["health"] == "down" and feeds["ib"]["reason"] == "connection refused by 127.0.0.1:4002"
    assert feeds["alpha_vantage"]["health"] == "stale"  # one value, 20 s ago, stale limit 5 s
    assert switches == [] and b.reference("ES").feed == "nt8"


def test_a_polling_feed_has_its_own_stale_limit_and_an_etf_reference_is_in_future_units() -> None:
    b, _ = book(stale_after_by_feed={"alpha_vantage": 3600.0})
    b.watch_nt8(["ES"], T0)
    t = learn_ratio(b, T0, n=3)
    b.set_feed_health("ib", Health.DOWN, "not connected")
    switches = run(b, t, t + 30 * S)
    assert [(s.to_feed, s.delayed) for s in switches] == [("alpha_vantage", False)]
    ref = b.reference("ES")
    assert ref.feed == "alpha_vantage" and ref.price == pytest.approx(4500.0)
    assert ref.entry_denial() is None  # a real-time ETF (a paid tier): believed, in the future's units


def test_the_market_clock_of_a_lockstep_playback_is_its_data_time() -> None:
    b, closed = book()
    wall = T0
    data_tuesday = int(dt.datetime(2018, 5, 8, 14, 30, tzinfo=dt.timezone.utc).timestamp()) * S
    closed.add((wall - 3600 * S, wall + 3600 * S))  # the wall clock says closed (a test on a Saturday)
    b.watch_nt8(["ES"], wall)
    b.on_nt8("ES", 2700.0, wall, data_tuesday, lockstep=True)
    b.on_quote(ib(2700.0, wall))
    b.evaluate(wall)
    # the playback pauses for 8 s of wall time: in its data's Tuesday the market is open, so NT8 is stale
    switches = run(b, wall + S, wall + 9 * S, ib_price=2700.0)
    assert [s.to_feed for s in switches] == ["ib"] and b.nt8_down
    # a live session at the same wall time: closed, nothing stale
    b2, closed2 = book()
    closed2.add((wall - 3600 * S, wall + 3600 * S))
    b2.watch_nt8(["ES"], wall)
    b2.on_nt8("ES", 2700.0, wall, data_tuesday, lockstep=False)
    b2.on_quote(ib(2700.0, wall))
    assert run(b2, wall, wall + 9 * S, ib_price=2700.0) == [] and b2.nt8_down == {}


def test_bad_values_are_dropped_and_counted() -> None:
    b = started()
    t = T0 + 10 * S
    for bad in (ib(math.nan, t), ib(-1.0, t), ib(math.inf, t), ib(4500.0, t, root="NOSUCH")):
        b.on_quote(bad)
    b.evaluate(t)
    assert b.bad_values == {"ib": 4}
    assert b.report(t)["ES"]["feeds"]["ib"]["price"] == 4500.25  # the last good one
    assert "NOSUCH" not in b.roots()


def test_an_older_value_never_replaces_a_newer_one_and_a_drained_batch_keeps_the_last() -> None:
    b = started()
    t = T0 + 10 * S
    n = b.on_quotes([ib(4501.0, t), ib(4502.0, t + 1), ib(4503.0, t + 2), ib(math.nan, t + 3)])
    b.on_quote(ib(4400.0, t - S))
    assert n == 4 and b.report(t)["ES"]["feeds"]["ib"]["price"] == 4503.0 and b.bad_values == {"ib": 1}


def test_a_root_no_session_streams_has_no_reference_and_never_makes_nt8_down() -> None:
    b, _ = book()
    b.on_quote(ib(4500.0, T0))
    assert run(b, T0, T0 + 30 * S, ib_price=4500.0) == []
    assert b.reference("ES") is None and b.nt8_down == {}
    assert b.report(T0)["ES"]["entries"] == "no NT8 session"
    # a session streams it, then goes: its NT8-down state goes with it
    b.watch_nt8(["ES"], T0 + 30 * S)
    run(b, T0 + 30 * S, T0 + 40 * S, ib_price=4500.0)
    assert b.nt8_down and b.reference("ES").feed == "ib"
    b.watch_nt8([], T0 + 40 * S)
    b.evaluate(T0 + 40 * S)
    assert b.nt8_down == {} and b.reference("ES") is None


def test_switch_after_zero_switches_at_the_first_unhealthy_evaluation() -> None:
    b = started(switch_after_s=0.0)
    t = T0 + 10 * S
    switches = run(b, t, t + 6 * S, ib_price=4500.0)
    assert [s.to_feed for s in switches] == ["ib"] and switches[0].at_ns == t + 5 * S  # NT8's last tick: t - 0.25 s
