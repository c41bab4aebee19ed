"""Instrument master: contract specs, trading hours and NT8 contract names.

Everything that depends on *which* instrument a price belongs to (tick grid, dollar value of a
point, when the market is open, how large a single print can plausibly be) is answered here, so
that readers, the quality gate and the order path share one set of facts.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

__all__ = [
    "InstrumentMaster",
    "InstrumentSpec",
    "SessionClock",
    "TradingHours",
    "UnknownInstrumentError",
    "contract_name",
    "front_contract",
    "parse_contract_name",
    "price_on_grid",
    "prices_on_grid",
]

_NS_PER_SECOND = 1_000_000_000
_NS_PER_MICRO = 1_000
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_ONE_MICRO = dt.timedelta(microseconds=1)
QUARTERLY_MONTHS = (3, 6, 9, 12)


class UnknownInstrumentError(ValueError):
    """An instrument name whose root the master does not know."""


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    # ZoneInfo has its own cache, but the lookup by name still costs a dict hit plus a lock;
    # is_open is called per tick, so keep the object one attribute access away.
    return ZoneInfo(name)


# ----------------------------------------------------------------------------------------------
# Trading hours
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradingHours:
    """A weekly trading session in a local time zone.

    Attributes
    ----------
    tz
        IANA time-zone name, e.g. ``"America/Chicago"``.
    open, close
        Daily open and close in local wall-clock time. ``open > close`` means the session
        spans midnight and belongs to the day it *closes* on (CME: Sunday 17:00 opens Monday).
    weekdays
        Trading days (Monday = 0) named by the session's close day.
    """

    tz: str
    open: dt.time
    close: dt.time
    weekdays: tuple[int, ...]

    def __post_init__(self) -> None:
        try:
            _zone(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}: use an IANA name such as 'America/Chicago'") from exc
        if self.open == self.close:
            raise ValueError("open and close must differ (a 24-hour session is not supported)")
        if self.open.tzinfo is not None or self.close.tzinfo is not None:
            raise ValueError("open and close are local wall-clock times: pass naive datetime.time values")
        if not self.weekdays or any(not isinstance(d, int) or not 0 <= d <= 6 for d in self.weekdays):
            raise ValueError(
                f"weekdays must be a non-empty tuple of integers 0 (Mon) .. 6 (Sun), got {self.weekdays!r}"
            )
        if len(set(self.weekdays)) != len(self.weekdays):
            raise ValueError(f"weekdays has duplicates: {self.weekdays!r}")

    def is_open_local(self, local: dt.datetime) -> bool:
        """Whether the market is open at a local wall-clock time (naive or aware, read as local).

        Parameters
        ----------
        local
            Wall-clock date and time in ``tz``; only its fields are used.

        Returns
        -------
        bool
            True inside ``[open, close)`` of a trading day.
        """
        t = local.time()
        wd = local.weekday()
        if self.open < self.close:
            return wd in self.weekdays and self.open <= t < self.close
        # Spanning midnight: the evening part belongs to tomorrow's session, the morning part
        # to today's.
        if t >= self.open:
            return (wd + 1) % 7 in self.weekdays
        if t < self.close:
            return wd in self.weekdays
        return False

    def is_open(self, ts_ns: int) -> bool:
        """Whether the market is open at an instant.

        Parameters
        ----------
        ts_ns
            Nanoseconds since the Unix epoch, UTC.

        Returns
        -------
        bool
            True inside a session, False in the daily halt, at weekends and from ``close`` on.
        """
        return self.is_open_local(_local_wallclock(int(ts_ns), _zone(self.tz)))


def _local_wallclock(ts_ns: int, zone: ZoneInfo) -> dt.datetime:
    # Truncate to the microsecond (datetime's resolution); session boundaries are whole
    # microseconds, so truncation never moves an instant across one.
    sec, rem = divmod(ts_ns, _NS_PER_SECOND)
    return dt.datetime.fromtimestamp(sec, zone).replace(microsecond=rem // _NS_PER_MICRO)


def _offset_ns(sec: int, zone: ZoneInfo) -> int:
    off = dt.datetime.fromtimestamp(sec, zone).utcoffset()
    assert off is not None  # a ZoneInfo always yields an offset
    return (off // _ONE_MICRO) * _NS_PER_MICRO


class SessionClock:
    """Fast ``is_open`` for a stream of (mostly) increasing timestamps.

    It caches the current interval ``[start, end)`` in UTC nanoseconds over which the
    open/closed state cannot change, and only goes back to ``zoneinfo`` when a timestamp leaves
    it, so a stream costs O(1) per call amortised. An interval never crosses a UTC-offset change,
    which is what keeps it exact across DST switches; timestamps going backwards simply miss
    the cache and recompute.

    Parameters
    ----------
    hours
        The weekly session to evaluate.
    """

    __slots__ = ("_end", "_start", "_state", "_zone", "hours")

    def __init__(self, hours: TradingHours) -> None:
        self.hours = hours
        self._zone = _zone(hours.tz)
        self._start = 0
        self._end = 0  # empty interval: the first call computes
        self._state = False

    def is_open(self, ts_ns: int) -> bool:
        """Whether the market is open at ``ts_ns`` (UTC ns since epoch); same answer as ``TradingHours.is_open``."""
        if self._start <= ts_ns < self._end:
            return self._state
        return self._recompute(int(ts_ns))

    def interval(self, ts_ns: int) -> tuple[int, int, bool]:
        """The cached interval containing ``ts_ns`` as ``(start_ns, end_ns, is_open)``."""
        self.is_open(ts_ns)
        return self._start, self._end, self._state

    def _recompute(self, ts_ns: int) -> bool:
        zone = self._zone
        sec = ts_ns // _NS_PER_SECOND
        off = _offset_ns(sec, zone)
        local_ns = ts_ns + off  # wall-clock as if it were UTC: monotone while the offset holds
        local = _EPOCH_NAIVE + dt.timedelta(microseconds=local_ns // _NS_PER_MICRO)
        state = self.hours.is_open_local(local)

        # Candidate change points: every open and close wall-clock time for a week either
        # side. The state is constant between consecutive candidates, so it is enough to walk
        # outwards until it differs.
        cands: list[int] = []
        base = local.date()
        for k in range(-8, 9):
            day = base + dt.timedelta(days=k)
            for t in (self.hours.open, self.hours.close):
                cands.append(((dt.datetime.combine(day, t) - _EPOCH_NAIVE) // _ONE_MICRO) * _NS_PER_MICRO)
        cands.sort()
        i = max(j for j, c in enumerate(cands) if c <= local_ns)
        hi = len(cands) - 1
        end_local = cands[hi]
        for j in range(i + 1, len(cands)):
            if self._state_at_local_ns(cands[j]) != state:
                end_local = cands[j]
                break
        start_local = cands[i]
        for j in range(i, 0, -1):
            if self._state_at_local_ns(cands[j - 1]) != state:
                break
            start_local = cands[j - 1]

        start = start_local - off
        end = end_local - off
        # Clip to the span where the UTC offset equals the one at ts: beyond a DST switch the
        # wall-clock mapping changes and the candidates above would be off by the shift.
        end = self._clip_to_offset(sec, (end - 1) // _NS_PER_SECOND, off, forward=True, limit=end)
        start = self._clip_to_offset(sec, start // _NS_PER_SECOND, off, forward=False, limit=start)
        self._start, self._end, self._state = start, end, state
        return state

    def _state_at_local_ns(self, local_ns: int) -> bool:
        return self.hours.is_open_local(_EPOCH_NAIVE + dt.timedelta(microseconds=local_ns // _NS_PER_MICRO))

    def _clip_to_offset(self, sec: int, far_sec: int, off: int, *, forward: bool, limit: int) -> int:
        zone = self._zone
        if _offset_ns(far_sec, zone) == off:
            # Offsets change at most a couple of times a year and the interval is at most ~2
            # weeks, so equal offsets at both ends mean no switch in between.
            return limit
        # Bisect on whole seconds for the switch (zoneinfo transitions fall on whole seconds):
        # forward, the first second with another offset; backward, the first with this one.
        if forward:
            return _first_true(sec, far_sec, lambda x: _offset_ns(x, zone) != off) * _NS_PER_SECOND
        return _first_true(far_sec, sec, lambda x: _offset_ns(x, zone) == off) * _NS_PER_SECOND


def _first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """Smallest x in (lo, hi] with pred(x), for pred False at lo, True at hi, and monotone between."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------------------------
# Instrument specs and the master
# ----------------------------------------------------------------------------------------------

CME_GLOBEX_HOURS = TradingHours("America/Chicago", dt.time(17, 0), dt.time(16, 0), (0, 1, 2, 3, 4))
"""CME Globex equity-index futures: Sunday-Friday 17:00-16:00 US Central, daily halt 16:00-17:00."""

US_EQUITY_HOURS = TradingHours("America/New_York", dt.time(4, 0), dt.time(20, 0), (0, 1, 2, 3, 4))
"""US equities including pre- and post-market: 04:00-20:00 US Eastern, Monday-Friday (holidays not modelled)."""

SESSIONS: dict[str, TradingHours] = {"cme_globex": CME_GLOBEX_HOURS, "equity": US_EQUITY_HOURS}


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """Static facts about one instrument root.

    Attributes
    ----------
    root
        NT8 root symbol, e.g. ``"ES"``.
    description
        Human-readable name.
    tick_size
        Minimum price increment.
    point_value
        Currency per 1.0 of price per contract (or share).
    currency, exchange
        ISO currency code and listing exchange.
    hours
        Weekly trading session.
    max_trade_size
        A single print larger than this is treated as absurd by the quality gate.
    is_future
        True for futures (contract months apply).
    """

    root: str
    description: str
    tick_size: float
    point_value: float
    currency: str
    exchange: str
    hours: TradingHours
    max_trade_size: int
    is_future: bool

    @property
    def tick_value(self) -> float:
        """Currency value of one tick for one contract."""
        return self.tick_size * self.point_value


def _future(
    root: str, description: str, tick: float, point_value: float, exchange: str, max_size: int
) -> InstrumentSpec:
    return InstrumentSpec(root, description, tick, point_value, "USD", exchange, CME_GLOBEX_HOURS, max_size, True)


# max_trade_size for futures: about a fifth of the 99.9th-percentile *whole-minute* volume in the
# team's Oct-Nov 2023 NT8 minute files (one print that large would be 20% of an extreme
# minute), rounded up to a 1-2-5 step. Measured: ES p99.9 minute 24,646 (max 105,153) -> 5,000;
# NQ 6,624 (max 14,228) -> 2,000; MES 9,940 (max 22,395) -> 2,000; MYM 1,282 (max 2,651) -> 500.
# YM, RTY, MNQ, M2K have no data here and take their nearest measured cousin's value (2,000).
#
# SPY: 10,000,000 shares. SPY.Last.txt.gz (2013-10-07..11) has genuine prints far above a
# million shares: closing-cross prints at 16:00:00 ET of 6,211,548 / 4,162,639 / 4,052,204 /
# 3,166,418 at the quote, and a regular-hours print of 2,399,992 at the bid (2013-10-09
# 12:21 ET). The vendor's 10 suspicious prints (250,629 .. 3,006,663 shares) sit inside that
# range, so size cannot separate them: they are at a stale price (165.59 while SPY quoted
# 168.7-169.1) and the gate must catch them by distance from the quote, not by size. 10 M is
# ~1.6x the largest real print; a single print above it is absurd.
_DEFAULT_SPECS: tuple[InstrumentSpec, ...] = (
    _future("ES", "E-mini S&P 500", 0.25, 50.0, "CME", 5_000),
    _future("NQ", "E-mini Nasdaq-100", 0.25, 20.0, "CME", 2_000),
    _future("YM", "E-mini Dow ($5)", 1.0, 5.0, "CBOT", 2_000),
    _future("RTY", "E-mini Russell 2000", 0.10, 50.0, "CME", 2_000),
    _future("MES", "Micro E-mini S&P 500", 0.25, 5.0, "CME", 2_000),
    _future("MNQ", "Micro E-mini Nasdaq-100", 0.25, 2.0, "CME", 2_000),
    _future("MYM", "Micro E-mini Dow", 1.0, 0.5, "CBOT", 500),
    _future("M2K", "Micro E-mini Russell 2000", 0.10, 5.0, "CME", 2_000),
    InstrumentSpec("SPY", "SPDR S&P 500 ETF Trust", 0.01, 1.0, "USD", "ARCA", US_EQUITY_HOURS, 10_000_000, False),
)

_ROOT_RE = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,15}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_REQUIRED_KEYS = ("root", "tick_size", "point_value", "session")
_OPTIONAL_KEYS = ("max_trade_size", "description", "currency", "exchange", "is_future")
# Used when a declared entry gives no max_trade_size: large enough never to reject a real
# print of any listed future or ETF we know of; declare a tighter one per instrument.
_DECLARED_DEFAULT_MAX_TRADE_SIZE = 1_000_000


def _positive_number(entry: dict[str, Any], key: str, where: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: '{key}' must be a positive finite number, got {value!r}")
    return float(value)


def _spec_from_entry(entry: dict[str, Any], index: int) -> InstrumentSpec:
    where = f"[[instruments]] entry {index + 1}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table of keys, got {type(entry).__name__}")
    allowed = _REQUIRED_KEYS + _OPTIONAL_KEYS
    for key in entry:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}; allowed keys are {', '.join(allowed)}")
    for key in _REQUIRED_KEYS:
        if key not in entry:
            raise ValueError(f"{where}: missing key {key!r}; required keys are {', '.join(_REQUIRED_KEYS)}")
    root = entry["root"]
    if not isinstance(root, str) or not _ROOT_RE.match(root):
        raise ValueError(
            f"{where}: 'root' must be 1-16 upper-case letters, digits, '.', '_' or '-' (e.g. 'ES'), got {root!r}"
        )
    where = f"{where} ({root})"
    tick = _positive_number(entry, "tick_size", where)
    point_value = _positive_number(entry, "point_value", where)
    session = entry["session"]
    if session not in SESSIONS:
        raise ValueError(f"{where}: 'session' must be one of {', '.join(repr(s) for s in SESSIONS)}, got {session!r}")
    max_size = entry.get("max_trade_size", _DECLARED_DEFAULT_MAX_TRADE_SIZE)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"{where}: 'max_trade_size' must be a positive integer, got {max_size!r}")
    currency = entry.get("currency", "USD")
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise ValueError(f"{where}: 'currency' must be a 3-letter upper-case ISO code such as 'USD', got {currency!r}")
    is_future = entry.get("is_future", session == "cme_globex")
    if not isinstance(is_future, bool):
        raise ValueError(f"{where}: 'is_future' must be true or false, got {is_future!r}")
    exchange = entry.get("exchange", "CME" if session == "cme_globex" else "")
    if not isinstance(exchange, str):
        raise ValueError(f"{where}: 'exchange' must be a string such as 'CME', 'CBOT' or 'ARCA', got {exchange!r}")
    description = entry.get("description", root)
    if not isinstance(description, str):
        raise ValueError(f"{where}: 'description' must be a string, got {description!r}")
    return InstrumentSpec(
        root, description, tick, point_value, currency, exchange, SESSIONS[session], max_size, is_future
    )


class InstrumentMaster:
    """Lookup of :class:`InstrumentSpec` by root, resolving NT8 names like ``"ES 06-18"``.

    Parameters
    ----------
    specs
        The instruments; a later spec with the same root replaces an earlier one.
    """

    __slots__ = ("_specs",)

    def __init__(self, specs: list[InstrumentSpec] | tuple[InstrumentSpec, ...] = ()) -> None:
        self._specs: dict[str, InstrumentSpec] = {s.root: s for s in specs}

    @classmethod
    def default(cls) -> InstrumentMaster:
        """The built-in instruments: ES NQ YM RTY MES MNQ MYM M2K on CME Globex hours, and SPY."""
        return cls(_DEFAULT_SPECS)

    def with_declared(self, entries: list[dict[str, Any]]) -> InstrumentMaster:
        """A new master with config-declared instruments added (or replacing a built-in root).

        Parameters
        ----------
        entries
            ``[[instruments]]`` tables: ``root``, ``tick_size``, ``point_value`` and ``session``
            (``"equity"`` or ``"cme_globex"``) are required; ``max_trade_size``,
            ``description``, ``currency``, ``exchange`` and ``is_future`` are optional.

        Returns
        -------
        InstrumentMaster
            ``self`` is left unchanged.

        Raises
        ------
        ValueError
            Naming the entry, the key and the allowed values when an entry is invalid or a root
            is declared twice.
        """
        declared = [_spec_from_entry(e, i) for i, e in enumerate(entries)]
        seen: set[str] = set()
        for spec in declared:
            if spec.root in seen:
                raise ValueError(f"[[instruments]]: root {spec.root!r} is declared more than once")
            seen.add(spec.root)
        return InstrumentMaster([*self._specs.values(), *declared])

    def resolve(self, name: str) -> InstrumentSpec:
        """The spec for an NT8 instrument name (``"ES 06-18"``, ``"ES"``, ``"SPY"``).

        Raises
        ------
        UnknownInstrumentError
            When the root is not in the master, or a contract month is given for a non-future.
        ValueError
            When the name is malformed.
        """
        root, month, _ = parse_contract_name(name)
        spec = self._specs.get(root)
        if spec is None:
            raise UnknownInstrumentError(
                f"unknown instrument {name!r}: declare it under [[instruments]] in the config "
                f"(root, tick_size, point_value, session); known roots: {', '.join(self.roots())}"
            )
        if month is not None and not spec.is_future:
            raise UnknownInstrumentError(f"{name!r} names a contract month but {root} is not a future: use {root!r}")
        return spec

    def roots(self) -> list[str]:
        """Known roots, sorted."""
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.resolve(name)
        except ValueError:
            return False
        return True


# ----------------------------------------------------------------------------------------------
# Contract names and the front month
# ----------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\s+(\d{2})-(\d{2}))?\s*$")


def parse_contract_name(name: str) -> tuple[str, int | None, int | None]:
    """Split an NT8 instrument name into root, month and four-digit year.

    Parameters
    ----------
    name
        ``"ES 06-18"`` or a bare root such as ``"SPY"``.

    Returns
    -------
    tuple
        ``("ES", 6, 2018)`` or ``("SPY", None, None)``. Two-digit years are 2000-2099 (NT8
        did not exist before 2000).

    Raises
    ------
    ValueError
        When the name is not ``ROOT`` or ``ROOT MM-YY`` or the month is not 1-12.
    """
    m = _NAME_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"bad instrument name {name!r}: expected 'ROOT' or 'ROOT MM-YY', e.g. 'ES 06-18'")
    root = m.group(1).upper()
    if m.group(2) is None:
        return root, None, None
    month = int(m.group(2))
    if not 1 <= month <= 12:
        raise ValueError(f"bad instrument name {name!r}: month {month:02d} is not 01-12")
    return root, month, 2000 + int(m.group(3))


def contract_name(root: str, month: int, year: int, *, quarterly: bool = True) -> str:
    """The NT8 name of a contract, e.g. ``("ES", 6, 2018) -> "ES 06-18"``.

    Parameters
    ----------
    root
        Instrument root.
    month
        Contract month; 3, 6, 9 or 12 unless ``quarterly`` is False.
    year
        Four-digit year 2000-2099 (or two-digit 0-99).
    quarterly
        Enforce the quarterly cycle of the equity-index futures.
    """
    if not root or not _ROOT_RE.match(root.upper()):
        raise ValueError(f"bad root {root!r}")
    allowed = QUARTERLY_MONTHS if quarterly else tuple(range(1, 13))
    if month not in allowed:
        raise ValueError(f"month {month} is not a contract month; allowed: {', '.join(str(m) for m in allowed)}")
    if 0 <= year <= 99:
        year += 2000
    if not 2000 <= year <= 2099:
        raise ValueError(f"year {year} is outside 2000-2099 (NT8 names carry two digits)")
    return f"{root.upper()} {month:02d}-{year % 100:02d}"


def third_friday(year: int, month: int) -> dt.date:
    """Expiry day of CME equity-index futures: the third Friday of the contract month."""
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


# CME's roll convention for these futures, which NT8's rollover dates follow: volume moves to the
# next quarterly contract on the Thursday 8 days before the expiring contract's third-Friday
# expiry. From that Thursday on, the next contract is the front month.
ROLL_DAYS_BEFORE_EXPIRY = 8


def roll_date(year: int, month: int) -> dt.date:
    """First day on which the contract after ``(year, month)`` is the front month."""
    return third_friday(year, month) - dt.timedelta(days=ROLL_DAYS_BEFORE_EXPIRY)


def front_contract(root: str, day: dt.date) -> str:
    """The quarterly contract that is the front month on ``day``.

    Rule: contract M (March, June, September, December) is front from the roll date of the
    previous quarterly contract up to the day before its own roll date, where the roll date
    is the Thursday 8 days before the third-Friday expiry.

    Parameters
    ----------
    root
        Instrument root, e.g. ``"ES"``.
    day
        Trading date (the session's close day).

    Returns
    -------
    str
        e.g. ES June 2018 expired Friday 2018-06-15, so ``"ES 06-18"`` is front up to
        Wednesday 2018-06-06 and ``"ES 09-18"`` from Thursday 2018-06-07.
    """
    year = day.year
    month = next((m for m in QUARTERLY_MONTHS if m >= day.month), None)
    if month is None:  # pragma: no cover - December is always >= any month
        raise AssertionError
    if day >= roll_date(year, month):
        month += 3
        if month > 12:
            month, year = 3, year + 1
    return contract_name(root, month, year)


# ----------------------------------------------------------------------------------------------
# Tick grid
# ----------------------------------------------------------------------------------------------

# A price is on the grid when it is within 1e-9 of a tick of a multiple of the tick. Float
# division carries a relative error of a few ulp, so for prices with more than ~4 million ticks
# (e.g. 100000.01 at 0.01) that error itself exceeds 1e-9 tick; the |k| * 1e-15 term widens the
# tolerance only there, to what float64 can resolve.
_GRID_TOL_TICKS = 1e-9
_GRID_REL = 1e-15


def price_on_grid(price: float, tick_size: float) -> bool:
    """Whether ``price`` is a whole number of ticks, up to float rounding.

    Parameters
    ----------
    price
        A price such as 4371.25 or 167.41.
    tick_size
        Positive tick size.

    Returns
    -------
    bool
        False for NaN or infinite prices.
    """
    k = price / tick_size
    if k - k != 0.0:  # NaN or inf, without a function call
        return False
    return abs(k - round(k)) <= _GRID_TOL_TICKS + abs(k) * _GRID_REL


def prices_on_grid(prices: np.ndarray, tick_size: float) -> np.ndarray:
    """Vectorised :func:`price_on_grid`: a boolean array, False where a price is not finite."""
    k = np.asarray(prices, dtype=np.float64) / tick_size
    with np.errstate(invalid="ignore"):
        return np.abs(k - np.rint(k)) <= _GRID_TOL_TICKS + np.abs(k) * _GRID_REL
