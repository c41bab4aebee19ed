"""The strategy interface: read a bar and its features, maybe return a Signal.

A strategy implements ``on_bar`` and nothing else is required. It never sizes, never checks risk
and never talks to NT8: the pipeline does all of that with what the Signal says.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

from bridge.features import FeatureSnapshot
from bridge.market import BarData
from bridge.protocol.messages import EntryType, Side

log = logging.getLogger("nt8bridge.strategy")


@dataclass(frozen=True, slots=True)
class Signal:
    """What a strategy wants: a bracket on one instrument, and why."""

    instrument_id: int
    side: Side
    entry_type: EntryType
    entry_price: float  # NaN for a market entry
    stop_price: float
    target_price: float
    confidence: float  # 0..1; a win probability where the strategy has one
    rationale: str


class StrategyContext(Protocol):
    """What a strategy may ask of the session it runs in."""

    def is_flat(self, instrument_id: int) -> bool:
        """No position and no working bracket on the instrument."""

    def minutes_to_close(self, instrument_id: int, ts_ns: int) -> float:
        """Minutes from ``ts_ns`` to the close of the instrument's current session."""

    def tick_size(self, instrument_id: int) -> float: ...


class Strategy(ABC):
    name: ClassVar[str]
    version: ClassVar[str] = "0.1.0"

    @property
    def algorithm_id(self) -> str:
        """Unique per strategy and code version (RTS 22 style); carried by every order it causes."""
        return f"{self.name}@{self.version}"

    @abstractmethod
    def on_bar(self, bar: BarData, features: FeatureSnapshot, ctx: StrategyContext) -> Signal | None:
        """Called at each closed bar whose features are ready; return a Signal or None."""


def safe_on_bar(strategy: Strategy, bar: BarData, features: FeatureSnapshot,
                ctx: StrategyContext) -> Signal | None:
    """Run a strategy; an exception in its code becomes a logged no-trade, never a crash."""
    try:
        return strategy.on_bar(bar, features, ctx)
    except Exception:
        log.exception("strategy %s failed on bar %s of instrument %s; no trade",
                      strategy.algorithm_id, bar.ts_close_ns, bar.instrument_id)
        return None
