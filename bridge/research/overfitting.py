"""How much of a searched strategy's Sharpe ratio is selection luck: the deflated Sharpe ratio and the
probability of backtest overfitting.

- **Deflated Sharpe ratio** (Bailey & Lopez de Prado, "The Deflated Sharpe Ratio", 2014): the probability that
  the true Sharpe ratio beats ``SR0``, the highest Sharpe ratio that ``N`` trials without skill would be expected
  to show given how much the trials' Sharpe ratios vary; the observed ratio's standard error accounts for the
  returns' skewness and kurtosis and their number ``T``. Sharpe ratios here are per period (not annualised),
  as in the paper's formulas.
- **Probability of backtest overfitting** (Bailey, Borwein, Lopez de Prado & Zhu, "The Probability of Backtest
  Overfitting", 2015), by combinatorially symmetric cross-validation: the ``T x N`` matrix of the trials'
  returns is cut into ``S`` blocks of consecutive rows; for every way of taking ``S/2`` blocks as in-sample and
  the rest as out-of-sample, the in-sample best trial's out-of-sample rank gives a logit; PBO is the share of
  logits at or below zero (the in-sample winner finished in the bottom half out of sample).

Both are pure functions of their inputs: the same matrix gives the same numbers, bit for bit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["EULER_GAMMA", "DeflatedSharpe", "Pbo", "blocks_for", "deflated_sharpe", "expected_max_sharpe",
           "per_period_sharpe", "pbo"]

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def per_period_sharpe(returns: np.ndarray) -> float:
    """``mean / std`` (ddof=1) of one series, not annualised; NaN with fewer than two returns or no variation."""
    r = np.asarray(returns, dtype=float)
    if r.size < 2 or np.all(r == r[0]):
        return math.nan
    return float(np.mean(r) / np.std(r, ddof=1))


def expected_max_sharpe(trial_sharpe_variance: float, n_trials: int) -> float:
    """``SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))`` (g: Euler-Mascheroni): the expected
    maximum of ``N`` Sharpe ratios drawn around zero with variance ``V``. One trial selects nothing: 0."""
    if n_trials < 2 or not trial_sharpe_variance > 0:
        return 0.0
    return math.sqrt(trial_sharpe_variance) * ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n_trials)
                                               + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e)))


@dataclass(frozen=True)
class DeflatedSharpe:
    dsr: float                  # probability in [0, 1]; NaN when the Sharpe ratio is undefined
    sharpe: float               # per period
    sharpe_benchmark: float     # SR0, per period
    n_trials: int
    trial_sharpe_variance: float
    observations: int
    skewness: float
    kurtosis: float             # not excess: a normal distribution's is 3


def deflated_sharpe(sharpe: float, *, trial_sharpe_variance: float, n_trials: int, observations: int,
                    skewness: float, kurtosis: float) -> DeflatedSharpe:
    """``DSR = Z((SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))`` with ``SR0`` from
    ``expected_max_sharpe``. NaN when the inputs leave it undefined (fewer than two observations, a NaN Sharpe
    ratio, or skew and kurtosis that make the variance term non-positive)."""
    sr0 = expected_max_sharpe(trial_sharpe_variance, n_trials)
    value = math.nan
    if observations >= 2 and all(math.isfinite(x) for x in (sharpe, skewness, kurtosis)):
        denom = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe ** 2
        if denom > 0:
            value = _NORMAL.cdf((sharpe - sr0) * math.sqrt(observations - 1) / math.sqrt(denom))
    return DeflatedSharpe(value, sharpe, sr0, n_trials, trial_sharpe_variance, observations, skewness, kurtosis)


def deflated_sharpe_of(returns: np.ndarray, trial_sharpes: np.ndarray) -> DeflatedSharpe:
    """The deflated Sharpe ratio of ``returns`` (the selected strategy's, per period) after ``len(trial_sharpes)``
    trials; a trial whose Sharpe ratio is undefined (no trades, no variation) counts as 0."""
    r = np.asarray(returns, dtype=float)
    trials = np.nan_to_num(np.asarray(trial_sharpes, dtype=float), nan=0.0)
    variance = float(np.var(trials, ddof=1)) if trials.size >= 2 else 0.0
    skew = kurt = math.nan
    if r.size >= 2 and np.std(r) > 0:
        z = (r - r.mean()) / r.std()  # population moments, as the paper's estimators
        skew, kurt = float(np.mean(z ** 3)), float(np.mean(z ** 4))
    return deflated_sharpe(per_period_sharpe(r), trial_sharpe_variance=variance, n_trials=max(1, trials.size),
                           observations=int(r.size), skewness=skew, kurtosis=kurt)


@dataclass(frozen=True)
class Pbo:
    pbo: float                  # share of logits <= 0; NaN when there is nothing to split
    blocks: int                 # S
    combinations: int           # C(S, S/2)
    logits: tuple[float, ...]   # one per combination, in itertools.combinations order
    oos_loss_share: float       # share of combinations where the in-sample best lost money out of sample


def blocks_for(rows: int, most: int = 16, least_rows: int = 2) -> int:
    """``S``: the largest even number of blocks up to ``most`` that leaves each block ``least_rows`` rows; 0 when
    there are too few rows for two."""
    s = min(most, rows // least_rows)
    s -= s % 2
    return s if s >= 2 else 0


def _performance(block: np.ndarray) -> np.ndarray:
    """Each column's Sharpe ratio over the rows; a flat column scores 0, a flat but gaining one +inf."""
    mean = block.mean(axis=0)
    std = block.std(axis=0, ddof=1) if block.shape[0] > 1 else np.zeros(block.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(std > 0, mean / np.where(std > 0, std, 1.0), np.sign(mean) * np.inf)
    return np.nan_to_num(out, nan=0.0, posinf=np.inf, neginf=-np.inf)


def pbo(matrix: np.ndarray, blocks: int | None = None) -> Pbo:
    """PBO of the ``T x N`` return matrix (rows in time order, one column per trial) by CSCV with ``blocks`` (S,
    even; default ``blocks_for(T)``) blocks of consecutive rows (``numpy.array_split``: sizes differ by at most
    one). The in-sample best is the first of equals; its out-of-sample rank among the N is the average rank of
    any ties, ``w = rank / (N + 1)``, logit ``ln(w / (1 - w))``."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"the return matrix must be T x N, got shape {m.shape}")
    t, n = m.shape
    s = blocks_for(t) if blocks is None else blocks
    if n < 2 or s < 2:
        return Pbo(math.nan, s, 0, (), math.nan)
    if s % 2 or s > t:
        raise ValueError(f"blocks must be even and at most the number of rows ({t}), got {s}")
    parts = np.array_split(np.arange(t), s)
    logits: list[float] = []
    losses = 0
    for chosen in itertools.combinations(range(s), s // 2):
        inside = np.concatenate([parts[i] for i in chosen])
        outside = np.concatenate([parts[i] for i in range(s) if i not in chosen])
        best = int(np.argmax(_performance(m[inside])))
        oos = _performance(m[outside])
        rank = np.count_nonzero(oos < oos[best]) + (np.count_nonzero(oos == oos[best]) + 1) / 2
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
        losses += bool(m[outside, best].sum() < 0)
    arr = np.array(logits)
    return Pbo(float(np.mean(arr <= 0)), s, len(logits), tuple(logits), losses / len(logits))
