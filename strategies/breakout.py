"""Reference strategy: a channel breakout with stop and target in multiples of ATR.

When a bar closes above the highest high of the ``lookback_bars`` bars before it, buy at market
with a stop ``stop_atr`` ATRs below the close and a target ``target_atr`` ATRs above it (mirror
image for a close below the lowest low). Only when flat, and not in the last minutes of the
session. Small and honest: it exists so the whole path works end to end, not to make money.
"""

from __future__ import annotations

import math

from bridge.config import StrategyConfig
from bridge.features import FeatureSnapshot
from bridge.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import Signal, Strategy, StrategyContext


def round_to_tick(price: float, tick: float) -> float:
    return round(round(price / tick) * tick, 10)


class ChannelBreakout(Strategy):
    name = "breakout"

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def on_bar(self, bar: BarData, features: FeatureSnapshot, ctx: StrategyContext) -> Signal | None:
        cfg = self.config
        f = features.values
        atr = f["atr"]
        if not atr > 0.0 or not ctx.is_flat(bar.instrument_id):
            return None
        if ctx.minutes_to_close(bar.instrument_id, bar.ts_close_ns) < cfg.no_entry_before_close_min:
            return None
        close = bar.close
        if close > f["channel_high"]:
            side = Side.BUY
        elif close < f["channel_low"]:
            side = Side.SELL
        else:
            return None
        tick = ctx.tick_size(bar.instrument_id)
        sign = side.sign
        stop = round_to_tick(close - sign * cfg.stop_atr * atr, tick)
        target = round_to_tick(close + sign * cfg.target_atr * atr, tick)
        if stop == close or target == close:  # ATR under a tick: no room for a bracket
            return None
        edge = "high" if side is Side.BUY else "low"
        return Signal(
            instrument_id=bar.instrument_id, side=side, entry_type=EntryType.MARKET,
            entry_price=math.nan, stop_price=stop, target_price=target, confidence=0.5,
            rationale=(f"close {close} broke the {cfg.lookback_bars}-bar {edge} "
                       f"{f['channel_' + edge]}; ATR({cfg.atr_bars}) {atr:.4g}: stop {stop}, target {target}"),
        )
