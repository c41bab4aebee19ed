"""Instrument master, session hours, contract names and the tick grid."""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.instruments import (
    InstrumentMaster,
    SessionClock,
    TradingHours,
    UnknownInstrumentError,
    contract_name,
    front_contract,
    parse_contract_name,
    price_on_grid,
    prices_on_grid,
    roll_date,
    third_friday,
)

MASTER = InstrumentMaster.default()
ES_HOURS = MASTER.resolve("ES").hours
SPY_HOURS = MASTER.resolve("SPY").hours


def ns(text: str, tz: str = "UTC") -> int:
    """Nanoseconds since epoch of a wall-clock time in ``tz``."""
    return pd.Timestamp(text, tz=tz).value


# ----------------------------------------------------------------------------------------------
# Specs and the master
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "point_value", "tick", "exchange"),
    [
        ("ES", 50.0, 0.25, "CME"),
        ("NQ", 20.0, 0.25, "CME"),
        ("YM", 5.0, 1.0, "CBOT"),
        ("RTY", 50.0, 0.10, "CME"),
        ("MES", 5.0, 0.25, "CME"),
        ("MNQ", 2.0, 0.25, "CME"),
        ("MYM", 0.5, 1.0, "CBOT"),
        ("M2K", 5.0, 0.10, "CME"),
    ],
)
def test_futures_contract_facts(root: str, point_value: float, tick: float, exchange: str) -> None:
    spec = MASTER.resolve(f"{root} 12-23")
    assert (spec.root, spec.point_value, spec.tick_size, spec.exchange) == (root, point_value, tick, exchange)
    assert spec.is_future and spec.currency == "USD"
    assert spec.hours == ES_HOURS
    assert spec.tick_value == pytest.approx(point_value * tick)


def test_spy_is_an_equity_with_extended_hours() -> None:
    spec = MASTER.resolve("SPY")
    assert (spec.tick_size, spec.point_value, spec.is_future) == (0.01, 1.0, False)
    assert spec.hours.tz == "America/New_York"
    assert (spec.hours.open, spec.hours.close) == (dt.time(4), dt.time(20))
    # The real file holds a 6,211,548-share closing-cross print: the cap must let it through.
    assert spec.max_trade_size > 6_211_548


def test_roots_and_resolve_forms() -> None:
    assert MASTER.roots() == sorted(["ES", "NQ", "YM", "RTY", "MES", "MNQ", "MYM", "M2K", "SPY"])
    for name in ("ES 06-18", "ES", "es 06-18", "  ES  "):
        assert MASTER.resolve(name).root == "ES"
    assert MASTER.resolve("NQ 12-23").root == "NQ"
    assert "ES 06-18" in MASTER and "XX 06-18" not in MASTER


def test_unknown_instrument_says_what_to_do() -> None:
    with pytest.raises(UnknownInstrumentError, match=r"unknown instrument 'XX 06-18'.*\[\[instruments\]\].*tick_size"):
        MASTER.resolve("XX 06-18")
    with pytest.raises(UnknownInstrumentError, match="not a future"):
        MASTER.resolve("SPY 06-18")
    assert issubclass(UnknownInstrumentError, ValueError)
    with pytest.raises(ValueError, match="expected 'ROOT' or 'ROOT MM-YY'"):
        MASTER.resolve("ES 2018-06")


def test_with_declared_adds_and_overrides_without_mutating() -> None:
    declared = MASTER.with_declared(
        [
            {"root": "QQQ", "tick_size": 0.01, "point_value": 1.0, "session": "equity", "max_trade_size": 5_000_000},
            {"root": "ES", "tick_size": 0.25, "point_value": 50.0, "session": "cme_globex", "description": "mine"},
        ]
    )
    qqq = declared.resolve("QQQ")
    assert (qqq.tick_size, qqq.is_future, qqq.hours.tz, qqq.max_trade_size) == (
        0.01,
        False,
        "America/New_York",
        5_000_000,
    )
    assert declared.resolve("ES 03-24").description == "mine"
    assert "QQQ" not in MASTER.roots()  # the original is unchanged
    assert MASTER.resolve("ES").description == "E-mini S&P 500"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"root": "X", "tick_size": 0.1, "point_value": 1, "session": "equity", "colour": "red"},
            r"unknown key 'colour'.*allowed keys",
        ),
        ({"root": "X", "tick_size": 0.1, "point_value": 1}, r"missing key 'session'"),
        (
            {"root": "X", "tick_size": 0.1, "point_value": 1, "session": "24x7"},
            r"'session' must be one of 'cme_globex', 'equity'",
        ),
        ({"root": "X", "tick_size": 0, "point_value": 1, "session": "equity"}, r"'tick_size' must be a positive"),
        ({"root": "X", "tick_size": "0.1", "point_value": 1, "session": "equity"}, r"'tick_size' must be a positive"),
        (
            {"root": "X", "tick_size": 0.1, "point_value": math.nan, "session": "equity"},
            r"'point_value' must be a positive",
        ),
        ({"root": "es mini", "tick_size": 0.1, "point_value": 1, "session": "equity"}, r"'root' must be"),
        (
            {"root": "X", "tick_size": 0.1, "point_value": 1, "session": "equity", "max_trade_size": 0},
            r"'max_trade_size'",
        ),
        ({"root": "X", "tick_size": 0.1, "point_value": 1, "session": "equity", "currency": "usd"}, r"'currency'"),
    ],
)
def test_with_declared_rejects_bad_entries(entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MASTER.with_declared([entry])


def test_with_declared_rejects_duplicate_roots() -> None:
    entry = {"root": "QQQ", "tick_size": 0.01, "point_value": 1.0, "session": "equity"}
    with pytest.raises(ValueError, match="more than once"):
        MASTER.with_declared([entry, dict(entry)])


# ----------------------------------------------------------------------------------------------
# Contract names and the front month
# ----------------------------------------------------------------------------------------------


def test_parse_contract_name() -> None:
    assert parse_contract_name("ES 06-18") == ("ES", 6, 2018)
    assert parse_contract_name("SPY") == ("SPY", None, None)
    assert parse_contract_name("M2K 03-24") == ("M2K", 3, 2024)
    for bad in ("ES 13-18", "ES 00-18", "ES 6-18", "ES 06/18", "", "ES 06-18 x"):
        with pytest.raises(ValueError):
            parse_contract_name(bad)


@given(
    root=st.sampled_from(["ES", "NQ", "YM", "RTY", "MES", "MNQ", "MYM", "M2K"]),
    month=st.sampled_from([3, 6, 9, 12]),
    year=st.integers(2000, 2099),
)
def test_contract_name_round_trip(root: str, month: int, year: int) -> None:
    name = contract_name(root, month, year)
    assert parse_contract_name(name) == (root, month, year)
    assert contract_name(*parse_contract_name(name)) == name  # type: ignore[arg-type]


def test_contract_name_rules() -> None:
    assert contract_name("ES", 6, 2018) == "ES 06-18"
    assert contract_name("ES", 12, 23) == "ES 12-23"
    with pytest.raises(ValueError, match="not a contract month"):
        contract_name("ES", 5, 2018)
    assert contract_name("CL", 5, 2018, quarterly=False) == "CL 05-18"
    with pytest.raises(ValueError, match="2000-2099"):
        contract_name("ES", 6, 1999)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (dt.date(2018, 5, 7), "ES 06-18"),  # the day of the team's ES 06-18 tick file
        (dt.date(2018, 6, 6), "ES 06-18"),  # June 2018 expires Fri 06-15: roll Thu 06-07
        (dt.date(2018, 6, 7), "ES 09-18"),
        (dt.date(2023, 10, 10), "ES 12-23"),
        (dt.date(2023, 12, 6), "ES 12-23"),  # Dec 2023 expires Fri 12-15: roll Thu 12-07
        (dt.date(2023, 12, 7), "ES 03-24"),
        (dt.date(2023, 12, 31), "ES 03-24"),
        (dt.date(2024, 1, 2), "ES 03-24"),
    ],
)
def test_front_contract_known_days(day: dt.date, expected: str) -> None:
    assert front_contract("ES", day) == expected


def test_front_contract_changes_only_on_roll_thursdays() -> None:
    day, previous = dt.date(2015, 1, 1), front_contract("ES", dt.date(2014, 12, 31))
    changes = []
    while day < dt.date(2030, 1, 1):
        current = front_contract("ES", day)
        _, month, year = parse_contract_name(current)
        assert month in (3, 6, 9, 12) and year is not None
        # The front contract has not expired, and expires within one quarter (13 or 14 weeks)
        # plus the 8 roll days.
        assert day < third_friday(year, month) <= day + dt.timedelta(days=14 * 7 + 8)
        if current != previous:
            changes.append(day)
            assert day.weekday() == 3, f"roll on {day} is not a Thursday"
            _, old_month, old_year = parse_contract_name(previous)
            assert old_month is not None and old_year is not None
            assert day == roll_date(old_year, old_month) == third_friday(old_year, old_month) - dt.timedelta(days=8)
        previous = current
        day += dt.timedelta(days=1)
    assert len(changes) == 15 * 4


@pytest.mark.shared_data
def test_front_contract_matches_the_most_traded_lean_contract(shared_data: Path) -> None:
    """For each day of the Lean ES minute files, the contract with the largest volume is the front month."""
    volume: dict[str, dict[str, float]] = defaultdict(dict)
    for f in (shared_data / "lean-es-minute").glob("*_es_minute_trade_*.csv"):
        day, contract = f.name[:8], f.stem.rsplit("_", 1)[1]
        volume[day][contract] = float(pd.read_csv(f, header=None, usecols=[5]).iloc[:, 0].sum())
    assert len(volume) == 16
    for day, by_contract in volume.items():
        most = max(by_contract, key=by_contract.__getitem__)
        expected = contract_name("ES", int(most[4:]), int(most[:4]))
        assert front_contract("ES", dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))) == expected, day


# ----------------------------------------------------------------------------------------------
# Session hours
# ----------------------------------------------------------------------------------------------

CT = "America/Chicago"


@pytest.mark.parametrize(
    ("local", "is_open"),
    [
        ("2023-10-15 16:59:59.999999", False),  # Sunday before the open
        ("2023-10-15 17:00", True),  # Sunday open (belongs to Monday)
        ("2023-10-16 15:59:59.999999", True),
        ("2023-10-16 16:00", False),  # daily halt
        ("2023-10-16 16:30", False),
        ("2023-10-16 16:59:59.999999", False),
        ("2023-10-16 17:00", True),
        ("2023-10-16 23:59", True),
        ("2023-10-17 00:00", True),
        ("2023-10-20 15:59", True),  # Friday
        ("2023-10-20 16:00", False),
        ("2023-10-20 17:00", False),  # no Friday evening session
        ("2023-10-21 00:00", False),  # Saturday
        ("2023-10-21 12:00", False),
        ("2023-10-21 23:59", False),
        ("2023-10-22 12:00", False),  # Sunday morning
    ],
)
def test_es_hours_local(local: str, is_open: bool) -> None:
    ts = ns(local, CT)
    assert ES_HOURS.is_open(ts) is is_open
    assert SessionClock(ES_HOURS).is_open(ts) is is_open


def test_es_hours_at_nanosecond_edges() -> None:
    close = ns("2023-10-16 16:00", CT)
    assert ES_HOURS.is_open(close - 1) and not ES_HOURS.is_open(close)
    clock = SessionClock(ES_HOURS)
    assert clock.is_open(close - 1) and not clock.is_open(close)


@pytest.mark.parametrize(
    ("utc", "is_open", "why"),
    [
        # March 2024: clocks spring forward Sunday 03-10 02:00 CST -> 03:00 CDT.
        ("2024-03-08 21:59:59", True, "Fri close 16:00 CST = 22:00 UTC"),
        ("2024-03-08 22:00", False, "Fri close 16:00 CST = 22:00 UTC"),
        ("2024-03-10 21:59:59", False, "Sun open 17:00 CDT = 22:00 UTC, not 23:00"),
        ("2024-03-10 22:00", True, "Sun open 17:00 CDT = 22:00 UTC"),
        ("2024-03-11 20:59:59", True, "Mon close 16:00 CDT = 21:00 UTC"),
        ("2024-03-11 21:00", False, "Mon halt starts 21:00 UTC"),
        ("2024-03-11 21:59:59", False, "Mon halt ends 22:00 UTC"),
        ("2024-03-11 22:00", True, "Mon reopen 17:00 CDT"),
        # November 2024: clocks fall back Sunday 11-03 02:00 CDT -> 01:00 CST.
        ("2024-11-01 20:59:59", True, "Fri close 16:00 CDT = 21:00 UTC"),
        ("2024-11-01 21:00", False, "Fri close 16:00 CDT = 21:00 UTC"),
        ("2024-11-03 22:00", False, "Sun 16:00 CST: still closed"),
        ("2024-11-03 22:59:59", False, "Sun open 17:00 CST = 23:00 UTC"),
        ("2024-11-03 23:00", True, "Sun open 17:00 CST = 23:00 UTC"),
        ("2024-11-04 21:59:59", True, "Mon close 16:00 CST = 22:00 UTC"),
        ("2024-11-04 22:00", False, "Mon halt 22:00-23:00 UTC"),
        ("2024-11-04 23:00", True, "Mon reopen 17:00 CST"),
    ],
)
def test_es_hours_across_dst(utc: str, is_open: bool, why: str) -> None:
    ts = ns(utc)
    assert ES_HOURS.is_open(ts) is is_open, why
    assert SessionClock(ES_HOURS).is_open(ts) is is_open, why


@pytest.mark.shared_data
def test_es_minute_bars_fall_in_session_except_known_ghosts(shared_data: Path) -> None:
    """Every ES 12-23 bar starts inside the session, apart from 15 flat 'ghost' bars."""
    from bridge.data.nt8files import read_nt8

    bars = read_nt8(shared_data / "nt8" / "ES 12-23.Last.txt")
    clock = SessionClock(ES_HOURS)
    # A bar stamped t covers [t - 1 min, t): its start decides.
    outside = [t for t in bars["ts_ns"].to_numpy() - 60_000_000_000 if not clock.is_open(int(t))]
    assert len(outside) == 15


def test_spy_hours() -> None:
    et = "America/New_York"
    assert not SPY_HOURS.is_open(ns("2013-10-07 03:59:59", et))
    assert SPY_HOURS.is_open(ns("2013-10-07 04:00", et))
    assert SPY_HOURS.is_open(ns("2013-10-07 19:59:59", et))
    assert not SPY_HOURS.is_open(ns("2013-10-07 20:00", et))
    assert not SPY_HOURS.is_open(ns("2013-10-12 12:00", et))  # Saturday
    # The real file's first and last prints (UTC) are inside the session.
    assert SPY_HOURS.is_open(ns("2013-10-07 08:00:00.464"))
    assert SPY_HOURS.is_open(ns("2013-10-11 23:59:32.543"))


def test_trading_hours_validation() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        TradingHours("Mars/Olympus", dt.time(9), dt.time(17), (0,))
    with pytest.raises(ValueError, match="differ"):
        TradingHours("UTC", dt.time(9), dt.time(9), (0,))
    with pytest.raises(ValueError, match="weekdays"):
        TradingHours("UTC", dt.time(9), dt.time(17), (7,))
    with pytest.raises(ValueError, match="weekdays"):
        TradingHours("UTC", dt.time(9), dt.time(17), ())


# A session whose open falls in the spring-forward gap (02:30 does not exist on 2024-03-10 in
# Chicago) and whose close falls in the repeated hour in November: the hardest case for a cache.
GAP_HOURS = TradingHours(CT, dt.time(2, 30), dt.time(1, 30), (0, 1, 2, 3, 4, 5, 6))
DAYTIME_GAP_HOURS = TradingHours(CT, dt.time(1, 30), dt.time(2, 30), (6,))

DST_ANCHORS = [
    ns(t) for t in ("2024-03-10 08:00", "2024-11-03 07:00", "2023-03-12 08:00", "2023-11-05 07:00", "2024-06-15 12:00")
]
DAY_NS = 86_400 * 10**9


@settings(max_examples=120, deadline=None)
@given(
    hours=st.sampled_from([ES_HOURS, SPY_HOURS, GAP_HOURS, DAYTIME_GAP_HOURS]),
    anchor=st.sampled_from(DST_ANCHORS),
    start=st.integers(-4 * DAY_NS, 4 * DAY_NS),
    steps=st.lists(
        st.one_of(
            st.integers(0, 90 * 60 * 10**9),  # mostly forward, up to 90 minutes
            st.integers(-3 * DAY_NS, 3 * DAY_NS),  # occasionally anywhere, backwards included
        ),
        min_size=1,
        max_size=400,
    ),
)
def test_session_clock_agrees_with_trading_hours(
    hours: TradingHours, anchor: int, start: int, steps: list[int]
) -> None:
    clock = SessionClock(hours)
    ts = anchor + start
    for step in steps:
        ts += step
        assert clock.is_open(ts) is hours.is_open(ts), pd.Timestamp(ts, tz="UTC")
        lo, hi, state = clock.interval(ts)
        assert lo <= ts < hi
        # The interval's ends really are where the state holds: check just inside both ends.
        assert hours.is_open(lo) is state and hours.is_open(hi - 1) is state


def test_session_clock_dense_sweep_over_dst_months() -> None:
    """Every 7 minutes through March and November 2024, for all sessions."""
    for hours in (ES_HOURS, SPY_HOURS, GAP_HOURS):
        clock = SessionClock(hours)
        for start, end in (("2024-03-01", "2024-04-01"), ("2024-10-25", "2024-11-15")):
            for ts in range(ns(start), ns(end), 7 * 60 * 10**9):
                assert clock.is_open(ts) is hours.is_open(ts), (hours, pd.Timestamp(ts, tz="UTC"))


def test_session_clock_is_amortised_constant() -> None:
    """A week of one-second steps recomputes only at session boundaries, not per call."""

    class CountingClock(SessionClock):
        __slots__ = ("recomputes",)

        def __init__(self, hours: TradingHours) -> None:
            super().__init__(hours)
            self.recomputes = 0

        def _recompute(self, ts_ns: int) -> bool:
            self.recomputes += 1
            return super()._recompute(ts_ns)

    clock = CountingClock(ES_HOURS)
    start = ns("2024-03-08 12:00")  # over the spring-forward weekend
    opens = sum(clock.is_open(start + k * 10**9) for k in range(7 * 86_400))
    assert 0 < opens < 7 * 86_400
    # Friday close, Sunday open, four halts and four reopens, the DST switch, the first call.
    assert clock.recomputes <= 14


# ----------------------------------------------------------------------------------------------
# Tick grid
# ----------------------------------------------------------------------------------------------


def test_price_on_grid_examples() -> None:
    assert price_on_grid(4371.25, 0.25)
    assert price_on_grid(167.41, 0.01)
    assert price_on_grid(0.1 + 0.2, 0.1)  # 0.30000000000000004
    assert price_on_grid(1800.3, 0.1)
    assert price_on_grid(35197.0, 1.0)
    assert price_on_grid(100000.01, 0.01)  # ten million ticks: float error exceeds 1e-9 tick
    assert not price_on_grid(4371.3, 0.25)
    assert not price_on_grid(167.415, 0.01)
    assert not price_on_grid(167.4101, 0.01)  # a sub-penny print
    assert not price_on_grid(4371.25 + 1e-6, 0.25)
    assert not price_on_grid(math.nan, 0.25)
    assert not price_on_grid(math.inf, 0.25)


@given(
    tick=st.sampled_from([0.25, 0.1, 1.0, 0.01, 0.5, 0.05]),
    k=st.integers(0, 5_000_000),
    off=st.sampled_from([0.0, 0.5, 0.013, 1e-6]),
)
def test_price_on_grid_matches_decimal_truth(tick: float, k: int, off: float) -> None:
    # On the grid: the float nearest the decimal text, as a parser produces. Off the grid: an
    # offset of at least 1e-6 tick, which float64 resolves at these magnitudes.
    places = len(repr(tick).split(".")[1].rstrip("0")) if "." in repr(tick) else 0
    price = round(k * tick, places) if off == 0.0 else (k + off) * tick
    expected = off == 0.0
    assert price_on_grid(price, tick) is expected
    assert bool(prices_on_grid(np.array([price]), tick)[0]) is expected
