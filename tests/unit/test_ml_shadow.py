"""The shadow runner labels events online exactly as ml.labels does offline, and pairs the models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from ml.features import FeatureConfig, offline_features
from ml.labels import LabelConfig, triple_barrier
from ml.serving import side_of
from ml.shadow import ShadowRunner, read_ab_decision, read_ab_result


@dataclass
class _Prediction:
    probability: float


class _ConstantEnsemble:
    """A stand-in for the challenger's ONNX ensemble: the labelling, not the model, is under test."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict(self, row, window) -> _Prediction:
        return _Prediction(self.p)


@dataclass
class _Challenger:
    model_id: str
    ensemble: _ConstantEnsemble
    labels: LabelConfig
    resolved_share: float = 1.0


@pytest.mark.shared_data
def test_online_labels_of_the_shadow_match_the_offline_triple_barrier(shared_data, tmp_path):
    from bridge.data.nt8files import read_nt8
    bars = read_nt8(shared_data / "nt8" / "ES 12-23.Last.txt").iloc[:4000].reset_index(drop=True)
    labels_cfg = LabelConfig(barrier_atr=3.0, horizon_bars=60)
    atr = offline_features(bars, None, FeatureConfig())["atr"].to_numpy()
    offline = triple_barrier(bars, atr, labels_cfg)
    runner = ShadowRunner(tmp_path, "champ", _Challenger("chal", _ConstantEnsemble(0.6), labels_cfg),
                          decide_every=10**9)
    last_scored = len(bars) - labels_cfg.horizon_bars - 1
    scored = []
    for i, b in enumerate(bars.itertuples()):
        runner.on_bar(0, b.high, b.low)
        if i < last_scored and math.isfinite(atr[i]) and atr[i] > 0:
            runner.score(0, int(b.ts_ns), None, None, 0.4, b.close, atr[i], 0.5, 1.0)
            scored.append(i)
    want = offline["label"].to_numpy()[scored]
    resolved = np.isfinite(want)
    result = runner.comparison.decide()
    assert result.n == int(resolved.sum()) > 1000  # every event that resolved offline, and no time-out
    assert runner.labelled == result.n
    # the paired log-loss difference follows from the labels alone: -log(0.6) or -log(0.4) against the champion's
    ones = int(want[resolved].sum())
    d = (ones * (-math.log(0.6) + math.log(0.4)) + (result.n - ones) * (-math.log(0.4) + math.log(0.6))) / result.n
    assert result.mean_logloss_diff == pytest.approx(d, rel=1e-9)


def test_each_models_signal_pnl_uses_the_break_even_rule_and_the_result_is_saved(tmp_path):
    labels_cfg = LabelConfig(barrier_atr=2.0, horizon_bars=5)
    runner = ShadowRunner(tmp_path, "champ", _Challenger("chal", _ConstantEnsemble(0.9), labels_cfg), decide_every=1)
    # close 100, ATR 1: barriers at 102 / 98; cost 0.5 price = 0.5 ATR -> break-even (2 + 0.5) / 4 = 0.625
    assert side_of(0.9, 1.0, 2.0, 0.5) == 1 and side_of(0.6, 1.0, 2.0, 0.5) == 0 and side_of(0.2, 1.0, 2.0, 0.5) == -1
    runner.score(0, 1, None, None, 0.6, 100.0, 1.0, 0.5, 1.0)
    runner.on_bar(0, 101.0, 99.0)
    runner.on_bar(0, 102.5, 100.0)  # upper barrier: label 1
    result = read_ab_result(tmp_path, "chal")
    assert result["n"] == 1 and result["n_pnl"] == 1
    # champion: no trade (0); challenger: long, +2 ATR - 0.5 ATR of cost
    assert result["mean_pnl_diff"] == pytest.approx(1.5)
    assert read_ab_decision(tmp_path, "chal") == "not enough data"
    assert read_ab_decision(tmp_path, "nobody") is None
