"""Market state per instrument: last trade, quote, and time bars built from accepted ticks.

Bars are aligned to multiples of ``period_s`` since the Unix epoch (UTC), so 60 s bars fall on whole
minutes as NT8's do, and are stamped at their end. A bar closes on event time: the first tick (trade
or quote) stamped at or after its end closes it, so a playback builds identical bars run after run.
A period with no trade makes no bar.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from bridge.protocol.messages import Tick, TickKind

_NS = 1_000_000_000
# plain ints: comparing with an IntEnum member costs 245 ns against 39 ns, on every tick
_LAST = int(TickKind.LAST)
_BID = int(TickKind.BID)


@dataclass(slots=True)
class BarData:
    instrument_id: int
    period_s: int
    ts_open_ns: int
    ts_close_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    tick_count: int


class BarBuilder:
    """Builds one instrument's time bars from trades."""

    __slots__ = ("instrument_id", "period_s", "_period_ns", "_bar")

    def __init__(self, instrument_id: int, period_s: int) -> None:
        self.instrument_id = instrument_id
        self.period_s = period_s
        self._period_ns = period_s * _NS
        self._bar: BarData | None = None

    def close_due(self, ts_ns: int) -> BarData | None:
        """Close and return the open bar if ``ts_ns`` is at or past its end."""
        bar = self._bar
        if bar is not None and ts_ns >= bar.ts_close_ns:
            self._bar = None
            return bar
        return None

    def on_trade(self, ts_ns: int, price: float, size: int) -> None:
        bar = self._bar
        if bar is None:
            start = ts_ns - ts_ns % self._period_ns
            self._bar = BarData(self.instrument_id, self.period_s, start, start + self._period_ns,
                                price, price, price, price, size, 1)
            return
        if price > bar.high:
            bar.high = price
        elif price < bar.low:
            bar.low = price
        bar.close = price
        bar.volume += size
        bar.tick_count += 1


@dataclass(slots=True)
class InstrumentState:
    instrument_id: int
    name: str
    tick_size: float
    point_value: float
    last: float = math.nan
    bid: float = math.nan
    ask: float = math.nan
    last_ts_ns: int = 0  # event time of the last accepted tick of any kind
    bars: deque[BarData] | None = None


class MarketState:
    """All instruments of one session."""

    def __init__(self, period_s: int, history: int) -> None:
        self.period_s = period_s
        self.history = history
        self.instruments: dict[int, InstrumentState] = {}
        self._builders: dict[int, BarBuilder] = {}

    def add_instrument(self, instrument_id: int, name: str, tick_size: float, point_value: float) -> None:
        self.instruments[instrument_id] = InstrumentState(instrument_id, name, tick_size, point_value,
                                                          bars=deque(maxlen=self.history))
        self._builders[instrument_id] = BarBuilder(instrument_id, self.period_s)

    def on_tick(self, tick: Tick, quote_usable: bool = True) -> BarData | None:
        """Apply an accepted tick; returns the bar it closed, if any (before the tick joins a new one)."""
        state = self.instruments[tick.instrument_id]
        builder = self._builders[tick.instrument_id]
        closed = builder.close_due(tick.ts_exchange_ns)
        if closed is not None:
            state.bars.append(closed)
        kind = tick.kind
        if kind == _LAST:
            state.last = tick.price
            builder.on_trade(tick.ts_exchange_ns, tick.price, tick.size)
            if quote_usable and tick.bid == tick.bid and tick.ask == tick.ask:
                state.bid = tick.bid
                state.ask = tick.ask
        elif kind == _BID:
            state.bid = tick.price
        else:
            state.ask = tick.price
        state.last_ts_ns = tick.ts_exchange_ns
        return closed

    def on_bar(self, bar: BarData) -> None:
        """A bar from NT8's own series (BAR message): joins the history as is."""
        state = self.instruments[bar.instrument_id]
        state.bars.append(bar)
        state.last = bar.close
        state.last_ts_ns = max(state.last_ts_ns, bar.ts_close_ns)
