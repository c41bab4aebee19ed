"""The rule strategies (strategies/): momentum, mean reversion, spread arbitrage, the ML placeholder,
``safe_on_bar`` and the registry.

Strategies read a ``MarketView``; ``FakeMarket`` below is a small implementation of that interface
of ours: features come from a real ``FeatureEngine`` fed with the same bars, while flatness,
positions and the time to the close are whatever the test says. Every expected number (ATR, channel,
band, VWAP, efficiency, hedge ratio, spread z-score) is computed here independently, from the bars,
with the formulas the modules document.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge.core.config import StrategyConfig
from strategies.features import FeatureEngine, FeatureWindows
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import Exit, Signal, Strategy, safe_on_bar
from strategies.mean_reversion import MeanReversion
from strategies.ml_strategy import MLEnsembleStrategy
from strategies.momentum import Momentum
from strategies.registry import build_strategies
from strategies.spread import SpreadArbitrage, contract_ratio, hedge_ratio

NS = 1_000_000_000
T0 = 1_700_000_040 * NS  # a whole minute (UTC)
SPECS = {"ES": (0.25, 50.0), "NQ": (0.25, 20.0), "YM": (1.0, 5.0), "MES": (0.25, 5.0), "MYM": (1.0, 0.5)}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- the MarketView double


class FakeMarket:
    """A session of the given roots (ids 1, 2, ... in order) implementing strategies.base.MarketView."""

    def __init__(self, roots: tuple[str, ...], config: StrategyConfig) -> None:
        self.ids = {r: i for i, r in enumerate(roots, start=1)}
        self._roots = {i: r for r, i in self.ids.items()}
        self.engine = FeatureEngine(FeatureWindows(config.atr_bars, config.lookback_bars, config.band_bars,
                                                   config.er_bars, config.vol_bars))
        self.positions: dict[tuple[int, str], int] = {}
        self.busy: set[int] = set()  # not flat for a reason outside the strategy (another strategy, working order)
        self.minutes_left = 10_000.0

    def feed(self, bar: BarData) -> None:
        self.engine.on_bar(bar)

    def features(self, instrument_id):
        return self.engine.latest.get(instrument_id)

    def instrument_id(self, root):
        return self.ids.get(root)

    def root(self, instrument_id):
        return self._roots[instrument_id]

    def is_flat(self, instrument_id):
        return instrument_id not in self.busy and not any(
            q for (i, _), q in self.positions.items() if i == instrument_id)

    def position_of(self, instrument_id, strategy):
        return self.positions.get((instrument_id, strategy), 0)

    def minutes_to_close(self, instrument_id, ts_ns):
        return self.minutes_left

    def tick_size(self, instrument_id):
        return SPECS[self._roots[instrument_id]][0]

    def point_value(self, instrument_id):
        return SPECS[self._roots[instrument_id]][1]


def make_bar(iid: int, minute: int, o: float, h: float, low: float, c: float, volume: int = 100) -> BarData:
    ts_open = T0 + minute * 60 * NS
    return BarData(iid, 60, ts_open, ts_open + 60 * NS, o, h, low, c, volume, 10)


def bars_from_closes(iid: int, closes, wick: float = 0.25, volumes=None, first_minute: int = 0,
                     gaps: dict[int, int] | None = None) -> list[BarData]:
    """Bars opening at the previous close, with ``wick`` beyond the body on both sides.
    ``gaps``: {index: extra minutes inserted before that bar}."""
    out, prev, minute = [], None, first_minute
    for k, c in enumerate(closes):
        minute += (gaps or {}).get(k, 0)
        o = c if prev is None else prev
        v = 100 if volumes is None else int(volumes[k])
        out.append(make_bar(iid, minute, o, max(o, c) + wick, min(o, c) - wick, float(c), v))
        prev = float(c)
        minute += 1
    return out


# --------------------------------------------------------------------------- independent feature maths


def wilder_atr(bars: list[BarData], n: int) -> float:
    """Wilder's ATR: the first n true ranges averaged, then ATR = (ATR * (n - 1) + TR) / n."""
    trs, prev = [], None
    for b in bars:
        trs.append(b.high - b.low if prev is None else max(b.high, prev) - min(b.low, prev))
        prev = b.close
    assert len(trs) >= n
    atr = sum(trs[:n]) / n
    for tr in trs[n:]:
        atr = (atr * (n - 1) + tr) / n
    return atr


def band(bars: list[BarData], n: int) -> tuple[float, float, float]:
    closes = np.array([b.close for b in bars[-n:]])
    mean, sd = closes.mean(), closes.std(ddof=1)
    return float(mean), float(sd), float((closes[-1] - mean) / sd)


def session_vwap(bars: list[BarData], gap_s: float = 1800.0) -> float:
    start = 0
    for k in range(1, len(bars)):
        if bars[k].ts_close_ns - bars[k - 1].ts_close_ns > gap_s * NS:
            start = k
    s = bars[start:]
    w = np.array([max(b.volume, 1) for b in s], dtype=float)
    tp = np.array([(b.high + b.low + b.close) / 3 for b in s])
    return float((tp * w).sum() / w.sum())


def efficiency(bars: list[BarData], n: int) -> float:
    c = np.array([b.close for b in bars[-(n + 1):]])
    path = np.abs(np.diff(c)).sum()
    return float(abs(c[-1] - c[0]) / path) if path > 0 else 0.0


def assert_on_tick_near(price: float, exact: float, tick: float) -> None:
    """``price`` is ``exact`` rounded to the tick grid (ties either way)."""
    assert abs(price / tick - round(price / tick)) < 1e-9, f"{price} is not on the {tick} grid"
    assert abs(price - exact) <= tick / 2 + 1e-9, f"{price} is not {exact} rounded to {tick}"


def run(strategy: Strategy, market: FakeMarket, bars: list[BarData]):
    """Feed the bars to the features and the strategy in order; return the last bar's output."""
    out = None
    for b in bars:
        market.feed(b)
        out = strategy.on_bar(b, market)
    return out


# --------------------------------------------------------------------------- momentum


def flat_then_breakout(seed: int, side: Side, jump_ticks: int, n_flat: int = 40) -> list[BarData]:
    """A range of ``n_flat`` bars around 4300, then a close ``jump_ticks`` beyond the channel's edge."""
    rng = np.random.default_rng(seed)
    closes = 4300 + 0.25 * rng.integers(-6, 7, n_flat)
    bars, prev = [], float(closes[0])
    for k, c in enumerate(closes):
        c = float(c)
        hi = max(prev, c) + 0.25 * int(rng.integers(0, 4))
        lo = min(prev, c) - 0.25 * int(rng.integers(0, 4))
        bars.append(make_bar(1, k, prev, hi, lo, c))
        prev = c
    prior = bars[-20:]
    if side is Side.BUY:
        c = max(b.high for b in prior) + 0.25 * jump_ticks
        bars.append(make_bar(1, n_flat, prev, c + 0.5, min(prev, c) - 0.25, c))
    else:
        c = min(b.low for b in prior) - 0.25 * jump_ticks
        bars.append(make_bar(1, n_flat, prev, max(prev, c) + 0.25, c - 0.5, c))
    return bars


@FAST
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from([Side.BUY, Side.SELL]), jump=st.integers(1, 40))
def test_momentum_breakout_bracket_from_independent_atr(seed, side, jump):
    cfg = StrategyConfig()
    market = FakeMarket(("ES",), cfg)
    bars = flat_then_breakout(seed, side, jump)
    sig = run(Momentum(cfg), market, bars)

    close = bars[-1].close
    prior = bars[-1 - cfg.lookback_bars:-1]
    if side is Side.BUY:
        assert close > max(b.high for b in prior)
    else:
        assert close < min(b.low for b in prior)
    atr = wilder_atr(bars, cfg.atr_bars)

    assert isinstance(sig, Signal)
    assert sig.instrument_id == 1
    assert sig.side is side
    assert sig.entry_type is EntryType.MARKET and math.isnan(sig.entry_price)
    assert_on_tick_near(sig.stop_price, close - side.sign * cfg.momentum_stop_atr * atr, 0.25)
    assert_on_tick_near(sig.target_price, close + side.sign * cfg.momentum_target_atr * atr, 0.25)
    assert side.sign * (sig.target_price - close) > 0 > side.sign * (sig.stop_price - close)
    assert sig.win_probability == cfg.momentum_win_prior
    assert sig.time_limit_s == cfg.momentum_time_limit_min * 60
    assert sig.group == "" and sig.ratio == 1


def test_momentum_follows_its_config():
    cfg = StrategyConfig(momentum_stop_atr=0.7, momentum_target_atr=4.2, momentum_win_prior=0.41,
                         momentum_time_limit_min=33.0)
    market = FakeMarket(("ES",), cfg)
    bars = flat_then_breakout(7, Side.SELL, 8)
    sig = run(Momentum(cfg), market, bars)
    atr = wilder_atr(bars, cfg.atr_bars)
    close = bars[-1].close
    assert sig.side is Side.SELL
    assert_on_tick_near(sig.stop_price, close + 0.7 * atr, 0.25)
    assert_on_tick_near(sig.target_price, close - 4.2 * atr, 0.25)
    assert sig.win_probability == 0.41 and sig.time_limit_s == 33.0 * 60


def test_momentum_no_signal_inside_the_channel():
    cfg = StrategyConfig()
    market = FakeMarket(("ES",), cfg)
    bars = flat_then_breakout(3, Side.BUY, 4)[:-1]
    prior = bars[-1 - cfg.lookback_bars:-1]
    assert min(b.low for b in prior) <= bars[-1].close <= max(b.high for b in prior)
    strat = Momentum(cfg)
    outs = []
    for b in bars:
        market.feed(b)
        outs.append(strat.on_bar(b, market))
    assert market.features(1) is not None
    # only a close strictly outside the channel of the bars before it may trade
    for k, (b, o) in enumerate(zip(bars, outs)):
        if k >= 30:
            window = bars[k - cfg.lookback_bars:k]
            outside = b.close > max(x.high for x in window) or b.close < min(x.low for x in window)
            assert (o is not None) == outside


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
def test_momentum_not_when_a_position_or_order_is_open(side):
    cfg = StrategyConfig()
    bars = flat_then_breakout(11, side, 5)
    market = FakeMarket(("ES",), cfg)
    market.busy.add(1)
    assert run(Momentum(cfg), market, bars) is None
    market = FakeMarket(("ES",), cfg)  # control: the same bars while flat trade
    assert isinstance(run(Momentum(cfg), market, bars), Signal)


@pytest.mark.parametrize("minutes, trades", [(14.99, False), (0.0, False), (15.0, True), (600.0, True)])
def test_momentum_no_entry_near_the_close(minutes, trades):
    cfg = StrategyConfig()
    assert cfg.no_entry_before_close_min == 15
    market = FakeMarket(("ES",), cfg)
    market.minutes_left = minutes
    out = run(Momentum(cfg), market, flat_then_breakout(5, Side.BUY, 6))
    assert isinstance(out, Signal) is trades
    if not trades:
        assert out is None


def test_momentum_waits_for_warm_features():
    cfg = StrategyConfig()
    # 20 bars fill the channel but not the 30-bar band: the engine is not warm yet
    bars = flat_then_breakout(9, Side.BUY, 6, n_flat=22)
    market = FakeMarket(("ES",), cfg)
    assert run(Momentum(cfg), market, bars) is None
    assert market.features(1) is None
    bars = flat_then_breakout(9, Side.BUY, 6, n_flat=40)  # control: same kind of bars, warm
    assert isinstance(run(Momentum(cfg), FakeMarket(("ES",), cfg), bars), Signal)


def test_momentum_ignores_a_snapshot_of_an_older_bar():
    cfg = StrategyConfig()
    bars = flat_then_breakout(13, Side.BUY, 6)
    market = FakeMarket(("ES",), cfg)
    strat = Momentum(cfg)
    for b in bars[:-1]:
        market.feed(b)
        strat.on_bar(b, market)
    breakout = bars[-1]
    snap = market.features(1)
    assert snap is not None and snap.ts_ns == bars[-2].ts_close_ns
    assert strat.on_bar(breakout, market) is None  # features not yet updated with this bar
    market.feed(breakout)
    assert isinstance(strat.on_bar(breakout, market), Signal)


# --------------------------------------------------------------------------- mean reversion


def choppy_then_stretch(jump: float, n: int = 60, base: float = 4300.0) -> list[BarData]:
    """Closes alternating base / base + 1 (a ranging market), then a close ``jump`` from base + 0.5."""
    closes = [base + (k % 2) for k in range(n)] + [base + 0.5 + jump]
    return bars_from_closes(1, closes)


@pytest.mark.parametrize("side, jump", [(Side.SELL, 2.5), (Side.SELL, 4.0), (Side.BUY, -2.5), (Side.BUY, -4.0)])
def test_reversion_fades_a_stretch_to_the_band_mean(side, jump):
    cfg = StrategyConfig()
    bars = choppy_then_stretch(jump)
    close = bars[-1].close
    mean, _, z = band(bars, cfg.band_bars)
    atr = wilder_atr(bars, cfg.atr_bars)
    dist = (close - session_vwap(bars)) / atr
    # the construction: stretched on both measures, same side, ranging
    assert -side.sign * z >= cfg.reversion_entry_z
    assert -side.sign * dist >= cfg.reversion_min_vwap_atr
    assert efficiency(bars, cfg.er_bars) <= cfg.reversion_max_efficiency

    sig = run(MeanReversion(cfg), FakeMarket(("ES",), cfg), bars)
    assert isinstance(sig, Signal)
    assert sig.side is side
    assert sig.entry_type is EntryType.MARKET and math.isnan(sig.entry_price)
    assert_on_tick_near(sig.target_price, mean, 0.25)
    assert_on_tick_near(sig.stop_price, close - side.sign * cfg.reversion_stop_atr * atr, 0.25)
    assert side.sign * (sig.stop_price - close) < 0 < side.sign * (sig.target_price - close)
    assert sig.win_probability == cfg.reversion_win_prior
    assert sig.time_limit_s == cfg.reversion_time_limit_min * 60


def test_reversion_not_below_the_entry_z():
    cfg = StrategyConfig()
    bars = choppy_then_stretch(1.0)
    _, _, z = band(bars, cfg.band_bars)
    assert 0 < z < cfg.reversion_entry_z
    assert run(MeanReversion(cfg), FakeMarket(("ES",), cfg), bars) is None


def test_reversion_not_in_a_trending_market():
    cfg = StrategyConfig()
    closes = [4300 + 0.5 * k for k in range(60)]
    closes.append(closes[-1] + 4.0)
    bars = bars_from_closes(1, closes)
    _, _, z = band(bars, cfg.band_bars)
    dist = (bars[-1].close - session_vwap(bars)) / wilder_atr(bars, cfg.atr_bars)
    assert z >= cfg.reversion_entry_z and dist >= cfg.reversion_min_vwap_atr
    assert efficiency(bars, cfg.er_bars) > 0.9 > cfg.reversion_max_efficiency
    assert run(MeanReversion(cfg), FakeMarket(("ES",), cfg), bars) is None
    # control: the efficiency filter is what stops it
    loose = StrategyConfig(reversion_max_efficiency=1.0)
    sig = run(MeanReversion(loose), FakeMarket(("ES",), loose), bars)
    assert isinstance(sig, Signal) and sig.side is Side.SELL


@pytest.mark.parametrize("gap_minutes, trades", [(0, False), (45, True)])
def test_reversion_needs_z_and_vwap_on_the_same_side(gap_minutes, trades):
    """A heavy session at 4400, then a range at 4300 and a pop above its band: the pop is above the band
    mean but far below the session's VWAP, so no fade. After a halt (a new session) the VWAP restarts
    at 4300 and the same bars are a fade."""
    cfg = StrategyConfig()
    high = [4400 + (k % 2) for k in range(40)]
    low = [4300 + (k % 2) for k in range(45)] + [4304.0]
    volumes = [10_000] * 40 + [100] * 46
    bars = bars_from_closes(1, high + low, volumes=volumes, gaps={40: gap_minutes})
    _, _, z = band(bars, cfg.band_bars)
    atr = wilder_atr(bars, cfg.atr_bars)
    dist = (bars[-1].close - session_vwap(bars)) / atr
    assert z >= cfg.reversion_entry_z
    assert efficiency(bars, cfg.er_bars) <= cfg.reversion_max_efficiency
    if trades:
        assert dist >= cfg.reversion_min_vwap_atr
    else:
        assert dist <= -cfg.reversion_min_vwap_atr  # stretched, but on the other side of VWAP
    out = run(MeanReversion(cfg), FakeMarket(("ES",), cfg), bars)
    if trades:
        assert isinstance(out, Signal) and out.side is Side.SELL
    else:
        assert out is None


@pytest.mark.parametrize("step, trades", [(0.25, False), (0.5, True)])
def test_reversion_needs_a_target_at_least_a_tick_away(step, trades):
    """Closes: a third ``step`` below the last close, the rest at it (z ~ 0.7, allowed by entry_z 0.5).
    With step = one tick the band mean rounds onto the close (target 0 ticks away: no trade); with two
    ticks it rounds one tick below (a trade). z, VWAP side and efficiency are the same in both."""
    cfg = StrategyConfig(reversion_entry_z=0.5, reversion_min_vwap_atr=0.0)
    c = 4300.0
    closes = [c - step if k % 3 == 1 else c for k in range(60)] + [c]
    bars = bars_from_closes(1, closes, wick=1.0)
    bars[-1].low = c - 5.0  # VWAP below the close (same side as z)
    mean, _, z = band(bars, cfg.band_bars)
    dist = (c - session_vwap(bars)) / wilder_atr(bars, cfg.atr_bars)
    assert z >= cfg.reversion_entry_z and dist > 0
    assert efficiency(bars, cfg.er_bars) <= cfg.reversion_max_efficiency
    nearest_tick = round(mean / 0.25) * 0.25
    assert (c - nearest_tick >= 0.25) is trades
    out = run(MeanReversion(cfg), FakeMarket(("ES",), cfg), bars)
    if trades:
        assert isinstance(out, Signal) and out.side is Side.SELL and out.target_price == c - 0.25
    else:
        assert out is None


def test_reversion_not_when_busy_or_near_the_close():
    cfg = StrategyConfig()
    bars = choppy_then_stretch(3.0)
    m = FakeMarket(("ES",), cfg)
    m.busy.add(1)
    assert run(MeanReversion(cfg), m, bars) is None
    m = FakeMarket(("ES",), cfg)
    m.minutes_left = 5
    assert run(MeanReversion(cfg), m, bars) is None
    assert isinstance(run(MeanReversion(cfg), FakeMarket(("ES",), cfg), bars), Signal)


# --------------------------------------------------------------------------- spread: the maths


@settings(max_examples=150, deadline=None)
@given(data=st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4)), min_size=2, max_size=80))
def test_hedge_ratio_is_cov_over_var(data):
    da = [a for a, _ in data]
    db = [b for _, b in data]
    var_a, var_b = np.var(da, ddof=1), np.var(db, ddof=1)
    assume(var_b > 1e-6 * (1.0 + max(abs(b) for b in db)) ** 2)
    expected = np.cov(da, db)[0, 1] / var_b
    scale = math.sqrt(var_a / var_b) + abs(expected)  # |cov| / var <= sd_a / sd_b
    assert abs(hedge_ratio(da, db) - expected) <= 1e-9 * scale + 1e-12


def test_hedge_ratio_on_random_series():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        da, db = rng.normal(0, 300, n), rng.normal(0, 100, n) + 0.3 * rng.normal(0, 300, n)
        expected = np.cov(da, db)[0, 1] / np.var(db, ddof=1)
        assert hedge_ratio(list(da), list(db)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [0.25, 0.71, 1.0, 1.27, 3.6])
def test_hedge_ratio_recovers_a_known_beta(k):
    rng = np.random.default_rng(2)
    db = rng.normal(0, 150.0, 240)
    da = k * db + rng.normal(0, 1e-3, 240)
    assert hedge_ratio(list(da), list(db)) == pytest.approx(k, abs=1e-4)


def test_hedge_ratio_nan_when_b_does_not_move():
    assert math.isnan(hedge_ratio([1.0, -2.0, 3.0, 0.5], [5.0, 5.0, 5.0, 5.0]))
    assert math.isnan(hedge_ratio([1.0], [2.0]))
    assert math.isnan(hedge_ratio([1.0, 2.0, 3.0], [1.0, 2.0]))


def brute_force_error(h: float, max_ratio: int) -> float:
    """Distance from h to the nearest p/q with 1 <= q <= max_ratio, p >= 0."""
    best = math.inf
    for q in range(1, max_ratio + 1):
        for p in {math.floor(h * q), math.ceil(h * q)}:
            if p >= 0:
                best = min(best, abs(Fraction(p, q) - Fraction(h)))
    return float(best)


@settings(max_examples=300, deadline=None)
@given(h=st.floats(1e-6, 50.0), max_ratio=st.integers(1, 20))
def test_contract_ratio_is_the_nearest_small_fraction(h, max_ratio):
    n_a, n_b = contract_ratio(h, max_ratio)
    best = brute_force_error(h, max_ratio)
    if (n_a, n_b) == (0, 0):
        # only when no hedge at all (0 B contracts) is as near as any tradable ratio
        assert h <= best + 1e-12
        assert h <= 1 / (2 * max_ratio) + 1e-12
    else:
        assert 1 <= n_a <= max_ratio and n_b >= 1
        assert math.gcd(n_a, n_b) == 1
        assert abs(n_b / n_a - h) <= best + 1e-12


@pytest.mark.parametrize("h, max_ratio, expected", [
    (1.0, 3, (1, 1)), (0.5, 3, (2, 1)), (0.7, 3, (3, 2)), (1.27, 3, (3, 4)), (2.0, 1, (1, 2)),
    (0.714, 5, (4, 3)), (0.714, 7, (7, 5)),
])
def test_contract_ratio_known_cases(h, max_ratio, expected):
    assert contract_ratio(h, max_ratio) == expected


@pytest.mark.parametrize("h", [0.0, -0.5, -3.0, math.nan, math.inf, -math.inf])
def test_contract_ratio_refuses_non_positive_or_non_finite(h):
    assert contract_ratio(h, 3) == (0, 0)


# --------------------------------------------------------------------------- spread: the strategy


def spread_cfg(**kw) -> StrategyConfig:
    return StrategyConfig(**{"spread_pairs": "ES/NQ", "spread_window": 60, **kw})


def co_moving(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """B ~ NQ (a random walk near 15000), A ~ ES = 4300 + (B - 15000) / 3.5 + a small mean-reverting
    residual; both on the 0.25 grid."""
    rng = np.random.default_rng(seed)
    b = 15000 + np.cumsum(rng.normal(0, 6.0, n))
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = 0.6 * r[t - 1] + rng.normal(0, 0.4)
    a = 4300 + (b - 15000) / 3.5 + r
    return np.round(a * 4) / 4, np.round(b * 4) / 4


def spread_z(rows: list[tuple[float, float]], window: int, pv_a: float = 50.0, pv_b: float = 20.0):
    """(z, sd, h) from the last window + 1 joint closes, computed with numpy."""
    arr = np.array(rows[-(window + 1):], dtype=float)
    a, b = arr[:, 0], arr[:, 1]
    da, db = np.diff(a) * pv_a, np.diff(b) * pv_b
    h = np.cov(da, db)[0, 1] / np.var(db, ddof=1)
    s = a[1:] * pv_a - h * b[1:] * pv_b
    sd = s.std(ddof=1)
    return float((s[-1] - s.mean()) / sd), float(sd), float(h)


def quiet_co_moving(n: int, cfg: StrategyConfig, first_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``co_moving`` from the first seed whose |z| (computed here) stays below 0.8 * entry_z at every
    full window: a path on which the strategy owes no entry until the test pushes the residual."""
    for seed in range(first_seed, first_seed + 500):
        a, b = co_moving(seed, n)
        rows = list(zip(a, b))
        zs = [spread_z(rows[:k], cfg.spread_window)[0] for k in range(cfg.spread_window + 1, n + 1)]
        if max(abs(z) for z in zs) < 0.8 * cfg.spread_entry_z:
            return a, b
    raise AssertionError("no quiet path found")


class PairFeed:
    """Drives an ES/NQ session minute by minute; keeps the joint closes the test computes from."""

    def __init__(self, cfg: StrategyConfig, roots=("ES", "NQ")) -> None:
        self.cfg = cfg
        self.market = FakeMarket(roots, cfg)
        self.strategy = SpreadArbitrage(cfg)
        self.ia, self.ib = self.market.instrument_id("ES"), self.market.instrument_id("NQ")
        self.prev: dict[int, float] = {}
        self.rows: list[tuple[float, float]] = []

    def _bar(self, iid: int, minute: int, close: float) -> BarData:
        o = self.prev.get(iid, close)
        self.prev[iid] = close
        return make_bar(iid, minute, o, max(o, close) + 0.25, min(o, close) - 0.25, close)

    def step(self, minute: int, a: float | None, b: float | None, b_first: bool = False) -> list[list]:
        """Deliver the legs' bars of one minute (None: that leg has no bar); the outputs after each."""
        legs = [(self.ia, a), (self.ib, b)]
        if b_first:
            legs.reverse()
        outs = []
        for iid, close in legs:
            if close is None:
                continue
            bar = self._bar(iid, minute, float(close))
            self.market.feed(bar)
            outs.append(safe_on_bar(self.strategy, bar, self.market))
        if a is not None and b is not None:
            self.rows.append((float(a), float(b)))
        return outs

    def hold(self, n_a: int, n_b: int, a_sign: int) -> None:
        algo = self.strategy.algorithm_id
        self.market.positions[(self.ia, algo)] = a_sign * n_a
        self.market.positions[(self.ib, algo)] = -a_sign * n_b

    def flatten(self) -> None:
        self.market.positions.clear()


def check_entry(feed: PairFeed, out: list, z: float, sd: float, h: float) -> tuple[Signal, Signal]:
    cfg = feed.cfg
    assert len(out) == 2 and all(isinstance(o, Signal) for o in out)
    by_leg = {o.instrument_id: o for o in out}
    sa, sb = by_leg[feed.ia], by_leg[feed.ib]
    assert sa.group and sa.group == sb.group
    assert sa.side is (Side.SELL if z > 0 else Side.BUY)
    assert sb.side is (Side.BUY if z > 0 else Side.SELL)
    n_a, n_b = contract_ratio(h, cfg.spread_max_ratio)
    assert n_a >= 1
    assert (sa.ratio, sb.ratio) == (n_a, n_b)
    for s in (sa, sb):
        assert s.entry_type is EntryType.MARKET and math.isnan(s.entry_price)
        assert s.unit_win == pytest.approx((abs(z) - cfg.spread_exit_z) * sd * n_a, rel=1e-6)
        assert s.unit_loss == pytest.approx(cfg.spread_stop_z * sd * n_a, rel=1e-6)
        assert s.win_probability == cfg.spread_win_prior
        assert s.time_limit_s == cfg.spread_time_limit_min * 60
        close = feed.prev[s.instrument_id]
        assert s.side.sign * (s.stop_price - close) < 0 < s.side.sign * (s.target_price - close)
    return sa, sb


def test_spread_waits_for_both_legs_and_a_full_window_then_enters():
    """B has no bar in minutes 10..14, so the 61st joint minute is minute 65. A persistent push of A from
    minute 64 makes |z| large at 64 already, but the window is full only at 65: the first entry."""
    cfg = spread_cfg()
    n = 66
    a, b = co_moving(5, n)
    a[64:] += 4.0  # ES rich by 4 points (200 $ a contract)
    feed = PairFeed(cfg)
    all_outs = []
    for m in range(n):
        missing_b = 10 <= m < 15
        outs = feed.step(m, a[m], None if missing_b else b[m], b_first=m % 2 == 1)
        all_outs.append(outs)
        if m < 65:
            assert all(o == [] for o in outs), f"output at minute {m}: {outs}"
            if m == 64:
                assert len(feed.rows) == cfg.spread_window
                z_part, _, _ = spread_z(feed.rows, cfg.spread_window - 1)
                assert z_part >= cfg.spread_entry_z  # it would have traded with a window this short
    assert len(feed.rows) == cfg.spread_window + 1
    last = all_outs[-1]
    assert last[0] == []  # the first leg of minute 65 alone does nothing
    z, sd, h = spread_z(feed.rows, cfg.spread_window)
    assert z >= cfg.spread_entry_z
    check_entry(feed, last[1], z, sd, h)


@pytest.mark.parametrize("push", [5.0, -5.0])
def test_spread_entry_sides_follow_the_sign_of_z(push):
    cfg = spread_cfg()
    n = 80
    a, b = co_moving(11, n)
    a[-1] += push
    feed = PairFeed(cfg)
    for m in range(n - 1):
        feed.step(m, a[m], b[m])
    out = feed.step(n - 1, a[-1], b[-1])[-1]
    z, sd, h = spread_z(feed.rows, cfg.spread_window)
    assert abs(z) >= cfg.spread_entry_z and (z > 0) == (push > 0)
    sa, _ = check_entry(feed, out, z, sd, h)
    assert sa.side is (Side.SELL if push > 0 else Side.BUY)


def test_spread_matches_an_independent_oracle_along_a_long_path():
    """Hundreds of minutes with shocks to the residual: at every minute the strategy's output is what the
    rules say, computed here from the closes: an entry at |z| >= entry_z when flat, an exit of both legs
    when held and |z| <= exit_z or |z| >= |z at entry| + stop_z, else nothing. Fills are simulated:
    an entry makes the test report the position, an exit makes it flat again."""
    cfg = spread_cfg()
    n = 700
    a, b = co_moving(21, n)
    rng = np.random.default_rng(22)
    shocks = np.zeros(n)
    for t in rng.choice(np.arange(80, n), 25, replace=False):
        shocks[t:] += rng.choice([-1, 1]) * rng.uniform(1.5, 6.0)
        shocks[t + int(rng.integers(2, 30)):] -= shocks[t] - shocks[t - 1]
    a = np.round((a + shocks) * 4) / 4
    feed = PairFeed(cfg)
    held, entry_abs = False, math.nan
    counts = {"entry": 0, "revert": 0, "stop": 0, "hold": 0}
    for m in range(n):
        outs = feed.step(m, a[m], b[m])
        assert outs[0] == []
        out = outs[1]
        if len(feed.rows) <= cfg.spread_window:
            assert out == []
            continue
        z, sd, h = spread_z(feed.rows, cfg.spread_window)
        if held:
            if abs(z) <= cfg.spread_exit_z or abs(z) >= entry_abs + cfg.spread_stop_z:
                counts["revert" if abs(z) <= cfg.spread_exit_z else "stop"] += 1
                assert sorted(o.instrument_id for o in out) == [feed.ia, feed.ib], (m, z, out)
                assert all(isinstance(o, Exit) for o in out)
                held = False
                feed.flatten()
            else:
                counts["hold"] += 1
                assert out == [], (m, z, entry_abs, out)
        elif abs(z) >= cfg.spread_entry_z:
            counts["entry"] += 1
            sa, sb = check_entry(feed, out, z, sd, h)
            held, entry_abs = True, abs(z)
            feed.hold(sa.ratio, sb.ratio, sa.side.sign)
        else:
            assert out == [], (m, z, out)
    # the path exercised every branch
    assert counts["entry"] >= 5 and counts["revert"] >= 3 and counts["hold"] >= 5, counts


def _entered_feed(cfg: StrategyConfig, n: int = 90, push: float = 5.0):
    a, b = quiet_co_moving(n, cfg)
    a[-1] += push
    feed = PairFeed(cfg)
    for m in range(n - 1):
        assert feed.step(m, a[m], b[m])[-1] == []
    out = feed.step(n - 1, a[-1], b[-1])[-1]
    z, sd, h = spread_z(feed.rows, cfg.spread_window)
    sa, sb = check_entry(feed, out, z, sd, h)
    feed.hold(sa.ratio, sb.ratio, sa.side.sign)
    return feed, a, b, abs(z)


def test_spread_exits_both_legs_when_it_reverts():
    cfg = spread_cfg()
    feed, a, b, entry_abs = _entered_feed(cfg)
    m = len(a)
    # the next minutes: the residual gone; hold while |z| > exit_z, exit both legs once it is below
    base_a, base_b = a[-2], b[-2]
    for k in range(40):
        out = feed.step(m + k, base_a, base_b)[-1]
        z, _, _ = spread_z(feed.rows, cfg.spread_window)
        assert abs(z) < entry_abs + cfg.spread_stop_z
        if abs(z) <= cfg.spread_exit_z:
            assert len(out) == 2 and all(isinstance(o, Exit) for o in out)
            assert {o.instrument_id for o in out} == {feed.ia, feed.ib}
            return
        assert out == []
    pytest.fail("the constructed spread never reverted")


def test_spread_stops_out_relative_to_the_entry_z():
    """Entered at |z| ~ 3: a |z| past entry_z + stop_z (4) but short of 3 + stop_z holds; past it, both
    legs exit. The prices are chosen here from the independent z."""
    cfg = spread_cfg()
    n = 90
    a, b = quiet_co_moving(n, cfg)

    def z_if(rows, a_close, b_close):
        return spread_z(rows + [(a_close, b_close)], cfg.spread_window)[0]

    rows = [(float(x), float(y)) for x, y in zip(a[:-1], b[:-1])]
    push = next(p for p in np.arange(0.25, 20, 0.25) if z_if(rows, a[-1] + p, b[-1]) >= 2.8)
    feed, a2, b2, entry_abs = _entered_feed(cfg, n=n, push=float(push))
    assert cfg.spread_entry_z < entry_abs < cfg.spread_entry_z + 1.5
    m, last_a, last_b = n, a2[-1], b2[-1]
    between = [x for x in np.arange(0.25, 60, 0.25)
               if cfg.spread_entry_z + cfg.spread_stop_z + 0.05 < z_if(feed.rows, last_a + x, last_b)
               < entry_abs + cfg.spread_stop_z - 0.05]
    assert between, "no price puts |z| between the config's and the trade's stop"
    out = feed.step(m, last_a + between[0], last_b)[-1]
    assert out == []  # beyond entry_z + stop_z, not beyond |z at entry| + stop_z: still held
    past = next(x for x in np.arange(0.25, 200, 0.25)
                if z_if(feed.rows, last_a + between[0] + x, last_b) >= entry_abs + cfg.spread_stop_z + 0.05)
    out = feed.step(m + 1, last_a + between[0] + past, last_b)[-1]
    assert len(out) == 2 and all(isinstance(o, Exit) for o in out)
    assert {o.instrument_id for o in out} == {feed.ia, feed.ib}


def test_spread_no_entry_when_a_leg_is_not_flat_or_near_the_close():
    cfg = spread_cfg()
    n = 90
    a, b = quiet_co_moving(n, cfg)
    a[-1] += 5.0
    for setup in ("busy_a", "busy_b", "close"):
        feed = PairFeed(cfg)
        for m in range(n):
            if m == n - 1:
                if setup == "busy_a":
                    feed.market.busy.add(feed.ia)
                elif setup == "busy_b":
                    feed.market.busy.add(feed.ib)
                else:
                    feed.market.minutes_left = 3.0
            assert feed.step(m, a[m], b[m])[-1] == [], setup
        z, _, _ = spread_z(feed.rows, cfg.spread_window)
        assert z >= cfg.spread_entry_z
    # control: the same path trades when both legs are flat and the close is far
    _entered_feed(cfg, n=90, push=5.0)


def test_spread_ignores_a_pair_whose_root_is_missing():
    cfg = spread_cfg(spread_pairs="ES/YM, ES/NQ ,MES/MYM")
    n = 90
    a, b = quiet_co_moving(n, cfg)
    a[-1] += 5.0
    feed = PairFeed(cfg)  # a session of ES and NQ only
    for m in range(n - 1):
        assert feed.step(m, a[m], b[m])[-1] == []
    out = feed.step(n - 1, a[-1], b[-1])[-1]
    z, sd, h = spread_z(feed.rows, cfg.spread_window)
    sa, sb = check_entry(feed, out, z, sd, h)
    assert "ES/NQ" in sa.group


def test_spread_session_without_the_other_leg_never_trades():
    cfg = spread_cfg()
    feed = PairFeed(cfg, roots=("ES",))
    a, _ = co_moving(3, 120)
    a[-5:] += 20.0
    for m in range(120):
        assert feed.step(m, a[m], None) == [[]]


def test_spread_pairs_sharing_a_leg_do_not_exit_each_others_trades():
    cfg = spread_cfg(spread_pairs="ES/NQ,ES/YM")
    market = FakeMarket(("ES", "NQ", "YM"), cfg)
    strat = SpreadArbitrage(cfg)
    ies, inq, iym = (market.instrument_id(r) for r in ("ES", "NQ", "YM"))
    n = 100
    rng = np.random.default_rng(0)
    common = np.cumsum(rng.normal(0, 1.7, n))

    def residual(sd):
        r = np.zeros(n)
        for t in range(1, n):
            r[t] = 0.6 * r[t - 1] + rng.normal(0, sd)
        return r

    es = np.round((4300 + common + residual(0.3)) * 4) / 4
    nq = np.round((15000 + 3.5 * common + residual(1.0)) * 4) / 4
    ym = np.round(34000 + 7.9 * common + residual(2.0))
    push_at = 80
    nq[push_at:] -= 15.0  # NQ cheap against ES from minute 80: the ES/NQ spread is rich (z > 0)
    prev: dict[int, float] = {}
    rows_nq, rows_ym = [], []
    held, entry_abs, exercised = False, math.nan, 0
    for m in range(n):
        outs = []
        for iid, series in ((ies, es), (inq, nq), (iym, ym)):
            c = float(series[m])
            o = prev.get(iid, c)
            prev[iid] = c
            bar = make_bar(iid, m, o, max(o, c) + 0.25, min(o, c) - 0.25, c)
            market.feed(bar)
            outs.extend(safe_on_bar(strat, bar, market))
        rows_nq.append((es[m], nq[m]))
        rows_ym.append((es[m], ym[m]))
        if m < push_at:
            continue
        z_nq = spread_z(rows_nq, cfg.spread_window, 50.0, 20.0)[0]
        z_ym = spread_z(rows_ym, cfg.spread_window, 50.0, 5.0)[0]
        if m == push_at:
            entry = [o for o in outs if isinstance(o, Signal) and "ES/NQ" in o.group]
            assert z_nq >= cfg.spread_entry_z and len(entry) == 2
            for sig in entry:  # filled: the strategy now holds the ES/NQ spread (and nothing on YM)
                market.positions[(sig.instrument_id, strat.algorithm_id)] = sig.side.sign * sig.ratio
            held, entry_abs = True, abs(z_nq)
            continue
        if cfg.spread_exit_z < abs(z_nq) < entry_abs + cfg.spread_stop_z:
            # ES/NQ is to be held; the ES/YM pair holds nothing. No exit is owed to anyone.
            exercised += abs(z_ym) <= cfg.spread_exit_z
            assert [o for o in outs if isinstance(o, Exit)] == [], (m, z_nq, z_ym, outs)
        else:
            break
    assert held and exercised >= 1


# --------------------------------------------------------------------------- ML placeholder


def test_ml_without_a_model_never_trades(caplog):
    cfg = StrategyConfig()
    assert cfg.ml_model == ""
    strat = MLEnsembleStrategy(cfg)
    assert strat.status.startswith("no model")
    market = FakeMarket(("ES",), cfg)
    bars = flat_then_breakout(1, Side.BUY, 10) + flat_then_breakout(2, Side.SELL, 10)
    with caplog.at_level(logging.WARNING, logger="nt8bridge.strategy.ml"):
        for b in bars:
            market.feed(b)
            assert strat.on_bar(b, market) is None
            assert safe_on_bar(strat, b, market) == []
    assert strat.status.startswith("no model")
    assert len([r for r in caplog.records if r.name == "nt8bridge.strategy.ml"]) == 1  # told once


# --------------------------------------------------------------------------- safe_on_bar


class _Scripted(Strategy):
    name = "scripted"

    def __init__(self, result) -> None:
        self.result = result

    def on_bar(self, bar, market):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def test_safe_on_bar_turns_an_exception_into_no_trade(caplog):
    bar = make_bar(7, 0, 1.0, 2.0, 0.5, 1.5)
    market = FakeMarket(("ES",), StrategyConfig())
    with caplog.at_level(logging.ERROR, logger="nt8bridge.strategy"):
        assert safe_on_bar(_Scripted(ZeroDivisionError("boom")), bar, market) == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "scripted@" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ZeroDivisionError


def test_safe_on_bar_normalises_outputs():
    bar = make_bar(1, 0, 1.0, 2.0, 0.5, 1.5)
    market = FakeMarket(("ES",), StrategyConfig())
    sig = Signal(1, Side.BUY, EntryType.MARKET, math.nan, 1.0, 2.0, 0.5, "x")
    ex = Exit(1, "y")
    assert safe_on_bar(_Scripted(sig), bar, market) == [sig]
    assert safe_on_bar(_Scripted(ex), bar, market) == [ex]
    assert safe_on_bar(_Scripted(None), bar, market) == []
    assert safe_on_bar(_Scripted([]), bar, market) == []
    assert safe_on_bar(_Scripted((sig, ex)), bar, market) == [sig, ex]


# --------------------------------------------------------------------------- registry


def test_registry_builds_fresh_named_instances():
    cfg = StrategyConfig(names="momentum,reversion,spread,ml")
    first, second = build_strategies(cfg), build_strategies(cfg)
    assert [s.name for s in first] == ["momentum", "reversion", "spread", "ml"]
    assert [type(s) for s in first] == [Momentum, MeanReversion, SpreadArbitrage, MLEnsembleStrategy]
    assert all(x is not y for x, y in zip(first, second))
    assert len({id(s) for s in first + second}) == 8
    assert [s.algorithm_id for s in first] == [f"{s.name}@{s.version}" for s in first]
    assert {s.style for s in first} == {"trend", "reversion", "spread", "ml"}


@pytest.mark.parametrize("names", ["none", " None ", ""])
def test_registry_none_builds_nothing(names):
    assert build_strategies(StrategyConfig(names=names)) == []


def test_registry_spread_instances_do_not_share_state():
    """A spread strategy keeps its window per instance: one that has seen 90 minutes trades a push that a
    fresh instance from another build_strategies call, seeing only that minute, cannot (empty window)."""
    cfg = StrategyConfig(names="spread", spread_pairs="ES/NQ", spread_window=60)
    old, fresh = build_strategies(cfg)[0], build_strategies(cfg)[0]
    n = 90
    a, b = quiet_co_moving(n, cfg)
    a[-1] += 5.0
    feed = PairFeed(cfg)
    feed.strategy = old
    for m in range(n - 1):
        feed.step(m, a[m], b[m])
    feed.strategy = fresh
    assert feed.step(n - 1, a[-1], b[-1])[-1] == []
    feed.strategy = old
    feed.rows.pop()
    feed.prev.clear()
    assert len(feed.step(n - 1, a[-1], b[-1])[-1]) == 2


def test_spread_closes_the_unhedged_leg_when_the_other_leg_was_closed_by_its_protective_order():
    """Regression (ES/NQ, 2023-11-02 in the spread backtest of docs/strategies.md): the NQ leg's protective
    stop filled and the ES leg stayed open, unhedged, for 16 minutes until the spread's z-score exit. Once
    both legs have filled, a leg gone flat on its own means the spread no longer exists: the other leg is
    closed."""
    cfg = spread_cfg()
    feed, a, b, entry_abs = _entered_feed(cfg)
    m, algo = len(a), feed.strategy.algorithm_id
    assert feed.step(m, a[-1], b[-1])[-1] == []              # both legs held, |z| between exit and stop
    feed.market.positions[(feed.ib, algo)] = 0               # NQ's protective stop filled
    out = feed.step(m + 1, a[-1], b[-1])[-1]
    assert [type(o) for o in out] == [Exit] and out[0].instrument_id == feed.ia
    assert "unhedged" in out[0].rationale and "NQ" in out[0].rationale


def test_spread_does_not_close_a_leg_whose_partner_has_not_filled_yet():
    """One leg filled and the other still working is the pipeline's leg-risk case (portfolio.leg_timeout_s),
    not a lost leg: the strategy owes nothing."""
    cfg = spread_cfg()
    n = 90
    a, b = quiet_co_moving(n, cfg)
    a[-1] += 5.0
    feed = PairFeed(cfg)
    for m in range(n - 1):
        feed.step(m, a[m], b[m])
    out = feed.step(n - 1, a[-1], b[-1])[-1]
    z, sd, h = spread_z(feed.rows, cfg.spread_window)
    sa, sb = check_entry(feed, out, z, sd, h)
    feed.market.positions[(feed.ia, feed.strategy.algorithm_id)] = sa.side.sign * sa.ratio   # ES filled, NQ not yet
    feed.market.busy.add(feed.ib)                                                             # NQ entry working
    assert feed.step(n, a[-1], b[-1])[-1] == []
