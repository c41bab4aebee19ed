"""Strategies by name: what ``strategy.names`` and ``nt8bridge backtest --strategies`` accept."""

from __future__ import annotations

from collections.abc import Callable

from bridge.core.config import StrategyConfig
from strategies.base import Strategy


def _momentum(c: StrategyConfig) -> Strategy:
    from strategies.momentum import Momentum
    return Momentum(c)


def _reversion(c: StrategyConfig) -> Strategy:
    from strategies.mean_reversion import MeanReversion
    return MeanReversion(c)


def _spread(c: StrategyConfig) -> Strategy:
    from strategies.spread import SpreadArbitrage
    return SpreadArbitrage(c)


def _ml(c: StrategyConfig) -> Strategy:
    from strategies.ml_strategy import MLEnsembleStrategy
    return MLEnsembleStrategy(c)


FACTORIES: dict[str, Callable[[StrategyConfig], Strategy]] = {
    "momentum": _momentum, "reversion": _reversion, "spread": _spread, "ml": _ml,
}


def build_strategies(config: StrategyConfig) -> list[Strategy]:
    """Fresh instances (strategies keep per-session state) of every strategy named in the config."""
    return [FACTORIES[name](config) for name in config.strategy_names()]
