"""The strategy interface: read a closed bar and the market, return Signals (or nothing).

A strategy implements ``on_bar`` and nothing else is required::

    class MyStrategy(Strategy):
        name = "my"
        style = "trend"          # which regime column switches it (trend, reversion, spread, ml)

        def on_bar(self, bar, market):
            f = market.features(bar.instrument_id)
            if f is None or not market.is_flat(bar.instrument_id):
                return None
            ...
            return Signal(bar.instrument_id, Side.BUY, EntryType.MARKET, math.nan, stop, target,
                          win_probability=0.4, rationale="why, in words a trader reads")

A strategy never sizes, never checks risk and never talks to NT8: the portfolio nets and sizes
what it says (fractional Kelly from ``win_probability`` and the bracket's distances), the risk
engine checks it, and the pipeline sends it.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from strategies.features import FeatureSnapshot
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side

log = logging.getLogger("nt8bridge.strategy")

STYLES = ("trend", "reversion", "spread", "ml")


@dataclass(frozen=True, slots=True)
class Signal:
    """What a strategy wants: a bracket on one instrument, how likely it wins, and why.

    ``win_probability`` is the chance the target is hit before the stop (or the time limit ends
    the trade at a profit); Kelly sizing uses it with the bracket's target/stop distances.
    Legs of one spread share ``group`` and carry their contract ``ratio``; the group is sized as
    one bet whose payoff per unit (``ratio`` contracts of every leg) is ``unit_win`` / ``unit_loss``
    in currency, and is traded whole or not at all.
    """

    instrument_id: int
    side: Side
    entry_type: EntryType
    entry_price: float  # NaN for a market entry
    stop_price: float
    target_price: float
    win_probability: float
    rationale: str
    time_limit_s: float = 0.0  # 0: none; else the position is closed at market after this long
    group: str = ""
    ratio: int = 1
    unit_win: float = math.nan
    unit_loss: float = math.nan


@dataclass(frozen=True, slots=True)
class Exit:
    """Close this strategy's position on an instrument now (at market), and why."""

    instrument_id: int
    rationale: str


StrategyOutput = Signal | Exit
Outputs = Sequence[StrategyOutput]


class MarketView(Protocol):
    """What a strategy may ask of the session it runs in."""

    def features(self, instrument_id: int) -> FeatureSnapshot | None:
        """The latest features of an instrument (None until warmed up)."""

    def instrument_id(self, root: str) -> int | None:
        """The session's instrument with this root (``"ES"``), or None."""

    def root(self, instrument_id: int) -> str: ...

    def is_flat(self, instrument_id: int) -> bool:
        """No position and no working bracket on the instrument."""

    def position_of(self, instrument_id: int, strategy: str) -> int:
        """Signed contracts this strategy holds on the instrument."""

    def minutes_to_close(self, instrument_id: int, ts_ns: int) -> float:
        """Minutes from ``ts_ns`` to the close of the instrument's current session."""

    def tick_size(self, instrument_id: int) -> float: ...

    def point_value(self, instrument_id: int) -> float: ...


class Strategy(ABC):
    name: ClassVar[str]
    style: ClassVar[str] = "trend"
    version: ClassVar[str] = "0.2.0"

    @property
    def algorithm_id(self) -> str:
        """Unique per strategy and code version (RTS 22 style); carried by every order it causes."""
        return f"{self.name}@{self.version}"

    @property
    def status(self) -> str:
        """One line for operators: ready, warming up, no model, ..."""
        return "ready"

    def metrics(self) -> dict[str, float]:
        """Counters for the Prometheus endpoint (``nt8bridge_strategy_events``); none by default."""
        return {}

    @abstractmethod
    def on_bar(self, bar: BarData, market: MarketView) -> StrategyOutput | Outputs | None:
        """Called at each closed bar of any instrument; return Signals, Exits or None."""


def entry_features(bar: BarData, market: MarketView, no_entry_before_close_min: float) -> dict[str, float] | None:
    """The bar's features when a new single-instrument entry may be considered: features of this very
    bar, the instrument flat, a positive ATR, and not in the session's last minutes; else None."""
    iid = bar.instrument_id
    snap = market.features(iid)
    if snap is None or snap.ts_ns != bar.ts_close_ns or not market.is_flat(iid):
        return None
    if not snap.values["atr"] > 0.0 or market.minutes_to_close(iid, bar.ts_close_ns) < no_entry_before_close_min:
        return None
    return snap.values


def round_to_tick(price: float, tick: float) -> float:
    return round(round(price / tick) * tick, 10)


def safe_on_bar(strategy: Strategy, bar: BarData, market: MarketView) -> list[StrategyOutput]:
    """Run a strategy; an exception in its code becomes a logged no-trade, never a crash."""
    try:
        out = strategy.on_bar(bar, market)
        if out is None:
            return []
        if isinstance(out, (Signal, Exit)):
            return [out]
        return list(out)
    except Exception:
        log.exception("strategy %s failed on bar %s of instrument %s; no trade",
                      strategy.algorithm_id, bar.ts_close_ns, bar.instrument_id)
        return []
