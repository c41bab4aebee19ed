"""ml.drift on synthetic data: the metrics against independent computations, the rule, the DI guard, alerts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from scipy import stats

from bridge.storage.database import create_engine_for

from ml.drift import (
    DissimilarityGuard,
    DriftDetector,
    DriftReference,
    DriftThresholds,
    alert_rows,
    effective_size,
    ks,
    psi,
    quantile_edges,
    report_json,
    store_alerts,
    wasserstein,
)

NAMES = [f"f{i}" for i in range(6)]


def _ar1(rng: np.random.Generator, n: int, k: int, rho: float = 0.8) -> np.ndarray:
    x = np.empty((n, k))
    x[0] = rng.normal(size=k)
    e = rng.normal(scale=math.sqrt(1 - rho ** 2), size=(n, k))
    for t in range(1, n):
        x[t] = rho * x[t - 1] + e[t]
    return x


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    return DriftReference.from_training(_ar1(np.random.default_rng(0), 20_000, len(NAMES)), NAMES, window=1000)


def test_psi_by_hand() -> None:
    ref = np.arange(1000, dtype=float)
    cur = np.concatenate([np.arange(500, dtype=float), np.full(500, 999.0)])
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=10) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=10) / cur.size
    r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
    assert psi(ref, cur) == pytest.approx(float(np.sum((c - r) * np.log(c / r))))
    assert psi(ref, ref) == 0.0


def test_edges_keep_tick_clusters_whole() -> None:
    # one-tick returns smeared by the price level: an edge must not cut through a cluster
    rng = np.random.default_rng(1)
    ticks = rng.choice([-2, -1, 0, 1, 2], p=[0.1, 0.2, 0.4, 0.2, 0.1], size=20_000)
    level = rng.uniform(4100, 4600, ticks.size)
    x = np.log1p(ticks * 0.25 / level)
    for e in quantile_edges(x):
        assert not np.any((np.abs(x - e) < 1e-6)), e  # every edge sits in a gap between clusters
    cheaper = np.log1p(ticks * 0.25 / (level * 1.05))  # the same moves five percent higher up
    assert psi(x, cheaper) < 0.01


def test_ks_and_wasserstein_match_scipy() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=3000), rng.normal(0.2, 1.3, size=2000)
    d, p = ks(a, b)
    expected = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a))
    # fewer effective draws: same statistic, weaker evidence
    _, p_eff = ks(a, b, 300.0, 200.0)
    assert p_eff > p


def test_effective_size_of_ar1() -> None:
    x = _ar1(np.random.default_rng(3), 50_000, 1, rho=0.9)[:, 0]
    assert effective_size(x) == pytest.approx(50_000 * 0.1 / 1.9, rel=0.1)
    white = np.random.default_rng(4).normal(size=50_000)
    assert effective_size(white) == pytest.approx(50_000, rel=0.05)


def test_reference_round_trips_through_npz(reference: DriftReference, tmp_path: Path) -> None:
    path = reference.save(tmp_path / "reference.npz")
    loaded = DriftReference.load(path)
    assert loaded.feature_names == reference.feature_names and loaded.window == 1000
    for name in ("edges", "shares", "sample", "mean", "std", "ess_ratio", "null_psi", "null_wasserstein"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(reference, name))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a drift reference.*from_training"):
        DriftReference.load(tmp_path / "other.npz")


def test_unshifted_windows_do_not_alert_and_shifted_ones_do(reference: DriftReference) -> None:
    detector = DriftDetector(reference)
    rng = np.random.default_rng(5)
    alerts = [detector.check(_ar1(rng, 1000, len(NAMES))).alert for _ in range(20)]
    assert sum(alerts) == 0
    window = _ar1(rng, 1000, len(NAMES))
    assert detector.check(window * 2.0).alert  # volatility x2
    assert detector.check(window + 0.5).alert  # mean shift of half a std
    one = window.copy()
    one[:, 0] += 3.0
    report = detector.check(one)
    assert report.drifted == ["f0"] and not report.alert  # one feature is not enough (needs 2)
    assert detector.counters.metrics()["drift_checks_total"] == 23.0
    assert detector.counters.metrics()["drift_alerts_total"] == 2.0


def test_rule_needs_every_condition(reference: DriftReference) -> None:
    window = _ar1(np.random.default_rng(6), 1000, len(NAMES)) + 0.5
    strict_ks = DriftDetector(reference, DriftThresholds(ks_alpha=1e-300))
    assert not strict_ks.check(window).alert
    assert DriftThresholds().features_needed(24) == 6 and DriftThresholds().features_needed(4) == 2


def test_bad_input_is_explained(reference: DriftReference) -> None:
    detector = DriftDetector(reference)
    with pytest.raises(ValueError, match="expected \\(rows, 6\\)"):
        detector.check(np.zeros((10, 5)))
    bad = np.zeros((10, 6))
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="1 rows with NaN.*warm-up"):
        detector.check(bad)


def test_di_guard_withholds_far_rows(reference: DriftReference) -> None:
    guard = DissimilarityGuard(reference, n_points=300)
    rng = np.random.default_rng(7)
    typical = _ar1(rng, 5000, len(NAMES))
    share = np.mean(guard.index_many(typical) > guard.threshold)
    assert share < 0.02  # calibrated at 0.5 % on training rows
    for row in typical[:50]:
        assert guard.index(row) == pytest.approx(guard.index_many(row[None, :])[0], rel=1e-9)
    far = reference.mean + 8.0 * reference.std
    assert not guard.allow(far)
    assert guard.allow(reference.mean)
    assert guard.metrics()["di_withheld_total"] == 1.0 and guard.metrics()["di_checked_total"] == 2.0


def test_di_by_hand(reference: DriftReference) -> None:
    guard = DissimilarityGuard(reference, n_points=50, threshold=1.0)
    z_points = guard._points  # noqa: SLF001 - the test recomputes from the chosen points
    d = np.sqrt(((z_points[:, None, :] - z_points[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert guard.mean_nn == pytest.approx(d.min(axis=1).mean())
    row = reference.mean + reference.std * 0.3
    z = (row - reference.mean) / reference.std
    assert guard.index(row) == pytest.approx(np.sqrt(((z_points - z) ** 2).sum(1)).min() / guard.mean_nn)


def test_alerts_are_stored(reference: DriftReference, storage_url: str) -> None:
    window = _ar1(np.random.default_rng(8), 1000, len(NAMES)) + 0.5
    report = DriftDetector(reference).check(window)
    rows = alert_rows(report, "ens-20231120-00000000", 30, 10, 20)
    assert len(rows) == 3 * report.n_drifted + 1 and rows[-1]["feature"] == "*"
    assert store_alerts(storage_url, report, "ens-20231120-00000000", 30, 10, 20) == len(rows)
    engine = create_engine_for(storage_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT feature, metric, value, threshold, n_rows FROM drift_alerts ORDER BY id")).all()
    finally:
        engine.dispose()
    assert len(stored) == len(rows) and stored[-1][0] == "*" and stored[0][4] == 1000
    assert '"alert": true' in report_json(report)
