"""Data-quality gate: market data the pipeline must not see is refused here, with a reason.

``QualityGate.check_tick`` is the hot-path entry point: it returns ``None`` when a tick is clean,
or a ``QualityVerdict`` naming the reason and whether the tick is refused (``reject=True``: kept out
of the pipeline) or only flagged (``reject=False``: a warning about part of it, e.g. the quote that
came with a trade). The caller counts, logs, stores and answers; the gate only decides.

Checks, in order (the first that fails decides):
1. the price is finite, then positive, then on the instrument's tick grid;
2. the size is plausible (a trade: 1 .. max_trade_size; a quote: 0 .. max_trade_size);
3. time does not go backwards per instrument (equal stamps are normal);
4. the instrument is in its trading hours;
5. quotes: a crossed bid/ask update is refused (a locked one when configured); a trade whose
   attached quote is crossed or locked is kept and the quote flagged;
6. a trade far from the last accepted trade (``jump_min_ticks`` and ``jump_sigma`` recent standard
   deviations, widened after a gap) is a jump; ``jump_confirm_ticks`` consecutive trades at the
   new level make it the new reference, so a real gap costs a few ticks, never the rest of the day.
A gap of more than ``stale_after_s`` between trades, beginning while the market is open, is
flagged STALE_FEED on the trade that ends it (the server's watchdog covers a feed that never
resumes, by the wall clock).

Duplicates are detected one level up, by sequence number (``SESSION_DUPLICATE_SEQ``): identical
consecutive prints with the same 100 ns stamp are legitimate in exchange data (the ES 06-18 file
has runs of them), so content alone cannot tell a duplicate from a trade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from bridge.core.config import QualityConfig
from bridge.core.instruments import InstrumentSpec, SessionClock, price_on_grid
from bridge.protocol.messages import Bar, Tick, TickKind

_NS = 1_000_000_000
_LAST = int(TickKind.LAST)  # an int: comparing with an IntEnum member costs 6x more, on every tick


class QualityReason(StrEnum):
    NONFINITE_PRICE = "QUALITY_NONFINITE_PRICE"
    NONPOSITIVE_PRICE = "QUALITY_NONPOSITIVE_PRICE"
    OFF_TICK_GRID = "QUALITY_OFF_TICK_GRID"
    PRICE_JUMP = "QUALITY_PRICE_JUMP"
    CROSSED_QUOTE = "QUALITY_CROSSED_QUOTE"
    LOCKED_QUOTE = "QUALITY_LOCKED_QUOTE"
    BAD_SIZE = "QUALITY_BAD_SIZE"
    TIME_BACKWARDS = "QUALITY_TIME_BACKWARDS"
    OUTSIDE_SESSION = "QUALITY_OUTSIDE_SESSION"
    BAD_BAR = "QUALITY_BAD_BAR"
    STALE_FEED = "QUALITY_STALE_FEED"


@dataclass(frozen=True, slots=True)
class QualityVerdict:
    reason: QualityReason
    reject: bool
    detail: str


class _InstrumentGate:
    """Per-instrument state of the gate; only accepted ticks move it."""

    __slots__ = ("spec", "tick_size", "max_size", "clock", "last_price", "last_ts", "last_bar_ts", "last_trade_ts",
                 "var", "alpha", "pending_price", "pending_count")

    def __init__(self, spec: InstrumentSpec, tick_size: float, halflife: int) -> None:
        self.spec = spec
        self.tick_size = tick_size
        self.max_size = spec.max_trade_size
        self.clock = SessionClock(spec.hours)
        self.last_price = math.nan
        self.last_ts = -(2**63)
        # NT8 sends a bar when the first tick of the next one arrives, after that tick: bars keep
        # a time order of their own
        self.last_bar_ts = -(2**63)
        self.last_trade_ts = 0
        self.var = (2.0 * tick_size) ** 2  # prior: moves of about two ticks
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self.pending_price = math.nan
        self.pending_count = 0


class QualityGate:
    def __init__(self, config: QualityConfig) -> None:
        self.config = config
        self._gates: dict[int, _InstrumentGate] = {}
        self.counts: dict[QualityReason, int] = {r: 0 for r in QualityReason}

    def add_instrument(self, instrument_id: int, spec: InstrumentSpec, tick_size: float) -> None:
        """Register an instrument; ``tick_size`` is NT8's (from HELLO), which wins over the master's."""
        self._gates[instrument_id] = _InstrumentGate(spec, tick_size, self.config.jump_halflife_ticks)

    def is_open(self, instrument_id: int, ts_ns: int) -> bool:
        """Whether the instrument trades at ``ts_ns``, by its session clock; always True when
        ``check_session_hours`` is off (the sidecar then ignores hours everywhere: gate, risk, watchdog)."""
        return not self.config.check_session_hours or self._gates[instrument_id].clock.is_open(ts_ns)

    def minutes_to_close(self, instrument_id: int, ts_ns: int) -> float:
        """Minutes until the current session closes; 0 when it is closed. The open interval ends at
        the close: the clock splits intervals at UTC-offset changes, which US zones make on Sundays
        at 02:00, when these markets are shut."""
        clock = self._gates[instrument_id].clock
        start, end, is_open = clock.interval(ts_ns)
        return (end - ts_ns) / 60e9 if is_open else 0.0

    def anchor(self, instrument_id: int, price: float) -> None:
        """Judge the next trade's jump against ``price``: where another feed says the market is while NT8's
        own stream is stale (bridge/transport/feeds.py), so that its first ticks after an outage are not
        refused for a move the market really made meanwhile."""
        g = self._gates[instrument_id]
        g.last_price = price
        g.pending_count = 0

    def _verdict(self, reason: QualityReason, reject: bool, detail: str) -> QualityVerdict:
        self.counts[reason] += 1
        return QualityVerdict(reason, reject, detail)

    def check_tick(self, tick: Tick) -> QualityVerdict | None:
        """Decide on one tick; the instrument must have been added (the session checks ids)."""
        g = self._gates[tick.instrument_id]
        price = tick.price
        cfg = self.config
        if not math.isfinite(price):
            return self._verdict(QualityReason.NONFINITE_PRICE, True, f"price {price}")
        if price <= 0.0:
            return self._verdict(QualityReason.NONPOSITIVE_PRICE, True, f"price {price}")
        if not price_on_grid(price, g.tick_size):
            return self._verdict(QualityReason.OFF_TICK_GRID, True,
                                 f"price {price!r} is not a multiple of tick size {g.tick_size}")
        is_trade = tick.kind == _LAST
        size = tick.size
        if size > g.max_size or size < (1 if is_trade else 0):
            return self._verdict(QualityReason.BAD_SIZE, True,
                                 f"size {size} outside {1 if is_trade else 0}..{g.max_size}")
        ts = tick.ts_exchange_ns
        if ts < g.last_ts:
            return self._verdict(QualityReason.TIME_BACKWARDS, True,
                                 f"{(g.last_ts - ts) / 1e6:.3f} ms before the previous tick")
        if cfg.check_session_hours and not g.clock.is_open(ts):
            return self._verdict(QualityReason.OUTSIDE_SESSION, True,
                                 f"{g.spec.root} is closed at this time")
        bid, ask = tick.bid, tick.ask
        quote_flag: QualityVerdict | None = None
        if bid == bid and ask == ask:  # both known (NaN != NaN)
            if bid > ask or (bid == ask and cfg.reject_locked_quotes and not is_trade):
                reason = QualityReason.CROSSED_QUOTE if bid > ask else QualityReason.LOCKED_QUOTE
                if not is_trade:
                    return self._verdict(reason, True, f"bid {bid} ask {ask}")
                quote_flag = self._verdict(reason, False, f"trade kept; its quote bid {bid} ask {ask} "
                                           "is not usable")
            elif bid == ask and is_trade:
                quote_flag = self._verdict(QualityReason.LOCKED_QUOTE, False,
                                           f"trade kept; its quote is locked at {bid}")
        stale: QualityVerdict | None = None
        if is_trade:
            jump = self._check_jump(g, price, ts)
            if jump is not None:
                return jump
            stale_ns = int(cfg.stale_after_s * _NS)
            # Stale only if the market was open when the silence became stale: a gap across the
            # daily halt or a weekend is not a feed problem. Rare, so the uncached hours do it.
            if g.last_trade_ts and ts - g.last_trade_ts > stale_ns \
                    and g.spec.hours.is_open(g.last_trade_ts + stale_ns):
                stale = self._verdict(QualityReason.STALE_FEED, False,
                                      f"no trade for {(ts - g.last_trade_ts) / _NS:.1f} s in session")
            g.last_trade_ts = ts
        g.last_ts = ts
        return stale or quote_flag

    def _check_jump(self, g: _InstrumentGate, price: float, ts: int) -> QualityVerdict | None:
        last = g.last_price
        if last != last:  # first trade of the instrument: nothing to compare with
            g.last_price = price
            return None
        move = price - last
        cfg = self.config
        gap_s = (ts - g.last_trade_ts) / _NS if g.last_trade_ts else 0.0
        limit = max(cfg.jump_min_ticks * g.tick_size, cfg.jump_sigma * math.sqrt(g.var))
        limit *= math.sqrt(1.0 + gap_s / cfg.jump_gap_scale_s)
        if abs(move) <= limit:
            g.var += g.alpha * (move * move - g.var)
            g.last_price = price
            g.pending_count = 0
            return None
        # A new level: count consecutive trades that agree with each other, not with the reference.
        if g.pending_count and abs(price - g.pending_price) <= limit:
            g.pending_count += 1
        else:
            g.pending_price = price
            g.pending_count = 1
        if g.pending_count >= cfg.jump_confirm_ticks:
            # confirmed: re-anchor here, and let the variance estimate learn the larger move
            g.var += g.alpha * (move * move - g.var)
            g.last_price = price
            g.pending_count = 0
            return None
        g.last_trade_ts = ts  # refused ticks still show the feed is alive
        return self._verdict(QualityReason.PRICE_JUMP, True,
                             f"{move / g.tick_size:+.0f} ticks from {last} (limit {limit / g.tick_size:.0f})")

    def check_bar(self, bar: Bar) -> QualityVerdict | None:
        """Decide on one of NT8's own bars: prices, OHLC order, grid, volume, time order, hours."""
        g = self._gates[bar.instrument_id]
        prices = (bar.open, bar.high, bar.low, bar.close)
        reason = QualityReason.BAD_BAR
        if not all(math.isfinite(p) and p > 0 for p in prices):
            return self._verdict(reason, True, f"non-finite or non-positive price in {prices}")
        if not (bar.low <= min(bar.open, bar.close) and max(bar.open, bar.close) <= bar.high):
            return self._verdict(reason, True, f"OHLC inconsistent: {prices}")
        if not all(price_on_grid(p, g.tick_size) for p in prices):
            return self._verdict(reason, True, f"price off the {g.tick_size} grid in {prices}")
        if bar.volume < 0:
            return self._verdict(reason, True, f"volume {bar.volume}")
        if bar.ts_close_ns <= g.last_bar_ts:
            return self._verdict(QualityReason.TIME_BACKWARDS, True,
                                 f"bar ends {(g.last_bar_ts - bar.ts_close_ns) / 1e9:.0f} s before the previous bar's end"
                                 if bar.ts_close_ns < g.last_bar_ts else "bar ends at the same time as the previous bar")
        # a bar is stamped at its end: the instant just before the stamp must be in session
        if self.config.check_session_hours and not g.clock.is_open(bar.ts_close_ns - 1):
            return self._verdict(QualityReason.OUTSIDE_SESSION, True, f"{g.spec.root} is closed at this time")
        g.last_bar_ts = bar.ts_close_ns
        return None
