"""ml.labels: triple-barrier outcomes on hand-worked bars and against a plain per-row scan."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.labels import LabelConfig, resolved_share, triple_barrier

MIN = 60 * 1_000_000_000
CFG = LabelConfig(barrier_atr=1.5, horizon_bars=3)  # ATR 1 below: barriers at close +- 1.5


def frame(rows: list[tuple[float, float, float]]) -> pd.DataFrame:
    """Bars from (high, low, close) triples, one minute apart."""
    h, lo, c = (np.array(x, dtype=np.float64) for x in zip(*rows))
    return pd.DataFrame({"ts_ns": (np.arange(len(rows)) + 1) * MIN, "open": c, "high": h, "low": lo, "close": c,
                         "volume": 1.0})


def test_upper_barrier_first():
    bars = frame([(100, 100, 100), (100.5, 99.5, 100), (101.5, 100, 101.4), (101, 99, 100), (100, 100, 100)])
    lab = triple_barrier(bars, np.ones(5), CFG).iloc[0]
    assert lab["outcome"] == 1 and lab["label"] == 1.0
    assert lab["bars_to_exit"] == 2 and lab["exit_ret"] == 1.5 and lab["t1_ns"] == 3 * MIN


def test_lower_barrier_first_and_exact_touch_counts():
    bars = frame([(100, 100, 100), (100, 98.5, 99), (102, 99, 101), (100, 100, 100)])
    lab = triple_barrier(bars, np.ones(4), CFG).iloc[0]
    assert lab["outcome"] == -1 and lab["label"] == 0.0
    assert lab["bars_to_exit"] == 1 and lab["exit_ret"] == -1.5 and lab["t1_ns"] == 2 * MIN


def test_a_bar_touching_both_barriers_counts_as_the_lower():
    bars = frame([(100, 100, 100), (101.6, 98.4, 100), (100, 100, 100), (100, 100, 100)])
    lab = triple_barrier(bars, np.ones(4), CFG).iloc[0]
    assert lab["outcome"] == -1 and lab["bars_to_exit"] == 1 and lab["exit_ret"] == -1.5


def test_time_out_exits_at_the_horizon_close():
    bars = frame([(100, 100, 100), (101, 99, 100.5), (101.4, 99.1, 101), (101.2, 100, 100.8), (200, 0, 150)])
    lab = triple_barrier(bars, np.full(5, 1.0), CFG)
    first = lab.iloc[0]
    assert first["outcome"] == 0 and math.isnan(first["label"])
    assert first["bars_to_exit"] == 3 and first["t1_ns"] == 4 * MIN
    assert first["exit_ret"] == pytest.approx(0.8)
    # the bar after the horizon (the wild one) does not count for row 0, but does for row 1
    assert lab["outcome"].iat[1] == -1 and lab["bars_to_exit"].iat[1] == 3


def test_unknown_atr_and_short_future_are_nan_with_a_clipped_t1():
    bars = frame([(100, 100, 100)] * 6)
    atr = np.array([np.nan, 1.0, 0.0, 1.0, 1.0, 1.0])
    lab = triple_barrier(bars, atr, CFG)
    known = lab["outcome"].notna().tolist()
    assert known == [False, True, False, False, False, False]
    assert lab["outcome"].iat[1] == 0  # flat: a time-out
    assert lab[["label", "bars_to_exit", "exit_ret"]].iloc[[0, 2, 3, 4, 5]].isna().all().all()
    assert lab["t1_ns"].dtype == np.int64
    assert lab["t1_ns"].tolist() == [4 * MIN, 5 * MIN, 6 * MIN, 6 * MIN, 6 * MIN, 6 * MIN]


def test_barrier_distance_scales_with_config_and_atr():
    bars = frame([(100, 100, 100), (102.9, 100, 102), (100, 100, 100), (100, 100, 100)])
    assert triple_barrier(bars, np.ones(4), LabelConfig(barrier_atr=3.0, horizon_bars=3))["outcome"].iat[0] == 0
    assert triple_barrier(bars, np.full(4, 0.5), LabelConfig(barrier_atr=3.0, horizon_bars=3))["outcome"].iat[0] == 1


def test_resolved_share():
    lab = pd.DataFrame({"outcome": [1.0, -1.0, 0.0, 0.0, np.nan]})
    assert resolved_share(lab) == 0.5
    assert math.isnan(resolved_share(pd.DataFrame({"outcome": [np.nan]})))


def plain_scan(bars: pd.DataFrame, atr: np.ndarray, cfg: LabelConfig) -> list[tuple]:
    """Row by row, bar by bar: the definition read literally."""
    h, lo, c, ts = (bars[k].to_numpy() for k in ("high", "low", "close", "ts_ns"))
    out = []
    n = len(c)
    for i in range(n):
        if not (np.isfinite(atr[i]) and atr[i] > 0) or i + cfg.horizon_bars >= n:
            out.append((np.nan, np.nan, np.nan))
            continue
        up, dn = c[i] + cfg.barrier_atr * atr[i], c[i] - cfg.barrier_atr * atr[i]
        result = (0.0, cfg.horizon_bars, (c[i + cfg.horizon_bars] - c[i]) / atr[i])
        for k in range(1, cfg.horizon_bars + 1):
            if lo[i + k] <= dn:
                result = (-1.0, k, -cfg.barrier_atr)
                break
            if h[i + k] >= up:
                result = (1.0, k, cfg.barrier_atr)
                break
        out.append(result)
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), horizon=st.integers(1, 12),
       barrier=st.sampled_from([0.5, 1.0, 1.5, 3.0]))
def test_property_matches_a_plain_scan(seed, n, horizon, barrier):
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    bars = pd.DataFrame({"ts_ns": (np.arange(n) + 1) * MIN, "high": close + rng.uniform(0, 1, n),
                         "low": close - rng.uniform(0, 1, n), "close": close})
    atr = rng.uniform(0.2, 2.0, n)
    atr[rng.uniform(0, 1, n) < 0.1] = np.nan
    cfg = LabelConfig(barrier_atr=barrier, horizon_bars=horizon)
    lab = triple_barrier(bars, atr, cfg)
    expected = np.array(plain_scan(bars, atr, cfg), dtype=np.float64).reshape(n, 3)
    got = lab[["outcome", "bars_to_exit", "exit_ret"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    resolved = np.isfinite(got[:, 0])
    exit_row = np.arange(n)[resolved] + got[resolved, 1].astype(int)
    np.testing.assert_array_equal(lab["t1_ns"].to_numpy()[resolved], bars["ts_ns"].to_numpy()[exit_row])
    assert (lab["t1_ns"].to_numpy() >= bars["ts_ns"].to_numpy()).all()
