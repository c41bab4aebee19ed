"""Online regime detection for one instrument, and the allocation policy that acts on it.

``RegimeDetector.update`` is fed one closed bar at a time and returns a :class:`RegimeState`: a
volatility regime (LOW / NORMAL / HIGH), a trend regime (TRENDING / RANGING), the method that
decided the volatility regime (``"gmm"`` or ``"rules"``) and the numbers behind the call
(``evidence``, ``describe()``). :class:`RegimePolicy` turns a state into allocation multipliers per
strategy style, 0 switching a style off.

Measures, per bar ``t`` (closes ``c``):

- realized vol: sample standard deviation (ddof=1) of the last ``vol_window`` log returns;
- Kaufman efficiency ratio over ``n = trend_window`` bars: ``|c_t - c_{t-n}| / sum |c_i - c_{i-1}|``
  (0 when the path length is 0); trend direction ``sign(c_t - c_{t-n})``.

Volatility regime:

- ``"gmm"``: a 1-D ``sklearn.mixture.GaussianMixture(n_components, random_state=seed)`` on
  log(realized vol) of *past* bars only. The history holds the realized vol of every bar that
  already has a state, the current bar excluded, capped to the last ``max_history`` values. The
  first fit is made at the first bar that finds ``min_history`` values in it, and one more every
  ``refit_every`` bars after that (a failed attempt included). Components are ranked by mean: the
  lowest is LOW, the highest HIGH, any between NORMAL (``n_components=2`` gives LOW / HIGH only).
  The bar's class is the component with the highest posterior, computed here in closed form from
  the fitted weights, means and variances (identical to ``predict_proba``, without its per-call
  overhead). Two guards, both recorded in the evidence (``gmm_tail_guard``): a realized vol below the
  lowest component mean is LOW and one above the highest mean is HIGH, whatever the posteriors say
  (in the tails of a 1-D mixture the widest component wins, which could call a dead-calm bar HIGH);
  a realized vol of exactly 0 (a flat window; log undefined) is LOW with ``p = 1`` and is left out of
  the fits.
- ``"rules"`` before the first fit, and whenever the last fit attempt failed (an exception, fewer
  distinct values than components, or non-finite parameters; the next attempt is at the next
  cadence): terciles of the same trailing history; LOW below the 1/3 quantile, HIGH above the 2/3
  quantile (numpy's linear interpolation), NORMAL between them, and NORMAL while fewer than
  ``RULES_MIN_SAMPLES`` (30) values exist.

Trend regime, the same rule in both methods: TRENDING when ER > ``er_threshold``, else RANGING.

The detector returns None until ``max(vol_window, trend_window) + 1`` valid closes have been seen
(with the default equal windows: ``vol_window + 1``), so that no state is ever built on a partial
window. A close that is not a finite positive number (or whose log return would not be finite) is
ignored: it is counted in ``bad_inputs`` and the previous state (None during warm-up) is returned;
none of the detector's buffers change. Per-bar cost is O(window) (deques; the window sums are
recomputed each bar, which keeps them exact) plus O(log history) to keep the sorted copy that the
tercile rule reads; a refit costs O(max_history) every ``refit_every`` bars (about 15 ms for 5,000
values; ``last_fit_seconds``). Everything is deterministic given the input sequence: no clock, no
unseeded randomness, and nothing computed from bars after the current one.

A state change (volatility, trend or method) is logged at INFO on ``nt8bridge.regime`` with
``describe()``; each fit at DEBUG with its duration; a failed fit as a WARNING.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import ThreadpoolController

log = logging.getLogger("nt8bridge.regime")

RULES_MIN_SAMPLES = 30  # below this many history values the rule calls every bar NORMAL
_LOG_2PI = math.log(2.0 * math.pi)
_threadpools: ThreadpoolController | None = None


def _single_threaded() -> AbstractContextManager[object]:
    """Run native code (OpenMP in k-means, OpenBLAS) on one thread for the duration of a fit.

    On 5,000 1-D values threads buy nothing, and on a busy machine their spin-waits cost a lot: on a
    2-core box running a backtest a default fit took ~185 ms (up to 1 s), a single-threaded one ~35 ms.
    The limit is process-wide while it lasts (a few ms), like every threadpoolctl limit.
    """
    global _threadpools
    if _threadpools is None:
        _threadpools = ThreadpoolController()
    return _threadpools.limit(limits=1)


class VolRegime(StrEnum):
    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"


class TrendRegime(StrEnum):
    TRENDING = "TRENDING"
    RANGING = "RANGING"


def _v(x: float) -> str:
    """A volatility for people: three significant digits (0.00112, 4.1e-05)."""
    return f"{x:.3g}"


@dataclass(frozen=True, slots=True)
class RegimeState:
    """The regime at one closed bar, and every number that decided it.

    ``evidence`` always has ``realized_vol``, ``efficiency_ratio``, ``trend_direction`` (+1 / -1 / 0),
    ``er_threshold`` and ``history_n`` (past values the volatility call could see). With
    ``method == "gmm"``: ``gmm_mean_0`` .. ``gmm_mean_{k-1}`` (component means as volatilities,
    exp of the mean log vol, lowest first), ``gmm_p`` (posterior of the chosen component),
    ``gmm_post_0`` .. (all posteriors, same order), ``gmm_component`` (rank of the chosen one),
    ``gmm_tail_guard`` (1 when the tail guard overrode the posterior), ``gmm_n`` (values in the fit)
    and ``gmm_fit_age`` (bars since the fit; 0 at the bar that made it). With ``method == "rules"``:
    ``rule_n``, ``rule_min_samples`` and, once ``rule_n >= rule_min_samples``, the thresholds
    ``rule_q_low`` and ``rule_q_high`` (1/3 and 2/3 quantiles of past realized vol).
    """

    ts_ns: int
    volatility: VolRegime
    trend: TrendRegime
    method: str  # "gmm" or "rules"
    evidence: dict[str, float]

    def describe(self) -> str:
        """One line, e.g. ``HIGH vol (gmm, p=0.93; rv 0.0012 vs means 0.0004/0.0007/0.0011), TRENDING up (ER 0.41 > 0.30)``."""
        e = self.evidence
        rv = e["realized_vol"]
        if self.method == "gmm":
            k = sum(1 for key in e if key.startswith("gmm_mean_"))
            means = "/".join(_v(e[f"gmm_mean_{i}"]) for i in range(k))
            guard = ", tail" if e.get("gmm_tail_guard") else ""
            vol = f"{self.volatility} vol (gmm, p={e['gmm_p']:.2f}{guard}; rv {_v(rv)} vs means {means})"
        elif "rule_q_low" in e:
            vol = (f"{self.volatility} vol (rules; rv {_v(rv)} vs terciles {_v(e['rule_q_low'])}/"
                   f"{_v(e['rule_q_high'])} of {int(e['rule_n'])} bars)")
        else:
            vol = (f"{self.volatility} vol (rules; rv {_v(rv)}, only {int(e['rule_n'])} bars of history, "
                   f"< {int(e['rule_min_samples'])})")
        er, thr = e["efficiency_ratio"], e["er_threshold"]
        if self.trend is TrendRegime.TRENDING:
            way = {1.0: "up", -1.0: "down"}.get(e["trend_direction"], "flat")
            trend = f"TRENDING {way} (ER {er:.2f} > {thr:.2f})"
        else:
            trend = f"RANGING (ER {er:.2f} <= {thr:.2f})"
        return f"{vol}, {trend}"


@dataclass(frozen=True, slots=True)
class _Mixture:
    """A fitted mixture, components ranked by mean (lowest first), ready for closed-form posteriors."""

    means: tuple[float, ...]       # of log vol
    consts: tuple[float, ...]      # log w_k - (log 2 pi + log var_k) / 2
    half_prec: tuple[float, ...]   # 1 / (2 var_k)
    labels: tuple[VolRegime, ...]
    vol_means: tuple[float, ...]   # exp(means)
    n: int                         # values in the fit


def _labels(k: int) -> tuple[VolRegime, ...]:
    return (VolRegime.LOW,) + (VolRegime.NORMAL,) * (k - 2) + (VolRegime.HIGH,)


class RegimeDetector:
    """Online volatility and trend regimes for one instrument; see the module docstring."""

    def __init__(self, vol_window: int = 30, trend_window: int = 30, min_history: int = 500,
                 refit_every: int = 390, max_history: int = 5000, n_components: int = 3,
                 er_threshold: float = 0.3, seed: int = 0) -> None:
        if vol_window < 2:
            raise ValueError(f"vol_window {vol_window} must be at least 2 (a sample std needs 2 returns)")
        if trend_window < 1:
            raise ValueError(f"trend_window {trend_window} must be at least 1")
        if n_components < 2:
            raise ValueError(f"n_components {n_components} must be at least 2")
        if min_history < n_components:
            raise ValueError(f"min_history {min_history} cannot be below n_components {n_components}")
        if max_history < min_history:
            raise ValueError(f"max_history {max_history} cannot be below min_history {min_history}")
        if refit_every < 1:
            raise ValueError(f"refit_every {refit_every} must be at least 1")
        if not (0.0 <= er_threshold < 1.0):
            raise ValueError(f"er_threshold {er_threshold} is not in [0, 1)")
        self.vol_window = int(vol_window)
        self.trend_window = int(trend_window)
        self.min_history = int(min_history)
        self.refit_every = int(refit_every)
        self.max_history = int(max_history)
        self.n_components = int(n_components)
        self.er_threshold = float(er_threshold)
        self.seed = int(seed)

        self.bad_inputs = 0          # closes ignored (non-finite, not positive, or a non-finite log return)
        self.bars = 0                # valid closes taken
        self.fits = 0                # successful GMM fits
        self.fit_failures = 0
        self.last_fit_ts_ns: int | None = None      # bar at which the last fit attempt was made
        self.last_fit_seconds: float | None = None  # wall time of the last successful fit
        self.gmm: GaussianMixture | None = None     # the last successful fit (None after a failure)

        self._warmup = max(self.vol_window, self.trend_window) + 1
        self._closes: deque[float] = deque(maxlen=self.trend_window + 1)
        self._returns: deque[float] = deque(maxlen=self.vol_window)
        self._last_close: float | None = None
        self._history: deque[float] = deque()       # past realized vols, oldest first, <= max_history
        self._sorted: list[float] = []              # the same values, sorted (for the terciles)
        self._model: _Mixture | None = None
        self._attempted = False
        self._since_fit = 0                          # states emitted since the last fit attempt
        self._state: RegimeState | None = None

    @property
    def state(self) -> RegimeState | None:
        """The last state returned (None during warm-up)."""
        return self._state

    # ------------------------------------------------------------------------------------ per bar

    def update(self, ts_ns: int, close: float) -> RegimeState | None:
        """Take one closed bar; return its regime, or None during warm-up (see the module docstring)."""
        try:
            c = float(close)
        except (TypeError, ValueError):
            c = math.nan
        r = 0.0
        if math.isfinite(c) and c > 0.0 and self._last_close is not None:
            r = math.log(c / self._last_close)
        if not (math.isfinite(c) and c > 0.0 and math.isfinite(r)):
            self.bad_inputs += 1
            log.debug("bar %s: close %r ignored (not a finite positive price); %d bad inputs so far",
                      ts_ns, close, self.bad_inputs)
            return self._state

        if self._last_close is not None:
            self._returns.append(r)
        self._last_close = c
        self._closes.append(c)
        self.bars += 1
        if self.bars < self._warmup:
            return None

        rv = self._realized_vol()
        er, direction = self._efficiency()
        evidence: dict[str, float] = {
            "realized_vol": rv,
            "efficiency_ratio": er,
            "trend_direction": direction,
            "er_threshold": self.er_threshold,
            "history_n": float(len(self._history)),
        }

        if len(self._history) >= self.min_history and (not self._attempted or self._since_fit >= self.refit_every):
            self._refit(ts_ns)
        if self._model is not None:
            vol = self._classify_gmm(rv, evidence)
            method = "gmm"
        else:
            vol = self._classify_rules(rv, evidence)
            method = "rules"
        trend = TrendRegime.TRENDING if er > self.er_threshold else TrendRegime.RANGING

        # Only now does this bar's realized vol join the history: its own class never saw it.
        self._remember(rv)
        if self._attempted:
            self._since_fit += 1

        state = RegimeState(int(ts_ns), vol, trend, method, evidence)
        prev = self._state
        if prev is None or (prev.volatility, prev.trend, prev.method) != (vol, trend, method):
            log.debug("regime at %s: %s", ts_ns, state.describe())
        self._state = state
        return state

    def _realized_vol(self) -> float:
        xs = self._returns
        n = len(xs)
        mean = sum(xs) / n
        return math.sqrt(sum((x - mean) * (x - mean) for x in xs) / (n - 1))

    def _efficiency(self) -> tuple[float, float]:
        closes = self._closes
        path = 0.0
        prev = None
        for x in closes:
            if prev is not None:
                path += abs(x - prev)
            prev = x
        move = closes[-1] - closes[0]
        er = abs(move) / path if path > 0.0 else 0.0
        direction = 1.0 if move > 0 else (-1.0 if move < 0 else 0.0)
        return min(er, 1.0), direction   # min: rounding could put a straight line a hair above 1

    def _remember(self, rv: float) -> None:
        if len(self._history) == self.max_history:
            old = self._history.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._history.append(rv)
        bisect.insort(self._sorted, rv)

    # ------------------------------------------------------------------------------ volatility

    def _classify_rules(self, rv: float, evidence: dict[str, float]) -> VolRegime:
        n = len(self._sorted)
        evidence["rule_n"] = float(n)
        evidence["rule_min_samples"] = float(RULES_MIN_SAMPLES)
        if n < RULES_MIN_SAMPLES:
            return VolRegime.NORMAL
        lo, hi = self._quantile(1.0 / 3.0), self._quantile(2.0 / 3.0)
        evidence["rule_q_low"] = lo
        evidence["rule_q_high"] = hi
        if rv < lo:
            return VolRegime.LOW
        if rv > hi:
            return VolRegime.HIGH
        return VolRegime.NORMAL

    def _quantile(self, q: float) -> float:
        """numpy's default (linear) quantile of the sorted history."""
        s = self._sorted
        pos = q * (len(s) - 1)
        i = int(math.floor(pos))
        frac = pos - i
        if i + 1 >= len(s):
            return s[-1]
        return s[i] + (s[i + 1] - s[i]) * frac

    def _classify_gmm(self, rv: float, evidence: dict[str, float]) -> VolRegime:
        m = self._model
        assert m is not None
        k = len(m.means)
        for i, vm in enumerate(m.vol_means):
            evidence[f"gmm_mean_{i}"] = vm
        if rv > 0.0:
            x = math.log(rv)
            logp = [c - h * (x - mu) * (x - mu) for c, h, mu in zip(m.consts, m.half_prec, m.means)]
            top = max(logp)
            ps = [math.exp(v - top) for v in logp]
            total = sum(ps)
            post = [p / total for p in ps]
            best = max(range(k), key=post.__getitem__)   # first of equals: deterministic
            if x <= m.means[0]:
                chosen = 0
            elif x >= m.means[-1]:
                chosen = k - 1
            else:
                chosen = best
            guarded = chosen != best
        else:   # a flat window: no log; calmer than anything the mixture has seen
            post = [1.0] + [0.0] * (k - 1)
            chosen, guarded = 0, False
        for i, p in enumerate(post):
            evidence[f"gmm_post_{i}"] = p
        evidence["gmm_p"] = post[chosen]
        evidence["gmm_component"] = float(chosen)
        evidence["gmm_tail_guard"] = 1.0 if guarded else 0.0
        evidence["gmm_n"] = float(m.n)
        evidence["gmm_fit_age"] = float(self._since_fit)
        return m.labels[chosen]

    def _refit(self, ts_ns: int) -> None:
        """Fit the mixture on the past history (never the current bar); on failure, rules until the next try."""
        self._attempted = True
        self._since_fit = 0
        self.last_fit_ts_ns = int(ts_ns)
        hist = np.fromiter(self._history, dtype=float, count=len(self._history))
        x = np.log(hist[hist > 0.0])
        try:
            if np.unique(x).size < self.n_components:
                raise ValueError(f"{np.unique(x).size} distinct positive vols for {self.n_components} components")
            one_thread = _single_threaded()
            t0 = time.perf_counter()
            with warnings.catch_warnings(), one_thread:
                # 100 EM iterations without meeting tol still give a usable mixture on 1-D data.
                warnings.simplefilter("ignore", ConvergenceWarning)
                gmm = GaussianMixture(n_components=self.n_components, random_state=self.seed)
                gmm.fit(x.reshape(-1, 1))
            elapsed = time.perf_counter() - t0
            means = gmm.means_.ravel()
            variances = gmm.covariances_.ravel()
            weights = gmm.weights_.ravel()
            if not (np.all(np.isfinite(means)) and np.all(variances > 0) and np.all(np.isfinite(variances))
                    and np.all(weights > 0)):
                raise ValueError("non-finite or degenerate mixture parameters")
        except Exception as exc:  # noqa: BLE001 - any failure of the fit means: rules until the next try
            self.fit_failures += 1
            self._model = None
            self.gmm = None
            log.warning("regime GMM fit at %s on %d values failed (%s); volatility by rules until the next "
                        "refit in %d bars", ts_ns, x.size, exc, self.refit_every)
            return
        order = np.argsort(means, kind="stable")
        mu = [float(means[i]) for i in order]
        var = [float(variances[i]) for i in order]
        w = [float(weights[i]) for i in order]
        self._model = _Mixture(
            means=tuple(mu),
            consts=tuple(math.log(wi) - 0.5 * (_LOG_2PI + math.log(vi)) for wi, vi in zip(w, var)),
            half_prec=tuple(0.5 / vi for vi in var),
            labels=_labels(self.n_components),
            vol_means=tuple(math.exp(m) for m in mu),
            n=int(x.size),
        )
        self.gmm = gmm
        self.fits += 1
        self.last_fit_seconds = elapsed
        log.debug("regime GMM fit %d at %s: %d values in %.1f ms, means %s, weights %s", self.fits, ts_ns,
                  x.size, elapsed * 1e3, "/".join(_v(v) for v in self._model.vol_means),
                  "/".join(f"{wi:.2f}" for wi in w))


# ---------------------------------------------------------------------------------------- policy

STYLES: tuple[str, ...] = ("trend", "reversion", "spread", "ml")


def _default_table() -> dict[str, dict[TrendRegime, float]]:
    T, R = TrendRegime.TRENDING, TrendRegime.RANGING
    return {
        "trend": {T: 1.0, R: 0.0},
        "reversion": {T: 0.0, R: 1.0},
        "spread": {T: 1.0, R: 1.0},
        "ml": {T: 1.0, R: 1.0},
    }


@dataclass(frozen=True)
class RegimePolicy:
    """Allocation multipliers per strategy style and regime; 0 switches a style off.

    ``weight(style) = table[style][trend] * vol_scale``, the scale being ``high_vol_scale`` in HIGH
    volatility, ``low_vol_scale`` in LOW and 1 in NORMAL. Defaults: trend-following is on only when
    TRENDING, mean reversion only when RANGING, spread and ML styles in both; HIGH volatility halves
    everything.

    Before the detector is warmed up (``state is None``) every style gets 0: no trading without
    evidence. A strategy whose style is missing from the table also gets 0 (``weight``).
    """

    table: Mapping[str, Mapping[TrendRegime, float]] = field(default_factory=_default_table)
    high_vol_scale: float = 0.5
    low_vol_scale: float = 1.0

    def __post_init__(self) -> None:
        frozen: dict[str, Mapping[TrendRegime, float]] = {}
        for style, row in self.table.items():
            try:
                clean = {TrendRegime(k): float(v) for k, v in row.items()}
            except ValueError as exc:
                raise ValueError(f"style {style!r}: {exc}") from None
            missing = set(TrendRegime) - set(clean)
            if missing:
                raise ValueError(f"style {style!r} has no multiplier for {sorted(missing)}")
            bad = {k: v for k, v in clean.items() if not (math.isfinite(v) and v >= 0.0)}
            if bad:
                raise ValueError(f"style {style!r}: multipliers must be finite and not negative, got {bad}")
            frozen[str(style)] = MappingProxyType(clean)
        for name in ("high_vol_scale", "low_vol_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be finite and not negative, got {v}")
        object.__setattr__(self, "table", MappingProxyType(frozen))

    def vol_scale(self, volatility: VolRegime) -> float:
        if volatility is VolRegime.HIGH:
            return self.high_vol_scale
        if volatility is VolRegime.LOW:
            return self.low_vol_scale
        return 1.0

    def weights(self, state: RegimeState | None) -> dict[str, float]:
        """Multiplier per style in the table; all 0 when ``state`` is None (not warmed up)."""
        if state is None:
            return {style: 0.0 for style in self.table}
        scale = self.vol_scale(state.volatility)
        return {style: row[state.trend] * scale for style, row in self.table.items()}

    def weight(self, style: str, state: RegimeState | None) -> float:
        """One style's multiplier; 0 for a style the table does not know."""
        return self.weights(state).get(style, 0.0)

    def active_styles(self, state: RegimeState | None) -> frozenset[str]:
        """The styles switched on (multiplier > 0)."""
        return frozenset(s for s, w in self.weights(state).items() if w > 0.0)

    def explain(self, state: RegimeState | None) -> str:
        """One line: the regime, then each style's multiplier and where it comes from."""
        if state is None:
            return "not warmed up: every style 0 (no trading without evidence)"
        scale = self.vol_scale(state.volatility)
        parts = [f"{style} {row[state.trend] * scale:.2f} = {row[state.trend]:g} ({state.trend}) x {scale:g} "
                 f"({state.volatility} vol)" for style, row in self.table.items()]
        return f"{state.describe()} -> " + "; ".join(parts)
