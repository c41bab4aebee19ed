"""Online bar features for the reference strategy: average true range and a price channel.

O(1) per closed bar (the channel uses monotonic deques). The ML feature set of issue 4 replaces
this module behind the same ``FeatureEngine.on_bar`` entry point.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bridge.market import BarData


@dataclass(frozen=True, slots=True)
class FeatureSnapshot:
    """Features known at the close of ``ts_ns``'s bar; ``values`` maps a feature name to its value."""

    instrument_id: int
    ts_ns: int
    values: dict[str, float]


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


class _InstrumentFeatures:
    __slots__ = ("atr_n", "atr", "tr_sum", "tr_count", "prev_close", "channel")

    def __init__(self, atr_n: int, channel_n: int) -> None:
        self.atr_n = atr_n
        self.atr = 0.0
        self.tr_sum = 0.0
        self.tr_count = 0
        self.prev_close: float | None = None
        self.channel = _Channel(channel_n)


class FeatureEngine:
    """ATR (Wilder) over ``atr_bars`` and the channel of the ``channel_bars`` bars before this one."""

    def __init__(self, atr_bars: int, channel_bars: int) -> None:
        self.atr_bars = atr_bars
        self.channel_bars = channel_bars
        self._state: dict[int, _InstrumentFeatures] = {}

    def on_bar(self, bar: BarData) -> FeatureSnapshot | None:
        """Update with a closed bar; ``None`` until enough bars have been seen."""
        s = self._state.get(bar.instrument_id)
        if s is None:
            s = self._state[bar.instrument_id] = _InstrumentFeatures(self.atr_bars, self.channel_bars)
        prev = s.prev_close
        tr = bar.high - bar.low if prev is None else max(bar.high, prev) - min(bar.low, prev)
        if s.tr_count < s.atr_n:
            s.tr_sum += tr
            s.tr_count += 1
            s.atr = s.tr_sum / s.tr_count
        else:
            s.atr += (tr - s.atr) / s.atr_n
        ready = s.tr_count >= s.atr_n and s.channel.full
        snapshot = None
        if ready:
            snapshot = FeatureSnapshot(bar.instrument_id, bar.ts_close_ns, {
                "atr": s.atr,
                "channel_high": s.channel.highs[0][1],  # of the bars before this one
                "channel_low": s.channel.lows[0][1],
                "close": bar.close,
            })
        s.channel.add(bar.high, bar.low)
        s.prev_close = bar.close
        return snapshot
