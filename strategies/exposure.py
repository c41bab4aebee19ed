"""Portfolio exposure in benchmark ("ES-equivalent") contracts: correlations, betas, limits, hedges.

Four pieces, all measured in *benchmark contracts* (ES by convention, hence "ES-eq"):

- ``ReturnCorrelation``: rolling correlation, beta and volatility of per-instrument bar log returns,
  fed one closed bar at a time, instruments interleaved and aligned by bar timestamp;
- ``es_equivalent_contracts`` / ``beta_weighted_exposure`` / ``gross_exposure``: the number of
  benchmark contracts with the same beta-adjusted dollar exposure,
  ``contracts * price * point_value * beta / (bench_price * bench_point_value)``;
- ``max_contracts_within_limit``: how many contracts of an order fit under an ES-eq limit (a limit
  never blocks a risk-reducing trade and never lets a risk-increasing one through);
- ``hedge_order``: the whole number of hedge contracts that brings a net exposure back toward a target.

Point values are never hard-coded here: callers take them from the instrument master
(``bridge.core.instruments``), e.g. ES 50, MES 5, NQ 20, MNQ 2, YM 5, MYM 0.5, RTY 50, M2K 5.

Conventions
-----------
- Exposures are signed: positive = long the benchmark's risk, negative = short.
- ``EXPOSURE_TOL`` (1e-9 ES-eq) absorbs floating-point error in limit comparisons, so that e.g.
  three MES (0.1 ES-eq each, summing to 0.30000000000000004) fit a 0.3 limit. It is far below one
  micro contract (~0.1 ES-eq), so it can never let a whole extra contract through.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "EXPOSURE_TOL",
    "HedgeInstrument",
    "HedgeOrder",
    "Holding",
    "ReturnCorrelation",
    "beta_weighted_exposure",
    "es_equivalent_contracts",
    "gross_exposure",
    "hedge_order",
    "max_contracts_within_limit",
]

#: Tolerance (in ES-equivalent contracts) for "within the limit" / "not larger" comparisons.
EXPOSURE_TOL = 1e-9


# --------------------------------------------------------------------------- rolling correlation


@dataclass(slots=True)
class _InstrumentState:
    index: int        # column in the correlation matrix (order of first appearance)
    last_ts: int      # timestamp of the last accepted close
    last_close: float


@dataclass(slots=True)
class _Stats:
    """Pairwise-complete moments of the committed window, computed once per new row."""

    count: np.ndarray      # [i, j]: rows where both i and j have a return
    cov: np.ndarray        # [i, j]: covariance (ddof=1) over those rows
    var: np.ndarray        # [i, j]: variance of i (ddof=1) over the rows where both i and j have a return
    corr: np.ndarray       # NaN below min_periods or for a zero variance


class ReturnCorrelation:
    """Rolling correlation, beta and volatility of bar log returns, instruments aligned by timestamp.

    Feed every closed bar with ``update(name, ts_ns, close)``; instruments arrive interleaved and
    bars of the same minute share a timestamp.

    - The return at a bar is ``log(close / previous accepted close of the same instrument)``; the
      first bar of an instrument has no return. A gap (a missing bar) makes the next return span it.
    - Returns are collected in a row per timestamp. A row enters the window once every instrument
      seen so far has delivered a bar for that timestamp, or as soon as a bar with a newer
      timestamp arrives (the missing instruments then have no return in that row). Rows with no
      return at all (the very first one) are not stored.
    - A bar for a timestamp whose row has already entered the window (a late bar) still updates
      the instrument's last close, but its return is dropped and counted in ``dropped_returns``.
    - Non-finite or non-positive closes are ignored and counted in ``bad_inputs``; a bar not newer
      than the instrument's previous accepted bar is ignored and counted in ``out_of_order``.
    - The window holds the last ``window`` stored rows (timestamps), so memory is bounded by
      ``window * n_instruments``. Statistics use pairwise-complete rows (like ``pandas.DataFrame.corr``)
      and are NaN with fewer than ``min_periods`` paired returns. They are recomputed lazily
      (O(window * n^2)) after each new row, and cached until the next one.
    """

    def __init__(self, window: int = 390, min_periods: int = 60) -> None:
        if int(window) != window or window < 2:
            raise ValueError(f"window {window} must be an integer of at least 2 rows")
        if int(min_periods) != min_periods or not (2 <= min_periods <= window):
            raise ValueError(f"min_periods {min_periods} must be an integer in [2, window={window}]")
        self.window = int(window)
        self.min_periods = int(min_periods)
        self.bad_inputs = 0
        self.out_of_order = 0
        self.dropped_returns = 0
        self._names: list[str] = []
        self._state: dict[str, _InstrumentState] = {}
        self._rows: deque[tuple[int, dict[int, float]]] = deque(maxlen=self.window)
        self._frontier_ts: int | None = None          # newest timestamp of any row, pending or stored
        self._pending: dict[int, float] | None = None  # returns of the row at _frontier_ts, not stored yet
        self._pending_reported: set[str] = set()
        self._stats: _Stats | None = None

    # ----------------------------------------------------------------- feeding

    @property
    def names(self) -> list[str]:
        """Instruments seen so far, in order of first appearance (the correlation matrix's order)."""
        return list(self._names)

    def __len__(self) -> int:
        """Rows (timestamps) currently in the window."""
        return len(self._rows)

    def update(self, name: str, ts_ns: int, close: float) -> None:
        """Take one closed bar of ``name``; see the class docstring for alignment rules."""
        try:
            close = float(close)
        except (TypeError, ValueError):
            self.bad_inputs += 1
            return
        if not (math.isfinite(close) and close > 0.0):
            self.bad_inputs += 1
            return
        ts = int(ts_ns)
        state = self._state.get(name)
        if state is not None and ts <= state.last_ts:
            self.out_of_order += 1
            return
        if state is None:
            state = _InstrumentState(len(self._names), ts, close)
            self._state[name] = state
            self._names.append(name)
            ret: float | None = None
        else:
            ret = math.log(close / state.last_close)
            state.last_ts, state.last_close = ts, close

        if self._frontier_ts is None or ts > self._frontier_ts:
            self._commit_pending()
            self._frontier_ts = ts
            self._pending, self._pending_reported = {}, set()
        elif ts < self._frontier_ts or self._pending is None:
            # Late: the row for this timestamp already entered the window (or was superseded).
            if ret is not None:
                self.dropped_returns += 1
            return
        self._pending_reported.add(name)
        if ret is not None:
            self._pending[state.index] = ret
        if len(self._pending_reported) == len(self._names):  # complete for every instrument seen
            self._commit_pending()

    def _commit_pending(self) -> None:
        if self._pending:
            assert self._frontier_ts is not None
            self._rows.append((self._frontier_ts, self._pending))
            self._stats = None
        self._pending, self._pending_reported = None, set()

    # ----------------------------------------------------------------- statistics

    def _matrix(self) -> np.ndarray:
        """The window as a (rows, instruments) array of returns, NaN where an instrument has none."""
        x = np.full((len(self._rows), len(self._names)), np.nan)
        for r, (_, returns) in enumerate(self._rows):
            for i, value in returns.items():
                x[r, i] = value
        return x

    def _compute(self) -> _Stats:
        if self._stats is not None and self._stats.count.shape[0] == len(self._names):
            return self._stats
        x = self._matrix()
        valid = np.isfinite(x)
        m = valid.astype(float)
        # Centre each column first (does not change any covariance) to keep the sums well conditioned.
        counts = m.sum(axis=0)
        centre = np.where(counts > 0, np.where(valid, x, 0.0).sum(axis=0) / np.maximum(counts, 1.0), 0.0)
        x0 = np.where(valid, x - centre, 0.0)
        n = m.T @ m                      # paired counts
        sx = x0.T @ m                    # [i, j]: sum of x_i over rows where both are present
        sxx = (x0 * x0).T @ m            # [i, j]: sum of x_i^2 over those rows
        sxy = x0.T @ x0                  # [i, j]: sum of x_i * x_j over those rows
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = (sxy - sx * sx.T / n) / (n - 1.0)
            var = (sxx - sx * sx / n) / (n - 1.0)
            var = np.where(var > 0.0, var, np.where(n >= 2, 0.0, np.nan))
            corr = cov / np.sqrt(var * var.T)
        enough = n >= self.min_periods
        cov = np.where(n >= 2, cov, np.nan)
        corr = np.where(enough & (var > 0) & (var.T > 0), np.clip(corr, -1.0, 1.0), np.nan)
        self._stats = _Stats(n, cov, var, corr)
        return self._stats

    def correlation(self) -> tuple[list[str], np.ndarray]:
        """(names, matrix): pairwise-complete correlation; NaN below ``min_periods`` paired returns."""
        return self.names, self._compute().corr.copy()

    def observations(self, a: str, b: str | None = None) -> int:
        """Rows in the window where ``a`` (and ``b``, if given) both have a return; 0 for unknown names."""
        ia, ib = self._state.get(a), self._state.get(b if b is not None else a)
        if ia is None or ib is None:
            return 0
        return int(self._compute().count[ia.index, ib.index])

    def beta(self, name: str, benchmark: str) -> float:
        """cov(r_name, r_bench) / var(r_bench) over the rows where both have a return.

        1.0 when ``name == benchmark`` (by definition, even before any data); NaN with fewer than
        ``min_periods`` paired returns, a benchmark without variance, or a name never seen.
        """
        if name == benchmark:
            return 1.0
        si, sb = self._state.get(name), self._state.get(benchmark)
        if si is None or sb is None:
            return math.nan
        st = self._compute()
        i, b = si.index, sb.index
        var_b = st.var[b, i]
        if st.count[i, b] < self.min_periods or not var_b > 0.0:
            return math.nan
        return float(st.cov[i, b] / var_b)

    def volatility(self, name: str) -> float:
        """Standard deviation (ddof=1) of ``name``'s returns in the window, per bar (not annualised).

        NaN with fewer than ``min_periods`` returns or for a name never seen.
        """
        s = self._state.get(name)
        if s is None:
            return math.nan
        st = self._compute()
        i = s.index
        if st.count[i, i] < self.min_periods:
            return math.nan
        return float(math.sqrt(st.var[i, i]))


# --------------------------------------------------------------------------- ES-equivalents


def _positive(value: float, what: str) -> float:
    if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


def _finite(value: float, what: str) -> float:
    if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def es_equivalent_contracts(contracts: float, price: float, point_value: float, beta: float,
                            bench_price: float, bench_point_value: float) -> float:
    """Benchmark contracts with the same beta-adjusted dollar exposure (signed like ``contracts``).

    ``contracts * price * point_value * beta / (bench_price * bench_point_value)``; e.g. 1 NQ at 16000
    (point value 20, beta 1.2) against ES at 4500 (point value 50) is 1.70667 ES-eq.

    Raises ValueError for a non-positive or non-finite price or point value, and for non-finite
    contracts or beta (a NaN beta from a young ``ReturnCorrelation`` must not slip through a limit).
    """
    contracts = _finite(contracts, "contracts")
    beta = _finite(beta, "beta")
    price = _positive(price, "price")
    point_value = _positive(point_value, "point value")
    bench_price = _positive(bench_price, "benchmark price")
    bench_point_value = _positive(bench_point_value, "benchmark point value")
    return contracts * price * point_value * beta / (bench_price * bench_point_value)


@dataclass(frozen=True, slots=True)
class Holding:
    """A position in one instrument: ``contracts`` signed, and including working entry orders."""

    name: str
    contracts: float
    price: float
    point_value: float
    beta: float

    def es_equivalent(self, bench_price: float, bench_point_value: float) -> float:
        return es_equivalent_contracts(self.contracts, self.price, self.point_value, self.beta,
                                       bench_price, bench_point_value)


def beta_weighted_exposure(holdings: Iterable[Holding], bench_price: float, bench_point_value: float) -> float:
    """Net beta-weighted exposure in benchmark contracts: the signed sum of the holdings' ES-equivalents."""
    return math.fsum(h.es_equivalent(bench_price, bench_point_value) for h in holdings)


def gross_exposure(holdings: Iterable[Holding], bench_price: float, bench_point_value: float) -> float:
    """Gross beta-weighted exposure: the sum of the absolute ES-equivalents (no netting)."""
    return math.fsum(abs(h.es_equivalent(bench_price, bench_point_value)) for h in holdings)


# --------------------------------------------------------------------------- limits


def _last_true(predicate: Callable[[int], bool], hi: int) -> int:
    """Largest n in [0, hi] with predicate(n), for a predicate true on a prefix [0, k] (0 assumed true)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicate(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def max_contracts_within_limit(current_es: float, per_contract_es: float, direction: int, wanted: int,
                               limit_es: float) -> int:
    """How many of ``wanted`` contracts (each ``per_contract_es`` ES-eq, bought if ``direction`` is +1,
    sold if -1) may trade under a limit of ``limit_es`` on |net ES-eq exposure|.

    The answer is the largest n in [0, wanted] with
    ``|current_es + direction * n * per_contract_es| <= max(|current_es|, limit_es) + EXPOSURE_TOL``:

    - a risk-increasing order stops at the limit (0 if the book is already beyond it);
    - a risk-reducing order is never blocked: it may go all the way through flat and out the other
      side, as long as it does not end with a larger |exposure| than both the current one and the limit.

    ``EXPOSURE_TOL`` (1e-9 ES-eq) only absorbs floating-point error (3 * 0.1 > 0.3 in binary);
    the search is exact with respect to that comparison, as evaluated in floating point.

    Raises ValueError for a non-positive per-contract exposure, a direction other than +1/-1,
    a negative ``wanted`` or limit, or non-finite inputs.
    """
    current_es = _finite(current_es, "current exposure")
    if not (isinstance(per_contract_es, (int, float, np.integer, np.floating)) and math.isfinite(per_contract_es)
            and per_contract_es > 0):
        raise ValueError(f"per-contract ES-equivalent must be positive and finite, got {per_contract_es!r} "
                         "(pass the order's side in `direction`, not in the sign of the exposure)")
    if direction not in (1, -1) or isinstance(direction, bool):
        raise ValueError(f"direction must be +1 (buy) or -1 (sell), got {direction!r}")
    wanted = _count(wanted, "wanted")
    limit_es = _finite(limit_es, "limit")
    if limit_es < 0:
        raise ValueError(f"limit must not be negative, got {limit_es}")
    bound = max(abs(current_es), limit_es) + EXPOSURE_TOL

    def fits(n: int) -> bool:
        return abs(current_es + direction * n * per_contract_es) <= bound

    # The computed exposure is monotone in n (IEEE rounding is monotone), so `fits` holds on a prefix
    # of [0, wanted] that always contains 0: a binary search finds its end exactly.
    return _last_true(fits, wanted)


# --------------------------------------------------------------------------- hedging


class HedgeInstrument(Protocol):
    """What ``hedge_order`` needs of the hedge: a ``Holding`` will do (its ``contracts`` are ignored)."""

    @property
    def name(self) -> str: ...
    @property
    def price(self) -> float: ...
    @property
    def point_value(self) -> float: ...
    @property
    def beta(self) -> float: ...


@dataclass(frozen=True, slots=True)
class HedgeOrder:
    """A hedge: ``contracts`` signed (negative = sell), exposures in ES-eq before and after it."""

    name: str
    contracts: int
    es_before: float
    es_after: float
    reason: str


def hedge_order(exposure_es: float, threshold_es: float, target_es: float, hedge: HedgeInstrument,
                bench_price: float, bench_point_value: float, max_contracts: int) -> HedgeOrder | None:
    """The hedge order that brings a net exposure back toward ``target_es``, or None.

    Nothing is done while ``|exposure_es| <= threshold_es``. Beyond it, the hedge trades against the
    exposure (sells when long, buys when short) the whole number of contracts n in [0, max_contracts]
    that minimises ``|exposure after - target_es|``, subject to never ending more than half a hedge
    contract past zero on the other side (so a target across zero is effectively clamped there, and
    |exposure| never grows). Ties go to the smaller n (fewer commissions). None when that n is 0.

    The hedge's ES-equivalent per contract must be positive (a positive beta); ValueError otherwise.
    """
    exposure_es = _finite(exposure_es, "exposure")
    threshold_es = _finite(threshold_es, "threshold")
    target_es = _finite(target_es, "target")
    if threshold_es < 0:
        raise ValueError(f"threshold must not be negative, got {threshold_es}")
    max_contracts = _count(max_contracts, "max_contracts")
    per = es_equivalent_contracts(1.0, hedge.price, hedge.point_value, hedge.beta, bench_price, bench_point_value)
    if not per > 0:
        raise ValueError(f"hedge {hedge.name} must have a positive ES-equivalent per contract "
                         f"(beta {hedge.beta}); a hedge with a non-positive beta cannot offset the exposure")
    if abs(exposure_es) <= threshold_es:
        return None
    side = 1 if exposure_es > 0 else -1   # the hedge trades -side

    def after(n: int) -> float:
        return exposure_es + (-side * n) * per

    half = 0.5 * per
    before = abs(exposure_es)

    def allowed(n: int) -> bool:  # not past zero by more than half a contract, |exposure| not larger
        a = after(n)
        return side * a >= -half - EXPOSURE_TOL and abs(a) <= before + EXPOSURE_TOL

    n_hi = _last_true(allowed, max_contracts)
    ideal = side * (exposure_es - target_es) / per          # unconstrained real number of contracts
    low = min(max(math.floor(ideal), 0), n_hi)
    high = min(low + 1, n_hi)
    # |after(n) - target| is convex in n, so the best integer in [0, n_hi] is next to the ideal clamped there;
    # the larger count only wins when it is closer by more than the tolerance (ties: fewer contracts).
    best = high if abs(after(high) - target_es) < abs(after(low) - target_es) - EXPOSURE_TOL else low
    if best == 0:
        return None
    contracts = -side * best
    es_after = after(best)
    verb = "sell" if contracts < 0 else "buy"
    beyond = f"> {threshold_es:.2f}" if side > 0 else f"< {-threshold_es:.2f}"
    reason = f"net {exposure_es:+.2f} ES-eq {beyond}: {verb} {best} {hedge.name} -> {es_after:+.2f}"
    if abs(per - 1.0) > EXPOSURE_TOL:
        reason += f" ({per:.4f} ES-eq per contract)"
    if target_es != 0.0:
        reason += f"; target {target_es:+.2f}"
    if (best == max_contracts and allowed(best + 1)
            and abs(after(best + 1) - target_es) < abs(after(best) - target_es) - EXPOSURE_TOL):
        reason += f"; capped at {max_contracts} contracts"
    return HedgeOrder(hedge.name, contracts, exposure_es, es_after, reason)
