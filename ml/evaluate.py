"""Out-of-sample scores of a probability model and the P&L of trading its signal after costs.

Probability scores (:func:`evaluate_probabilities`): log-loss, Brier score, accuracy at 0.5, ROC
AUC, a 10-bin reliability table and the expected calibration error. Trading (:func:`signal_pnl`):
the model's probability ``p`` that the upper barrier is hit first becomes a long when
``p >= threshold``, a short when ``p <= 1 - threshold``, nothing otherwise (the barriers are
symmetric, so one model serves both sides; see ``ml/__init__.py``), each trade paying
``cost_per_trade``. :func:`sharpe` and :func:`deflated_sharpe_ratio` (Bailey and López de Prado,
"The Deflated Sharpe Ratio", 2014) judge the resulting series, the latter discounting for the
number of configurations tried.

Everything is plain numpy and scipy: the sidecar imports nothing from training extras.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

EULER_GAMMA = 0.5772156649015329
PROB_CLIP = 1e-15
"""Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] in log-loss, as scikit-learn does."""


def _as_labels_and_probs(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y has {y.size} values and p {p.size}: give one probability per label")
    if y.size == 0:
        raise ValueError("no samples to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (time-outs are kept out of evaluation, see ml/__init__.py)")
    if not (np.isfinite(p).all() and (p >= 0.0).all() and (p <= 1.0).all()):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y, p


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of binary labels ``y`` under probabilities ``p``."""
    y, p = _as_labels_and_probs(y, p)
    return float(np.mean(pointwise_log_loss(y, p)))


def pointwise_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-sample log-loss (used for paired comparisons in ml/ab.py)."""
    q = np.clip(np.asarray(p, dtype=np.float64), PROB_CLIP, 1.0 - PROB_CLIP)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(q) + (1.0 - y) * np.log1p(-q))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between ``p`` and the 0/1 outcome."""
    y, p = _as_labels_and_probs(y, p)
    return float(np.mean((p - y) ** 2))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted one half; NaN with one class only."""
    y, p = _as_labels_and_probs(y, p)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(p)  # average ranks: ties count one half
    return float((ranks[y == 1.0].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of the reliability table: predictions in ``[lo, hi)`` (the last bin includes 1)."""

    lo: float
    hi: float
    count: int
    mean_p: float
    """Mean predicted probability in the bin (NaN when empty)."""
    frac_pos: float
    """Observed share of label 1 in the bin (NaN when empty)."""


def calibration_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[CalibrationBin]:
    """Reliability table on equal-width probability bins.

    Parameters
    ----------
    y, p
        Labels (0/1) and predicted probabilities.
    n_bins
        Equal-width bins over [0, 1].

    Returns
    -------
    list[CalibrationBin]
        ``n_bins`` rows, empty bins included (count 0).
    """
    y, p = _as_labels_and_probs(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    table = []
    for b in range(n_bins):
        inside = idx == b
        n = int(inside.sum())
        table.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), n,
                                    float(p[inside].mean()) if n else math.nan,
                                    float(y[inside].mean()) if n else math.nan))
    return table


def expected_calibration_error(table: list[CalibrationBin]) -> float:
    """ECE: the count-weighted mean of ``|frac_pos - mean_p|`` over non-empty bins."""
    total = sum(b.count for b in table)
    if total == 0:
        return math.nan
    return float(sum(b.count * abs(b.frac_pos - b.mean_p) for b in table if b.count) / total)


def evaluate_probabilities(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, object]:
    """All probability scores of a model on out-of-sample labels.

    Parameters
    ----------
    y
        0/1 labels (1: the upper barrier was hit first).
    p
        Predicted probabilities of label 1.
    n_bins
        Bins of the reliability table.

    Returns
    -------
    dict
        ``n``, ``base_rate``, ``log_loss``, ``brier``, ``accuracy`` (threshold 0.5), ``auc``,
        ``ece`` and ``calibration`` (a list of :class:`CalibrationBin` as dicts).
    """
    y, p = _as_labels_and_probs(y, p)
    table = calibration_table(y, p, n_bins)
    return {
        "n": int(y.size),
        "base_rate": float(y.mean()),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "accuracy": float(np.mean((p >= 0.5) == (y == 1.0))),
        "auc": auc(y, p),
        "ece": expected_calibration_error(table),
        "calibration": [asdict(b) for b in table],
    }


def signal_pnl(p: np.ndarray, outcome_returns: np.ndarray, threshold: float = 0.55,
               cost_per_trade: float = 0.0) -> np.ndarray:
    """Per-trade P&L after costs of trading the model's signal.

    Parameters
    ----------
    p
        Probability that the upper barrier is hit first, per event.
    outcome_returns
        What a long opened at the event made at its exit (price change in points, money, or a
        return, as long as ``cost_per_trade`` is in the same unit); a short makes its negative.
    threshold
        Long when ``p >= threshold``, short when ``p <= 1 - threshold``; must be in (0.5, 1].
    cost_per_trade
        Round-trip cost of one trade (commissions, fees, half-spreads, slippage).

    Returns
    -------
    numpy.ndarray
        One value per trade taken, in event order (events without a signal are left out).
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}: 0.5 or less would go long and short at once")
    p = np.asarray(p, dtype=np.float64).ravel()
    r = np.asarray(outcome_returns, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise ValueError(f"p has {p.size} values and outcome_returns {r.size}: give one exit return per event")
    side = np.where(p >= threshold, 1.0, np.where(p <= 1.0 - threshold, -1.0, 0.0))
    taken = side != 0.0
    return side[taken] * r[taken] - cost_per_trade


def sharpe(returns: np.ndarray, periods_per_year: float | None = None) -> float:
    """Sharpe ratio ``mean / std`` (sample std, ddof 1), annualised by ``sqrt(periods_per_year)`` if given.

    Returns NaN with fewer than two values or a zero standard deviation.
    """
    r = np.asarray(returns, dtype=np.float64).ravel()
    if r.size < 2:
        return math.nan
    sd = float(r.std(ddof=1))
    if sd == 0.0:
        return math.nan
    sr = float(r.mean()) / sd
    return sr * math.sqrt(periods_per_year) if periods_per_year else sr


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` unskilled trials (Bailey & López de Prado 2014, eq. 7 input).

    ``SR0 = sqrt(V) ((1 - gamma) Z^-1(1 - 1/N) + gamma Z^-1(1 - 1/(N e)))`` with ``gamma`` the
    Euler-Mascheroni constant and ``V`` the variance of the trials' Sharpe ratios.
    """
    if n_trials < 1:
        raise ValueError("n_trials must be at least 1")
    if n_trials == 1:
        return 0.0  # one trial: no selection, the benchmark is a zero Sharpe ratio
    z = stats.norm.ppf
    return math.sqrt(sr_variance) * ((1.0 - EULER_GAMMA) * z(1.0 - 1.0 / n_trials)
                                     + EULER_GAMMA * z(1.0 - 1.0 / (n_trials * math.e)))


def probabilistic_sharpe_ratio(sr: float, sr_benchmark: float, skew: float, kurtosis: float, n_obs: int) -> float:
    """Probability that the true Sharpe ratio exceeds ``sr_benchmark`` (Bailey & López de Prado 2012).

    ``PSR = Z((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))``, per-period Sharpe
    ratios, ``g4`` the (non-excess) kurtosis.
    """
    if n_obs < 2:
        raise ValueError("n_obs must be at least 2")
    denominator = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if denominator <= 0.0:
        raise ValueError("skew and kurtosis give a non-positive variance for the Sharpe ratio: check that "
                         "kurtosis is the non-excess one (3 for normal returns)")
    return float(stats.norm.cdf((sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denominator)))


def deflated_sharpe_ratio(sr: float, n_trials: int, skew: float, kurtosis: float, n_obs: int,
                          sr_variance: float | None = None) -> float:
    """Deflated Sharpe ratio (Bailey & López de Prado, 2014): the PSR against the best of ``n_trials`` by luck.

    Parameters
    ----------
    sr
        The selected strategy's per-period (not annualised) Sharpe ratio.
    n_trials
        Independent configurations tried before choosing this one.
    skew, kurtosis
        Of the per-period returns; ``kurtosis`` is the non-excess one (3 for a normal).
    n_obs
        Number of returns the Sharpe ratio was measured on.
    sr_variance
        Variance of the Sharpe ratios across the trials. When unknown, the variance of a Sharpe
        ratio estimate under the null, ``1 / (n_obs - 1)`` (a zero-skill trial's estimation noise),
        is used.

    Returns
    -------
    float
        Probability in [0, 1] that the true Sharpe ratio is above the expected maximum of
        ``n_trials`` unskilled trials; 0.95 is the usual bar.
    """
    if sr_variance is None:
        sr_variance = 1.0 / (n_obs - 1)
    benchmark = expected_max_sharpe(n_trials, sr_variance)
    return probabilistic_sharpe_ratio(sr, benchmark, skew, kurtosis, n_obs)


@dataclass
class EvaluationReport:
    """Everything the registry and the HTML report keep about a model's out-of-sample evaluation."""

    scores: dict[str, object]
    """From :func:`evaluate_probabilities`."""
    n_trades: int
    pnl_total: float
    pnl_per_trade: float
    hit_rate: float
    sharpe_per_trade: float
    deflated_sharpe: float
    n_trials: int
    threshold: float
    cost_per_trade: float
    equity: list[float] = field(default_factory=list)
    """Cumulative P&L after each trade (for the equity curve)."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def evaluate(y: np.ndarray, p: np.ndarray, outcome_returns: np.ndarray, threshold: float = 0.55,
             cost_per_trade: float = 0.0, n_trials: int = 1) -> EvaluationReport:
    """Scores plus signal P&L in one report.

    Parameters
    ----------
    y, p
        Labels and probabilities, one per event.
    outcome_returns
        A long's exit return per event (see :func:`signal_pnl`).
    threshold, cost_per_trade
        As for :func:`signal_pnl`.
    n_trials
        Configurations tried (models, thresholds, feature sets), for the deflated Sharpe ratio.

    Returns
    -------
    EvaluationReport
    """
    pnl = signal_pnl(p, outcome_returns, threshold, cost_per_trade)
    sr = sharpe(pnl)
    dsr = math.nan
    if pnl.size >= 3 and math.isfinite(sr):
        dsr = deflated_sharpe_ratio(sr, n_trials, float(stats.skew(pnl)), float(stats.kurtosis(pnl, fisher=False)),
                                    int(pnl.size))
    return EvaluationReport(
        scores=evaluate_probabilities(y, p),
        n_trades=int(pnl.size),
        pnl_total=float(pnl.sum()),
        pnl_per_trade=float(pnl.mean()) if pnl.size else math.nan,
        hit_rate=float(np.mean(pnl > 0.0)) if pnl.size else math.nan,
        sharpe_per_trade=sr,
        deflated_sharpe=dsr,
        n_trials=n_trials,
        threshold=threshold,
        cost_per_trade=cost_per_trade,
        equity=np.cumsum(pnl).tolist(),
    )
