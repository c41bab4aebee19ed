"""Feature drift between training and live data, and the dissimilarity-index guard.

Two questions, two tools:

- *Has the market the model sees moved away from the one it was trained on?* Once per window of
  recent feature rows (a session, a day), :class:`DriftDetector` compares each feature's recent
  distribution with the training one saved in :class:`DriftReference` (PSI, Kolmogorov-Smirnov,
  normalised Wasserstein) and raises an alert when enough features drift. Slow, thorough, off the
  hot path; alerts become rows of ``drift_alerts`` (:func:`store_alerts`).
- *Is this one row unlike anything the model was trained on?* On the hot path,
  :class:`DissimilarityGuard` measures a row's distance to its nearest training point (FreqAI's
  dissimilarity index) and withholds the prediction when it is too far.

Thresholds (:class:`DriftThresholds`)
-------------------------------------
Per feature, the usual levels of the tools practitioners use (Evidently, NannyML, the credit-risk
PSI rule of thumb):

================  ==========  ===========================================================
metric            level       meaning
================  ==========  ===========================================================
PSI               0.10        "moderate" shift (Evidently's and the credit-risk warning level;
                              0.25 is their "major" level)
Wasserstein/std   0.10        Evidently's default for numerical columns with > 1000 rows
KS p-value        0.05        the usual test level, here on *effective* sample sizes
================  ==========  ===========================================================

A feature is *drifted* when three things hold at once: its PSI reaches the larger of 0.10 and its
band, its normalised Wasserstein distance reaches the larger of 0.10 and its band (the band: see
"Why the band" below), and the KS test on effective sample sizes rejects at 0.05. The window
*alerts* when at least ``min_drifted`` features (default 2) and at least ``share_drifted`` of them
(default 0.25) drift. Evidently's "major" PSI level 0.25 is not used as an alert level by itself.

Why not the plain KS p-value: minute features are strongly autocorrelated (overlapping returns,
rolling volatility: lag-1 autocorrelation 0.9 to 0.99 on ES, NQ, MES and MYM), so a day of 1,380
bars carries the information of a few dozen independent draws, and ``ks_2samp``'s p-value, which
assumes independence, is tiny for differences that are only the market's ordinary day-to-day
variation. The KS statistic itself is fine; its p-value is recomputed with the effective sample size
of an AR(1) process, ``n (1 - rho) / (1 + rho)``, rho the larger lag-1 autocorrelation of the
feature and of its absolute deviation from the median (one-bar returns have almost none of the
first and much of the second: volatility clusters), of the training rows in time order for the
reference and of the window for the recent rows. PSI and the Wasserstein distance are effect
sizes, not tests, but they too vary from window to window far more than independent draws would,
hence the band below and the several-features rule.

False-alarm rate, measured (``tests/integration/test_ml_drift_real.py``): eight simple features
(log returns over 1, 5, 15 and 60 bars, range / close, 60-bar volume z-score, 30-bar realised
volatility, distance to the 20-bar mean) on the four 1-minute files of ``shared/data/nt8`` (ES, MES,
MYM, NQ 12-23; 10 Oct to 20 Nov 2023), cut into windows of 1,380 rows (one session); reference =
the even windows, hold-out = the odd ones (the same weeks, so no regime change, only the ordinary
day-to-day variation): **0 alerts in 56 hold-out windows** (:data:`MEASURED_FALSE_ALARM_RATE`; with
56 windows the 95 % upper bound is about 3/56 = 5.4 %, :data:`FALSE_ALARM_RATE_UPPER_95`). The
same windows shifted: mean + 0.5 reference std on every feature, 56 of 56 alert; volatility x2
(return, range and realised-volatility features scaled), 77 %; volatility x1.5, 48 %: a single
session at 1.5 times the usual volatility is within the market's ordinary variation, so one window
cannot call it drift; a lasting change shows in window after window. Reference = the first 60 %
in time, hold-out = the rest (Oct -> Nov 2023, when volatility fell): 50 % of windows alert,
which is the real change the detector is for.

Why the band: fixed levels alone do not work on this data. A first version of this rule (drifted
at PSI >= 0.25, or PSI >= 0.1 with Wasserstein >= 0.1 and the effective-n KS test) alerted on 41 of
the 56 unshifted windows (73 %): a session's volatility differs from a several-week average by
more than PSI 0.25 as a matter of course. So each feature's
levels are raised to the mean + 3 standard deviations of the metric over the training data's own
windows, each against the rest (NannyML's default univariate threshold); the band is stored in
the reference, so it travels with the model.

The dissimilarity index
-----------------------
``DI(x) = min_j ||z(x) - z(r_j)|| / mean_nn`` on features standardised with the training means and
standard deviations, ``r_j`` a subsample of a few hundred training rows and ``mean_nn`` the mean
distance from each of them to its nearest other one. A typical training-like row has a DI near 1.
The threshold is a quantile (99.5 % by default) of the DI of training rows *outside* the subsample,
so about 0.5 % of rows like the training ones are withheld. On the real hold-out above (eight
features, 300 points) the thresholds came out at 4.1 to 4.9 and 0.7 to 1.0 % of hold-out rows were
withheld. ``bench/bench_drift.py`` measures the cost per row (about 6 us at p50, 17 us at p99 for
24 features, 3.6 times a bare matrix-vector product of the same size).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

SESSION_ROWS = 1380
"""1-minute bars in one CME Globex session (23 hours): the default drift window."""

MIN_NULL_WINDOWS = 5
"""Fewer training windows than this give no usable null band; only the fixed floors apply."""

CLUSTER_GAP_RATIO = 50.0
"""A gap between consecutive sorted values this many times the median gap separates tick clusters."""

PSI_FLOOR = 1e-4
"""Smallest bin share used in PSI, so that an empty bin costs a large but finite amount."""

MEASURED_FALSE_ALARM_RATE = 0.0
"""Alerts per unshifted hold-out session window on real minute data with the default thresholds:
0 of 56 (see the module docstring and tests/integration/test_ml_drift_real.py)."""

FALSE_ALARM_RATE_UPPER_95 = 3.0 / 56.0
"""95 % upper confidence bound of that rate (rule of three: no alert in 56 windows)."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted and when a window alerts (see the module docstring).

    Parameters
    ----------
    psi_moderate
        PSI floor (Evidently / credit-risk "moderate" level 0.1).
    wasserstein_norm
        Floor of the Wasserstein distance over the reference standard deviation (Evidently: 0.1).
    ks_alpha
        Level of the KS test on effective sample sizes.
    band_sigmas
        A metric must also exceed the mean of the training windows' own values by this many of
        their standard deviations (NannyML's default band is 3).
    min_drifted, share_drifted
        The window alerts when at least ``min_drifted`` features and at least ``share_drifted`` of
        all features drift.
    """

    psi_moderate: float = 0.10
    wasserstein_norm: float = 0.10
    ks_alpha: float = 0.05
    band_sigmas: float = 3.0
    min_drifted: int = 2
    share_drifted: float = 0.25

    def features_needed(self, n_features: int) -> int:
        """How many drifted features make an alert for a model with ``n_features`` features."""
        return max(self.min_drifted, math.ceil(self.share_drifted * n_features))


# --------------------------------------------------------------------------- metrics


def effective_size(x: np.ndarray) -> float:
    """Effective number of independent draws in a time-ordered sample (AR(1) approximation).

    Parameters
    ----------
    x
        One feature, in time order.

    Returns
    -------
    float
        ``n (1 - rho) / (1 + rho)`` with ``rho`` the larger lag-1 autocorrelation of ``x`` and of
        ``|x - median(x)|``, clipped to [0, 0.999] (negative autocorrelation is not taken as extra
        information), at least 2.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 3 or np.std(x) == 0.0:
        return float(max(n, 2))
    # The distribution of a return with no autocorrelation still clusters in time (volatility
    # clustering): the larger of the value's and the absolute deviation's autocorrelation counts.
    dev = np.abs(x - np.median(x))
    rho = max(_lag1(x), _lag1(dev))
    return max(n * (1.0 - rho) / (1.0 + rho), 2.0)


def _lag1(x: np.ndarray) -> float:
    if np.std(x) == 0.0:
        return 0.0
    rho = float(np.corrcoef(x[1:], x[:-1])[0, 1])
    return min(max(rho, 0.0), 0.999) if math.isfinite(rho) else 0.0


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles, moved out of tick clusters.

    Prices move in ticks, so returns and ranges are discrete: their values form clusters (one
    tick, two ticks, ... each smeared a little by the price level). An edge inside a cluster
    splits it by the day's price level, and a few points of index level then move many rows
    across the edge: a PSI of 1 to 2 between two ordinary ES sessions. When the bulk of a feature
    is clustered (gaps :data:`CLUSTER_GAP_RATIO` times the median gap between its 5 % and 95 %
    quantiles), each edge goes to the cluster boundary nearest its quantile; continuous features
    keep plain quantiles.

    Parameters
    ----------
    reference
        One feature's training values.
    bins
        Number of bins wanted.

    Returns
    -------
    numpy.ndarray
        Increasing inner edges (at most ``bins - 1``; fewer when several quantiles fall in one
        cluster); the outer bins are open-ended.
    """
    ordered = np.sort(np.asarray(reference, dtype=np.float64))
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    quantiles = np.quantile(ordered, levels)
    gaps = np.diff(ordered)
    positive = gaps[gaps > 0.0]
    if positive.size == 0:
        return np.empty(0)
    big = np.flatnonzero(gaps > CLUSTER_GAP_RATIO * np.median(positive))
    boundaries = 0.5 * (ordered[big] + ordered[big + 1])
    lo, hi = np.quantile(ordered, [0.05, 0.95])
    if not np.any((boundaries > lo) & (boundaries < hi)):
        return np.unique(quantiles)
    nearest = np.abs(boundaries[None, :] - quantiles[:, None]).argmin(axis=1)
    return np.unique(boundaries[nearest])


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin of ``edges`` (a value on an edge goes to the upper bin)."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")
    counts = np.bincount(idx, minlength=edges.size + 1).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def psi_from_shares(ref_shares: np.ndarray, cur_shares: np.ndarray) -> float:
    """Population stability index of two binned distributions, ``sum((c - r) ln(c / r))``."""
    r = np.maximum(ref_shares, PSI_FLOOR)
    c = np.maximum(cur_shares, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``, on the reference's quantile bins.

    Parameters
    ----------
    reference, current
        One feature's values.
    bins
        Number of quantile bins.

    Returns
    -------
    float
        0 for identical binned distributions; 0.1 is a moderate shift, 0.25 a major one.
    """
    edges = quantile_edges(reference, bins)
    return psi_from_shares(bin_shares(reference, edges), bin_shares(current, edges))


def ks(reference: np.ndarray, current: np.ndarray, n_ref_eff: float | None = None,
       n_cur_eff: float | None = None) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value, optionally on effective sample sizes.

    Parameters
    ----------
    reference, current
        One feature's values.
    n_ref_eff, n_cur_eff
        Effective sample sizes (:func:`effective_size`); None means the plain counts, i.e. the
        ordinary test for independent draws (``scipy.stats.ks_2samp``).

    Returns
    -------
    tuple[float, float]
        The statistic D and its p-value (asymptotic Kolmogorov distribution when effective sizes are
        given, since they are not integers).
    """
    # asymptotic p-value: the exact one costs seconds per feature at these sizes
    result = stats.ks_2samp(reference, current, method="asymp")
    d = float(result.statistic)
    if n_ref_eff is None and n_cur_eff is None:
        return d, float(result.pvalue)
    n1 = float(n_ref_eff if n_ref_eff is not None else np.size(reference))
    n2 = float(n_cur_eff if n_cur_eff is not None else np.size(current))
    return d, ks_pvalue(d, n1, n2)


def ks_pvalue(d: float, n1: float, n2: float) -> float:
    """Asymptotic two-sample KS p-value of statistic ``d`` for (possibly effective) sizes ``n1``, ``n2``."""
    return float(stats.kstwobign.sf(d * math.sqrt(n1 * n2 / (n1 + n2))))


def wasserstein(reference: np.ndarray, current: np.ndarray, ref_std: float | None = None) -> float:
    """Wasserstein-1 distance over the reference's standard deviation (Evidently's normalisation).

    Parameters
    ----------
    reference, current
        One feature's values.
    ref_std
        The reference standard deviation when known from more rows than ``reference`` holds.

    Returns
    -------
    float
        In units of reference standard deviations; a constant reference gives 0 when ``current``
        equals it and infinity otherwise.
    """
    distance = float(stats.wasserstein_distance(reference, current))
    scale = float(np.std(reference)) if ref_std is None else float(ref_std)
    if scale > 0.0:
        return distance / scale
    return 0.0 if distance == 0.0 else math.inf


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class DriftReference:
    """What drift is measured against: the training features, summarised.

    Attributes
    ----------
    feature_names
        Column order of every ``X`` given to the detector and the guard.
    edges
        Per feature, the inner bin edges of :func:`quantile_edges` (padded with NaN to a common length).
    shares
        Per feature, the training share in each bin (padded with NaN).
    sample
        A random subsample of training rows (KS and Wasserstein are computed against it).
    mean, std
        Per-feature training mean and standard deviation (std 1 where it was 0).
    ess_ratio
        Per feature, effective sample size over rows of the training data in time order.
    n_rows
        Training rows summarised.
    window
        Rows per window the null band was measured on; check windows of about this length.
    null_psi, null_wasserstein
        ``(2, k)``: per feature, the mean and standard deviation of the PSI and the normalised
        Wasserstein distance of each training window against the rest of the training data (the
        market's ordinary window-to-window variation); zeros when there were fewer than
        :data:`MIN_NULL_WINDOWS` windows, which leaves only the fixed floors.
    """

    feature_names: tuple[str, ...]
    edges: np.ndarray
    shares: np.ndarray
    sample: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ess_ratio: np.ndarray
    n_rows: int
    window: int
    null_psi: np.ndarray
    null_wasserstein: np.ndarray

    @classmethod
    def from_training(cls, X: np.ndarray, feature_names: Sequence[str], bins: int = 10,
                      sample_size: int = 5000, window: int = SESSION_ROWS, seed: int = 0) -> DriftReference:
        """Summarise training features.

        Parameters
        ----------
        X
            ``(n, k)`` finite training rows **in time order** (the autocorrelation is read from it).
        feature_names
            ``k`` names.
        bins
            Quantile bins for PSI.
        sample_size
            Rows kept for KS and Wasserstein (all of them when fewer).
        window
            Length of the windows the detector will check (one CME session of 1-minute bars by
            default); the training data is cut into such windows to measure the null band.
        seed
            For the subsample.

        Returns
        -------
        DriftReference

        Raises
        ------
        ValueError
            If the shapes disagree, ``X`` has non-finite values or fewer than ``bins`` rows.
        """
        X = _check_matrix(X, len(feature_names), "training X")
        if X.shape[0] < bins:
            raise ValueError(f"training X has {X.shape[0]} rows, fewer than the {bins} PSI bins: give more rows")
        k = X.shape[1]
        edges = np.full((k, bins - 1), np.nan)
        shares = np.full((k, bins), np.nan)
        for j in range(k):
            e = quantile_edges(X[:, j], bins)
            edges[j, : e.size] = e
            shares[j, : e.size + 1] = bin_shares(X[:, j], e)
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(X.shape[0], size=min(sample_size, X.shape[0]), replace=False))
        std = X.std(axis=0)
        std = np.where(std > 0.0, std, 1.0)
        ess = np.array([effective_size(X[:, j]) / X.shape[0] for j in range(k)])
        null_psi, null_w = _null_band(X, edges, take, std, window)
        return cls(tuple(feature_names), edges, shares, X[take].copy(), X.mean(axis=0), std, ess,
                   int(X.shape[0]), int(window), null_psi, null_w)

    def feature_edges(self, j: int) -> np.ndarray:
        """Inner bin edges of feature ``j`` (padding removed)."""
        e = self.edges[j]
        return e[~np.isnan(e)]

    def feature_shares(self, j: int) -> np.ndarray:
        """Training bin shares of feature ``j`` (padding removed)."""
        s = self.shares[j]
        return s[~np.isnan(s)]

    def save(self, path: Path) -> Path:
        """Write as ``.npz`` (no pickles, so loading cannot run code)."""
        path = Path(path)
        np.savez(path, feature_names=np.array(self.feature_names, dtype=np.str_), edges=self.edges,
                 shares=self.shares, sample=self.sample, mean=self.mean, std=self.std,
                 ess_ratio=self.ess_ratio, n_rows=np.int64(self.n_rows), window=np.int64(self.window),
                 null_psi=self.null_psi, null_wasserstein=self.null_wasserstein)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file lacks one of the arrays (written by something else, or truncated).
        """
        with np.load(Path(path), allow_pickle=False) as z:
            missing = set(_NPZ_FIELDS) - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a drift reference (missing {sorted(missing)}): "
                                 "rebuild it with DriftReference.from_training(...).save(path)")
            return cls(tuple(str(s) for s in z["feature_names"]), z["edges"], z["shares"], z["sample"],
                       z["mean"], z["std"], z["ess_ratio"], int(z["n_rows"]), int(z["window"]),
                       z["null_psi"], z["null_wasserstein"])


_NPZ_FIELDS = ("feature_names", "edges", "shares", "sample", "mean", "std", "ess_ratio", "n_rows", "window",
               "null_psi", "null_wasserstein")


def _null_band(X: np.ndarray, edges: np.ndarray, take: np.ndarray, std: np.ndarray,
               window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each training window's PSI and Wasserstein against the rest of the training rows.

    This is the ordinary variation of a window of this length on this market (NannyML's way of
    setting univariate thresholds from reference chunks). Each window is left out of what it is
    compared with, so it is not compared with itself.
    """
    n, k = X.shape
    starts = range(0, n - window + 1, window)
    if len(starts) < MIN_NULL_WINDOWS:
        return np.zeros((2, k)), np.zeros((2, k))
    psis = np.empty((len(starts), k))
    ws = np.empty((len(starts), k))
    for i, a in enumerate(starts):
        inside = np.zeros(n, dtype=bool)
        inside[a:a + window] = True
        rest_sample = take[~inside[take]]
        for j in range(k):
            e = edges[j][~np.isnan(edges[j])]
            psis[i, j] = psi_from_shares(bin_shares(X[~inside, j], e), bin_shares(X[inside, j], e))
            ws[i, j] = wasserstein(X[rest_sample, j], X[inside, j], float(std[j]))
    return (np.vstack([psis.mean(axis=0), psis.std(axis=0)]), np.vstack([ws.mean(axis=0), ws.std(axis=0)]))



def _check_matrix(X: np.ndarray, k: int, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != k:
        raise ValueError(f"{what} has shape {X.shape}, expected (rows, {k}) in the reference's feature order")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ValueError(f"{what} has {bad} rows with NaN or infinite values: drop warm-up rows first")
    return X


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift in one window."""

    feature: str
    psi: float
    ks_stat: float
    ks_p: float
    """KS p-value on effective sample sizes (the one the rule uses)."""
    ks_p_iid: float
    """The ordinary ``ks_2samp`` p-value, for comparison; too eager on autocorrelated data."""
    wasserstein_norm: float
    psi_limit: float
    """The PSI this feature had to reach (see :meth:`DriftDetector.limits`)."""
    wasserstein_limit: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    """The outcome of :meth:`DriftDetector.check`."""

    n_rows: int
    features: tuple[FeatureDrift, ...]
    n_drifted: int
    needed: int
    alert: bool
    thresholds: DriftThresholds

    @property
    def drifted(self) -> list[str]:
        """Names of the drifted features."""
        return [f.feature for f in self.features if f.drifted]

    def summary(self) -> str:
        """One line for logs and the operator."""
        if not self.alert:
            return f"no drift alert: {self.n_drifted} of {len(self.features)} features drifted (alert at {self.needed})"
        return (f"DRIFT ALERT: {self.n_drifted} of {len(self.features)} features drifted ({', '.join(self.drifted)}); "
                "check the market regime and retrain or promote a model trained on recent data")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for reports and model metadata)."""
        return {"n_rows": self.n_rows, "n_drifted": self.n_drifted, "needed": self.needed, "alert": self.alert,
                "thresholds": asdict(self.thresholds), "features": [asdict(f) for f in self.features]}


class DriftDetector:
    """Compares windows of recent feature rows with a :class:`DriftReference`.

    Parameters
    ----------
    reference
        The training summary.
    thresholds
        The rule (defaults documented in the module docstring).
    """

    def __init__(self, reference: DriftReference, thresholds: DriftThresholds | None = None) -> None:
        self.reference = reference
        self.thresholds = thresholds or DriftThresholds()
        self.counters = DriftCounters()

    def check(self, X_recent: np.ndarray) -> DriftReport:
        """Measure every feature's drift in a window and decide whether it alerts.

        Parameters
        ----------
        X_recent
            ``(n, k)`` recent rows **in time order**, columns in the reference's order.

        Returns
        -------
        DriftReport
        """
        ref = self.reference
        X = _check_matrix(X_recent, len(ref.feature_names), "recent X")
        if X.shape[0] < 2:
            raise ValueError("recent X needs at least 2 rows to compare distributions")
        features = tuple(self._feature(j, X[:, j]) for j in range(X.shape[1]))
        n_drifted = sum(f.drifted for f in features)
        needed = self.thresholds.features_needed(len(features))
        report = DriftReport(int(X.shape[0]), features, n_drifted, needed, n_drifted >= needed, self.thresholds)
        self.counters.record(report)
        return report

    def _feature(self, j: int, x: np.ndarray) -> FeatureDrift:
        ref, t = self.reference, self.thresholds
        p = psi_from_shares(ref.feature_shares(j), bin_shares(x, ref.feature_edges(j)))
        sample = ref.sample[:, j]
        n_ref_eff = max(ref.ess_ratio[j] * ref.n_rows, 2.0)
        # The sample is a subset of the training rows: never more effective draws than it holds.
        n_ref_eff = min(n_ref_eff, float(sample.size))
        d, p_iid = ks(sample, x)
        p_eff = ks_pvalue(d, n_ref_eff, effective_size(x))
        w = wasserstein(sample, x, float(ref.std[j]))
        psi_limit, w_limit = self.limits(j)
        drifted = p >= psi_limit and w >= w_limit and p_eff < t.ks_alpha
        return FeatureDrift(ref.feature_names[j], p, d, p_eff, p_iid, w, psi_limit, w_limit, bool(drifted))

    def limits(self, j: int) -> tuple[float, float]:
        """PSI and normalised-Wasserstein levels feature ``j`` must reach: the fixed floor or the
        training windows' mean + ``band_sigmas`` standard deviations, whichever is higher."""
        ref, t = self.reference, self.thresholds
        psi_band = ref.null_psi[0, j] + t.band_sigmas * ref.null_psi[1, j]
        w_band = ref.null_wasserstein[0, j] + t.band_sigmas * ref.null_wasserstein[1, j]
        return max(t.psi_moderate, float(psi_band)), max(t.wasserstein_norm, float(w_band))


# --------------------------------------------------------------------------- DI guard


class DissimilarityGuard:
    """FreqAI-style dissimilarity index: withhold predictions on rows unlike the training data.

    Parameters
    ----------
    reference
        Training summary (its means, standard deviations and sample rows are used).
    n_points
        Size of the reference subsample searched per row; a few hundred keeps a row's check at a
        few microseconds (``bench/bench_drift.py``).
    quantile
        The threshold is this quantile of the DI of training rows outside the subsample.
    threshold
        A fixed threshold instead of the calibrated one.
    seed
        For the subsample.
    """

    def __init__(self, reference: DriftReference, n_points: int = 300, quantile: float = 0.995,
                 threshold: float | None = None, seed: int = 0) -> None:
        sample = (reference.sample - reference.mean) / reference.std
        if sample.shape[0] < 3:
            raise ValueError("the drift reference keeps fewer than 3 rows: rebuild it with more training rows")
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(sample.shape[0])
        points, held_out = sample[chosen[:n_points]], sample[chosen[n_points:]]
        self._mean = reference.mean.copy()
        self._inv_std = 1.0 / reference.std
        self._points = np.ascontiguousarray(points)
        self._half_sq_norms = 0.5 * np.einsum("ij,ij->i", points, points)
        self.mean_nn = _mean_nearest_neighbour(points)
        if threshold is None:
            if held_out.shape[0] == 0:
                raise ValueError("no training rows outside the DI subsample to calibrate the threshold on: "
                                 "lower n_points or pass threshold=")
            threshold = float(np.quantile(self.index_many(held_out, standardised=True), quantile))
        self.threshold = float(threshold)
        self.checked = 0
        self.withheld = 0

    def index(self, row: np.ndarray) -> float:
        """DI of one raw (unstandardised) feature row; hot path.

        Uses ``||p - z||^2 = ||p||^2 - 2 p.z + ||z||^2``: one matrix-vector product over the
        subsample instead of a ``(n_points, k)`` difference array.
        """
        z = (row - self._mean) * self._inv_std
        best = float(np.min(self._half_sq_norms - self._points @ z))
        sq = 2.0 * best + float(z @ z)
        return math.sqrt(max(sq, 0.0)) / self.mean_nn

    def index_many(self, X: np.ndarray, standardised: bool = False) -> np.ndarray:
        """DI of many rows at once (offline: reports, calibration)."""
        Z = np.asarray(X, dtype=np.float64)
        if not standardised:
            Z = (Z - self._mean) * self._inv_std
        sq = 2.0 * (self._half_sq_norms[None, :] - Z @ self._points.T).min(axis=1) + np.einsum("ij,ij->i", Z, Z)
        return np.sqrt(np.maximum(sq, 0.0)) / self.mean_nn

    def allow(self, row: np.ndarray) -> bool:
        """Whether a prediction on ``row`` may be used; counts checks and withheld rows."""
        self.checked += 1
        if self.index(row) > self.threshold:
            self.withheld += 1
            return False
        return True

    def metrics(self) -> dict[str, float]:
        """Counters to expose (e.g. as Prometheus gauges/counters)."""
        return {"di_checked_total": float(self.checked), "di_withheld_total": float(self.withheld),
                "di_threshold": self.threshold}


def _mean_nearest_neighbour(points: np.ndarray) -> float:
    sq = np.einsum("ij,ij->i", points, points)
    d2 = sq[:, None] + sq[None, :] - 2.0 * points @ points.T
    np.fill_diagonal(d2, np.inf)
    nn = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    mean_nn = float(nn.mean())
    if mean_nn <= 0.0:
        raise ValueError("the DI reference points are all identical: the features carry no information")
    return mean_nn


# --------------------------------------------------------------------------- alerts


@dataclass
class DriftCounters:
    """Running counts a caller can expose as metrics."""

    checks: int = 0
    alerts: int = 0
    drifted_by_feature: Counter[str] = field(default_factory=Counter)

    def record(self, report: DriftReport) -> None:
        """Count one check."""
        self.checks += 1
        self.alerts += int(report.alert)
        self.drifted_by_feature.update(report.drifted)

    def metrics(self) -> dict[str, float]:
        """Flat name -> value, e.g. ``drift_feature_drifted_total{feature="ret_1"}`` as ``drifted_total.ret_1``."""
        out = {"drift_checks_total": float(self.checks), "drift_alerts_total": float(self.alerts)}
        out.update({f"drift_drifted_total.{k}": float(v) for k, v in sorted(self.drifted_by_feature.items())})
        return out


def alert_rows(report: DriftReport, model_id: str, ts_ns: int, window_start_ns: int,
               window_end_ns: int) -> list[dict[str, object]]:
    """The ``drift_alerts`` rows of a report: one per drifted feature metric, one ``*`` row if it alerts.

    Parameters
    ----------
    report
        From :meth:`DriftDetector.check`.
    model_id
        The model whose reference was used.
    ts_ns
        When the check ran.
    window_start_ns, window_end_ns
        The window's first and last bar time.

    Returns
    -------
    list[dict]
        Column -> value; empty when nothing drifted.
    """
    t = report.thresholds
    base = {"model_id": model_id, "ts_ns": int(ts_ns), "window_start_ns": int(window_start_ns),
            "window_end_ns": int(window_end_ns), "n_rows": report.n_rows}
    rows: list[dict[str, object]] = []
    for f in report.features:
        if not f.drifted:
            continue
        rows.append({**base, "feature": f.feature, "metric": "psi", "value": f.psi, "threshold": f.psi_limit})
        rows.append({**base, "feature": f.feature, "metric": "wasserstein_norm", "value": f.wasserstein_norm,
                     "threshold": f.wasserstein_limit})
        rows.append({**base, "feature": f.feature, "metric": "ks_p", "value": f.ks_p, "threshold": t.ks_alpha})
    if report.alert:
        rows.append({**base, "feature": "*", "metric": "drifted_features", "value": float(report.n_drifted),
                     "threshold": float(report.needed)})
    return rows


def store_alerts(url: str, report: DriftReport, model_id: str, ts_ns: int, window_start_ns: int,
                 window_end_ns: int) -> int:
    """Insert a report's :func:`alert_rows` into ``drift_alerts`` (schema upgraded first).

    Returns
    -------
    int
        Rows inserted.

    Raises
    ------
    bridge.storage.database.StorageError
        If the database cannot be written; the message says what to do.
    """
    from bridge.storage.database import as_storage_error, create_engine_for, upgrade
    from bridge.storage.schema import drift_alerts

    rows = alert_rows(report, model_id, ts_ns, window_start_ns, window_end_ns)
    if not rows:
        return 0
    upgrade(url)
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(drift_alerts.insert(), rows)
    except Exception as exc:  # translated, original chained
        raise as_storage_error(url, exc, "storing drift alerts") from exc
    finally:
        engine.dispose()
    return len(rows)


def report_json(report: DriftReport) -> str:
    """The report as JSON text (non-finite numbers as null)."""
    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(report.to_dict()), sort_keys=True)
