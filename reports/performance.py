"""Trading performance metrics for a backtest report: pure functions over returns, equity and trades.

Conventions (each function's docstring gives its exact formula):

- **Returns** are simple per-period returns (``0.01`` is +1 %). Ratios are annualised by
  ``sqrt(periods_per_year)``; a daily series uses 252.
- **NaN** means "not defined for this input" (too few observations, no variation, no trades); it
  is never a silent zero. **Non-finite inputs** (NaN or inf in returns, equity or prices) raise
  ``ValueError``: a NaN return is a data defect, and skipping it would quietly change the period
  count that the annualisation assumes.
- **Trades** are closed round trips (``TradeRecord``). P&L is realised at the exit; win rate,
  profit factor and expectancy use the *net* P&L (after commission), because that is what the
  account kept.
- **Time** is UTC epoch nanoseconds throughout; a trading day is a UTC calendar day, and the
  daily series has one row per UTC weekday (Mon-Fri, no holiday calendar).
- ``summarize`` returns native Python ints and floats with NaN and inf kept (so "no losses",
  inf, stays distinct from "no trades", NaN); ``to_jsonable`` turns that into strict JSON
  (floats rounded to 6 decimals, NaN and +/-inf both become ``None``).

Nothing here keeps state: every number can be recomputed from the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

NS_PER_MINUTE = 60 * 1_000_000_000
NS_PER_DAY = 86_400 * 1_000_000_000
# A Julian year: the usual convention for CAGR over spans that straddle leap years.
NS_PER_YEAR = 365.25 * NS_PER_DAY
TOTAL_KEY = "total"

ArrayLike = Sequence[float] | np.ndarray | pd.Series


# --------------------------------------------------------------------------- trades


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """One closed round trip.

    ``direction`` is +1 (long) or -1 (short); ``quantity`` is a positive contract count;
    ``entry_ns``/``exit_ns`` are UTC epoch nanoseconds; prices are average fills; ``point_value``
    is currency per point per contract; ``commission`` is the round-trip total in currency (>= 0).
    """

    strategy: str
    instrument: str
    direction: int
    quantity: int
    entry_ns: int
    exit_ns: int
    entry_price: float
    exit_price: float
    point_value: float
    commission: float

    def __post_init__(self) -> None:
        # Reject malformed records here, once, instead of letting them bend every metric downstream.
        if self.direction not in (1, -1):
            raise ValueError(f"direction must be +1 (long) or -1 (short), got {self.direction!r}")
        if self.quantity <= 0:
            raise ValueError(f"quantity must be a positive contract count, got {self.quantity!r}")
        if self.exit_ns < self.entry_ns:
            raise ValueError(f"exit_ns {self.exit_ns} is before entry_ns {self.entry_ns}")
        if not all(math.isfinite(x) for x in (self.entry_price, self.exit_price, self.point_value, self.commission)):
            raise ValueError("prices, point value and commission must be finite")
        if self.point_value <= 0:
            raise ValueError(f"point_value must be positive, got {self.point_value!r}")
        if self.commission < 0:
            raise ValueError(f"commission is a cost and cannot be negative, got {self.commission!r}")

    @property
    def gross_pnl(self) -> float:
        """``direction * (exit_price - entry_price) * quantity * point_value``, in currency."""
        return self.direction * (self.exit_price - self.entry_price) * self.quantity * self.point_value

    @property
    def net_pnl(self) -> float:
        """``gross_pnl - commission``, in currency."""
        return self.gross_pnl - self.commission


# --------------------------------------------------------------------------- return ratios


def _finite_array(values: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or inf; clean the series first (a gap is not a zero return)")
    return arr


def sharpe_ratio(returns: ArrayLike, periods_per_year: float = 252, risk_free: float = 0.0) -> float:
    """Annualised Sharpe ratio: ``mean(r - risk_free / ppy) / std(r, ddof=1) * sqrt(ppy)``.

    ``risk_free`` is an *annual* rate, turned into a per-period rate by simple division by
    ``periods_per_year`` (not compounding: the difference is far below the estimation error).
    The denominator is the sample standard deviation (ddof=1) of the raw returns; subtracting a
    constant does not change it.

    Returns NaN with fewer than 2 returns or when all returns are equal (zero deviation). Equal
    values are detected exactly rather than by ``std == 0``, because the floating-point mean of
    identical values can be off by an ulp and give a tiny non-zero std and an absurd ratio.
    Raises ValueError for non-finite returns or a non-positive ``periods_per_year``.
    """
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}")
    r = _finite_array(returns, "returns")
    if r.size < 2 or np.all(r == r[0]):
        return math.nan
    excess_mean = float(np.mean(r - risk_free / periods_per_year))
    return excess_mean / float(np.std(r, ddof=1)) * math.sqrt(periods_per_year)


def sortino_ratio(returns: ArrayLike, periods_per_year: float = 252, target: float = 0.0) -> float:
    """Annualised Sortino ratio: ``mean(r - target) / DD * sqrt(ppy)``.

    ``DD = sqrt(mean(min(0, r - target)^2))`` over *all* n observations (Sortino & Price 1994),
    i.e. divided by n, not by the number of losing periods. ``target`` is a per-period return.

    Returns NaN with fewer than 2 returns. When no return is below the target (``DD == 0``) the
    ratio is ``+inf`` if the mean excess is positive and NaN if it is zero (every return exactly on
    target). Raises ValueError for non-finite returns or a non-positive ``periods_per_year``.
    """
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}")
    r = _finite_array(returns, "returns")
    if r.size < 2:
        return math.nan
    excess = r - target
    mean_excess = float(np.mean(excess))
    downside = float(np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2)))
    if downside == 0.0:
        # No period fell short of the target: unbounded reward per unit of downside risk.
        return math.inf if mean_excess > 0 else math.nan
    return mean_excess / downside * math.sqrt(periods_per_year)


# --------------------------------------------------------------------------- equity


@dataclass(frozen=True, slots=True)
class Drawdown:
    """The deepest peak-to-trough decline of an equity curve.

    ``fraction`` = (peak - trough) / peak, a positive fraction (0.5 is -50 %); ``amount`` = peak -
    trough in currency *of that same episode* (not necessarily the largest currency decline
    anywhere on the curve); ``peak_index`` and ``trough_index`` index the input.
    """

    fraction: float
    amount: float
    peak_index: int
    trough_index: int


def max_drawdown(equity: ArrayLike) -> Drawdown:
    """Maximum drawdown: the largest ``(running_peak - equity[t]) / running_peak`` over t.

    Ties go to the earliest trough. ``peak_index`` is the *last* index at or before the trough
    where equity stood at that peak, i.e. where the decline began (a curve flat at its high and
    then falling starts falling at the end of the flat). A curve that never falls below its
    running peak (monotone rising, flat, a single value) gives ``Drawdown(0.0, 0.0, 0, 0)``.

    Raises ValueError for an empty curve or any value that is not positive and finite: the
    fraction of a peak is meaningless once equity is zero or negative.
    """
    e = _finite_array(equity, "equity values")
    if e.size == 0:
        raise ValueError("equity curve is empty; a drawdown needs at least one value")
    if np.any(e <= 0):
        bad = int(np.flatnonzero(e <= 0)[0])
        raise ValueError(f"equity must be positive for a drawdown fraction; equity[{bad}] = {e[bad]!r}")
    peaks = np.maximum.accumulate(e)
    fractions = (peaks - e) / peaks
    trough = int(np.argmax(fractions))          # first occurrence: ties go to the earliest trough
    if fractions[trough] <= 0.0:
        return Drawdown(0.0, 0.0, 0, 0)
    peak = int(np.flatnonzero(e[: trough + 1] == peaks[trough])[-1])
    return Drawdown(float(fractions[trough]), float(peaks[trough] - e[trough]), peak, trough)


def cagr(start_equity: float, end_equity: float, years: float) -> float:
    """Compound annual growth rate: ``(end / start) ** (1 / years) - 1``.

    Returns -1.0 when ``end_equity <= 0`` (the account is gone; a fractional power of a negative
    ratio has no real value), and +inf when a gain over a very short window compounds past the largest
    float. Raises ValueError for ``years <= 0``, ``start_equity <= 0`` or
    non-finite inputs.
    """
    if not all(math.isfinite(x) for x in (start_equity, end_equity, years)):
        raise ValueError("start_equity, end_equity and years must be finite")
    if years <= 0:
        raise ValueError(f"years must be positive, got {years!r}")
    if start_equity <= 0:
        raise ValueError(f"start_equity must be positive, got {start_equity!r}")
    if end_equity <= 0:
        return -1.0
    try:
        return (end_equity / start_equity) ** (1.0 / years) - 1.0
    except OverflowError:  # a gain over minutes compounds past any float: unbounded, like a profit factor
        return math.inf    # without losses (to_jsonable writes it as null)


# --------------------------------------------------------------------------- trade statistics


def win_rate(pnls: ArrayLike) -> float:
    """``count(pnl > 0) / count(all trades)``; NaN for no trades.

    A zero-P&L trade is not a win, but it *is* a trade, so it lowers the win rate: a scratch did
    not make money. (It is not counted as a loss either; see ``summarize``'s wins/losses.)
    """
    p = _finite_array(pnls, "P&Ls")
    if p.size == 0:
        return math.nan
    return float(np.count_nonzero(p > 0)) / p.size


def profit_factor(pnls: ArrayLike) -> float:
    """``sum(pnl > 0) / |sum(pnl < 0)|``.

    NaN for no trades and when there are neither wins nor losses (0 / 0); +inf with some wins and
    no losses; 0.0 with losses and no wins.
    """
    p = _finite_array(pnls, "P&Ls")
    gains = float(np.sum(p[p > 0]))
    losses = float(-np.sum(p[p < 0]))
    if losses == 0.0:
        return math.inf if gains > 0 else math.nan
    return gains / losses


def expectancy(pnls: ArrayLike) -> float:
    """Mean P&L per trade, ``sum(pnl) / n``; NaN for no trades."""
    p = _finite_array(pnls, "P&Ls")
    return float(np.mean(p)) if p.size else math.nan


def exposure(intervals: Iterable[tuple[int, int]], start_ns: int, end_ns: int) -> float:
    """Fraction of the window ``[start_ns, end_ns]`` covered by the union of ``(entry_ns, exit_ns)``.

    Each interval is clipped to the window first; overlapping intervals (several positions open
    at once) are counted once, so the result is in [0, 1]. Whether end points are open or closed
    does not matter: they have zero length. Integer nanosecond arithmetic keeps the union exact.
    Raises ValueError when ``end_ns <= start_ns`` or an interval ends before it starts.
    """
    start_ns, end_ns = int(start_ns), int(end_ns)
    if end_ns <= start_ns:
        raise ValueError(f"window end {end_ns} must be after its start {start_ns}")
    clipped: list[tuple[int, int]] = []
    for entry, exit_ in intervals:
        entry, exit_ = int(entry), int(exit_)
        if exit_ < entry:
            raise ValueError(f"interval ({entry}, {exit_}) ends before it starts")
        lo, hi = max(entry, start_ns), min(exit_, end_ns)
        if hi > lo:
            clipped.append((lo, hi))
    clipped.sort()
    covered = 0
    run_lo = run_hi = None
    for lo, hi in clipped:
        if run_hi is None or lo > run_hi:
            # A gap: close the previous merged run.
            if run_hi is not None:
                covered += run_hi - run_lo
            run_lo, run_hi = lo, hi
        else:
            run_hi = max(run_hi, hi)
    if run_hi is not None:
        covered += run_hi - run_lo
    return covered / (end_ns - start_ns)


def equity_curve(trades: Sequence[TradeRecord], start_equity: float) -> tuple[np.ndarray, np.ndarray]:
    """Realised equity after each trade: ``start_equity + cumulative net P&L`` in exit-time order.

    Returns ``(times_ns, equity)``, int64 and float64 arrays of length ``len(trades)``: point i is
    the equity just after the i-th exit. ``start_equity`` itself is the level before the first
    point and is not included (it has no time of its own). Trades exiting at the same nanosecond
    keep their input order (stable sort), each with its own point. No trades: two empty arrays.
    """
    times = np.fromiter((t.exit_ns for t in trades), dtype=np.int64, count=len(trades))
    pnls = np.fromiter((t.net_pnl for t in trades), dtype=float, count=len(trades))
    order = np.argsort(times, kind="stable")
    return times[order], start_equity + np.cumsum(pnls[order])


# --------------------------------------------------------------------------- daily series


def _utc_day(ns: int) -> int:
    """Days since 1970-01-01 (UTC) of an epoch-ns time; floor division so pre-1970 times work too."""
    return int(ns) // NS_PER_DAY


def _check_window(trades: Sequence[TradeRecord], start_equity: float, start_ns: int, end_ns: int) -> None:
    if not (math.isfinite(start_equity) and start_equity > 0):
        raise ValueError(f"start_equity must be positive and finite, got {start_equity!r}")
    if end_ns < start_ns:
        raise ValueError(f"end_ns {end_ns} is before start_ns {start_ns}")
    outside = [t for t in trades if not start_ns <= t.exit_ns <= end_ns]
    if outside:
        # A trade realised outside the report window would have no day to land on; silently dropping or
        # folding it would make the daily equity disagree with the total P&L.
        raise ValueError(f"{len(outside)} trade(s) exit outside [start_ns, end_ns], e.g. {outside[0]!r}")


def daily_equity(trades: Sequence[TradeRecord], start_equity: float, start_ns: int, end_ns: int) -> pd.Series:
    """End-of-day realised equity for each UTC weekday from the date of ``start_ns`` to that of ``end_ns``.

    ``equity[d] = start_equity + sum(net_pnl of trades exiting on or before UTC date d)``. Exits on
    a Saturday or Sunday therefore land in the following Monday's value; exits on a weekend after
    the last weekday of the window are included in that last weekday, so the final value always
    equals the realised equity at ``end_ns``. Index: UTC-midnight ``DatetimeIndex`` named "date".
    Empty when the window holds no weekday.

    Raises ValueError for a non-positive start equity, ``end_ns < start_ns`` or a trade whose exit
    lies outside ``[start_ns, end_ns]``.
    """
    _check_window(trades, start_equity, start_ns, end_ns)
    days = np.arange(_utc_day(start_ns), _utc_day(end_ns) + 1, dtype=np.int64)
    # 1970-01-01 was a Thursday (Monday = 0 .. Sunday = 6 gives 3 for day 0).
    weekdays = days[(days + 3) % 7 < 5]
    index = pd.DatetimeIndex(pd.to_datetime(weekdays * NS_PER_DAY, unit="ns", utc=True), name="date")
    if weekdays.size == 0:
        return pd.Series([], index=index, dtype=float, name="equity")
    exit_days = np.fromiter((_utc_day(t.exit_ns) for t in trades), dtype=np.int64, count=len(trades))
    # First weekday on or after each exit date; past the last weekday -> the last weekday.
    slot = np.minimum(np.searchsorted(weekdays, exit_days, side="left"), weekdays.size - 1)
    pnls = np.fromiter((t.net_pnl for t in trades), dtype=float, count=len(trades))
    per_day = np.bincount(slot, weights=pnls, minlength=weekdays.size) if len(trades) else np.zeros(weekdays.size)
    return pd.Series(start_equity + np.cumsum(per_day), index=index, name="equity")


def daily_returns(trades: Sequence[TradeRecord], start_equity: float, start_ns: int, end_ns: int) -> pd.Series:
    """Daily simple returns of end-of-day realised equity, one per UTC weekday (see ``daily_equity``).

    ``r[d] = equity[d] / equity[previous weekday] - 1``, with ``start_equity`` before the first
    weekday. A day without exits has return 0 (realised, not marked-to-market, equity). Raises
    ValueError as ``daily_equity`` does, and when equity reaches zero or below before the last day
    (the next return would divide by a non-positive base).
    """
    eq = daily_equity(trades, start_equity, start_ns, end_ns)
    prev = np.concatenate(([start_equity], eq.to_numpy()[:-1]))
    if np.any(prev <= 0):
        raise ValueError("equity fell to zero or below; later daily returns are undefined")
    return pd.Series(eq.to_numpy() / prev - 1.0, index=eq.index, name="return")


# --------------------------------------------------------------------------- summary


def _group_summary(trades: Sequence[TradeRecord], start_equity: float, start_ns: int, end_ns: int) -> dict[str, Any]:
    net = np.array([t.net_pnl for t in trades], dtype=float)
    eq = daily_equity(trades, start_equity, start_ns, end_ns)
    curve = np.concatenate(([start_equity], eq.to_numpy()))
    if np.all(curve > 0):
        rets = curve[1:] / curve[:-1] - 1.0
        sharpe, sortino = sharpe_ratio(rets), sortino_ratio(rets)
        dd = max_drawdown(curve)
        dd_fraction, dd_amount = dd.fraction, dd.amount
    else:
        # Ruin: returns after a non-positive base, and drawdown fractions, are undefined.
        sharpe = sortino = dd_fraction = dd_amount = math.nan
    net_total = float(np.sum(net))
    holding = [(t.exit_ns - t.entry_ns) / NS_PER_MINUTE for t in trades]
    return {
        "trades": len(trades),
        "wins": int(np.count_nonzero(net > 0)),
        "losses": int(np.count_nonzero(net < 0)),
        "win_rate": win_rate(net),
        "gross_pnl": float(sum(t.gross_pnl for t in trades)),
        "commission": float(sum(t.commission for t in trades)),
        "net_pnl": net_total,
        "expectancy": expectancy(net),
        "profit_factor": profit_factor(net),
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": dd_fraction,
        "max_drawdown_amount": dd_amount,
        "cagr": cagr(start_equity, start_equity + net_total, (end_ns - start_ns) / NS_PER_YEAR),
        "exposure": exposure(((t.entry_ns, t.exit_ns) for t in trades), start_ns, end_ns),
        "avg_holding_minutes": float(np.mean(holding)) if holding else math.nan,
        "long_trades": sum(1 for t in trades if t.direction == 1),
        "short_trades": sum(1 for t in trades if t.direction == -1),
    }


def summarize(trades: Sequence[TradeRecord], start_equity: float, start_ns: int, end_ns: int) -> dict[str, dict[str, Any]]:
    """Report metrics for all trades (key ``"total"``) and for each strategy (keyed by name, sorted).

    Each group's metrics: ``trades``, ``wins`` (net P&L > 0), ``losses`` (net P&L < 0; scratches
    are neither), ``win_rate``, ``gross_pnl``, ``commission``, ``net_pnl``, ``expectancy``,
    ``profit_factor`` (all on net P&L), ``sharpe`` and ``sortino`` (daily returns from
    ``daily_equity``, 252 per year, zero risk-free rate and target), ``max_drawdown`` (fraction)
    and ``max_drawdown_amount`` (currency, same episode) on the daily end-of-day equity with
    ``start_equity`` prepended, ``cagr`` over ``years = (end_ns - start_ns) / 365.25 days``,
    ``exposure`` (union of the group's holding intervals over the window), ``avg_holding_minutes``,
    ``long_trades``, ``short_trades``.

    Every strategy is measured as if it had the whole account alone: same ``start_equity``, its own
    trades only. So per-strategy P&L and counts add up to the total, but ratios and drawdowns do
    not. If a group's equity reaches zero or below, its sharpe, sortino and drawdown are NaN and its
    cagr -1. Values are native ints and floats, NaN and inf included (see ``to_jsonable``).

    Raises ValueError for ``end_ns <= start_ns``, a non-positive start equity, a trade exiting
    outside the window, or a strategy named ``"total"``.
    """
    if end_ns <= start_ns:
        raise ValueError(f"end_ns {end_ns} must be after start_ns {start_ns}")
    by_strategy: dict[str, list[TradeRecord]] = {}
    for t in trades:
        by_strategy.setdefault(t.strategy, []).append(t)
    if TOTAL_KEY in by_strategy:
        raise ValueError(f"a strategy may not be named {TOTAL_KEY!r}: it would collide with the all-trades row")
    out = {TOTAL_KEY: _group_summary(list(trades), start_equity, start_ns, end_ns)}
    for name in sorted(by_strategy):
        out[name] = _group_summary(by_strategy[name], start_equity, start_ns, end_ns)
    return out


def to_jsonable(d: Any, decimals: int = 6) -> Any:
    """A strict-JSON copy: floats rounded to ``decimals``; NaN, +inf and -inf become ``None``.

    Note that this loses the difference between "undefined" (NaN) and "unbounded" (inf, e.g. a
    profit factor without losses); read the raw ``summarize`` output when that matters. Recurses
    through mappings (keys turned into str), lists and tuples; numpy scalars become Python ones;
    bools, ints, strings and None pass through. ``json.dumps(result, allow_nan=False)`` succeeds.
    """
    if isinstance(d, Mapping):
        return {str(k): to_jsonable(v, decimals) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [to_jsonable(v, decimals) for v in d]
    if isinstance(d, np.generic):
        d = d.item()
    if isinstance(d, bool) or d is None or isinstance(d, (int, str)):
        return d
    if isinstance(d, float):
        return round(d, decimals) if math.isfinite(d) else None
    raise TypeError(f"cannot make {type(d).__name__} JSON-safe")
