"""Online bar features for the rule strategies, per instrument, updated at each closed bar.

- ``atr``: Wilder's average true range over ``atr_bars``;
- ``channel_high`` / ``channel_low``: extremes of the ``channel_bars`` bars *before* this one
  (monotonic deques, O(1));
- ``vwap`` and ``vwap_dist_atr``: the session's volume-weighted average of the bars' typical
  price, and the close's distance from it in ATRs. A session starts after a gap of more than
  ``session_gap_s`` between bars (CME's daily halt is an hour), so no clock or calendar is needed;
- ``band_mean``, ``band_std``, ``band_z``: mean, standard deviation (ddof=1) and z-score of the
  last ``band_bars`` closes, this one included;
- ``efficiency``: Kaufman's efficiency ratio over ``er_bars`` (net move / path length, 0..1) and
  ``trend_dir`` (+1, -1, 0), the sign of that net move;
- ``realized_vol``: standard deviation of the last ``vol_bars`` log returns;
- ``close``, ``ret_1``: the close and its log return.

The windowed statistics cost O(window) per bar (windows of tens of bars, once a minute); the ML
model's features are a separate engine (``ml.features.OnlineFeatures``, O(1) per bar).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from bridge.core.market import BarData

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class FeatureSnapshot:
    """Features known at the close of ``ts_ns``'s bar; ``values`` maps a feature name to its value."""

    instrument_id: int
    ts_ns: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class FeatureWindows:
    atr_bars: int = 14
    channel_bars: int = 20
    band_bars: int = 30
    er_bars: int = 30
    vol_bars: int = 30
    session_gap_s: float = 1800.0


class _Channel:
    """Highest high and lowest low of the last ``n`` bars, by monotonic deques."""

    __slots__ = ("n", "i", "highs", "lows")

    def __init__(self, n: int) -> None:
        self.n = n
        self.i = 0
        self.highs: deque[tuple[int, float]] = deque()
        self.lows: deque[tuple[int, float]] = deque()

    def add(self, high: float, low: float) -> None:
        i = self.i
        while self.highs and self.highs[-1][1] <= high:
            self.highs.pop()
        self.highs.append((i, high))
        while self.lows and self.lows[-1][1] >= low:
            self.lows.pop()
        self.lows.append((i, low))
        while self.highs[0][0] <= i - self.n:
            self.highs.popleft()
        while self.lows[0][0] <= i - self.n:
            self.lows.popleft()
        self.i += 1

    @property
    def full(self) -> bool:
        return self.i >= self.n


def _std(values: deque[float] | list[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


class _InstrumentFeatures:
    __slots__ = ("atr", "tr_sum", "tr_count", "prev_close", "prev_ts", "channel", "closes", "returns",
                 "pv_sum", "v_sum")

    def __init__(self, w: FeatureWindows) -> None:
        self.atr = 0.0
        self.tr_sum = 0.0
        self.tr_count = 0
        self.prev_close: float | None = None
        self.prev_ts = 0
        self.channel = _Channel(w.channel_bars)
        self.closes: deque[float] = deque(maxlen=max(w.band_bars, w.er_bars + 1))
        self.returns: deque[float] = deque(maxlen=w.vol_bars)
        self.pv_sum = 0.0
        self.v_sum = 0.0


class FeatureEngine:
    """The features above for every instrument of a session; ``on_bar`` returns None until warm."""

    def __init__(self, windows: FeatureWindows | None = None) -> None:
        self.w = windows or FeatureWindows()
        self._state: dict[int, _InstrumentFeatures] = {}
        self.latest: dict[int, FeatureSnapshot] = {}

    def on_bar(self, bar: BarData) -> FeatureSnapshot | None:
        """Update with a closed bar; ``None`` until enough bars have been seen."""
        w = self.w
        s = self._state.get(bar.instrument_id)
        if s is None:
            s = self._state[bar.instrument_id] = _InstrumentFeatures(w)
        prev = s.prev_close
        tr = bar.high - bar.low if prev is None else max(bar.high, prev) - min(bar.low, prev)
        if s.tr_count < w.atr_bars:
            s.tr_sum += tr
            s.tr_count += 1
            s.atr = s.tr_sum / s.tr_count
        else:
            s.atr += (tr - s.atr) / w.atr_bars
        if bar.ts_close_ns - s.prev_ts > w.session_gap_s * _NS:  # a new session: VWAP starts again
            s.pv_sum = s.v_sum = 0.0
        s.prev_ts = bar.ts_close_ns
        volume = max(bar.volume, 1)  # a bar with no reported volume still counts once
        s.pv_sum += (bar.high + bar.low + bar.close) / 3.0 * volume
        s.v_sum += volume
        if prev is not None and prev > 0 and bar.close > 0:
            s.returns.append(math.log(bar.close / prev))
        s.closes.append(bar.close)
        ready = (s.tr_count >= w.atr_bars and s.channel.full and len(s.closes) >= w.band_bars
                 and len(s.closes) > w.er_bars and len(s.returns) >= w.vol_bars)
        snapshot = None
        if ready:
            snapshot = FeatureSnapshot(bar.instrument_id, bar.ts_close_ns, self._values(s, bar))
            self.latest[bar.instrument_id] = snapshot
        s.channel.add(bar.high, bar.low)
        s.prev_close = bar.close
        return snapshot

    def _values(self, s: _InstrumentFeatures, bar: BarData) -> dict[str, float]:
        w = self.w
        closes = list(s.closes)
        band = closes[-w.band_bars:]
        mean = math.fsum(band) / len(band)
        std = _std(band)
        er_path = closes[-(w.er_bars + 1):]
        net = er_path[-1] - er_path[0]
        path = math.fsum(abs(b - a) for a, b in zip(er_path, er_path[1:]))
        vwap = s.pv_sum / s.v_sum
        atr = s.atr
        return {
            "atr": atr,
            "channel_high": s.channel.highs[0][1],  # of the bars before this one
            "channel_low": s.channel.lows[0][1],
            "close": bar.close,
            "ret_1": s.returns[-1] if s.returns else 0.0,
            "vwap": vwap,
            "vwap_dist_atr": (bar.close - vwap) / atr if atr > 0 else 0.0,
            "band_mean": mean,
            "band_std": std,
            "band_z": (bar.close - mean) / std if std > 0 else 0.0,
            "efficiency": abs(net) / path if path > 0 else 0.0,
            "trend_dir": float((net > 0) - (net < 0)),
            "realized_vol": _std(s.returns),
        }
