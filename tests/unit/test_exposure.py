"""Exposure arithmetic (strategies/exposure.py): rolling correlation/beta against pandas/numpy,
ES-equivalents on known cases, limit and hedge properties against brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.exposure import (
    HedgeOrder,
    Holding,
    ReturnCorrelation,
    beta_weighted_exposure,
    es_equivalent_contracts,
    gross_exposure,
    hedge_order,
    max_contracts_within_limit,
)

TOL = 1e-9          # the documented tolerance (ES-eq), restated so that the tests below notice a change to it
NS_PER_MIN = 60_000_000_000
T0 = 1_700_000_000 * 1_000_000_000

# Point values as the instrument master has them; the module itself must not know them.
POINT_VALUE = {"ES": 50.0, "MES": 5.0, "NQ": 20.0, "MNQ": 2.0, "YM": 5.0, "MYM": 0.5, "RTY": 50.0, "M2K": 5.0}
PRICE = {"ES": 4500.0, "MES": 4500.0, "NQ": 16000.0, "MNQ": 16000.0, "YM": 35000.0, "MYM": 35000.0,
         "RTY": 2000.0, "M2K": 2000.0}


# --------------------------------------------------------------------------- fixtures: synthetic bars


def factor_closes(n_bars: int, betas: dict[str, float], seed: int, noise: float = 4e-4) -> pd.DataFrame:
    """Closes (index: bar timestamps) of instruments driven by one market factor plus own noise."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(0.0, 1e-3, n_bars)
    start = {"ES": 4500.0, "NQ": 16000.0, "YM": 35000.0, "RTY": 2000.0}
    data = {}
    for name, b in betas.items():
        r = b * factor + rng.normal(0.0, noise, n_bars)
        data[name] = start.get(name, 1000.0) * np.exp(np.cumsum(r))
    return pd.DataFrame(data, index=T0 + NS_PER_MIN * np.arange(n_bars))


def feed(tracker: ReturnCorrelation, closes: pd.DataFrame, seed: int = 0, upto: int | None = None) -> None:
    """Feed bars timestamp by timestamp, instruments in shuffled order; NaN closes are missing bars."""
    rng = np.random.default_rng(seed)
    for ts, row in closes.iloc[:upto].iterrows():
        names = list(row.index)
        rng.shuffle(names)
        for name in names:
            if not math.isnan(row[name]):
                tracker.update(name, int(ts), float(row[name]))


def reference_returns(closes: pd.DataFrame, window: int) -> pd.DataFrame:
    """Independent alignment: log returns between each instrument's consecutive present closes, by
    timestamp; rows without any return dropped; the last `window` rows kept."""
    cols = {}
    for name in closes.columns:
        present = closes[name].dropna()
        cols[name] = np.log(present).diff().reindex(closes.index)
    rets = pd.DataFrame(cols).dropna(how="all")
    return rets.iloc[-window:]


def pair_beta(rets: pd.DataFrame, name: str, bench: str, min_periods: int) -> float:
    both = rets[[name, bench]].dropna()
    if len(both) < min_periods:
        return math.nan
    c = np.cov(both[name].to_numpy(), both[bench].to_numpy(), ddof=1)
    return c[0, 1] / c[1, 1]


# --------------------------------------------------------------------------- ReturnCorrelation


@pytest.mark.parametrize("upto", [20, 36, 121, 400])
def test_correlation_beta_volatility_match_pandas_with_missing_bars(upto):
    window, min_periods = 120, 30
    closes = factor_closes(400, {"ES": 1.0, "NQ": 1.3, "YM": 0.8, "RTY": 1.1}, seed=7)
    rng = np.random.default_rng(11)
    missing = rng.random(400) < 0.12          # NQ misses ~12 % of the bars (never the first or a checkpoint)
    missing[[0, 19, 35, 120, 399]] = False
    closes.loc[closes.index[missing], "NQ"] = np.nan
    tracker = ReturnCorrelation(window=window, min_periods=min_periods)
    feed(tracker, closes, upto=upto)

    rets = reference_returns(closes.iloc[:upto], window)
    assert len(tracker) == len(rets)
    names, corr = tracker.correlation()
    assert sorted(names) == sorted(closes.columns)     # in order of first arrival
    expected = rets[names].corr(min_periods=min_periods).to_numpy()
    np.testing.assert_allclose(corr, expected, rtol=1e-9, atol=1e-12, equal_nan=True)
    if upto >= 121:
        assert not np.isnan(corr).any()
        assert tracker.observations("NQ", "ES") == rets[["NQ", "ES"]].dropna().shape[0] < len(rets)
    for name in names:
        if name != "ES":
            assert tracker.beta(name, "ES") == pytest.approx(pair_beta(rets, name, "ES", min_periods),
                                                             rel=1e-9, nan_ok=True)
            assert tracker.beta("ES", name) == pytest.approx(pair_beta(rets, "ES", name, min_periods),
                                                             rel=1e-9, nan_ok=True)
        if name != "NQ":
            assert tracker.beta(name, "NQ") == pytest.approx(pair_beta(rets, name, "NQ", min_periods),
                                                             rel=1e-9, nan_ok=True)
        col = rets[name].dropna()
        vol = col.std(ddof=1) if len(col) >= min_periods else math.nan
        assert tracker.volatility(name) == pytest.approx(vol, rel=1e-9, nan_ok=True)
    assert tracker.bad_inputs == 0 and tracker.out_of_order == 0 and tracker.dropped_returns == 0


def test_pairwise_correlation_matches_numpy_corrcoef_on_the_paired_rows():
    closes = factor_closes(300, {"ES": 1.0, "NQ": 1.2}, seed=3)
    closes.loc[closes.index[5::7], "NQ"] = np.nan
    tracker = ReturnCorrelation(window=390, min_periods=60)
    feed(tracker, closes)
    rets = reference_returns(closes, 390).dropna()
    names, corr = tracker.correlation()
    i, j = names.index("NQ"), names.index("ES")
    assert corr[i, j] == pytest.approx(np.corrcoef(rets["NQ"], rets["ES"])[0, 1], rel=1e-10)
    assert corr[i, j] == pytest.approx(corr[j, i], rel=1e-12)
    assert corr[i, i] == pytest.approx(1.0)


def test_beta_of_a_levered_copy_is_its_leverage():
    rng = np.random.default_rng(5)
    bench_r = rng.normal(0.0, 1e-3, 391)
    lever_r = 1.5 * bench_r + rng.normal(0.0, 1e-5, 391)
    closes = pd.DataFrame({"ES": 4500 * np.exp(np.cumsum(bench_r)), "NQ": 16000 * np.exp(np.cumsum(lever_r))},
                          index=T0 + NS_PER_MIN * np.arange(391))
    tracker = ReturnCorrelation()
    feed(tracker, closes)
    assert tracker.beta("NQ", "ES") == pytest.approx(1.5, abs=0.005)
    assert tracker.beta("ES", "NQ") == pytest.approx(1 / 1.5, abs=0.005)
    assert tracker.beta("ES", "ES") == 1.0 and tracker.beta("NQ", "NQ") == 1.0
    assert tracker.volatility("NQ") / tracker.volatility("ES") == pytest.approx(1.5, abs=0.005)
    names, corr = tracker.correlation()
    assert corr[0, 1] > 0.999


def test_insufficient_data_gives_nan_and_unknown_names_nan():
    tracker = ReturnCorrelation(window=100, min_periods=10)
    assert tracker.beta("NQ", "ES") != tracker.beta("NQ", "ES")          # NaN, nothing seen
    assert tracker.beta("ES", "ES") == 1.0                               # by definition
    closes = factor_closes(10, {"ES": 1.0, "NQ": 1.0}, seed=1)          # 9 returns < 10
    feed(tracker, closes)
    assert math.isnan(tracker.beta("NQ", "ES")) and math.isnan(tracker.volatility("ES"))
    assert np.isnan(tracker.correlation()[1]).all()
    tracker.update("ES", int(closes.index[-1]) + NS_PER_MIN, 4600.0)
    tracker.update("NQ", int(closes.index[-1]) + NS_PER_MIN, 16100.0)   # the 10th paired return
    assert math.isfinite(tracker.beta("NQ", "ES")) and math.isfinite(tracker.volatility("ES"))
    assert math.isnan(tracker.beta("YM", "ES")) and math.isnan(tracker.volatility("YM"))
    assert tracker.observations("YM") == 0


def test_window_forgets_old_data():
    window = 50
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 1e-3, 250)
    y = np.concatenate([x[:200], -x[200:]])                              # +1 correlation, then -1
    closes = pd.DataFrame({"ES": 4500 * np.exp(np.cumsum(x)), "NQ": 16000 * np.exp(np.cumsum(y))},
                          index=T0 + NS_PER_MIN * np.arange(250))
    tracker = ReturnCorrelation(window=window, min_periods=20)
    feed(tracker, closes, upto=200)
    assert tracker.correlation()[1][0, 1] == pytest.approx(1.0)
    feed(tracker, closes.iloc[200:])
    assert len(tracker) == window
    assert tracker.correlation()[1][0, 1] == pytest.approx(-1.0)
    assert tracker.beta("NQ", "ES") == pytest.approx(-1.0)
    assert tracker.volatility("ES") == pytest.approx(np.std(x[200:], ddof=1), rel=1e-9)


def test_bad_inputs_are_counted_and_ignored():
    closes = factor_closes(200, {"ES": 1.0, "NQ": 1.2, "YM": 0.9}, seed=21)
    clean = ReturnCorrelation(window=150, min_periods=30)
    for ts, row in closes.iterrows():
        for name in row.index:
            clean.update(name, int(ts), float(row[name]))

    dirty = ReturnCorrelation(window=150, min_periods=30)
    bad_values = [math.nan, math.inf, -math.inf, 0.0, -4500.0, "junk", None]
    rng = np.random.default_rng(2)
    n_bad = 0
    for k, (ts, row) in enumerate(closes.iterrows()):
        for name in row.index:
            if k % 9 == 3:
                dirty.update(name, int(ts), bad_values[n_bad % len(bad_values)])   # before the good bar
                n_bad += 1
            dirty.update(name, int(ts), float(row[name]))
        if rng.random() < 0.05:
            dirty.update("RTY", int(ts), math.nan)   # never a good bar: must not register RTY
            n_bad += 1
    assert dirty.bad_inputs == n_bad > 0
    assert dirty.names == clean.names == ["ES", "NQ", "YM"]
    np.testing.assert_array_equal(dirty.correlation()[1], clean.correlation()[1])
    assert dirty.beta("NQ", "ES") == clean.beta("NQ", "ES")


def test_bad_close_in_the_middle_makes_the_next_return_span_it():
    tracker = ReturnCorrelation(window=10, min_periods=2)
    for k, close in enumerate([100.0, 101.0, math.nan, 103.0, 102.0]):
        tracker.update("ES", T0 + k * NS_PER_MIN, close)
    expected = np.std(np.log([101 / 100, 103 / 101, 102 / 103]), ddof=1)
    assert tracker.volatility("ES") == pytest.approx(expected, rel=1e-12)
    assert tracker.bad_inputs == 1


def test_late_and_out_of_order_bars():
    tracker = ReturnCorrelation(window=10, min_periods=2)
    t = [T0 + k * NS_PER_MIN for k in range(5)]
    tracker.update("ES", t[1], 100.0)
    tracker.update("NQ", t[1], 100.0)
    tracker.update("ES", t[2], 101.0)
    tracker.update("NQ", t[2], 102.0)     # row t2 complete
    tracker.update("ES", t[3], 102.0)
    tracker.update("ES", t[4], 103.0)     # newer timestamp: row t3 enters without NQ
    tracker.update("NQ", t[3], 101.0)     # late: return dropped, close kept
    tracker.update("NQ", t[4], 104.0)     # row t4 complete: NQ return log(104 / 101)
    assert tracker.dropped_returns == 1
    assert len(tracker) == 3
    assert tracker.observations("NQ") == 2 and tracker.observations("ES") == 3
    assert tracker.observations("NQ", "ES") == 2
    assert tracker.volatility("NQ") == pytest.approx(np.std(np.log([102 / 100, 104 / 101]), ddof=1), rel=1e-12)
    tracker.update("NQ", t[4], 105.0)     # duplicate timestamp
    tracker.update("ES", t[2], 99.0)      # going back in time
    assert tracker.out_of_order == 2
    assert tracker.volatility("NQ") == pytest.approx(np.std(np.log([102 / 100, 104 / 101]), ddof=1), rel=1e-12)


def test_incomplete_row_waits_for_the_missing_instrument_then_for_a_newer_timestamp():
    tracker = ReturnCorrelation(window=10, min_periods=2)
    tracker.update("ES", T0, 100.0)
    tracker.update("NQ", T0, 100.0)
    tracker.update("ES", T0 + NS_PER_MIN, 101.0)
    assert len(tracker) == 0              # row waits for NQ
    tracker.update("NQ", T0 + NS_PER_MIN, 101.0)
    assert len(tracker) == 1              # complete
    tracker.update("ES", T0 + 2 * NS_PER_MIN, 102.0)
    assert len(tracker) == 1
    tracker.update("ES", T0 + 3 * NS_PER_MIN, 103.0)
    assert len(tracker) == 2              # the newer timestamp pushed the incomplete row in


@pytest.mark.parametrize("window, min_periods", [(1, 1), (10, 1), (10, 11), (10.5, 5)])
def test_tracker_refuses_bad_parameters(window, min_periods):
    with pytest.raises(ValueError):
        ReturnCorrelation(window=window, min_periods=min_periods)


# --------------------------------------------------------------------------- ES-equivalents


def test_es_equivalent_known_cases():
    assert es_equivalent_contracts(1, 16000, 20, 1.2, 4500, 50) == pytest.approx(1.7066666666666667, rel=1e-12)
    assert es_equivalent_contracts(10, 4500, 5, 1.0, 4500, 50) == pytest.approx(1.0, rel=1e-15)   # 10 MES = 1 ES
    assert es_equivalent_contracts(-3, 4500, 50, 1.0, 4500, 50) == pytest.approx(-3.0)
    assert es_equivalent_contracts(10, 16000, 2, 1.0, 16000, 20) == pytest.approx(1.0)           # 10 MNQ = 1 NQ
    assert es_equivalent_contracts(2, 35000, 0.5, 0.9, 4500, 50) == pytest.approx(2 * 35000 * 0.5 * 0.9 / 225000)
    assert es_equivalent_contracts(0, 2000, 50, 1.1, 4500, 50) == 0.0


@pytest.mark.parametrize("args, word", [
    ((1, 0.0, 20, 1.0, 4500, 50), "price"),
    ((1, -16000, 20, 1.0, 4500, 50), "price"),
    ((1, 16000, 0, 1.0, 4500, 50), "point value"),
    ((1, 16000, 20, 1.0, 0, 50), "benchmark price"),
    ((1, 16000, 20, 1.0, 4500, -50), "benchmark point value"),
    ((1, math.nan, 20, 1.0, 4500, 50), "price"),
    ((1, 16000, 20, math.nan, 4500, 50), "beta"),
    ((math.inf, 16000, 20, 1.0, 4500, 50), "contracts"),
])
def test_es_equivalent_refuses_nonsense(args, word):
    with pytest.raises(ValueError, match=word):
        es_equivalent_contracts(*args)


def test_portfolio_exposure_net_and_gross():
    holdings = [
        Holding("NQ", 1, 16000.0, 20.0, 1.2),        # +1.706667
        Holding("MES", -10, 4500.0, 5.0, 1.0),       # -1.0
        Holding("MYM", 2, 35000.0, 0.5, 0.9),        # +0.14
        Holding("RTY", -1, 2000.0, 50.0, 1.1),       # -0.488889
    ]
    parts = [1 * 16000 * 20 * 1.2 / 225000, -10 * 4500 * 5 / 225000, 2 * 35000 * 0.5 * 0.9 / 225000,
             -1 * 2000 * 50 * 1.1 / 225000]
    assert beta_weighted_exposure(holdings, 4500.0, 50.0) == pytest.approx(sum(parts), rel=1e-12)
    assert gross_exposure(iter(holdings), 4500.0, 50.0) == pytest.approx(sum(abs(p) for p in parts), rel=1e-12)
    assert beta_weighted_exposure([], 4500.0, 50.0) == 0.0
    with pytest.raises(ValueError):
        beta_weighted_exposure([Holding("NQ", 1, 16000.0, 20.0, math.nan)], 4500.0, 50.0)


# --------------------------------------------------------------------------- max_contracts_within_limit


@pytest.mark.parametrize("current, per, direction, wanted, limit, expected", [
    (0.0, 0.1, 1, 5, 0.3, 3),          # 3 * 0.1 = 0.30000000000000004: fits thanks to the tolerance
    (0.0, 0.1, -1, 5, 0.3, 3),
    (2.5, 1.0, 1, 3, 3.0, 0),
    (2.0, 1.0, 1, 3, 3.0, 1),
    (5.0, 1.0, 1, 3, 3.0, 0),          # already beyond: nothing more
    (5.0, 1.0, -1, 3, 3.0, 3),         # reducing: never blocked
    (5.0, 1.0, -1, 12, 3.0, 10),       # may go through flat to -5 but not beyond |current|
    (1.0, 1.0, -1, 12, 3.0, 4),        # through flat, stopped by the limit at -3
    (-2.0, 16000 * 20 * 1.2 / 225000, 1, 5, 3.0, 2),
    (0.7, 0.1, 1, 0, 1.0, 0),
])
def test_max_contracts_known_cases(current, per, direction, wanted, limit, expected):
    assert max_contracts_within_limit(current, per, direction, wanted, limit) == expected


# Offsets of the exposure one contract would reach, from the limit: inside, exactly at it, beyond it by
# less than the tolerance (floating-point error, let through), and beyond it by more (a real excess).
TOLERANCE_CASES = [(-1e-6, 1), (0.0, 1), (TOL / 2, 1), (2 * TOL, 0), (1e-6, 0)]


@pytest.mark.parametrize("excess, allowed", TOLERANCE_CASES)
@pytest.mark.parametrize("direction", [1, -1])
def test_the_tolerance_lets_rounding_through_the_limit_but_not_a_real_excess(excess, allowed, direction):
    # one contract of exactly 1 ES-eq takes |exposure| from 2 + excess to 3 + excess against a limit of 3
    current = direction * (2.0 + excess)
    assert max_contracts_within_limit(current, 1.0, direction, 3, 3.0) == allowed


@pytest.mark.parametrize("excess, allowed", TOLERANCE_CASES)
@pytest.mark.parametrize("direction", [1, -1])
def test_the_tolerance_bounds_a_reducing_order_that_goes_through_flat(excess, allowed, direction):
    # beyond the limit already (|exposure| 5 > 3): a reducing order may end on the other side, but at
    # most as far out as it started; a contract of 10 + excess ES-eq ends at 5 + excess the other way
    current = -direction * 5.0
    assert max_contracts_within_limit(current, 10.0 + excess, direction, 1, 3.0) == allowed


@pytest.mark.parametrize("per, direction, wanted, limit", [
    (0.0, 1, 1, 1.0), (-0.1, 1, 1, 1.0), (math.nan, 1, 1, 1.0), (0.1, 0, 1, 1.0), (0.1, 2, 1, 1.0),
    (0.1, 1, -1, 1.0), (0.1, 1, 1.5, 1.0), (0.1, 1, 1, -1.0), (0.1, 1, 1, math.nan),
])
def test_max_contracts_refuses_nonsense(per, direction, wanted, limit):
    with pytest.raises(ValueError):
        max_contracts_within_limit(0.0, per, direction, wanted, limit)


PER_CONTRACT = st.sampled_from([0.1, 1.0, 16000 * 20 * 1.2 / 225000, 16000 * 2 / 225000, 35000 * 0.5 / 225000,
                                2000 * 50 * 1.1 / 225000, 1 / 3])


@st.composite
def limit_cases(draw):
    per = draw(st.one_of(PER_CONTRACT, st.floats(min_value=0.01, max_value=5.0)))
    # Exposures and limits on exact multiples of the contract size hit the boundaries.
    on_grid = st.integers(min_value=-30, max_value=30).map(lambda k: k * per)
    current = draw(st.one_of(on_grid, st.floats(min_value=-30.0, max_value=30.0)))
    limit = draw(st.one_of(on_grid.map(abs), st.floats(min_value=0.0, max_value=30.0)))
    direction = draw(st.sampled_from([1, -1]))
    wanted = draw(st.integers(min_value=0, max_value=120))
    return current, per, direction, wanted, limit


@settings(max_examples=250, deadline=None)
@given(limit_cases())
def test_max_contracts_properties(case):
    current, per, direction, wanted, limit = case
    n = max_contracts_within_limit(current, per, direction, wanted, limit)
    assert isinstance(n, int) and 0 <= n <= wanted

    def after(k: int) -> float:
        return current + direction * k * per

    bound = max(abs(current), limit)
    reducing = direction * current < 0
    if not reducing:                              # increasing: never past the limit
        assert n == 0 or abs(after(n)) <= limit + TOL
    else:                                         # reducing: everything up to flat always allowed
        up_to_flat = max((k for k in range(wanted + 1) if k * per <= abs(current) + TOL), default=0)
        assert n >= up_to_flat
    assert abs(after(n)) <= bound + TOL or n == 0
    assert n == wanted or abs(after(n + 1)) > bound + TOL        # maximal

    # Brute-force oracle, the spec read literally.
    def ok(k: int) -> bool:
        return abs(after(k)) <= limit + TOL or (reducing and abs(after(k)) <= bound + TOL)

    assert n == max((k for k in range(wanted + 1) if ok(k)), default=0)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=50), PER_CONTRACT, st.sampled_from([1, -1]),
       st.floats(min_value=0.0, max_value=2.0))
def test_full_flattening_is_always_allowed(k, per, direction, limit):
    current = -direction * k * per
    assert max_contracts_within_limit(current, per, direction, k, limit) == k


# --------------------------------------------------------------------------- hedge_order


ES_HEDGE = Holding("ES", 0, 4500.0, 50.0, 1.0)


@pytest.mark.parametrize("exposure, threshold, target, hedge, max_n, contracts, after, reason", [
    (3.4, 2.0, 0.0, ES_HEDGE, 10, -3, 0.4, "net +3.40 ES-eq > 2.00: sell 3 ES -> +0.40"),
    (-2.6, 2.0, 0.0, ES_HEDGE, 10, 3, 0.4, "net -2.60 ES-eq < -2.00: buy 3 ES -> +0.40"),
    (3.6, 2.0, 0.0, ES_HEDGE, 10, -4, -0.4, "net +3.60 ES-eq > 2.00: sell 4 ES -> -0.40"),
    (2.5, 2.0, 0.0, ES_HEDGE, 10, -2, 0.5, None),                  # tie: fewer contracts
    (10.0, 2.0, 0.0, ES_HEDGE, 3, -3, 7.0, "capped at 3"),
    (0.6, 0.2, 0.0, ES_HEDGE, 10, -1, -0.4, None),
    (5.0, 2.0, 1.0, ES_HEDGE, 10, -4, 1.0, "target +1.00"),
    (3.4, 2.0, -2.0, ES_HEDGE, 10, -3, 0.4, None),                 # target across zero: clamped
    (3.4, 2.0, 0.0, Holding("NQ", 0, 16000.0, 20.0, 1.2), 10, -2, 3.4 - 2 * 1.7066666666666667,
     "(1.7067 ES-eq per contract)"),
    (2.34, 2.0, 0.0, Holding("MES", 0, 4500.0, 5.0, 1.0), 100, -23, 0.04, "sell 23 MES"),
])
def test_hedge_order_known_cases(exposure, threshold, target, hedge, max_n, contracts, after, reason):
    order = hedge_order(exposure, threshold, target, hedge, 4500.0, 50.0, max_n)
    assert isinstance(order, HedgeOrder)
    assert order.name == hedge.name and order.contracts == contracts
    assert order.es_before == exposure and order.es_after == pytest.approx(after, abs=1e-12)
    if reason is not None:
        assert reason in order.reason


@pytest.mark.parametrize("exposure, threshold, max_n", [
    (1.5, 2.0, 10), (2.0, 2.0, 10), (-2.0, 2.0, 10),   # within the threshold
    (0.3, 0.2, 10),                                    # one contract would overshoot by 0.7
    (5.0, 2.0, 0),                                     # no contracts allowed
])
def test_hedge_order_none(exposure, threshold, max_n):
    assert hedge_order(exposure, threshold, 0.0, ES_HEDGE, 4500.0, 50.0, max_n) is None


@pytest.mark.parametrize("excess, contracts", [(0.0, -2), (TOL / 4, -2), (TOL, -3), (1e-6, -3)])
def test_a_hedge_takes_the_extra_contract_only_when_it_is_closer_by_more_than_the_tolerance(excess, contracts):
    # from +2.5 + excess, selling 2 ES leaves +0.5 + excess and selling 3 leaves -0.5 + excess: the third
    # contract is closer to flat by 2 * excess, a tie (fewer commissions win) unless that beats the tolerance
    order = hedge_order(2.5 + excess, 2.0, 0.0, ES_HEDGE, 4500.0, 50.0, 10)
    assert order is not None and order.contracts == contracts
    assert order.es_after == pytest.approx(2.5 + excess + contracts, abs=1e-12)


def test_hedge_order_refuses_nonsense():
    with pytest.raises(ValueError, match="positive ES-equivalent"):
        hedge_order(3.0, 1.0, 0.0, Holding("XX", 0, 100.0, 1.0, -0.5), 4500.0, 50.0, 10)
    with pytest.raises(ValueError):
        hedge_order(3.0, -1.0, 0.0, ES_HEDGE, 4500.0, 50.0, 10)
    with pytest.raises(ValueError):
        hedge_order(math.nan, 1.0, 0.0, ES_HEDGE, 4500.0, 50.0, 10)
    with pytest.raises(ValueError):
        hedge_order(3.0, 1.0, 0.0, ES_HEDGE, 4500.0, 50.0, -1)
    with pytest.raises(ValueError, match="price"):
        hedge_order(3.0, 1.0, 0.0, Holding("ES", 0, 0.0, 50.0, 1.0), 4500.0, 50.0, 10)


@st.composite
def hedge_cases(draw):
    root = draw(st.sampled_from(sorted(POINT_VALUE)))
    price = PRICE[root] * draw(st.floats(min_value=0.7, max_value=1.3))
    beta = draw(st.floats(min_value=0.3, max_value=2.0))
    bench_price = draw(st.floats(min_value=3000.0, max_value=6000.0))
    hedge = Holding(root, 0, price, POINT_VALUE[root], beta)
    exposure = draw(st.floats(min_value=-40.0, max_value=40.0))
    threshold = draw(st.floats(min_value=0.0, max_value=5.0))
    target = draw(st.one_of(st.just(0.0), st.floats(min_value=-1.0, max_value=1.0)))
    max_n = draw(st.integers(min_value=0, max_value=60))
    return exposure, threshold, target, hedge, bench_price, max_n


@settings(max_examples=250, deadline=None)
@given(hedge_cases())
def test_hedge_order_properties(case):
    exposure, threshold, target, hedge, bench_price, max_n = case
    per = hedge.price * hedge.point_value * hedge.beta / (bench_price * 50.0)
    order = hedge_order(exposure, threshold, target, hedge, bench_price, 50.0, max_n)

    # Brute force over every allowed count: against the exposure, never past zero by more than half a contract.
    side = 1 if exposure > 0 else -1
    afters = {n: exposure - side * n * per for n in range(max_n + 1)}
    allowed = {n: a for n, a in afters.items() if side * a >= -per / 2 - TOL}
    best = min(abs(a - target) for a in allowed.values())

    if order is None:
        assert abs(exposure) <= threshold or abs(exposure - target) <= best + TOL
        return
    assert abs(exposure) > threshold
    assert order.name == hedge.name and order.es_before == exposure
    assert np.sign(order.contracts) == -np.sign(exposure)              # always against the exposure
    assert 1 <= abs(order.contracts) <= max_n
    assert order.es_after == pytest.approx(exposure + order.contracts * per, abs=1e-9)
    assert abs(order.es_after) <= abs(exposure) + TOL                   # never increases |exposure|
    assert side * order.es_after >= -per / 2 - TOL                      # at most half a contract past flat
    assert abs(order.es_after - target) <= best + TOL                   # as close to the target as possible
    assert abs(order.es_after - target) < abs(exposure - target)        # and it did something useful
