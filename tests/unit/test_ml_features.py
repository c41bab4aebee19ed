"""ml.features: each feature against a plain, independent computation; online == offline; TickFlow."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.features import (
    FEATURE_NAMES,
    PARTNERS,
    FeatureConfig,
    OnlineFeatures,
    TickFlow,
    classify_ticks,
    feature_names,
    offline_features,
    ticks_to_flow_bars,
)

MIN = 60 * 1_000_000_000
SMALL = FeatureConfig(return_horizons=(1, 3), rvol_bars=4, range_bars=3, volume_bars=5, flow_bars=4, atr_bars=3,
                      rel_bars=2, spread_bars=4)


def chicago_ns(stamp: str) -> int:
    return int(pd.Timestamp(stamp, tz="America/Chicago").tz_convert("UTC").value)


def random_bars(n: int, seed: int, start: str = "2023-11-01 08:00", gap_every: int = 0, flow: bool = False,
                price: float = 4000.0) -> pd.DataFrame:
    """A random walk of minute bars; a 2-hour gap every ``gap_every`` bars (a new session)."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 3e-4, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 3e-4, n))
    step = np.full(n, MIN)
    if gap_every:
        step[::gap_every] = 120 * MIN
    ts = chicago_ns(start) + np.cumsum(step)
    volume = rng.integers(0, 500, n).astype(np.float64)
    bars = pd.DataFrame({"ts_ns": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume})
    if flow:
        buy = np.floor(volume * rng.uniform(0, 1, n))
        unknown = rng.uniform(0, 1, n) < 0.3
        bars["buy_volume"] = np.where(unknown, np.nan, buy)
        bars["sell_volume"] = np.where(unknown, np.nan, volume - buy)
    return bars


def run_online(bars: pd.DataFrame, partner: pd.DataFrame | None, config: FeatureConfig,
               partner_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows (NaN where None) and ATRs of OnlineFeatures over the bars, the partner's interleaved by time;
    at equal stamps the partner's bar comes first when ``partner_first``."""
    f = OnlineFeatures(config, partner is not None)
    events = [(int(t), 0 if partner_first else 1, i, True) for i, t in enumerate(partner["ts_ns"])] if partner is not None else []
    events += [(int(t), 1 if partner_first else 0, i, False) for i, t in enumerate(bars["ts_ns"])]
    events.sort()
    has_flow = "buy_volume" in bars
    rows = np.full((len(bars), len(feature_names(config))), np.nan)
    atr = np.full(len(bars), np.nan)
    for ts, _, i, is_partner in events:
        if is_partner:
            f.on_partner_bar(ts, float(partner["close"].iat[i]))
            continue
        b = bars.iloc[i]
        extra = (b["buy_volume"], b["sell_volume"]) if has_flow else ()
        row = f.on_bar(ts, b["open"], b["high"], b["low"], b["close"], b["volume"], *extra)
        if row is not None:
            assert row.dtype == np.float64 and np.isfinite(row).all()
            rows[i] = row
        atr[i] = f.atr
    return rows, atr


def assert_parity(bars: pd.DataFrame, partner: pd.DataFrame | None, config: FeatureConfig) -> None:
    off = offline_features(bars, partner, config)
    rows, atr = run_online(bars, partner, config)
    X = off[list(feature_names(config))].to_numpy()
    np.testing.assert_array_equal(np.isnan(X), np.isnan(rows))
    np.testing.assert_allclose(rows, X, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(atr, off["atr"].to_numpy(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ names


def test_names_follow_the_config_and_are_unique():
    names = feature_names(SMALL)
    assert names[:2] == ("ret_1", "ret_3")
    assert len(set(names)) == len(names)
    assert FEATURE_NAMES == feature_names(FeatureConfig())
    assert "spread_z_60" in FEATURE_NAMES and "rel_ret_15" in FEATURE_NAMES and "has_partner" in FEATURE_NAMES


def test_config_survives_json_as_the_registry_stores_it():
    data = json.loads(json.dumps(asdict(SMALL)))
    back = FeatureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    assert back == SMALL


def test_partners_pair_roots_with_a_different_root():
    assert PARTNERS["ES"] == "NQ" and PARTNERS["NQ"] == "ES" and PARTNERS["MES"] == "NQ" and PARTNERS["MYM"] == "ES"
    assert all(k != v for k, v in PARTNERS.items())


# ------------------------------------------------------------------------------------------ each feature


@pytest.fixture(scope="module")
def walk() -> pd.DataFrame:
    return random_bars(120, seed=1, gap_every=50)


@pytest.fixture(scope="module")
def walk_features(walk) -> pd.DataFrame:
    return offline_features(walk, None, SMALL)


def wilder(high, low, close, n):
    out = []
    for i in range(len(close)):
        tr = high[i] - low[i] if i == 0 else max(high[i], close[i - 1]) - min(low[i], close[i - 1])
        if i < n:
            out.append(tr if i == 0 else (out[-1] * i + tr) / (i + 1))
        else:
            out.append(out[-1] + (tr - out[-1]) / n)
    return np.array(out)


def test_returns_volatility_and_range(walk, walk_features):
    c, h, lo = walk["close"].to_numpy(), walk["high"].to_numpy(), walk["low"].to_numpy()
    for i in range(SMALL.warmup_bars - 1, len(walk)):
        row = walk_features.iloc[i]
        assert row["ret_3"] == pytest.approx(math.log(c[i] / c[i - 3]), abs=1e-15)
        r = [math.log(c[j] / c[j - 1]) for j in range(i - 3, i + 1)]
        assert row["rvol_4"] == pytest.approx(math.sqrt(sum(x * x for x in r) / 4), rel=1e-12)
        assert row["range_3"] == pytest.approx((max(h[i - 2:i + 1]) - min(lo[i - 2:i + 1])) / c[i], rel=1e-12)


def test_atr_is_wilders_and_scales_the_range_feature(walk, walk_features):
    h, lo, c = (walk[k].to_numpy() for k in ("high", "low", "close"))
    expected = wilder(h, lo, c, SMALL.atr_bars)
    atr = walk_features["atr"].to_numpy()
    assert np.isnan(atr[: SMALL.atr_bars - 1]).all()
    np.testing.assert_allclose(atr[SMALL.atr_bars - 1:], expected[SMALL.atr_bars - 1:], rtol=1e-12)
    i = 80
    assert walk_features["bar_range_atr"].iat[i] == pytest.approx((h[i] - lo[i]) / expected[i], rel=1e-12)


def test_vwap_restarts_after_a_session_gap(walk, walk_features):
    ts, h, lo, c, v = (walk[k].to_numpy() for k in ("ts_ns", "high", "low", "close", "volume"))
    atr = wilder(h, lo, c, SMALL.atr_bars)
    for i in (49, 50, 51, 99, 100, 119):  # a gap precedes bars 50 and 100
        start = i
        while start > 0 and ts[start] - ts[start - 1] <= 1800 * 10**9:
            start -= 1
        w = np.maximum(v[start:i + 1], 1.0)
        vwap = float(((h + lo + c)[start:i + 1] / 3 * w).sum() / w.sum())
        assert walk_features["vwap_dist_atr"].iat[i] == pytest.approx((c[i] - vwap) / atr[i], rel=1e-9, abs=1e-12)
    assert walk_features["vwap_dist_atr"].iat[50] == pytest.approx((c[50] - (h[50] + lo[50] + c[50]) / 3) / atr[50])


def test_flow_imbalance_uses_classified_volume_where_known_and_the_tick_rule_elsewhere():
    bars = random_bars(40, seed=2, flow=True)
    feats = offline_features(bars, None, SMALL)
    c, v = bars["close"].to_numpy(), bars["volume"].to_numpy()
    buy, sell = bars["buy_volume"].to_numpy(), bars["sell_volume"].to_numpy()
    known = np.isfinite(buy)
    assert known.any() and (~known).any()
    for i in range(SMALL.warmup_bars - 1, 40):
        num = den = 0.0
        for j in range(i - 3, i + 1):
            if known[j]:
                num, den = num + buy[j] - sell[j], den + buy[j] + sell[j]
            else:
                num, den = num + np.sign(c[j] - c[j - 1]) * v[j], den + v[j]
        assert feats["flow_imb_4"].iat[i] == pytest.approx(num / den if den else 0.0, abs=1e-15)


def test_volume_zscore_is_on_log_volume(walk, walk_features):
    lv = np.log1p(walk["volume"].to_numpy())
    for i in (30, 77, 119):
        window = lv[i - 4:i + 1]
        assert walk_features["volume_z_5"].iat[i] == pytest.approx((lv[i] - window.mean()) / window.std(ddof=1),
                                                                   rel=1e-12)


def test_a_flat_window_scores_zero_online_and_offline():
    bars = random_bars(30, seed=3)
    bars["volume"] = 7.0
    rows, _ = run_online(bars, None, SMALL)
    assert (rows[SMALL.warmup_bars - 1:, feature_names(SMALL).index("volume_z_5")] == 0).all()
    assert (offline_features(bars, None, SMALL)["volume_z_5"].dropna() == 0).all()


@pytest.mark.parametrize("local, minutes_after_open, phase", [
    ("2023-10-16 17:00", 0, "overnight"),      # CDT
    ("2023-10-17 05:00", 720, "overnight"),
    ("2023-10-17 08:30", 930, "overnight"),    # the bar ending 08:30 is the last overnight one
    ("2023-10-17 08:31", 931, "rth_open"),
    ("2023-10-17 09:30", 990, "rth_open"),
    ("2023-10-17 09:31", 991, "rth_mid"),
    ("2023-11-07 14:00", 1260, "rth_mid"),     # CST, after the switch on Nov 5
    ("2023-11-07 14:01", 1261, "rth_close"),
    ("2023-11-07 15:00", 1320, "rth_close"),
    ("2023-11-07 15:01", 1321, "overnight"),
])
def test_time_of_day_and_session_phase_in_chicago_time(local, minutes_after_open, phase):
    end = chicago_ns(local)
    n = SMALL.warmup_bars
    bars = random_bars(n, seed=4)
    bars["ts_ns"] = end - np.arange(n)[::-1] * MIN
    offline = offline_features(bars, None, SMALL)
    row = offline.iloc[-1]
    angle = 2 * math.pi * minutes_after_open / 1440
    assert row["tod_sin"] == pytest.approx(math.sin(angle), abs=1e-12)
    assert row["tod_cos"] == pytest.approx(math.cos(angle), abs=1e-12)
    assert [p for p in ("overnight", "rth_open", "rth_mid", "rth_close") if row[f"phase_{p}"] == 1.0] == [phase]
    online, _ = run_online(bars, None, SMALL)
    np.testing.assert_allclose(online[-1], row[list(feature_names(SMALL))].to_numpy(dtype=float), atol=1e-12)


# ------------------------------------------------------------------------------------------ cross features


def test_no_partner_means_zero_cross_features(walk_features):
    warm = walk_features.dropna()
    assert len(warm) > 0
    assert (warm[["has_partner", "rel_ret_2", "spread_z_4"]] == 0).all().all()


def test_cross_features_see_the_partner_bar_strictly_before():
    bars = random_bars(40, seed=5)
    partner = random_bars(40, seed=6, price=15000.0)
    partner["ts_ns"] = bars["ts_ns"]  # the same minutes: the same-stamped partner bar must be ignored
    feats = offline_features(bars, partner, SMALL)
    c, p = bars["close"].to_numpy(), partner["close"].to_numpy()
    for i in range(SMALL.warmup_bars - 1, 40):
        # bar i sees the partner's bar i - 1
        rel = math.log(c[i] / c[i - 2]) - math.log(p[i - 1] / p[i - 3])
        s = np.log(c[i - 3:i + 1] / p[i - 4:i])
        assert feats["has_partner"].iat[i] == 1.0
        assert feats["rel_ret_2"].iat[i] == pytest.approx(rel, abs=1e-15)
        assert feats["spread_z_4"].iat[i] == pytest.approx((s[-1] - s.mean()) / s.std(ddof=1), rel=1e-9)


def test_a_partner_that_starts_late_delays_the_first_row():
    bars = random_bars(60, seed=7)
    partner = random_bars(60, seed=8, price=15000.0).iloc[20:]
    feats = offline_features(bars, partner, SMALL)
    # partner bars from index 20 are seen from own bar 21; 3 of them for rel_ret_2, 4 spreads for spread_z_4
    first = int(np.flatnonzero(feats["ret_1"].notna().to_numpy())[0])
    assert first == 24
    assert_parity(bars, partner, SMALL)


def test_online_cross_features_do_not_depend_on_message_order():
    bars = random_bars(50, seed=9)
    partner = random_bars(50, seed=10, price=15000.0)
    partner["ts_ns"] = bars["ts_ns"]
    first, _ = run_online(bars, partner, SMALL, partner_first=True)
    after, _ = run_online(bars, partner, SMALL, partner_first=False)
    np.testing.assert_array_equal(first, after)


# ------------------------------------------------------------------------------------------ online == offline


def test_online_returns_none_until_warm_then_matches_offline(walk):
    rows, _ = run_online(walk, None, SMALL)
    assert np.isnan(rows[: SMALL.warmup_bars - 1]).all()
    assert np.isfinite(rows[SMALL.warmup_bars - 1:]).all()
    assert_parity(walk, None, SMALL)


def test_default_config_parity_with_flow_partner_and_sessions():
    bars = random_bars(400, seed=11, gap_every=137, flow=True)
    partner = random_bars(380, seed=12, price=15000.0, gap_every=90)
    partner["ts_ns"] = partner["ts_ns"] + 30 * 10**9  # stamps between the own bars'
    assert_parity(bars, partner, FeatureConfig())


def test_online_windows_do_not_drift_over_a_long_history():
    # a level of 1e6 with tiny moves, and a price ratio that trends far from where it started while
    # moving little within a window: sums of squares about a fixed point lose every digit here
    n = 20_000
    rng = np.random.default_rng(13)
    close = 1e6 * np.exp(np.cumsum(rng.normal(0, 1e-6, n)))
    ts = chicago_ns("2023-10-10 08:00") + np.arange(1, n + 1) * MIN
    bars = pd.DataFrame({"ts_ns": ts, "open": close, "high": close * (1 + 1e-7), "low": close * (1 - 1e-7),
                         "close": close, "volume": rng.integers(1e6, 1e6 + 10, n).astype(np.float64)})
    partner = bars.assign(close=bars["close"] * np.exp(np.linspace(0, 0.5, n) + rng.normal(0, 1e-6, n)))
    assert_parity(bars, partner, FeatureConfig())


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(min_value=1, max_value=80), flow=st.booleans(), with_partner=st.booleans(),
       gap=st.sampled_from([0, 7, 25]), lag_s=st.sampled_from([0, 30, -30]))
def test_property_online_equals_offline_on_random_walks(seed, n, flow, with_partner, gap, lag_s):
    bars = random_bars(n, seed=seed, gap_every=gap, flow=flow)
    partner = None
    if with_partner:
        partner = random_bars(n, seed=seed + 1, price=15000.0, gap_every=gap)
        partner["ts_ns"] = bars["ts_ns"] + lag_s * 10**9
    assert_parity(bars, partner, SMALL)


# ------------------------------------------------------------------------------------------ tick flow


def ticks(prices, volumes=None, bids=None, asks=None, ts=None) -> pd.DataFrame:
    n = len(prices)
    return pd.DataFrame({
        "ts_ns": np.asarray(ts if ts is not None else np.arange(n) * 10**9, dtype=np.int64),
        "price": np.asarray(prices, dtype=np.float64),
        "bid": np.asarray(bids if bids is not None else [np.nan] * n, dtype=np.float64),
        "ask": np.asarray(asks if asks is not None else [np.nan] * n, dtype=np.float64),
        "volume": np.asarray(volumes if volumes is not None else [1] * n, dtype=np.int64),
    })


def online_sides(frame: pd.DataFrame) -> list[int]:
    flow = TickFlow()
    return [flow.classify(p, b, a) for p, b, a in zip(frame["price"], frame["bid"], frame["ask"])]


def test_tick_rule_zero_ticks_carry_the_last_change_and_the_first_splits():
    frame = ticks([10, 10, 11, 11, 10.5, 10.5, 12], volumes=[2, 4, 1, 1, 3, 5, 1])
    assert online_sides(frame) == [0, 0, 1, 1, -1, -1, 1]
    buy, sell = classify_ticks(frame)
    np.testing.assert_array_equal(buy, [1, 2, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(sell, [1, 2, 0, 0, 3, 5, 0])


def test_quote_rule_where_a_two_sided_quote_exists():
    frame = ticks([100.0, 100.02, 100.01, 100.0, 100.01, 100.02, 100.02],
                  bids=[100.0, 100.0, 100.0, 100.0, 100.01, 100.0, np.nan],
                  asks=[100.01, 100.02, 100.02, 100.02, 100.01, 100.01, 100.03])
    # at/below bid: sell; at/above ask: buy; inside: tick rule (down from 100.02); locked
    # quote (bid == ask): tick rule (up); one-sided quote: tick rule (zero tick, last change up)
    assert online_sides(frame) == [-1, 1, -1, -1, 1, 1, 1]
    buy, sell = classify_ticks(frame)
    np.testing.assert_array_equal(np.sign(buy - sell), [-1, 1, -1, -1, 1, 1, 1])


def test_flow_bars_split_at_period_boundaries_like_minute_bars():
    t = [0, 30, 59_999_999_999 // 10**9, 60, 61, 185]
    frame = ticks([5, 6, 4, 7, 7, 3], volumes=[1, 2, 3, 4, 5, 6], ts=[s * 10**9 for s in t])
    frame.loc[2, "ts_ns"] = 60 * 10**9 - 1  # the last ns of the first minute
    bars = ticks_to_flow_bars(frame, 60)
    assert bars["ts_ns"].tolist() == [60 * 10**9, 120 * 10**9, 240 * 10**9]
    assert bars[["open", "high", "low", "close", "volume"]].values.tolist() == [
        [5, 6, 4, 4, 6], [7, 7, 7, 7, 9], [3, 3, 3, 3, 6]]
    np.testing.assert_array_equal(bars["buy_volume"] + bars["sell_volume"], bars["volume"])
    np.testing.assert_array_equal(bars["buy_volume"], [0.5 + 2, 4 + 5, 0])


def online_flow_bars(frame: pd.DataFrame, period_s: int = 60) -> pd.DataFrame:
    flow = TickFlow(period_s)
    out = [b for row in frame.itertuples(index=False)
           if (b := flow.on_tick(row.ts_ns, row.price, row.volume, row.bid, row.ask)) is not None]
    last = flow.flush()
    if last is not None:
        out.append(last)
    return pd.DataFrame(out)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(min_value=1, max_value=300), quoted=st.floats(min_value=0, max_value=1))
def test_property_tickflow_online_equals_vectorised(seed, n, quoted):
    rng = np.random.default_rng(seed)
    price = 100 + np.cumsum(rng.integers(-2, 3, n)) * 0.25
    half = rng.integers(0, 3, n) * 0.25
    has_quote = rng.uniform(0, 1, n) < quoted
    bid = np.where(has_quote, price - half + rng.integers(-1, 2, n) * 0.25, np.nan)
    ask = np.where(has_quote, price + half + rng.integers(-1, 2, n) * 0.25, np.nan)
    ts = np.cumsum(rng.integers(0, 40, n)) * 10**9
    frame = ticks(price, rng.integers(1, 20, n), bid, ask, ts)
    online = online_flow_bars(frame)
    offline = ticks_to_flow_bars(frame)
    pd.testing.assert_frame_equal(online, offline, check_dtype=False)
    buy, sell = classify_ticks(frame)
    np.testing.assert_array_equal(buy + sell, frame["volume"])


def test_empty_ticks_give_an_empty_bar_frame():
    bars = ticks_to_flow_bars(ticks([]))
    assert len(bars) == 0 and list(bars.columns) == ["ts_ns", "open", "high", "low", "close", "volume",
                                                     "buy_volume", "sell_volume"]
    assert TickFlow().flush() is None
