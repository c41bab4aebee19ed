"""ml.evaluate against independent computations: scikit-learn's metrics, hand-written loops, the DSR paper."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ml.evaluate import (
    calibration_table,
    deflated_sharpe_ratio,
    evaluate,
    evaluate_probabilities,
    expected_max_sharpe,
    sharpe,
    signal_pnl,
)


@pytest.fixture
def labelled() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    q = rng.uniform(0.05, 0.95, 2000)
    y = (rng.uniform(size=q.size) < q).astype(int)
    p = np.clip(q + rng.normal(0, 0.1, q.size), 0.0, 1.0)
    p[:3] = [0.0, 1.0, 0.5]  # the edges of the probability range and a tie
    return y, p


def test_scores_match_scikit_learn(labelled: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = labelled
    scores = evaluate_probabilities(y, p)
    assert scores["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-12)
    assert scores["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert scores["auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert scores["accuracy"] == pytest.approx(np.mean((p >= 0.5).astype(int) == y))
    assert scores["n"] == y.size and scores["base_rate"] == pytest.approx(y.mean())


def test_auc_counts_ties_one_half() -> None:
    assert evaluate_probabilities(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))["auc"] == 0.5
    assert math.isnan(evaluate_probabilities(np.array([1, 1]), np.array([0.2, 0.9]))["auc"])


def test_calibration_table_and_ece_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.12, 0.55, 0.58, 0.91, 0.99, 1.0])
    table = calibration_table(y, p)
    assert [b.count for b in table] == [1, 2, 0, 0, 0, 2, 0, 0, 0, 3]
    assert table[1].mean_p == pytest.approx(0.135) and table[1].frac_pos == pytest.approx(0.5)
    assert table[9].mean_p == pytest.approx((0.91 + 0.99 + 1.0) / 3) and table[9].frac_pos == pytest.approx(2 / 3)
    ece = (1 * 0.05 + 2 * abs(0.5 - 0.135) + 2 * abs(1.0 - 0.565) + 3 * abs(2 / 3 - 2.9 / 3)) / 8
    assert evaluate_probabilities(y, p)["ece"] == pytest.approx(ece)


def test_signal_pnl_sides_threshold_and_costs() -> None:
    p = np.array([0.70, 0.50, 0.30, 0.56, 0.44, 0.55])
    r = np.array([2.0, 5.0, 1.0, -1.0, 3.0, 4.0])
    pnl = signal_pnl(p, r, threshold=0.55, cost_per_trade=0.5)
    # long 0.70 (+2), no trade 0.50, short 0.30 (-1), long 0.56 (-1), short 0.44 (-3), long 0.55 (+4)
    np.testing.assert_allclose(pnl, [1.5, -1.5, -1.5, -3.5, 3.5])
    with pytest.raises(ValueError, match="threshold"):
        signal_pnl(p, r, threshold=0.5)


def test_sharpe_is_mean_over_sample_std() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.00, 0.015])
    assert sharpe(r) == pytest.approx(r.mean() / r.std(ddof=1))
    assert sharpe(r, 252) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert math.isnan(sharpe(np.array([1.0, 1.0])))


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_deflated_sharpe_ratio_by_hand() -> None:
    # Bailey & Lopez de Prado (2014), section 4's example: annual SR 2.5 over 1250 daily returns,
    # 100 trials whose annualised SRs have variance 0.5, skew -3, kurtosis 10 -> DSR ~ 0.9004.
    sr, n_obs, n_trials = 2.5 / math.sqrt(250), 1250, 100
    variance = 0.5 / 250
    # the two normal quantiles written out: Z^-1(1 - 1/100) and Z^-1(1 - 1/(100 e))
    z1, z2 = 2.3263478740408408, 2.6802104449668875
    gamma = 0.5772156649015329
    sr0 = math.sqrt(variance) * ((1 - gamma) * z1 + gamma * z2)
    assert sr0 * math.sqrt(250) == pytest.approx(1.7894, abs=1e-4)  # annualised SR0
    by_hand = _norm_cdf((sr - sr0) * math.sqrt(n_obs - 1) / math.sqrt(1 + 3 * sr + (10 - 1) / 4 * sr ** 2))
    dsr = deflated_sharpe_ratio(sr, n_trials, skew=-3.0, kurtosis=10.0, n_obs=n_obs, sr_variance=variance)
    assert dsr == pytest.approx(by_hand, rel=1e-9)
    assert dsr == pytest.approx(0.9004, abs=1e-3)
    assert expected_max_sharpe(n_trials, variance) == pytest.approx(sr0, rel=1e-12)


def test_more_trials_deflate_more() -> None:
    values = [deflated_sharpe_ratio(0.1, n, 0.0, 3.0, 500) for n in (1, 10, 100, 1000)]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(_norm_cdf(0.1 * math.sqrt(499) / math.sqrt(1 + 0.5 * 0.01)))


def test_evaluate_bundles_scores_and_equity(labelled: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = labelled
    r = np.where(y == 1, 1.0, -1.0)
    report = evaluate(y, p, r, threshold=0.6, cost_per_trade=0.1, n_trials=5)
    pnl = signal_pnl(p, r, 0.6, 0.1)
    assert report.n_trades == pnl.size
    assert report.pnl_total == pytest.approx(pnl.sum())
    assert report.equity[-1] == pytest.approx(pnl.sum())
    assert 0.0 <= report.deflated_sharpe <= 1.0
    assert report.to_dict()["scores"]["n"] == y.size


def test_bad_inputs_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="one probability per label"):
        evaluate_probabilities(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="0 or 1"):
        evaluate_probabilities(np.array([0, 2]), np.array([0.5, 0.5]))


def test_model_report_renders_charts_and_escapes(labelled: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    import re
    import xml.etree.ElementTree as ET

    from ml.drift import DriftDetector, DriftReference
    from reports.model_report import nice_ticks, render_model_report, write_model_report

    y, p = labelled
    report = evaluate(y, p, np.where(y == 1, 1.0, -1.0), threshold=0.6, cost_per_trade=0.1)
    rng = np.random.default_rng(0)
    reference = DriftReference.from_training(rng.normal(size=(5000, 3)), ["a", "b", "<c>"], window=500)
    drift = DriftDetector(reference).check(rng.normal(size=(500, 3)) + 1.0)
    record = {"model_id": "ens-20231120-<x>", "status": "challenger", "created_ns": 1_700_438_400 * 10**9,
              "feature_names": ["a", "b", "<c>"], "label_config": {"upper_ticks": 8}}
    page = render_model_report(record, report, drift=drift)
    assert "<x>" not in page and "&lt;x&gt;" in page and "&lt;c&gt;" in page
    assert "DRIFT ALERT" in page and "2023-11-20T00:00:00" in page
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) == 2
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert svgs[0].count("<circle") == sum(1 for b in report.scores["calibration"] if b["count"])
    assert "<script" not in page
    path = write_model_report(page, tmp_path / "report.html")
    assert path.read_text(encoding="utf-8") == page
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    bare = render_model_report({}, report, calibration=[], equity=[1.0, -2.0])
    assert "no drift check supplied" in bare and "<circle" not in bare
