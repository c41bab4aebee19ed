"""The ML feature set: one definition, evaluated online (per bar, O(1)) and offline (vectorised).

Every feature is scale-free, so one model can pool ES, NQ and the micros:

- ``ret_{h}``: log return over ``h`` bars, for each of ``return_horizons``;
- ``rvol_{w}``: realized volatility, the root mean square of the last ``w`` one-bar log returns;
- ``range_{w}``: (highest high - lowest low) of the last ``w`` bars, this one included, over the close;
- ``bar_range_atr``: this bar's high - low in ATRs;
- ``vwap_dist_atr``: the close's distance from the session VWAP (typical price, volume-weighted, a
  bar with no volume counting once) in ATRs; a session starts after a gap of more than
  ``session_gap_s`` between bars, as in ``strategies.features``;
- ``flow_imb_{w}``: order-flow imbalance over ``w`` bars, sum(buy - sell) / sum(buy + sell), with
  each bar's ``buy_volume``/``sell_volume`` where known and the bar tick rule otherwise
  (sign(close - previous close) * volume against volume);
- ``volume_z_{w}``: z-score of log(1 + volume) against the last ``w`` bars (volume is heavy-tailed;
  on the log scale one spike does not flatten the z-scores of the following ``w`` bars);
- ``tod_sin``, ``tod_cos``: time of day as an angle, 0 at the 17:00 Chicago open of the CME day;
- ``phase_overnight``, ``phase_rth_open``, ``phase_rth_mid``, ``phase_rth_close``: one-hot session
  phase of the bar's end in Chicago time: (08:30, 09:30] open, (09:30, 14:00] mid, (14:00, 15:00]
  close, otherwise overnight;
- ``has_partner``, ``rel_ret_{h}``, ``spread_z_{w}``: the cross-instrument features against the
  root's partner (``PARTNERS``): the flag, the own ``h``-bar return minus the partner's ``h``-bar
  return, and the z-score of log(close / partner close) against its last ``w`` values. Without a
  partner all three are 0.

Cross alignment, the same online and offline and independent of message order: a bar stamped
``ts`` sees the partner's latest bar stamped strictly before ``ts`` (bars are stamped at their end,
so the partner bar of the same minute is never used, whichever of the two arrives first).

Parity. ``OnlineFeatures`` keeps running sums over deques (O(1) per bar); ``offline_features``
recomputes every window from scratch with numpy. Running sums drift: each add/subtract rounds, and
a window's sum of squares can cancel badly. The online windows therefore (a) sum values *shifted*
by a recent mean, so the variance needs no difference of large numbers, and (b) recompute their
sums exactly (``math.fsum``) every ``w`` updates, which costs O(1) amortised and bounds the drift to
``w`` roundings whatever the length of the history. The session VWAP sums are sequential on both
sides (``np.cumsum`` adds in order, as the online loop does) and restart each session, so they
agree bit for bit. The Wilder ATR is a contractive recursion, so its rounding differences do not
grow. z-scores are computed from deviations (from the shift online, from the scored value
offline), never from a rounded mean, because a z-score's rounding error is the level's rounding
divided by the deviation: for ``spread_z`` (log MYM/ES ~ 2, deviation ~ 5e-5) one ulp of the level
is already 1e-11. Measured on the real minute files (``tests/integration/test_ml_feature_parity.py``)
the two evaluations agree within 7e-12, all of it in ``spread_z``, and that remainder is numpy's
vectorised ``log`` differing from ``math.log`` by one ulp (the online value matches an exact rational
computation to 4e-16).

``TickFlow`` classifies ticks into buy and sell volume per bar (quote rule where a two-sided quote
exists, tick rule otherwise); ``classify_ticks`` and ``ticks_to_flow_bars`` are its vectorised twin.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "PARTNERS",
    "FeatureConfig",
    "FlowBar",
    "OnlineFeatures",
    "TickFlow",
    "classify_ticks",
    "feature_names",
    "offline_features",
    "ticks_to_flow_bars",
]

# Changes whenever a feature's definition changes (names alone would not show a new formula).
FEATURE_SET_VERSION = "mlf-1"

# Each root's partner for the cross-instrument features (equity index futures move together).
PARTNERS: dict[str, str] = {
    "ES": "NQ", "NQ": "ES", "YM": "ES", "RTY": "ES",
    "MES": "NQ", "MNQ": "ES", "MYM": "ES", "M2K": "ES",
}

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_MIN_NS = 60 * _NS
# Time-zone offsets are cached per quarter hour of UTC: every zone's transitions fall on one.
_TZ_BUCKET_NS = 15 * _MIN_NS
_PHASES = ("overnight", "rth_open", "rth_mid", "rth_close")
# A z-score's deviation is treated as zero below this share of the mean's size: a constant window's
# computed deviation is rounding noise, and dividing by it would give a meaningless number.
_FLAT_STD = 1e-9


@dataclass(frozen=True)
class FeatureConfig:
    """Windows of the feature set (bars unless stated); stored in a model's metadata as JSON."""

    return_horizons: tuple[int, ...] = (1, 5, 15, 60)
    rvol_bars: int = 30
    range_bars: int = 30
    volume_bars: int = 60
    flow_bars: int = 30
    atr_bars: int = 14
    rel_bars: int = 15
    spread_bars: int = 60
    session_gap_s: float = 1800.0
    tz: str = "America/Chicago"
    day_start_min: int = 17 * 60
    # Session phase boundaries in minutes after local midnight: RTH open, open->mid, mid->close, RTH end.
    phase_bounds_min: tuple[int, int, int, int] = (510, 570, 840, 900)

    @property
    def warmup_bars(self) -> int:
        """Own bars needed before the first row (the partner may need more of its own)."""
        return max(max(self.return_horizons) + 1, self.rvol_bars + 1, self.range_bars, self.volume_bars,
                   self.flow_bars, self.atr_bars, self.spread_bars, self.rel_bars + 1)


def feature_names(config: FeatureConfig | None = None) -> tuple[str, ...]:
    """The feature names in row order.

    Parameters
    ----------
    config : FeatureConfig, optional
        Windows (part of some names); the default config when omitted.

    Returns
    -------
    tuple of str
    """
    c = config or FeatureConfig()
    return (
        *(f"ret_{h}" for h in c.return_horizons),
        f"rvol_{c.rvol_bars}",
        f"range_{c.range_bars}",
        "bar_range_atr",
        "vwap_dist_atr",
        f"flow_imb_{c.flow_bars}",
        f"volume_z_{c.volume_bars}",
        "tod_sin",
        "tod_cos",
        *(f"phase_{p}" for p in _PHASES),
        "has_partner",
        f"rel_ret_{c.rel_bars}",
        f"spread_z_{c.spread_bars}",
    )


FEATURE_NAMES = feature_names()


# ============================================================================ online: window state


class _RollingSum:
    """Sum of the last ``n`` values; recomputed exactly every ``n`` pushes so rounding cannot drift."""

    __slots__ = ("n", "values", "total", "since")

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: deque[float] = deque()
        self.total = 0.0
        self.since = 0

    def push(self, x: float) -> None:
        if len(self.values) == self.n:
            self.total -= self.values.popleft()
        self.values.append(x)
        self.total += x
        self.since += 1
        if self.since >= self.n:
            self.total = math.fsum(self.values)
            self.since = 0


class _RollingMoments:
    """Mean and sample deviation of the last ``n`` values, from sums of values shifted by a recent
    mean (no cancellation between large squares), recomputed exactly every ``n`` pushes."""

    __slots__ = ("n", "values", "shift", "s1", "s2", "since")

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: deque[float] = deque()
        self.shift = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.since = 0

    def push(self, x: float) -> None:
        if not self.values:
            self.shift = x
        if len(self.values) == self.n:
            d = self.values.popleft() - self.shift
            self.s1 -= d
            self.s2 -= d * d
        self.values.append(x)
        d = x - self.shift
        self.s1 += d
        self.s2 += d * d
        self.since += 1
        if self.since >= self.n:
            self._exact()

    def _exact(self) -> None:
        self.shift = math.fsum(self.values) / len(self.values)
        deviations = [v - self.shift for v in self.values]
        self.s1 = math.fsum(deviations)
        self.s2 = math.fsum(d * d for d in deviations)
        self.since = 0

    @property
    def full(self) -> bool:
        return len(self.values) == self.n

    def zscore(self, x: float) -> float:
        """z-score of ``x`` against the window (0 for a flat window)."""
        n = self.n
        mean_dev = self.s1 / n
        std = math.sqrt(max(self.s2 - self.s1 * mean_dev, 0.0) / (n - 1))
        if not std > _FLAT_STD * max(abs(self.shift + mean_dev), 1.0):
            return 0.0
        # x - mean as (x - shift) - mean deviation: the mean itself is never rounded to a float, whose
        # last bit, divided by a deviation far smaller than the level, would swamp the z-score
        return ((x - self.shift) - mean_dev) / std


class _RollingExtreme:
    """Maximum (``sign`` 1) or minimum (``sign`` -1) of the last ``n`` values by a monotonic deque."""

    __slots__ = ("n", "sign", "i", "items")

    def __init__(self, n: int, sign: float) -> None:
        self.n = n
        self.sign = sign
        self.i = 0
        self.items: deque[tuple[int, float]] = deque()

    def push(self, x: float) -> None:
        key = self.sign * x
        while self.items and self.sign * self.items[-1][1] <= key:
            self.items.pop()
        self.items.append((self.i, x))
        if self.items[0][0] <= self.i - self.n:
            self.items.popleft()
        self.i += 1

    @property
    def value(self) -> float:
        return self.items[0][1]


class _WilderATR:
    """Wilder's ATR: the mean true range of the first ``n`` bars, then ``atr += (tr - atr) / n``."""

    __slots__ = ("n", "count", "tr_sum", "value")

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.tr_sum = 0.0
        self.value = math.nan

    def push(self, tr: float) -> None:
        if self.count < self.n:
            self.tr_sum += tr
            self.count += 1
            self.value = self.tr_sum / self.count
        else:
            self.value += (tr - self.value) / self.n

    @property
    def warm(self) -> bool:
        return self.count >= self.n


class _LocalClock:
    """UTC ns -> local wall-clock ns, with the zone's offset cached per quarter hour."""

    __slots__ = ("zone", "bucket", "offset_ns")

    def __init__(self, tz: str) -> None:
        self.zone = ZoneInfo(tz)
        self.bucket = -1
        self.offset_ns = 0

    def local_ns(self, ts_ns: int) -> int:
        bucket = ts_ns // _TZ_BUCKET_NS
        if bucket != self.bucket:
            utc = datetime.fromtimestamp(bucket * _TZ_BUCKET_NS // _NS, tz=timezone.utc)
            self.offset_ns = int(utc.astimezone(self.zone).utcoffset().total_seconds()) * _NS
            self.bucket = bucket
        return ts_ns + self.offset_ns


# ============================================================================ online: features


class OnlineFeatures:
    """The feature set of one instrument, updated bar by bar in O(1).

    Parameters
    ----------
    config : FeatureConfig, optional
        Windows; must be the model's own config.
    has_partner : bool
        Whether the partner's bars will be fed (``on_partner_bar``); when False the cross features
        are 0, when True no row is produced until the partner has enough bars too.
    """

    def __init__(self, config: FeatureConfig | None = None, has_partner: bool = False) -> None:
        c = self.config = config or FeatureConfig()
        self.has_partner = has_partner
        self._phase_ns = tuple(m * _MIN_NS for m in c.phase_bounds_min)
        self._closes: deque[float] = deque(maxlen=max(max(c.return_horizons), c.rel_bars) + 1)
        self._sq_returns = _RollingSum(c.rvol_bars)
        self._highs = _RollingExtreme(c.range_bars, 1.0)
        self._lows = _RollingExtreme(c.range_bars, -1.0)
        self._signed_flow = _RollingSum(c.flow_bars)
        self._gross_flow = _RollingSum(c.flow_bars)
        self._log_volume = _RollingMoments(c.volume_bars)
        self._spread = _RollingMoments(c.spread_bars)
        self._atr = _WilderATR(c.atr_bars)
        self._clock = _LocalClock(c.tz)
        self._pv = 0.0
        self._v = 0.0
        self._prev_ts: int | None = None
        self._pending: deque[tuple[int, float]] = deque()  # partner bars not yet visible
        self._partner: deque[float] = deque(maxlen=c.rel_bars + 1)  # visible partner closes
        self._bars = 0

    @property
    def atr(self) -> float:
        """Wilder's ATR in price units at the last bar (NaN until ``atr_bars`` bars): the labels' ATR."""
        return self._atr.value if self._atr.warm else math.nan

    def on_partner_bar(self, ts_ns: int, close: float) -> None:
        """Queue a partner bar; it becomes visible to own bars stamped strictly after ``ts_ns``."""
        self._pending.append((int(ts_ns), float(close)))

    def on_bar(self, ts_ns: int, open: float, high: float, low: float, close: float, volume: float,
               buy_volume: float = math.nan, sell_volume: float = math.nan) -> np.ndarray | None:
        """Update with a closed bar.

        Parameters
        ----------
        ts_ns : int
            End of the bar, UTC ns; strictly increasing.
        open, high, low, close, volume : float
            The bar (prices positive); ``open`` is part of the bar contract but no feature uses it.
        buy_volume, sell_volume : float, optional
            Classified volume (``TickFlow``); NaN when unknown, then the bar tick rule is used.

        Returns
        -------
        numpy.ndarray or None
            The finite float64 row in ``feature_names`` order, or None while warming up.
        """
        # plain floats: numpy scalars would make the comparisons below numpy booleans, and slower
        ts_ns, high, low, close, volume = int(ts_ns), float(high), float(low), float(close), float(volume)
        self._see_partner(ts_ns)
        prev = self._closes[-1] if self._closes else None
        self._atr.push(high - low if prev is None else max(high, prev) - min(low, prev))
        if prev is not None:
            r = math.log(close / prev)
            self._sq_returns.push(r * r)
        self._closes.append(close)
        self._highs.push(high)
        self._lows.push(low)
        self._push_flow(close, prev, volume, buy_volume, sell_volume)
        self._log_volume.push(math.log1p(volume))
        self._push_vwap(ts_ns, high, low, close, volume)
        if self.has_partner and self._partner:
            self._spread.push(math.log(close / self._partner[-1]))
        self._bars += 1
        if not self._ready():
            return None
        return self._row(ts_ns, high, low, close)

    # -------------------------------------------------------------------------------- updates

    def _see_partner(self, ts_ns: int) -> None:
        while self._pending and self._pending[0][0] < ts_ns:
            self._partner.append(self._pending.popleft()[1])

    def _push_flow(self, close: float, prev: float | None, volume: float, buy: float, sell: float) -> None:
        if math.isfinite(buy) and math.isfinite(sell):
            signed, gross = buy - sell, buy + sell
        else:
            sign = 0.0 if prev is None else float((close > prev) - (close < prev))
            signed, gross = sign * volume, volume
        self._signed_flow.push(signed)
        self._gross_flow.push(gross)

    def _push_vwap(self, ts_ns: int, high: float, low: float, close: float, volume: float) -> None:
        if self._prev_ts is None or ts_ns - self._prev_ts > self.config.session_gap_s * _NS:
            self._pv = self._v = 0.0
        self._prev_ts = ts_ns
        weight = max(volume, 1.0)
        self._pv += (high + low + close) / 3.0 * weight
        self._v += weight

    def _ready(self) -> bool:
        # every own window is full after warmup_bars bars (warmup_bars is the longest of them)
        if self._bars < self.config.warmup_bars:
            return False
        return not self.has_partner or (len(self._partner) > self.config.rel_bars and self._spread.full)

    # -------------------------------------------------------------------------------- the row

    def _row(self, ts_ns: int, high: float, low: float, close: float) -> np.ndarray:
        c = self.config
        closes = self._closes
        atr = self._atr.value
        row = [math.log(close / closes[-1 - h]) for h in c.return_horizons]
        row.append(math.sqrt(self._sq_returns.total / c.rvol_bars))
        row.append((self._highs.value - self._lows.value) / close)
        row.append(_ratio(high - low, atr))
        row.append(_ratio(close - self._pv / self._v, atr))
        row.append(_ratio(self._signed_flow.total, self._gross_flow.total))
        row.append(self._log_volume.zscore(self._log_volume.values[-1]))
        row.extend(self._time_features(ts_ns))
        row.extend(self._cross_features(close))
        return np.array(row, dtype=np.float64)

    def _time_features(self, ts_ns: int) -> list[float]:
        local = self._clock.local_ns(ts_ns)
        angle = 2.0 * math.pi * (((local - self.config.day_start_min * _MIN_NS) % _DAY_NS) / _DAY_NS)
        phase = _phase_index(local % _DAY_NS, self._phase_ns)
        return [math.sin(angle), math.cos(angle), *(float(i == phase) for i in range(len(_PHASES)))]

    def _cross_features(self, close: float) -> list[float]:
        if not self.has_partner:
            return [0.0, 0.0, 0.0]
        h = self.config.rel_bars
        own = math.log(close / self._closes[-1 - h])
        partner = math.log(self._partner[-1] / self._partner[0])  # the deque holds exactly h + 1 closes
        spread = self._spread.values[-1]
        return [1.0, own - partner, self._spread.zscore(spread)]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def _phase_index(ns_of_day: int, bounds: tuple[int, ...]) -> int:
    """0 overnight, 1..3 the RTH phases; a bar belongs to the phase of (start, end] containing its end."""
    for i in range(3):
        if bounds[i] < ns_of_day <= bounds[i + 1]:
            return i + 1
    return 0


# ============================================================================ offline


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    """Left-pad a rolling result (one value per complete window) with NaN to length ``n``."""
    out = np.full(n, np.nan)
    out[n - len(values):] = values
    return out


def _rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    if len(x) < w:
        return np.full(len(x), np.nan)
    return _pad(sliding_window_view(x, w).sum(axis=1), len(x))


def _rolling_extreme(x: np.ndarray, w: int, largest: bool) -> np.ndarray:
    if len(x) < w:
        return np.full(len(x), np.nan)
    windows = sliding_window_view(x, w)
    return _pad(windows.max(axis=1) if largest else windows.min(axis=1), len(x))


def _rolling_zscore(x: np.ndarray, w: int) -> np.ndarray:
    """z-score of each value against its window of ``w`` values (two-pass mean and deviation)."""
    if len(x) < w:
        return np.full(len(x), np.nan)
    windows = sliding_window_view(x, w)
    last = windows[:, -1]
    # deviations from the value being scored, as online: small numbers, so the mean and the
    # deviation carry no rounding of the (much larger) level
    dev = windows - last[:, None]
    mean_dev = dev.sum(axis=1) / w
    std = np.sqrt(((dev - mean_dev[:, None]) ** 2).sum(axis=1) / (w - 1))
    flat = ~(std > _FLAT_STD * np.maximum(np.abs(last + mean_dev), 1.0))
    z = np.where(flat, 0.0, -mean_dev / np.where(flat, 1.0, std))
    return _pad(np.where(np.isnan(std), np.nan, z), len(x))


def _lagged_log_return(x: np.ndarray, h: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) > h:
        out[h:] = np.log(x[h:] / x[:-h])
    return out


def _wilder_atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    """Wilder's ATR as ``_WilderATR``: a running mean for the first ``n`` bars, then the recursion
    (an exponential mean with alpha 1/n, seeded with the mean of the first ``n`` true ranges)."""
    prev = np.concatenate(([np.nan], close[:-1]))
    tr = np.where(np.isnan(prev), high - low, np.maximum(high, prev) - np.minimum(low, prev))
    atr = np.cumsum(tr) / np.arange(1, len(tr) + 1)
    if len(tr) > n:
        seeded = np.concatenate(([atr[n - 1]], tr[n:]))
        atr[n - 1:] = pd.Series(seeded).ewm(alpha=1.0 / n, adjust=False).mean().to_numpy()
    atr[: n - 1] = np.nan
    return atr


def _session_vwap(ts: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
                  gap_s: float) -> np.ndarray:
    """Session VWAP by sequential sums per session (``np.cumsum`` adds in order, like the online loop)."""
    pv = (high + low + close) / 3.0 * np.maximum(volume, 1.0)
    v = np.maximum(volume, 1.0)
    starts = np.flatnonzero(np.concatenate(([True], np.diff(ts) > gap_s * _NS)))
    ends = np.append(starts[1:], len(ts))
    vwap = np.empty(len(ts))
    for a, b in zip(starts, ends):
        vwap[a:b] = np.cumsum(pv[a:b]) / np.cumsum(v[a:b])
    return vwap


def _flow_imbalance(close: np.ndarray, volume: np.ndarray, buy: np.ndarray, sell: np.ndarray,
                    w: int) -> np.ndarray:
    known = np.isfinite(buy) & np.isfinite(sell)
    tick = np.zeros(len(close))
    tick[1:] = np.sign(np.diff(close))
    signed = np.where(known, buy - sell, tick * volume)
    gross = np.where(known, buy + sell, volume)
    num, den = _rolling_sum(signed, w), _rolling_sum(gross, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.where(np.isnan(den), np.nan, 0.0))


def _time_features(ts: np.ndarray, config: FeatureConfig) -> np.ndarray:
    local = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).tz_convert(config.tz).tz_localize(None)
    local_ns = local.asi8
    since_open = (local_ns - config.day_start_min * _MIN_NS) % _DAY_NS
    angle = 2.0 * np.pi * (since_open / _DAY_NS)
    of_day = local_ns % _DAY_NS
    b = [m * _MIN_NS for m in config.phase_bounds_min]
    phase = np.zeros(len(ts), dtype=np.int64)
    for i in range(3):
        phase[(of_day > b[i]) & (of_day <= b[i + 1])] = i + 1
    onehot = (phase[:, None] == np.arange(len(_PHASES))[None, :]).astype(np.float64)
    return np.column_stack([np.sin(angle), np.cos(angle), onehot])


def _cross_features(ts: np.ndarray, close: np.ndarray, partner: pd.DataFrame | None,
                    config: FeatureConfig) -> np.ndarray:
    n = len(ts)
    if partner is None:
        return np.zeros((n, 3))
    p_ts = partner["ts_ns"].to_numpy(dtype=np.int64)
    p_close = partner["close"].to_numpy(dtype=np.float64)
    j = np.searchsorted(p_ts, ts, side="left") - 1  # the partner's latest bar strictly before ts
    seen = j >= 0
    aligned = np.where(seen, p_close[np.maximum(j, 0)], np.nan)
    h = config.rel_bars
    p_ret = _lagged_log_return(p_close, h)
    partner_ret = np.where(seen, p_ret[np.maximum(j, 0)], np.nan)
    rel = _lagged_log_return(close, h) - partner_ret
    spread_z = _rolling_zscore(np.log(close / aligned), config.spread_bars)
    return np.column_stack([np.ones(n), rel, spread_z])


def offline_features(bars: pd.DataFrame, partner: pd.DataFrame | None = None,
                     config: FeatureConfig | None = None) -> pd.DataFrame:
    """The feature set over a whole bar frame, vectorised; equal to ``OnlineFeatures`` row by row.

    Parameters
    ----------
    bars : pandas.DataFrame
        A bar frame (``ml`` contract): ``ts_ns``, ``open``, ``high``, ``low``, ``close``, ``volume``,
        optionally ``buy_volume``/``sell_volume``; strictly increasing ``ts_ns``.
    partner : pandas.DataFrame, optional
        The partner's bar frame (``ts_ns``, ``close`` used); None for no partner (cross features 0).
    config : FeatureConfig, optional

    Returns
    -------
    pandas.DataFrame
        Indexed like ``bars``; columns ``feature_names(config)`` (a NaN row where the online
        evaluation would return None) and ``atr`` (NaN only for the first ``atr_bars - 1`` bars).
    """
    c = config or FeatureConfig()
    ts = bars["ts_ns"].to_numpy(dtype=np.int64)
    high, low, close = (bars[k].to_numpy(dtype=np.float64) for k in ("high", "low", "close"))
    volume = bars["volume"].to_numpy(dtype=np.float64)
    nan = np.full(len(ts), np.nan)
    buy = bars["buy_volume"].to_numpy(dtype=np.float64) if "buy_volume" in bars else nan
    sell = bars["sell_volume"].to_numpy(dtype=np.float64) if "sell_volume" in bars else nan

    atr = _wilder_atr(high, low, close, c.atr_bars)
    ret_1 = _lagged_log_return(close, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = [_lagged_log_return(close, h) for h in c.return_horizons]
        columns.append(np.sqrt(_rolling_sum(ret_1 * ret_1, c.rvol_bars) / c.rvol_bars))
        columns.append((_rolling_extreme(high, c.range_bars, True) - _rolling_extreme(low, c.range_bars, False))
                       / close)
        columns.append(np.where(atr > 0, (high - low) / atr, np.where(np.isnan(atr), np.nan, 0.0)))
        vwap = _session_vwap(ts, high, low, close, volume, c.session_gap_s)
        columns.append(np.where(atr > 0, (close - vwap) / atr, np.where(np.isnan(atr), np.nan, 0.0)))
        columns.append(_flow_imbalance(close, volume, buy, sell, c.flow_bars))
        columns.append(_rolling_zscore(np.log1p(volume), c.volume_bars))
        values = np.column_stack([*columns, _time_features(ts, c), _cross_features(ts, close, partner, c)])
    warm = np.isfinite(values).all(axis=1) & (np.arange(len(ts)) >= c.warmup_bars - 1)
    values[~warm] = np.nan
    out = pd.DataFrame(values, index=bars.index, columns=list(feature_names(c)))
    out["atr"] = atr
    return out


# ============================================================================ tick flow


class FlowBar(NamedTuple):
    """A bar built from classified ticks, stamped at its end."""

    ts_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    buy_volume: float
    sell_volume: float


class TickFlow:
    """Classifies ticks into buy and sell volume and accumulates them into bars, O(1) per tick.

    The quote rule where the tick carries a two-sided quote (finite bid < ask): at or above the ask
    a buy, at or below the bid a sell; otherwise (inside the spread, or no usable quote, e.g. a
    locked bid == ask) the tick rule: an uptick a buy, a downtick a sell, an unchanged price the
    sign of the last price change. A tick with no sign yet (the first ones) is split half and half,
    so ``buy_volume + sell_volume == volume`` always.

    Parameters
    ----------
    period_s : int
        Bar length; a bar ends on a multiple of it, and a tick exactly on a boundary opens the next
        bar (as ``bridge.data.nt8files.ticks_to_minute_bars``).
    """

    def __init__(self, period_s: int = 60) -> None:
        self.period_ns = int(period_s) * _NS
        self._prev_price = math.nan
        self._tick_sign = 0
        self._end: int | None = None
        self._bar: list[float] = []

    def classify(self, price: float, bid: float = math.nan, ask: float = math.nan) -> int:
        """The tick's side: 1 buy, -1 sell, 0 unknown (updates the tick-rule state)."""
        if price > self._prev_price:
            self._tick_sign = 1
        elif price < self._prev_price:
            self._tick_sign = -1
        self._prev_price = price
        if bid < ask:  # False when either is NaN
            if price >= ask:
                return 1
            if price <= bid:
                return -1
        return self._tick_sign

    def on_tick(self, ts_ns: int, price: float, volume: float, bid: float = math.nan,
                ask: float = math.nan) -> FlowBar | None:
        """Add a tick (in time order); returns the bar this tick closed, if any.

        Returns
        -------
        FlowBar or None
            The previous bar when this tick falls into a later one.
        """
        side = self.classify(price, bid, ask)
        end = (int(ts_ns) // self.period_ns + 1) * self.period_ns
        done = None
        if end != self._end:
            done = self.flush()
            self._end = end
            self._bar = [price, price, price, price, 0.0, 0.0, 0.0]
        bar = self._bar
        bar[1] = max(bar[1], price)
        bar[2] = min(bar[2], price)
        bar[3] = price
        bar[4] += volume
        buy, sell = _split(side, volume)
        bar[5] += buy
        bar[6] += sell
        return done

    def flush(self) -> FlowBar | None:
        """The bar in progress (None if none), which is then closed."""
        if self._end is None:
            return None
        bar, end = self._bar, self._end
        self._end, self._bar = None, []
        return FlowBar(end, *bar)


def _split(side: int, volume: float) -> tuple[float, float]:
    if side > 0:
        return volume, 0.0
    if side < 0:
        return 0.0, volume
    return volume / 2.0, volume / 2.0


def classify_ticks(ticks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Buy and sell volume of every tick, as ``TickFlow`` classifies them.

    Parameters
    ----------
    ticks : pandas.DataFrame
        A tick frame: ``price``, ``volume`` and optionally ``bid``, ``ask`` (NaN where absent), in
        time order.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Buy volume and sell volume per tick (float64; their sum is the tick's volume).
    """
    price = ticks["price"].to_numpy(dtype=np.float64)
    volume = ticks["volume"].to_numpy(dtype=np.float64)
    n = len(price)
    bid = ticks["bid"].to_numpy(dtype=np.float64) if "bid" in ticks else np.full(n, np.nan)
    ask = ticks["ask"].to_numpy(dtype=np.float64) if "ask" in ticks else np.full(n, np.nan)
    change = np.zeros(n)
    change[1:] = np.sign(np.diff(price))
    # the sign of the latest nonzero change: carry the index of the last change forward
    last = np.where(change != 0, np.arange(n), 0)
    np.maximum.accumulate(last, out=last)
    tick = change[last]
    quoted = bid < ask
    side = np.where(quoted & (price >= ask), 1.0, np.where(quoted & (price <= bid), -1.0, tick))
    buy = np.where(side > 0, volume, np.where(side == 0, volume / 2.0, 0.0))
    sell = np.where(side < 0, volume, np.where(side == 0, volume / 2.0, 0.0))
    return buy, sell


def ticks_to_flow_bars(ticks: pd.DataFrame, period_s: int = 60) -> pd.DataFrame:
    """Bars of ``period_s`` seconds with classified volume, as ``TickFlow`` builds them.

    Parameters
    ----------
    ticks : pandas.DataFrame
        A tick frame from ``bridge.data.nt8files.read_nt8`` (``ts_ns``, ``price``, ``volume``,
        optionally ``bid``/``ask``), in time order.
    period_s : int
        Bar length in seconds.

    Returns
    -------
    pandas.DataFrame
        A bar frame: ``ts_ns`` (end of bar), ``open``, ``high``, ``low``, ``close``, ``volume``,
        ``buy_volume``, ``sell_volume``; periods without ticks are omitted.
    """
    period_ns = int(period_s) * _NS
    ts = ticks["ts_ns"].to_numpy(dtype=np.int64)
    price = ticks["price"].to_numpy(dtype=np.float64)
    volume = ticks["volume"].to_numpy(dtype=np.float64)
    buy, sell = classify_ticks(ticks)
    end = (ts // period_ns + 1) * period_ns
    if len(ts) == 0:
        return pd.DataFrame({k: pd.Series(dtype=t) for k, t in
                             (("ts_ns", "int64"), *((c, "float64") for c in FlowBar._fields[1:]))})
    starts = np.flatnonzero(np.concatenate(([True], end[1:] != end[:-1])))
    lasts = np.append(starts[1:] - 1, len(ts) - 1)
    return pd.DataFrame({
        "ts_ns": end[starts],
        "open": price[starts],
        "high": np.maximum.reduceat(price, starts),
        "low": np.minimum.reduceat(price, starts),
        "close": price[lasts],
        "volume": np.add.reduceat(volume, starts),
        "buy_volume": np.add.reduceat(buy, starts),
        "sell_volume": np.add.reduceat(sell, starts),
    })
