"""Online and offline features agree on the team's real minute data; TickFlow on real ticks.

Each instrument is replayed bar by bar with its partner's bars interleaved by time (at equal stamps
the partner's bar goes first on even minutes and after on odd ones: the result must not care), and
every row is compared with ``offline_features``: the same warm-up rows, and values within 1e-9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bridge.data.nt8files import read_nt8
from ml.features import (
    FeatureConfig,
    OnlineFeatures,
    TickFlow,
    classify_ticks,
    feature_names,
    offline_features,
    ticks_to_flow_bars,
)
from ml.labels import LabelConfig, triple_barrier

pytestmark = pytest.mark.shared_data

PAIRS = [("ES", "NQ"), ("MES", "NQ"), ("MYM", "ES"), ("NQ", "ES")]
_MIN = 60 * 1_000_000_000


def replay(bars: pd.DataFrame, partner: pd.DataFrame, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """OnlineFeatures over ``bars`` with ``partner`` interleaved; rows (NaN where None) and ATRs."""
    own_ts = bars["ts_ns"].to_numpy()
    p_ts = partner["ts_ns"].to_numpy()
    # sort key: time, then at equal stamps partner first on even minutes, own bar first on odd ones
    p_key = np.where((p_ts // _MIN) % 2 == 0, 0, 1)
    ts = np.concatenate([p_ts, own_ts])
    is_own = np.concatenate([np.zeros(len(p_ts), bool), np.ones(len(own_ts), bool)])
    tie = np.concatenate([p_key, 1 - np.where((own_ts // _MIN) % 2 == 0, 0, 1)])
    index = np.concatenate([np.arange(len(p_ts)), np.arange(len(own_ts))])
    order = np.lexsort((tie, ts))
    o, h, lo, c, v = (bars[k].to_numpy(dtype=np.float64).tolist() for k in ("open", "high", "low", "close", "volume"))
    pc = partner["close"].to_numpy(dtype=np.float64).tolist()
    f = OnlineFeatures(config, has_partner=True)
    rows = np.full((len(bars), len(feature_names(config))), np.nan)
    atr = np.full(len(bars), np.nan)
    for k in order.tolist():
        i, t = int(index[k]), int(ts[k])
        if not is_own[k]:
            f.on_partner_bar(t, pc[i])
            continue
        row = f.on_bar(t, o[i], h[i], lo[i], c[i], v[i])
        if row is not None:
            rows[i] = row
        atr[i] = f.atr
    return rows, atr


@pytest.fixture(scope="module")
def minute_bars(shared_data: Path) -> dict[str, pd.DataFrame]:
    return {root: read_nt8(shared_data / "nt8" / f"{root} 12-23.Last.txt") for root in ("ES", "NQ", "MES", "MYM")}


@pytest.mark.parametrize("root, partner_root", PAIRS)
def test_online_equals_offline_on_real_minutes(minute_bars, root, partner_root):
    config = FeatureConfig()
    bars, partner = minute_bars[root], minute_bars[partner_root]
    off = offline_features(bars, partner, config)
    X = off[list(feature_names(config))].to_numpy()
    rows, atr = replay(bars, partner, config)

    np.testing.assert_array_equal(np.isnan(rows), np.isnan(X))  # the same warm-up, the same rows
    warm = np.isfinite(X).all(axis=1)
    assert warm.sum() > 0.99 * len(bars)
    scale = np.maximum(np.abs(X[warm]), 1.0)
    err = np.abs(rows[warm] - X[warm]) / scale  # absolute below 1, relative above
    print(f"{root} vs {partner_root}: {len(bars)} bars, max error {err.max():.3g} "
          f"({feature_names(config)[int(err.max(axis=0).argmax())]}), ATR max rel "
          f"{np.nanmax(np.abs(atr - off['atr']) / off['atr']):.3g}")
    assert err.max() <= 1e-9
    np.testing.assert_allclose(atr, off["atr"].to_numpy(), rtol=1e-9)
    # the features carry information (no column silently constant) and cross features are live
    assert (X[warm].std(axis=0)[[i for i, n in enumerate(feature_names(config)) if n != "has_partner"]] > 0).all()


def test_labels_on_real_minutes_use_the_feature_atr(minute_bars):
    bars = minute_bars["ES"]
    off = offline_features(bars, minute_bars["NQ"], FeatureConfig())
    lab = triple_barrier(bars, off["atr"].to_numpy(), LabelConfig())
    known = lab["outcome"].notna()
    assert known.sum() > 0.99 * len(bars)
    # symmetric barriers on a near-driftless month: both sides resolve often, neither dominates
    up, down = (lab["outcome"] == 1).sum(), (lab["outcome"] == -1).sum()
    assert 0.35 < up / (up + down) < 0.65
    resolved = lab["outcome"].abs() == 1
    assert (lab.loc[resolved, "exit_ret"].abs() == 1.5).all()
    assert (lab["t1_ns"] > bars["ts_ns"])[known].all()


def online_flow(ticks: pd.DataFrame) -> pd.DataFrame:
    flow = TickFlow(60)
    cols = [ticks[k].to_numpy().tolist() for k in ("ts_ns", "price", "volume", "bid", "ask")]
    out = [b for b in map(flow.on_tick, *cols) if b is not None]
    out.append(flow.flush())
    return pd.DataFrame(out)


def test_tickflow_tick_rule_on_es_ticks(shared_data: Path):
    ticks = read_nt8(shared_data / "nt8" / "ES 06-18.Last.txt.gz")
    assert ticks["bid"].isna().all()  # no quotes: the tick rule throughout
    offline = ticks_to_flow_bars(ticks, 60)
    pd.testing.assert_frame_equal(online_flow(ticks), offline, check_dtype=False)
    np.testing.assert_array_equal(offline["buy_volume"] + offline["sell_volume"], offline["volume"])
    buy, sell = classify_ticks(ticks)
    assert 0.3 < buy.sum() / (buy.sum() + sell.sum()) < 0.7


def test_tickflow_quote_rule_on_spy_ticks(shared_data: Path):
    ticks = read_nt8(shared_data / "nt8" / "SPY.Last.txt.gz").iloc[:300_000].reset_index(drop=True)
    quoted = ticks["bid"] < ticks["ask"]
    assert quoted.mean() > 0.9
    offline = ticks_to_flow_bars(ticks, 60)
    pd.testing.assert_frame_equal(online_flow(ticks), offline, check_dtype=False)
    buy, sell = classify_ticks(ticks)
    price, bid, ask = (ticks[k].to_numpy() for k in ("price", "bid", "ask"))
    at_ask = quoted.to_numpy() & (price >= ask)
    at_bid = quoted.to_numpy() & (price <= bid)
    assert at_ask.any() and at_bid.any()
    assert (buy[at_ask] == ticks["volume"].to_numpy()[at_ask]).all()
    assert (sell[at_bid] == ticks["volume"].to_numpy()[at_bid]).all()
    # classified volume flows into the features: the imbalance then differs from the bar tick rule's
    with_flow = offline_features(offline, None, FeatureConfig())["flow_imb_30"]
    tick_rule = offline_features(offline.drop(columns=["buy_volume", "sell_volume"]), None, FeatureConfig())["flow_imb_30"]
    assert not np.allclose(with_flow.dropna(), tick_rule.dropna())
