"""Performance metrics (reports/performance.py) against independent plain-Python reference loops.

Every reference below is written from the formula with loops, ``math`` and ``datetime`` only; none
calls into the module (not even ``TradeRecord.net_pnl``), so a wrong formula in the module cannot be
mirrored by the test. Hand-checked known cases pin the formulas themselves; hypothesis compares the
module with the references on generated series, trades and windows.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports.performance import (
    Drawdown,
    TradeRecord,
    cagr,
    daily_equity,
    daily_returns,
    equity_curve,
    expectancy,
    exposure,
    max_drawdown,
    profit_factor,
    sharpe_ratio,
    sortino_ratio,
    summarize,
    to_jsonable,
    win_rate,
)

FAST = settings(deadline=None, max_examples=80)
SLOW = settings(deadline=None, max_examples=30)

NS = 1_000_000_000
DAY = 86_400 * NS
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ns(*args: int) -> int:
    """Epoch ns of a UTC wall time, e.g. ns(2024, 1, 5, 14, 30)."""
    return (datetime(*args, tzinfo=timezone.utc) - EPOCH) // timedelta(microseconds=1) * 1000


def approx(x: float):
    return pytest.approx(x, rel=1e-9, abs=1e-9)


def same(a: float, b: float) -> bool:
    """Equal, NaN == NaN, inf == inf, else within a tight tolerance."""
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# --------------------------------------------------------------------------- references


def ref_mean(xs):
    return sum(xs) / len(xs)


def ref_sharpe(r, ppy=252, rf=0.0):
    n = len(r)
    if n < 2 or all(x == r[0] for x in r):
        return math.nan
    m = ref_mean(r)
    var = sum((x - m) ** 2 for x in r) / (n - 1)
    return (m - rf / ppy) / math.sqrt(var) * math.sqrt(ppy)


def ref_sortino(r, ppy=252, target=0.0):
    n = len(r)
    if n < 2:
        return math.nan
    m = ref_mean([x - target for x in r])
    dd = math.sqrt(sum(min(0.0, x - target) ** 2 for x in r) / n)
    if dd == 0:
        return math.inf if m > 0 else math.nan
    return m / dd * math.sqrt(ppy)


def ref_drawdown(eq):
    """(fraction, amount, peak_index, trough_index): earliest deepest trough, latest touch of its peak."""
    best = (0.0, 0.0, 0, 0)
    peak, peak_i = eq[0], 0
    for i, e in enumerate(eq):
        if e >= peak:
            peak, peak_i = e, i
        frac = (peak - e) / peak
        if frac > best[0]:
            best = (frac, peak - e, peak_i, i)
    return best


def ref_exposure_bruteforce(intervals, start, end):
    """Count unit nanoseconds [x, x+1) of the window that some interval covers (integer end points)."""
    covered = sum(1 for x in range(start, end) if any(a <= x and x + 1 <= b for a, b in intervals))
    return covered / (end - start)


def ref_net(t):
    return t.direction * (t.exit_price - t.entry_price) * t.quantity * t.point_value - t.commission


def ref_gross(t):
    return t.direction * (t.exit_price - t.entry_price) * t.quantity * t.point_value


def utc_date(ns_: int) -> date:
    return (EPOCH + timedelta(microseconds=ns_ // 1000)).date()


def ref_daily(trades, start_equity, start_ns, end_ns):
    """[(date, end-of-day equity, return)] per weekday; the last weekday takes every remaining exit."""
    d, last = utc_date(start_ns), utc_date(end_ns)
    weekdays = []
    while d <= last:
        if d.weekday() < 5:
            weekdays.append(d)
        d += timedelta(days=1)
    rows, prev = [], start_equity
    for k, day in enumerate(weekdays):
        final = k == len(weekdays) - 1
        eq = start_equity
        for t in trades:
            if final or utc_date(t.exit_ns) <= day:
                eq += ref_net(t)
        rows.append((day, eq, eq / prev - 1))
        prev = eq
    return rows


def ref_group(trades, start_equity, start_ns, end_ns):
    net = [ref_net(t) for t in trades]
    rows = ref_daily(trades, start_equity, start_ns, end_ns)
    curve = [start_equity] + [eq for _, eq, _ in rows]
    rets = [r for _, _, r in rows]
    wins, losses = [p for p in net if p > 0], [p for p in net if p < 0]
    fr, amt, _, _ = ref_drawdown(curve)
    years = (end_ns - start_ns) / (365.25 * DAY)
    end_eq = start_equity + sum(net)
    return {
        "trades": len(trades),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": len(wins) / len(net) if net else math.nan,
        "gross_pnl": sum(ref_gross(t) for t in trades),
        "commission": sum(t.commission for t in trades),
        "net_pnl": sum(net),
        "expectancy": ref_mean(net) if net else math.nan,
        "profit_factor": (sum(wins) / -sum(losses) if losses else (math.inf if wins else math.nan)),
        "sharpe": ref_sharpe(rets),
        "sortino": ref_sortino(rets),
        "max_drawdown": fr,
        "max_drawdown_amount": amt,
        "cagr": ref_cagr(end_eq / start_equity, years),
        "exposure": ref_exposure_sweep([(t.entry_ns, t.exit_ns) for t in trades], start_ns, end_ns),
        "avg_holding_minutes": ref_mean([(t.exit_ns - t.entry_ns) / (60 * NS) for t in trades]) if trades else math.nan,
        "long_trades": sum(1 for t in trades if t.direction == 1),
        "short_trades": sum(1 for t in trades if t.direction == -1),
    }


def ref_cagr(ratio, years):
    if ratio <= 0:
        return -1.0
    if math.log(ratio) / years > math.log(sys.float_info.max):  # beyond any float: unbounded
        return math.inf
    return ratio ** (1 / years) - 1


def ref_exposure_sweep(intervals, start, end):
    """Exposure for nanosecond-scale windows where brute force is too slow: +1/-1 events, swept in time."""
    events = []
    for a, b in intervals:
        a, b = max(a, start), min(b, end)
        if b > a:
            events += [(a, 1), (b, -1)]
    events.sort()
    covered, depth, since = 0, 0, None
    for x, step in events:
        if depth > 0:
            covered += x - since
        depth += step
        since = x
    return covered / (end - start)


def trade(strategy="a", direction=1, quantity=1, entry_ns=0, exit_ns=0, entry_price=100.0, exit_price=100.0,
          point_value=1.0, commission=0.0, instrument="ES 03-24") -> TradeRecord:
    return TradeRecord(strategy, instrument, direction, quantity, entry_ns, exit_ns, entry_price, exit_price,
                       point_value, commission)


# --------------------------------------------------------------------------- strategies for hypothesis

bp_returns = st.lists(st.integers(-500, 500).map(lambda k: k / 10_000), max_size=60)   # +/- 5 % on a bp grid


@st.composite
def trades_in_window(draw, min_size=0, max_size=12):
    """A window of 1-25 days starting any time of a week, and trades that exit inside it."""
    start = ns(2024, 1, 1) + draw(st.integers(0, 7 * 24)) * 3600 * NS + draw(st.integers(0, 3599)) * NS
    end = start + draw(st.integers(3600, 25 * 24 * 3600)) * NS
    out = []
    for _ in range(draw(st.integers(min_size, max_size))):
        exit_ = draw(st.integers(start, end))
        entry = exit_ - draw(st.integers(0, 3 * DAY))           # may have entered before the window
        entry_px = draw(st.integers(3800 * 4, 4200 * 4)) / 4    # ES quarter-point ticks
        exit_px = entry_px + draw(st.integers(-80, 80)) / 4
        out.append(trade(strategy=draw(st.sampled_from(["breakout", "meanrev", "zz"])),
                         direction=draw(st.sampled_from([1, -1])), quantity=draw(st.integers(1, 5)),
                         entry_ns=entry, exit_ns=exit_, entry_price=entry_px, exit_price=exit_px,
                         point_value=draw(st.sampled_from([5.0, 20.0, 50.0])),
                         commission=draw(st.sampled_from([0.0, 2.5, 4.04]))))
    return out, start, end


# --------------------------------------------------------------------------- TradeRecord


def test_trade_pnl_long_and_short():
    long_ = trade(direction=1, quantity=2, entry_price=4000.0, exit_price=4010.25, point_value=50.0, commission=8.4)
    assert long_.gross_pnl == pytest.approx(2 * 10.25 * 50)
    assert long_.net_pnl == pytest.approx(1025.0 - 8.4)
    short = trade(direction=-1, quantity=3, entry_price=4000.0, exit_price=4010.0, point_value=5.0, commission=3.0)
    assert short.gross_pnl == pytest.approx(-150.0) and short.net_pnl == pytest.approx(-153.0)


@pytest.mark.parametrize("bad", [dict(direction=0), dict(direction=2), dict(quantity=0), dict(commission=-1.0),
                                 dict(entry_ns=10, exit_ns=5), dict(point_value=0.0), dict(exit_price=math.nan)])
def test_trade_record_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        trade(**bad)


# --------------------------------------------------------------------------- Sharpe and Sortino

FIXED = [0.01, -0.02, 0.015, 0.0, -0.005, 0.03]


def test_sharpe_known_case():
    # mean 0.005, sample variance 1500e-6 / 5 = 3e-4: 0.005 / sqrt(3e-4) * sqrt(252) = sqrt(21).
    assert sharpe_ratio(FIXED) == approx(math.sqrt(21))
    assert sharpe_ratio(FIXED) == approx(ref_sharpe(FIXED))
    # 2.52 % a year is 1 bp a day: mean excess 0.0049, same deviation.
    assert sharpe_ratio(FIXED, risk_free=0.0252) == approx(math.sqrt(21) * 0.98)
    assert sharpe_ratio(FIXED, periods_per_year=12) == approx(0.005 / math.sqrt(3e-4) * math.sqrt(12))
    assert sharpe_ratio(pd.Series(FIXED)) == approx(math.sqrt(21))


def test_sortino_known_case():
    # Downside over all 6: (0.02^2 + 0.005^2) / 6 = 4.25e-4 / 6; 0.005^2 / (4.25e-4 / 6) * 252 = 1512 / 17.
    assert sortino_ratio(FIXED) == approx(math.sqrt(1512 / 17))
    assert sortino_ratio(FIXED) == approx(ref_sortino(FIXED))
    assert sortino_ratio(FIXED, target=0.001) == approx(ref_sortino(FIXED, target=0.001))


@pytest.mark.parametrize("r", [[], [0.01], [0.01] * 5, [0.0, 0.0]])
def test_sharpe_is_nan_without_two_distinct_returns(r):
    assert math.isnan(sharpe_ratio(r))


def test_sortino_edges():
    assert math.isnan(sortino_ratio([])) and math.isnan(sortino_ratio([0.05]))
    assert sortino_ratio([0.01, 0.02, 0.0]) == math.inf          # no downside, positive mean
    assert math.isnan(sortino_ratio([0.0, 0.0, 0.0]))             # exactly on target every period
    assert sortino_ratio([-0.01, -0.01]) == approx(-math.sqrt(252))


@pytest.mark.parametrize("f", [sharpe_ratio, sortino_ratio])
def test_ratios_refuse_non_finite_returns(f):
    with pytest.raises(ValueError):
        f([0.01, math.nan, 0.02])
    with pytest.raises(ValueError):
        f([0.01, 0.02], periods_per_year=0)


@FAST
@given(bp_returns, st.sampled_from([0.0, 0.02, -0.01]), st.sampled_from([252, 12, 52]))
def test_sharpe_matches_reference(r, rf, ppy):
    assert same(sharpe_ratio(r, periods_per_year=ppy, risk_free=rf), ref_sharpe(r, ppy, rf))


@FAST
@given(bp_returns, st.sampled_from([0.0, 0.0005, -0.001]))
def test_sortino_matches_reference(r, target):
    assert same(sortino_ratio(r, target=target), ref_sortino(r, target=target))


# --------------------------------------------------------------------------- drawdown and CAGR


def test_max_drawdown_known_case():
    dd = max_drawdown([100, 120, 90, 130, 65, 140])
    assert dd == Drawdown(0.5, 65.0, 3, 4)


def test_max_drawdown_conventions():
    assert max_drawdown([100, 101, 150, 200]) == Drawdown(0.0, 0.0, 0, 0)        # monotone rising
    assert max_drawdown([100]) == Drawdown(0.0, 0.0, 0, 0)                       # single value
    assert max_drawdown([100, 100, 100]) == Drawdown(0.0, 0.0, 0, 0)             # flat
    assert max_drawdown([100, 120, 120, 90]).peak_index == 2                      # decline starts at the last touch
    assert max_drawdown([100, 50, 100, 50]).trough_index == 1                     # tie: earliest trough
    # The deepest *fraction* wins, and amount belongs to that episode, not the largest currency drop.
    assert max_drawdown([100, 50, 1000, 800]) == Drawdown(0.5, 50.0, 0, 1)


@pytest.mark.parametrize("eq", [[], [100, 0, 50], [100, -5], [100, math.nan]])
def test_max_drawdown_refuses_empty_or_non_positive(eq):
    with pytest.raises(ValueError, match="empty|positive|NaN"):
        max_drawdown(eq)


@FAST
@given(st.one_of(st.lists(st.floats(1.0, 1e6), min_size=1, max_size=40),
                 st.lists(st.integers(1, 8).map(float), min_size=1, max_size=40)))   # small ints: many ties
def test_max_drawdown_matches_reference(eq):
    dd = max_drawdown(eq)
    fr, amt, p, t = ref_drawdown(eq)
    assert (dd.peak_index, dd.trough_index) == (p, t)
    assert dd.fraction == approx(fr) and dd.amount == approx(amt)


def test_cagr_known_cases():
    assert cagr(100.0, 200.0, 2.0) == approx(math.sqrt(2) - 1)
    assert cagr(100.0, 50.0, 1.0) == approx(-0.5)
    assert cagr(100.0, 100.0, 3.0) == 0.0
    assert cagr(100.0, 121.0, 2.0) == approx(0.1)
    assert cagr(100.0, 0.0, 1.0) == -1.0 and cagr(100.0, -20.0, 0.5) == -1.0
    # +8.5% in one hour compounds past the largest float: unbounded, not a crash
    assert cagr(50_000.0, 54_250.0, 1 / 8766) == math.inf


@pytest.mark.parametrize("args", [(100.0, 200.0, 0.0), (100.0, 200.0, -1.0), (0.0, 200.0, 1.0),
                                  (-5.0, 200.0, 1.0), (100.0, math.inf, 1.0)])
def test_cagr_refuses_nonsense(args):
    with pytest.raises(ValueError):
        cagr(*args)


# --------------------------------------------------------------------------- trade statistics


def test_trade_statistics_known_case():
    pnls = [10.0, -5.0, 0.0, 20.0]
    assert win_rate(pnls) == 0.5              # the scratch counts as a trade, not a win
    assert profit_factor(pnls) == approx(6.0)
    assert expectancy(pnls) == approx(6.25)


def test_trade_statistics_edges():
    for f in (win_rate, profit_factor, expectancy):
        assert math.isnan(f([]))
    assert win_rate([1.0, 2.0]) == 1.0 and profit_factor([1.0, 2.0]) == math.inf       # all wins
    assert win_rate([-1.0]) == 0.0 and profit_factor([-1.0, -2.0]) == 0.0              # all losses
    assert win_rate([0.0, 0.0]) == 0.0 and math.isnan(profit_factor([0.0, 0.0]))      # all scratches
    assert expectancy([7.5]) == 7.5


@FAST
@given(st.lists(st.integers(-1000, 1000).map(lambda k: k / 4), max_size=40))
def test_trade_statistics_match_reference(pnls):
    n = len(pnls)
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p < 0]
    assert same(win_rate(pnls), len(wins) / n if n else math.nan)
    assert same(expectancy(pnls), sum(pnls) / n if n else math.nan)
    pf = sum(wins) / -sum(losses) if losses else (math.inf if wins else math.nan)
    assert same(profit_factor(pnls), pf)


# --------------------------------------------------------------------------- exposure


def test_exposure_known_cases():
    assert exposure([(0, 10), (5, 15)], 0, 20) == 0.75                # overlap counted once
    assert exposure([(0, 10), (2, 3), (4, 8)], 0, 20) == 0.5          # nested
    assert exposure([(0, 5), (5, 10)], 0, 10) == 1.0                  # touching
    assert exposure([(-10, -1), (30, 40)], 0, 20) == 0.0              # wholly outside the window
    assert exposure([(-10, 5), (15, 99)], 0, 20) == 0.5               # clipped at both ends
    assert exposure([(-10, 99)], 0, 20) == 1.0
    assert exposure([], 0, 20) == 0.0
    assert exposure([(3, 3)], 0, 20) == 0.0                           # zero length


def test_exposure_refuses_nonsense():
    with pytest.raises(ValueError):
        exposure([(0, 1)], 5, 5)
    with pytest.raises(ValueError):
        exposure([(0, 1)], 5, 0)
    with pytest.raises(ValueError):
        exposure([(4, 2)], 0, 10)


@FAST
@given(st.lists(st.tuples(st.integers(-40, 160), st.integers(0, 60)).map(lambda p: (p[0], p[0] + p[1])), max_size=8),
       st.integers(-20, 60), st.integers(1, 100))
def test_exposure_matches_bruteforce(intervals, start, length):
    end = start + length
    got = exposure(intervals, start, end)
    assert got == approx(ref_exposure_bruteforce(intervals, start, end))
    assert got == approx(ref_exposure_sweep(intervals, start, end))
    assert 0.0 <= got <= 1.0


# --------------------------------------------------------------------------- equity curve and daily returns


def test_equity_curve_orders_by_exit():
    trades = [trade(exit_ns=30, exit_price=110.0), trade(exit_ns=10, exit_price=95.0),
              trade(exit_ns=20, exit_price=100.0, commission=1.0)]
    times, eq = equity_curve(trades, 1000.0)
    assert times.tolist() == [10, 20, 30]
    assert eq.tolist() == pytest.approx([995.0, 994.0, 1004.0])
    times, eq = equity_curve([], 1000.0)
    assert times.size == 0 and eq.size == 0


@FAST
@given(trades_in_window(), st.sampled_from([1e4, 1e6]))
def test_equity_curve_matches_reference(window, start_equity):
    trades, _, _ = window
    times, eq = equity_curve(trades, start_equity)
    ordered = sorted(trades, key=lambda t: t.exit_ns)     # Python's sort is stable: ties keep input order
    running, expected = start_equity, []
    for t in ordered:
        running += ref_net(t)
        expected.append(running)
    assert times.tolist() == [t.exit_ns for t in ordered]
    assert eq.tolist() == pytest.approx(expected, rel=1e-12)


def test_daily_returns_known_week():
    # Fri 5 Jan 2024 14:00 .. Tue 9 Jan 2024: weekdays Fri, Mon, Tue. A Saturday exit lands on Monday.
    start, end = ns(2024, 1, 5, 14), ns(2024, 1, 9, 20)
    trades = [
        trade(exit_ns=ns(2024, 1, 5, 15), entry_ns=ns(2024, 1, 5, 14, 30), exit_price=110.0, point_value=10.0),  # +100
        trade(exit_ns=ns(2024, 1, 6, 1), entry_ns=ns(2024, 1, 5, 23), exit_price=95.0, point_value=10.0),       # -50
    ]
    r = daily_returns(trades, 1000.0, start, end)
    assert [d.date() for d in r.index] == [date(2024, 1, 5), date(2024, 1, 8), date(2024, 1, 9)]
    assert str(r.index.tz) == "UTC"
    assert r.tolist() == pytest.approx([0.1, -50 / 1100, 0.0])
    assert daily_equity(trades, 1000.0, start, end).tolist() == pytest.approx([1100.0, 1050.0, 1050.0])


def test_daily_returns_weekend_after_last_weekday_goes_to_it():
    start, end = ns(2024, 1, 4), ns(2024, 1, 7, 12)          # Thu .. Sun
    trades = [trade(entry_ns=ns(2024, 1, 6), exit_ns=ns(2024, 1, 6, 3), exit_price=102.0)]
    eq = daily_equity(trades, 100.0, start, end)
    assert eq.tolist() == pytest.approx([100.0, 102.0])      # Thu, Fri (with Saturday's exit)


def test_daily_returns_edges():
    assert daily_returns([], 1000.0, ns(2024, 1, 6), ns(2024, 1, 7)).empty          # a weekend only
    r = daily_returns([], 1000.0, ns(2024, 1, 1), ns(2024, 1, 12))
    assert len(r) == 10 and (r == 0).all()                                           # no trades: zeros
    with pytest.raises(ValueError, match="outside"):
        daily_returns([trade(exit_ns=ns(2024, 2, 1))], 1000.0, ns(2024, 1, 1), ns(2024, 1, 12))
    with pytest.raises(ValueError):
        daily_returns([], 0.0, ns(2024, 1, 1), ns(2024, 1, 12))
    with pytest.raises(ValueError):
        daily_returns([], 1000.0, ns(2024, 1, 12), ns(2024, 1, 1))
    ruin = [trade(exit_ns=ns(2024, 1, 2), exit_price=0.0, quantity=20)]               # -2000 on 1000
    with pytest.raises(ValueError, match="zero or below"):
        daily_returns(ruin, 1000.0, ns(2024, 1, 1), ns(2024, 1, 5))


@FAST
@given(trades_in_window())
def test_daily_returns_match_reference(window):
    trades, start, end = window
    r = daily_returns(trades, 1e6, start, end)
    rows = ref_daily(trades, 1e6, start, end)
    assert [d.date() for d in r.index] == [day for day, _, _ in rows]
    assert r.tolist() == pytest.approx([ret for _, _, ret in rows], rel=1e-9, abs=1e-12)
    if rows:   # the last day's equity is the realised equity at the end of the window
        assert daily_equity(trades, 1e6, start, end).iloc[-1] == approx(1e6 + sum(ref_net(t) for t in trades))


# --------------------------------------------------------------------------- summarize


def two_strategy_book():
    """Two weeks from Mon 1 Jan 2024; ES (50/pt) breakout and MES (5/pt) meanrev, one overlap."""
    h = 3600 * NS
    return [
        trade("breakout", direction=1, quantity=2, entry_ns=ns(2024, 1, 2, 14), exit_ns=ns(2024, 1, 2, 16),
              entry_price=4700.0, exit_price=4710.0, point_value=50.0, commission=8.0),        # +1000 - 8
        trade("breakout", direction=-1, quantity=1, entry_ns=ns(2024, 1, 4, 14), exit_ns=ns(2024, 1, 4, 14) + h,
              entry_price=4720.0, exit_price=4730.0, point_value=50.0, commission=4.0),        # -500 - 4
        trade("meanrev", direction=1, quantity=4, entry_ns=ns(2024, 1, 2, 15), exit_ns=ns(2024, 1, 3, 15),
              entry_price=4705.0, exit_price=4700.0, point_value=5.0, commission=2.0),         # -100 - 2
        trade("meanrev", direction=-1, quantity=4, entry_ns=ns(2024, 1, 9, 14), exit_ns=ns(2024, 1, 9, 15),
              entry_price=4750.0, exit_price=4740.0, point_value=5.0, commission=2.0),         # +200 - 2
        trade("meanrev", direction=1, quantity=1, entry_ns=ns(2024, 1, 10, 14), exit_ns=ns(2024, 1, 10, 14),
              entry_price=4750.0, exit_price=4750.0, point_value=5.0, commission=0.0),         # scratch
    ], ns(2024, 1, 1), ns(2024, 1, 12, 23)


def assert_group_matches(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert same(got[key], value), (key, got[key], value)


def test_summarize_known_book():
    trades, start, end = two_strategy_book()
    s = summarize(trades, 100_000.0, start, end)
    assert list(s) == ["total", "breakout", "meanrev"]
    tot, bo, mr = s["total"], s["breakout"], s["meanrev"]
    assert (tot["trades"], bo["trades"], mr["trades"]) == (5, 2, 3)
    assert (tot["wins"], tot["losses"]) == (2, 2) and tot["win_rate"] == 0.4   # the scratch is neither
    assert bo["net_pnl"] == approx(488.0) and mr["net_pnl"] == approx(96.0) and tot["net_pnl"] == approx(584.0)
    assert tot["gross_pnl"] == approx(600.0) and tot["commission"] == approx(16.0)
    assert bo["profit_factor"] == approx(992 / 504)
    assert (bo["long_trades"], bo["short_trades"], mr["long_trades"], mr["short_trades"]) == (1, 1, 2, 1)
    assert bo["avg_holding_minutes"] == approx(90.0)
    # Jan 2 14:00-16:00 and 15:00-Jan 3 15:00 overlap: 25 h, plus 1 h + 1 h, of 11 days 23 h.
    assert tot["exposure"] == approx(27 / (11 * 24 + 23))
    assert bo["exposure"] == approx(3 / (11 * 24 + 23))
    # breakout alone: 100000 -> 100992 (Tue) -> 100488 (Thu): drawdown 504 of 100992.
    assert bo["max_drawdown"] == approx(504 / 100_992) and bo["max_drawdown_amount"] == approx(504.0)
    assert bo["cagr"] == approx((100_488 / 100_000) ** (365.25 / (11 + 23 / 24)) - 1)
    for name, group in s.items():
        mine = [t for t in trades if name == "total" or t.strategy == name]
        assert_group_matches(group, ref_group(mine, 100_000.0, start, end))


def test_summarize_each_strategy_as_if_alone():
    trades, start, end = two_strategy_book()
    s = summarize(trades, 100_000.0, start, end)
    for name in ("breakout", "meanrev"):
        alone = summarize([t for t in trades if t.strategy == name], 100_000.0, start, end)
        assert list(alone) == ["total", name]
        assert to_jsonable(alone[name]) == to_jsonable(s[name]) == to_jsonable(alone["total"])
    for key in ("trades", "wins", "losses", "long_trades", "short_trades"):
        assert s["total"][key] == s["breakout"][key] + s["meanrev"][key]
    assert s["total"]["net_pnl"] == approx(s["breakout"]["net_pnl"] + s["meanrev"]["net_pnl"])


@SLOW
@given(trades_in_window(min_size=1), st.sampled_from([50_000.0, 1e6]))
def test_summarize_matches_reference(window, start_equity):
    trades, start, end = window
    s = summarize(trades, start_equity, start, end)
    names = sorted({t.strategy for t in trades})
    assert list(s) == ["total", *names]
    for name in s:
        mine = [t for t in trades if name == "total" or t.strategy == name]
        assert_group_matches(s[name], ref_group(mine, start_equity, start, end))


def test_summarize_edges():
    start, end = ns(2024, 1, 1), ns(2024, 1, 12)
    empty = summarize([], 1000.0, start, end)
    assert list(empty) == ["total"]
    e = empty["total"]
    assert e["trades"] == 0 and e["net_pnl"] == 0.0 and e["cagr"] == 0.0 and e["exposure"] == 0.0
    assert all(math.isnan(e[k]) for k in ("win_rate", "expectancy", "profit_factor", "sharpe", "sortino",
                                          "avg_holding_minutes"))
    assert e["max_drawdown"] == 0.0
    ruin = summarize([trade(entry_ns=ns(2024, 1, 2), exit_ns=ns(2024, 1, 2, 1), exit_price=0.0, quantity=20)],
                     1000.0, start, end)["total"]
    assert ruin["cagr"] == -1.0 and math.isnan(ruin["max_drawdown"]) and math.isnan(ruin["sharpe"])
    with pytest.raises(ValueError, match="total"):
        summarize([trade("total", exit_ns=ns(2024, 1, 2))], 1000.0, start, end)
    with pytest.raises(ValueError):
        summarize([], 1000.0, start, start)


def test_to_jsonable():
    trades, start, end = two_strategy_book()
    raw = summarize(trades + [trade("winner", entry_ns=ns(2024, 1, 3), exit_ns=ns(2024, 1, 3, 1), exit_price=101.0)],
                    100_000.0, start, end)
    assert raw["winner"]["profit_factor"] == math.inf
    out = to_jsonable(raw)
    json.dumps(out, allow_nan=False)                         # strict JSON: would raise on NaN or inf
    assert out["winner"]["profit_factor"] is None            # inf -> None (documented loss of distinction)
    assert out["total"]["trades"] == 6 and isinstance(out["total"]["trades"], int)
    assert to_jsonable({"x": 1 / 3, "n": math.nan, "i": -math.inf, "np": np.float64(2.5), "l": [np.int64(3), True]}) \
        == {"x": 0.333333, "n": None, "i": None, "np": 2.5, "l": [3, True]}
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})
