"""Mean reversion: fade a stretched move back toward its mean, only in a ranging market.

A close at least ``reversion_entry_z`` standard deviations from the mean of the last ``band_bars``
closes, and at least ``reversion_min_vwap_atr`` ATRs from the session's VWAP on the same side, is
faded at market: the target is the band's mean, the stop ``reversion_stop_atr`` ATRs beyond the
close. Its own regime filter: no fade while the efficiency ratio says the market trends (above
``reversion_max_efficiency``); the regime detector can switch it off as well.
"""

from __future__ import annotations

import math

from bridge.core.config import StrategyConfig
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import MarketView, Signal, Strategy, entry_features, round_to_tick


class MeanReversion(Strategy):
    name = "reversion"
    style = "reversion"

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def on_bar(self, bar: BarData, market: MarketView) -> Signal | None:
        cfg = self.config
        iid = bar.instrument_id
        f = entry_features(bar, market, cfg.no_entry_before_close_min)
        if f is None:
            return None
        atr, z, dist = f["atr"], f["band_z"], f["vwap_dist_atr"]
        if abs(z) < cfg.reversion_entry_z or abs(dist) < cfg.reversion_min_vwap_atr or (z > 0) != (dist > 0):
            return None
        if f["efficiency"] > cfg.reversion_max_efficiency:
            return None  # a trending market: stretched moves tend to stretch further
        side = Side.SELL if z > 0 else Side.BUY
        close = bar.close
        tick = market.tick_size(iid)
        target = round_to_tick(f["band_mean"], tick)
        stop = round_to_tick(close - side.sign * cfg.reversion_stop_atr * atr, tick)
        if side.sign * (target - close) < tick or stop == close:
            return None
        return Signal(
            instrument_id=iid, side=side, entry_type=EntryType.MARKET, entry_price=math.nan, stop_price=stop,
            target_price=target, win_probability=cfg.reversion_win_prior,
            time_limit_s=cfg.reversion_time_limit_min * 60.0,
            rationale=(f"close {close} is {z:+.2f} sd from the {cfg.band_bars}-bar mean {f['band_mean']:.2f} and "
                       f"{dist:+.2f} ATR from VWAP {f['vwap']:.2f}; efficiency {f['efficiency']:.2f} <= "
                       f"{cfg.reversion_max_efficiency:g} (ranging): fade to {target}, stop {stop}"),
        )
