"""Momentum: a channel breakout with volatility-scaled stop and target.

When a bar closes above the highest high of the ``lookback_bars`` bars before it, buy at market
with a stop ``momentum_stop_atr`` ATRs below the close and a target ``momentum_target_atr`` ATRs
above it (mirror image below the lowest low). Stops scale with volatility through the ATR, so a
quiet night and a busy open risk the same number of "normal moves". Only when flat, not in the last
minutes of the session, and with a time limit: a breakout that goes nowhere is closed.
"""

from __future__ import annotations

import math

from bridge.core.config import StrategyConfig
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import MarketView, Signal, Strategy, entry_features, round_to_tick


class Momentum(Strategy):
    name = "momentum"
    style = "trend"

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def on_bar(self, bar: BarData, market: MarketView) -> Signal | None:
        cfg = self.config
        iid = bar.instrument_id
        f = entry_features(bar, market, cfg.no_entry_before_close_min)
        if f is None:
            return None
        atr = f["atr"]
        close = bar.close
        if close > f["channel_high"]:
            side, edge = Side.BUY, "high"
        elif close < f["channel_low"]:
            side, edge = Side.SELL, "low"
        else:
            return None
        tick = market.tick_size(iid)
        stop = round_to_tick(close - side.sign * cfg.momentum_stop_atr * atr, tick)
        target = round_to_tick(close + side.sign * cfg.momentum_target_atr * atr, tick)
        if stop == close or target == close:  # ATR under a tick: no room for a bracket
            return None
        return Signal(
            instrument_id=iid, side=side, entry_type=EntryType.MARKET, entry_price=math.nan, stop_price=stop,
            target_price=target, win_probability=cfg.momentum_win_prior,
            time_limit_s=cfg.momentum_time_limit_min * 60.0,
            rationale=(f"close {close} broke the {cfg.lookback_bars}-bar {edge} {f['channel_' + edge]}; "
                       f"ATR({cfg.atr_bars}) {atr:.4g}: stop {stop} ({cfg.momentum_stop_atr:g} ATR), "
                       f"target {target} ({cfg.momentum_target_atr:g} ATR)"),
        )
