"""ml.ab: a genuinely better challenger is promoted, an identical one never, too little data decides nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.ab import (
    KEEP,
    NOT_ENOUGH,
    PROMOTE,
    ShadowComparison,
    block_bootstrap_ci,
    diebold_mariano,
    newey_west_variance,
)


def _stream(seed: int, n: int, challenger_noise: float, champion_noise: float = 1.0):
    """Autocorrelated true win probabilities, labels drawn from them, two noisy models of them.

    The latent log-odds follow an AR(1) with coefficient 0.9 (like overlapping barrier outcomes on
    minute bars); each model sees it through its own AR(1) error, so loss differences are
    autocorrelated too.
    """
    rng = np.random.default_rng(seed)

    def ar1(scale: float) -> np.ndarray:
        e = rng.normal(0.0, scale * math.sqrt(1 - 0.9 ** 2), n)
        x = np.empty(n)
        x[0] = rng.normal(0.0, scale)
        for t in range(1, n):
            x[t] = 0.9 * x[t - 1] + e[t]
        return x

    z = ar1(1.0)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)
    p_champion = 1 / (1 + np.exp(-(z + ar1(champion_noise))))
    p_challenger = 1 / (1 + np.exp(-(z + ar1(challenger_noise))))
    exit_return = np.where(y == 1, 1.0, -1.0)
    return y, p_champion, p_challenger, exit_return


def _comparison(y, pc, pn, r, min_samples=500, seed=0) -> ShadowComparison:
    cmp = ShadowComparison("champ", "chall", min_samples=min_samples, n_boot=500, seed=seed)
    for i in range(y.size):
        pnl_c = (1.0 if pc[i] >= 0.5 else -1.0) * r[i]
        pnl_n = (1.0 if pn[i] >= 0.5 else -1.0) * r[i]
        cmp.add(i, pc[i], pn[i], int(y[i]), pnl_c, pnl_n)
    return cmp


def test_genuinely_better_challenger_is_promoted_across_seeds() -> None:
    decisions = []
    for seed in range(20):
        y, pc, pn, r = _stream(seed, 3000, challenger_noise=0.3)
        decisions.append(_comparison(y, pc, pn, r, seed=seed).decide().decision)
    assert decisions.count(PROMOTE) >= 18, decisions


def test_identical_model_is_never_promoted() -> None:
    for seed in range(10):
        y, pc, _, r = _stream(seed, 2000, challenger_noise=1.0)
        result = _comparison(y, pc, pc, r).decide()
        assert result.decision == KEEP
        assert result.mean_logloss_diff == 0.0 and result.dm_p == 1.0


def test_equally_good_challenger_is_rarely_promoted() -> None:
    # Same quality, different errors: every promotion is a false positive (0 of 40 when written).
    promoted = 0
    for seed in range(40):
        y, pc, pn, r = _stream(100 + seed, 2000, challenger_noise=1.0)
        promoted += _comparison(y, pc, pn, r).decide().decision == PROMOTE
    assert promoted <= 4  # 10 %: room for chance above the 5 % level


def test_too_few_samples_is_not_enough_data() -> None:
    y, pc, pn, r = _stream(1, 200, challenger_noise=0.1)
    result = _comparison(y, pc, pn, r, min_samples=500).decide()
    assert result.decision == NOT_ENOUGH
    assert result.n == 200
    assert "200 labelled events, 500 needed" in result.reasons[0]


def test_unresolved_events_are_not_compared() -> None:
    cmp = ShadowComparison(min_samples=2)
    cmp.record("a", 0.6, 0.7)
    cmp.record("b", 0.4, 0.3)
    cmp.record("c", 0.5, 0.5)  # a time-out: never resolved
    cmp.resolve("a", 1)
    cmp.resolve("b", 0)
    result = cmp.decide()
    assert result.n == 2 and len(cmp) == 3
    with pytest.raises(KeyError, match="never recorded"):
        cmp.resolve("zzz", 1)
    with pytest.raises(ValueError, match="already recorded"):
        cmp.record("a", 0.1, 0.2)


def test_better_log_loss_but_worse_pnl_keeps_the_champion() -> None:
    y, pc, pn, r = _stream(3, 3000, challenger_noise=0.3)
    cmp = ShadowComparison(min_samples=500, n_boot=500)
    for i in range(y.size):
        cmp.add(i, pc[i], pn[i], int(y[i]), 1.0, 0.0)  # the challenger's signal loses a point every event
    result = cmp.decide()
    assert result.decision == KEEP
    assert result.pnl_ci[1] < 0.0
    assert any("significantly worse" in reason for reason in result.reasons)


def test_newey_west_by_hand() -> None:
    d = np.array([1.0, 2.0, 0.0, 3.0, 1.0, -1.0])
    e = d - d.mean()
    n = d.size
    g = [float(e[k:] @ e[: n - k]) / n for k in range(3)]
    assert newey_west_variance(d, lags=2) == pytest.approx(g[0] + 2 * (2 / 3) * g[1] + 2 * (1 / 3) * g[2])
    assert newey_west_variance(d, lags=0) == pytest.approx(g[0])


def test_diebold_mariano_is_wider_than_a_naive_test_on_autocorrelated_differences() -> None:
    rng = np.random.default_rng(0)
    d = np.empty(5000)
    d[0] = 0.0
    for t in range(1, d.size):
        d[t] = 0.9 * d[t - 1] + rng.normal()
    stat, _ = diebold_mariano(d, lags=50)
    naive = d.mean() / (d.std(ddof=0) / math.sqrt(d.size))
    assert abs(stat) < abs(naive) / 2  # long-run variance ~19x the variance for AR(1) 0.9


def test_block_bootstrap_covers_the_mean() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 1000)
    lo, hi = block_bootstrap_ci(d, n_boot=1000)
    assert lo < d.mean() < hi
    assert lo > 0.1 and hi < 0.5
