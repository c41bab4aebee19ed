"""The champion against a challenger in shadow, on the same stream, with a statistical decision.

Both models score every event; only the champion's signal trades. When an event's label (and
the P&L each model's signal would have made) becomes known, the pair is complete. :meth:`ShadowComparison.decide`
then compares them on the *same* events, which removes the market's own variation from the
comparison (a paired test).

Why tests that respect autocorrelation: consecutive minute events share most of their future
path (overlapping barriers, volatility clustering), so their loss differences are positively
autocorrelated and a plain t-test counts the same information many times, which makes it
promote far too often. The log-loss comparison is the Diebold-Mariano test with a Newey-West
(Bartlett kernel) long-run variance; the P&L difference gets a moving-block bootstrap interval.

Decision rule (all must hold for ``"promote"``):

1. at least ``min_samples`` labelled events (else ``"not enough data"``);
2. the challenger's mean log-loss is lower and the one-sided Diebold-Mariano p-value is below
   ``alpha``;
3. when P&L is known for at least ``min_samples`` events, the challenger's signal P&L is not
   worse: the upper end of the block-bootstrap ``1 - alpha`` interval of the mean P&L difference
   (challenger minus champion) is above zero.

Otherwise ``"keep champion"``, with the reasons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ml.evaluate import pointwise_log_loss

PROMOTE = "promote"
KEEP = "keep champion"
NOT_ENOUGH = "not enough data"


def newey_west_variance(d: np.ndarray, lags: int | None = None) -> float:
    """Long-run variance of a series (Bartlett kernel), i.e. ``n`` times the variance of its mean.

    Parameters
    ----------
    d
        The series (e.g. loss differences), in time order.
    lags
        Bartlett truncation lag; None chooses ``floor(4 (n / 100) ** (2 / 9))`` (Newey and West 1994).

    Returns
    -------
    float
        ``gamma_0 + 2 sum_{k=1..L} (1 - k / (L + 1)) gamma_k``, never negative.
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if lags is None:
        lags = int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))
    lags = max(0, min(lags, n - 1))
    e = d - d.mean()
    total = float(e @ e) / n
    for k in range(1, lags + 1):
        total += 2.0 * (1.0 - k / (lags + 1.0)) * float(e[k:] @ e[:-k]) / n
    return max(total, 0.0)


def diebold_mariano(d: np.ndarray, lags: int | None = None) -> tuple[float, float]:
    """Diebold-Mariano statistic of mean(d) = 0 and the one-sided p-value for mean(d) < 0.

    Parameters
    ----------
    d
        Loss differences, challenger minus champion (negative: the challenger is better).
    lags
        Newey-West lag (see :func:`newey_west_variance`).

    Returns
    -------
    tuple[float, float]
        The statistic (normal under the null) and ``P(Z <= stat)``; ``(0, 1)`` when the
        differences are all equal to zero (identical models), NaN statistic with fewer than 2.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.size < 2:
        return math.nan, 1.0
    variance = newey_west_variance(d, lags)
    if variance == 0.0:
        return (0.0, 1.0) if float(d.mean()) == 0.0 else (math.copysign(math.inf, d.mean()), float(d.mean() > 0))
    stat = float(d.mean()) / math.sqrt(variance / d.size)
    return stat, float(stats.norm.cdf(stat))


def block_bootstrap_ci(d: np.ndarray, alpha: float = 0.05, n_boot: int = 2000, block: int | None = None,
                       seed: int = 0) -> tuple[float, float]:
    """Moving-block bootstrap percentile interval of the mean of an autocorrelated series.

    Parameters
    ----------
    d
        The series in time order.
    alpha
        The interval covers ``1 - alpha``.
    n_boot
        Resamples.
    block
        Block length; None uses ``ceil(n ** (1/3))`` (the usual rate for the mean).
    seed
        For the resampling, so a decision is reproducible.

    Returns
    -------
    tuple[float, float]
        Lower and upper bounds.
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n < 2:
        return -math.inf, math.inf
    b = block or int(math.ceil(n ** (1.0 / 3.0)))
    b = max(1, min(b, n))
    n_blocks = int(math.ceil(n / b))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - b + 1, size=(n_boot, n_blocks))
    # Each resample concatenates n_blocks blocks of b consecutive values and keeps the first n.
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_boot, -1)[:, :n]
    means = d[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2.0)), float(np.quantile(means, 1.0 - alpha / 2.0))


@dataclass(frozen=True)
class ABResult:
    """The outcome of :meth:`ShadowComparison.decide`."""

    decision: str
    """``"promote"``, ``"keep champion"`` or ``"not enough data"``."""
    reasons: tuple[str, ...]
    n: int
    """Labelled events compared."""
    mean_logloss_diff: float
    """Mean of challenger minus champion log-loss (negative: the challenger is better)."""
    dm_stat: float
    dm_p: float
    """One-sided Diebold-Mariano p-value for "the challenger has lower log-loss"."""
    n_pnl: int
    mean_pnl_diff: float
    """Mean per-event signal P&L, challenger minus champion (NaN when none known)."""
    pnl_ci: tuple[float, float]
    """Block-bootstrap interval of ``mean_pnl_diff``."""


@dataclass
class _Event:
    p_champion: float
    p_challenger: float
    label: int | None = None
    pnl_champion: float | None = None
    pnl_challenger: float | None = None


@dataclass
class ShadowComparison:
    """Accumulates paired predictions of the champion and a challenger on one event stream.

    Parameters
    ----------
    champion_id, challenger_id
        Registry ids, for the messages.
    min_samples
        Labelled events needed before anything but ``"not enough data"`` is decided.
    alpha
        Test level (one-sided for log-loss, two-sided interval for P&L).
    lags
        Newey-West lag; None chooses it from the sample size.
    n_boot, seed
        Block bootstrap resamples and seed.
    """

    champion_id: str = "champion"
    challenger_id: str = "challenger"
    min_samples: int = 500
    alpha: float = 0.05
    lags: int | None = None
    n_boot: int = 2000
    seed: int = 0
    _events: dict[object, _Event] = field(default_factory=dict, init=False, repr=False)

    def record(self, event_id: object, p_champion: float, p_challenger: float) -> None:
        """Both models' probabilities for one event (in stream order)."""
        if event_id in self._events:
            raise ValueError(f"event {event_id!r} was already recorded: give each event its own id")
        self._events[event_id] = _Event(float(p_champion), float(p_challenger))

    def resolve(self, event_id: object, label: int, pnl_champion: float | None = None,
                pnl_challenger: float | None = None) -> None:
        """The event's label once its barrier is hit, and what each model's signal would have made.

        Time-outs have no label (see ``ml/__init__.py``): do not resolve them.
        """
        event = self._events.get(event_id)
        if event is None:
            raise KeyError(f"event {event_id!r} was never recorded: call record() when both models score it")
        if label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {label!r}")
        event.label = int(label)
        if (pnl_champion is None) != (pnl_challenger is None):
            raise ValueError("give the P&L of both models or of neither")
        event.pnl_champion, event.pnl_challenger = pnl_champion, pnl_challenger

    def add(self, event_id: object, p_champion: float, p_challenger: float, label: int,
            pnl_champion: float | None = None, pnl_challenger: float | None = None) -> None:
        """:meth:`record` and :meth:`resolve` at once (replays, tests)."""
        self.record(event_id, p_champion, p_challenger)
        self.resolve(event_id, label, pnl_champion, pnl_challenger)

    def __len__(self) -> int:
        return len(self._events)

    def _paired(self) -> tuple[np.ndarray, np.ndarray]:
        labelled = [e for e in self._events.values() if e.label is not None]
        y = np.array([e.label for e in labelled], dtype=np.float64)
        d = (pointwise_log_loss(y, np.array([e.p_challenger for e in labelled]))
             - pointwise_log_loss(y, np.array([e.p_champion for e in labelled])))
        pnl = np.array([e.pnl_challenger - e.pnl_champion for e in labelled if e.pnl_champion is not None
                        and e.pnl_challenger is not None], dtype=np.float64)
        return d, pnl

    def decide(self) -> ABResult:
        """Compare the two models on the labelled events so far (see the module docstring).

        Returns
        -------
        ABResult
        """
        d, pnl = self._paired()
        n = int(d.size)
        mean_d = float(d.mean()) if n else math.nan
        stat, p = diebold_mariano(d, self.lags) if n >= 2 else (math.nan, 1.0)
        mean_pnl = float(pnl.mean()) if pnl.size else math.nan
        ci = block_bootstrap_ci(pnl, self.alpha, self.n_boot, seed=self.seed) if pnl.size >= 2 else (-math.inf, math.inf)
        decision, reasons = self._rule(n, mean_d, p, int(pnl.size), ci)
        return ABResult(decision, tuple(reasons), n, mean_d, stat, p, int(pnl.size), mean_pnl, ci)

    def _rule(self, n: int, mean_d: float, p: float, n_pnl: int, ci: tuple[float, float]) -> tuple[str, list[str]]:
        who = f"challenger {self.challenger_id} vs champion {self.champion_id}"
        if n < self.min_samples:
            return NOT_ENOUGH, [f"{who}: {n} labelled events, {self.min_samples} needed; keep collecting"]
        reasons = []
        better = mean_d < 0.0 and p < self.alpha
        if better:
            reasons.append(f"log-loss lower by {-mean_d:.5f} per event (Diebold-Mariano one-sided p = {p:.4f} < {self.alpha})")
        else:
            reasons.append(f"log-loss difference {mean_d:+.5f} per event is not a significant improvement "
                           f"(Diebold-Mariano one-sided p = {p:.4f}, needs < {self.alpha})")
        pnl_ok = True
        if n_pnl >= self.min_samples:
            pnl_ok = ci[1] > 0.0
            verdict = "not worse" if pnl_ok else "significantly worse"
            reasons.append(f"signal P&L difference {1 - self.alpha:.0%} block-bootstrap interval "
                           f"[{ci[0]:+.4g}, {ci[1]:+.4g}] per event: {verdict}")
        else:
            reasons.append(f"P&L known for {n_pnl} events (< {self.min_samples}): not used")
        return (PROMOTE if better and pnl_ok else KEEP), [f"{who}: {r}" for r in reasons]
