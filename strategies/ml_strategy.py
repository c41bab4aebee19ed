"""The ML ensemble strategy: trade the ensemble's calibrated win probability.

With ``strategy.ml_model`` set (a model id, or ``champion``), the model is loaded from the registry
(``strategy.ml_registry``) at start: artifacts checked, expiry checked, ONNX sessions warmed up.
Then at every closed minute bar of an instrument:

1. the model's own features are updated online (``ml.features.OnlineFeatures``, the definition it
   was trained with; the partner instrument's bars feed the cross features);
2. once the instrument is warm, flat and not in the session's last minutes, and the row is not far
   from anything seen in training (the dissimilarity guard), the ensemble gives p, the probability
   that the upper barrier is hit before the lower one;
3. a long wins with ``p * resolved_share``, a short with ``(1 - p) * resolved_share`` (time-outs
   count as not winning, so Kelly sizing is not fooled); the side whose win probability beats 1/2
   by ``strategy.ml_margin`` is signalled, with the stop and target at the label's barriers
   (``barrier_atr`` ATRs) and the label's horizon as the time limit.

Without a model, or when loading fails, the strategy is in the "no model" state: it says why in
``status`` (and in the log, once), and never trades. It never stands in a fake model.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import numpy as np

from bridge.core.config import StrategyConfig
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import MarketView, Signal, Strategy, round_to_tick

log = logging.getLogger("nt8bridge.strategy.ml")

NO_ENTRY_BEFORE_CLOSE_MIN = 30.0


class MLEnsembleStrategy(Strategy):
    name = "ml"
    style = "ml"

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config
        self._why_not = ""
        self.shadow = None  # ml.shadow.ShadowRunner when a challenger runs beside the model
        self.model = self._load(config)
        self._told = False
        self._features: dict[int, object] = {}  # instrument id -> OnlineFeatures
        self._windows: dict[int, deque] = {}  # instrument id -> the last seq_len feature rows
        self._partner_of: dict[int, int | None] = {}
        self.withheld = 0  # predictions the dissimilarity guard withheld
        self.predictions = 0

    def _load(self, config: StrategyConfig):
        if not config.ml_model:
            self._why_not = ("no model: strategy.ml_model is empty (train one with `nt8bridge train`, promote it "
                             "with `nt8bridge model promote`, then set strategy.ml_model = \"champion\")")
            return None
        try:
            from ml.serving import load_model, registry_folder
            model = load_model(registry_folder(config.ml_registry), config.ml_model,
                               di_quantile=config.ml_di_quantile)
        except Exception as exc:  # a trading process must start and say why it does not trade, never crash
            self._why_not = f"no model: {config.ml_model!r} could not be loaded: {exc}"
            log.error("ml strategy: %s", self._why_not)
            return None
        log.warning("ml strategy: trading model %s (%d features, sequence %d)", model.model_id,
                    len(model.meta["feature_names"]), model.seq_len)
        if config.ml_shadow:
            self.shadow = self._load_shadow(config, model)
        return model

    def _load_shadow(self, config: StrategyConfig, champion):
        """The challenger beside the champion (its failure to load never stops the champion trading)."""
        from ml.registry import Registry
        from ml.serving import load_model, registry_folder
        from ml.shadow import ShadowRunner
        root = registry_folder(config.ml_registry)
        try:
            wanted = config.ml_shadow
            if wanted == "latest":
                newer = [r for r in Registry(root).list()
                         if r.status == "challenger" and r.created_ns > champion.meta["created_ns"]]
                if not newer:
                    log.warning("ml strategy: no challenger newer than %s to run in shadow", champion.model_id)
                    return None
                wanted = newer[-1].model_id
            challenger = load_model(root, wanted, di_quantile=0.0)
        except Exception as exc:  # noqa: BLE001 - the shadow is optional, the champion trades on
            log.error("ml strategy: shadow challenger %r not loaded: %s", config.ml_shadow, exc)
            return None
        log.warning("ml strategy: %s runs in shadow beside %s", challenger.model_id, champion.model_id)
        return ShadowRunner(root, champion.model_id, challenger)

    @property
    def algorithm_id(self) -> str:
        """Unique per code and model version: the model id is part of it."""
        base = super().algorithm_id
        return f"{base}+{self.model.model_id}" if self.model is not None else base

    @property
    def status(self) -> str:
        return self._why_not if self.model is None else f"ready: model {self.model.model_id}"

    def metrics(self) -> dict[str, float]:
        out = {"predictions": float(self.predictions), "di_withheld": float(self.withheld)}
        if self.shadow is not None:
            out["shadow_labelled"] = float(self.shadow.labelled)
        return out

    # ------------------------------------------------------------------------------------ per bar

    def _state(self, iid: int, market: MarketView):
        from ml.features import PARTNERS, OnlineFeatures
        f = self._features.get(iid)
        if f is None:
            partner = market.instrument_id(PARTNERS.get(market.root(iid), ""))
            self._partner_of[iid] = partner
            f = self._features[iid] = OnlineFeatures(self.model.features, partner is not None)
            self._windows[iid] = deque(maxlen=self.model.seq_len)
        return f

    def on_bar(self, bar: BarData, market: MarketView) -> Signal | None:
        if self.model is None:
            if not self._told:
                log.warning("ml strategy: %s", self.status)
                self._told = True
            return None
        if bar.period_s != 60:
            return None  # the model was trained on minute bars
        iid = bar.instrument_id
        for other, partner in self._partner_of.items():  # this bar is another instrument's partner bar
            if partner == iid:
                self._features[other].on_partner_bar(bar.ts_close_ns, bar.close)
        if self.shadow is not None:
            self.shadow.on_bar(iid, bar.high, bar.low)  # label earlier shadow events with this bar first
        f = self._state(iid, market)
        row = f.on_bar(bar.ts_close_ns, bar.open, bar.high, bar.low, bar.close, float(bar.volume))
        if row is None:
            return None
        window = self._windows[iid]
        window.append(row.astype(np.float32))
        if len(window) < window.maxlen:
            return None
        model = self.model
        row32 = window[-1]
        dissimilarity = math.nan
        if model.guard is not None:
            dissimilarity = float(model.guard.index(row32))
            if dissimilarity > model.guard.threshold:  # far from anything seen in training: no opinion
                self.withheld += 1
                return None
        stacked = np.stack(window)
        pred = model.ensemble.predict(row32, stacked)
        self.predictions += 1
        if self.shadow is not None:
            from ml.serving import round_trip_cost
            cost_price = round_trip_cost(market.tick_size(iid), market.point_value(iid))
            self.shadow.score(iid, bar.ts_close_ns, row32, stacked, pred.probability, bar.close, f.atr, cost_price,
                              model.resolved_share)
        if not market.is_flat(iid) or market.minutes_to_close(iid, bar.ts_close_ns) < NO_ENTRY_BEFORE_CLOSE_MIN:
            return None
        return self._signal(bar, market, f, pred, dissimilarity)

    def _signal(self, bar: BarData, market: MarketView, f, pred, dissimilarity: float) -> Signal | None:
        model = self.model
        share = model.resolved_share
        p_long, p_short = pred.probability * share, (1.0 - pred.probability) * share
        threshold = 0.5 + self.config.ml_margin
        if p_long > threshold:
            side, p_win, sign = Side.BUY, p_long, 1.0
        elif p_short > threshold:
            side, p_win, sign = Side.SELL, p_short, -1.0
        else:
            return None
        iid = bar.instrument_id
        tick = market.tick_size(iid)
        distance = model.labels.barrier_atr * f.atr
        stop = round_to_tick(bar.close - sign * distance, tick)
        target = round_to_tick(bar.close + sign * distance, tick)
        members = ", ".join(f"{k} {v:.3f}" for k, v in pred.members.items())
        rationale = (f"ensemble {model.model_id}: p(up first) {pred.probability:.3f} x resolved {share:.2f} -> "
                     f"{'long' if sign > 0 else 'short'} wins {p_win:.3f} (members: {members}); barriers "
                     f"{model.labels.barrier_atr:g} ATR; DI {dissimilarity:.2f}; {pred.total_us:.0f} us")
        return Signal(iid, side, EntryType.MARKET, math.nan, stop, target, win_probability=p_win,
                      rationale=rationale, time_limit_s=model.labels.horizon_bars * 60.0)
