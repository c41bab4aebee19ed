"""The deflated Sharpe ratio and the probability of backtest overfitting against known cases."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from bridge.research.overfitting import (EULER_GAMMA, blocks_for, deflated_sharpe, deflated_sharpe_of,
                                         expected_max_sharpe, pbo)


def test_deflated_sharpe_is_the_papers_numerical_example():
    # Bailey & Lopez de Prado (2014), section "A numerical example": 100 trials whose annualised Sharpe ratios vary
    # by 1/2, the best 2.5 annualised over 1250 daily returns (250 a year) with skew -3 and kurtosis 10: DSR 0.9004.
    d = deflated_sharpe(2.5 / math.sqrt(250), trial_sharpe_variance=0.5 / 250, n_trials=100, observations=1250,
                        skewness=-3.0, kurtosis=10.0)
    assert d.dsr == pytest.approx(0.9004, abs=5e-5)
    # the same by hand from the formula
    z = NormalDist()
    sr0 = math.sqrt(0.5 / 250) * ((1 - EULER_GAMMA) * z.inv_cdf(1 - 1 / 100) + EULER_GAMMA * z.inv_cdf(1 - 1 / (100 * math.e)))
    sr = 2.5 / math.sqrt(250)
    by_hand = z.cdf((sr - sr0) * math.sqrt(1249) / math.sqrt(1 + 3 * sr + 9 / 4 * sr ** 2))
    assert d.sharpe_benchmark == pytest.approx(sr0, rel=1e-12)
    assert d.dsr == pytest.approx(by_hand, rel=1e-12)


def test_one_trial_deflates_nothing_and_more_trials_deflate_more():
    assert expected_max_sharpe(0.01, 1) == 0.0
    assert expected_max_sharpe(0.01, 10) < expected_max_sharpe(0.01, 1000)
    args = dict(trial_sharpe_variance=0.01, observations=250, skewness=0.0, kurtosis=3.0)
    one = deflated_sharpe(0.1, n_trials=1, **args).dsr
    assert one == pytest.approx(NormalDist().cdf(0.1 * math.sqrt(249) / math.sqrt(1 + 2 / 4 * 0.01)))  # the PSR
    assert deflated_sharpe(0.1, n_trials=100, **args).dsr < one


def test_dsr_from_returns_uses_their_moments_and_is_nan_without_variation():
    rng = np.random.default_rng(3)
    r = rng.normal(0.001, 0.01, 500)
    d = deflated_sharpe_of(r, np.array([0.02, -0.01, 0.05, np.nan]))
    assert d.n_trials == 4 and d.observations == 500
    assert d.trial_sharpe_variance == pytest.approx(np.var([0.02, -0.01, 0.05, 0.0], ddof=1))
    assert d.kurtosis == pytest.approx(3.0, abs=0.5) and 0.0 <= d.dsr <= 1.0
    assert math.isnan(deflated_sharpe_of(np.zeros(30), np.array([0.1, 0.2])).dsr)


def test_pbo_is_zero_when_one_set_dominates_everywhere():
    rng = np.random.default_rng(11)
    m = rng.normal(0.0, 0.01, (160, 8))
    m[:, 5] += 0.05  # better than every other column on every block
    result = pbo(m, blocks=16)
    assert result.combinations == math.comb(16, 8)
    assert result.pbo == 0.0 and result.oos_loss_share == 0.0
    assert min(result.logits) == pytest.approx(math.log(8 / 9 / (1 - 8 / 9)))  # always ranked first of 8


def test_pbo_of_pure_noise_is_about_a_half_and_reproducible():
    values = []
    for seed in range(20):
        m = np.random.default_rng(seed).normal(0.0, 0.01, (120, 10))
        values.append(pbo(m, blocks=8).pbo)
    assert 0.4 <= float(np.mean(values)) <= 0.65  # the in-sample best is a random draw out of sample
    m = np.random.default_rng(5).normal(0.0, 0.01, (120, 10))
    assert pbo(m, blocks=8) == pbo(m.copy(), blocks=8)  # bit for bit, logits included


def test_blocks_shrink_with_few_days_and_pbo_needs_two_sets():
    assert blocks_for(400) == 16 and blocks_for(30) == 14 and blocks_for(9) == 4 and blocks_for(3) == 0
    assert math.isnan(pbo(np.zeros((50, 1))).pbo)
    assert math.isnan(pbo(np.zeros((3, 4))).pbo)
    with pytest.raises(ValueError):
        pbo(np.zeros((20, 3)), blocks=5)
