"""The ML ensemble strategy: trade the ensemble's calibrated win probability.

The ensemble lives in ``ml/`` (issue 4). Until a model is registered and promoted, this strategy
is in the "no model" state: it says so in ``status`` (and in the log, once), and never trades. It
never stands in a fake model: a probability nobody estimated would be sized by Kelly as if it were
real.
"""

from __future__ import annotations

import logging

from bridge.config import StrategyConfig
from bridge.market import BarData
from strategies.base import MarketView, Signal, Strategy

log = logging.getLogger("nt8bridge.strategy.ml")


class MLEnsembleStrategy(Strategy):
    name = "ml"
    style = "ml"

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config
        self.model = self._load(config.ml_model)
        self._told = False

    @staticmethod
    def _load(model_id: str) -> object | None:
        if not model_id:
            return None
        try:
            from ml import load_champion  # type: ignore[attr-defined]  # arrives with issue 4
        except ImportError:
            log.warning("strategy.ml_model is %r but this build has no model registry (ml/); no trading", model_id)
            return None
        return load_champion(model_id)

    @property
    def status(self) -> str:
        if self.model is None:
            return ("no model: no ML model is registered and promoted (set strategy.ml_model once `nt8bridge "
                    "train` has registered one); this strategy does not trade")
        return "ready"

    def on_bar(self, bar: BarData, market: MarketView) -> Signal | None:
        if self.model is None:
            if not self._told:
                log.warning("ml strategy: %s", self.status)
                self._told = True
            return None
        return self.model.signal(bar, market)  # type: ignore[attr-defined]
