"""Triple-barrier labels with the bracket's own distances.

A sample is a bar's close: the entry. Its barriers are ``close ± barrier_atr * ATR`` (the ATR known
at that close, the one ``OnlineFeatures.atr`` gives the strategy for its bracket), and the next
``horizon_bars`` bars' highs and lows are scanned for the first touch:

- ``outcome`` +1 when the upper barrier is touched first, -1 the lower, 0 a time-out (neither
  within the horizon), NaN when the ATR is unknown or fewer than ``horizon_bars`` bars follow;
- a bar that touches *both* barriers counts as the lower one: a minute bar does not say which came
  first, and for a long (the label's point of view) assuming the stop is the conservative reading;
- ``label`` 1.0 / 0.0 for +1 / -1, NaN for time-outs and unknowns (time-outs stay out of training);
- ``bars_to_exit``: bars from entry to the exit bar (``horizon_bars`` for a time-out);
- ``exit_ret``: a long's return at exit in ATRs: ``±barrier_atr`` at a barrier (filled at the
  barrier; gaps through it are not modelled), the move to the time-out bar's close otherwise;
- ``t1_ns``: the stamp of the exit or time-out bar, the end of the label's interval for purging;
  for rows with an unknown outcome it is the last bar the label could reach (clipped to the data),
  so purging treats them conservatively.

Rows that lack the full horizon are NaN even when a barrier was touched before the data end:
keeping only the quick resolutions near the end would bias the tail towards fast moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["LabelConfig", "resolved_share", "triple_barrier"]


@dataclass(frozen=True)
class LabelConfig:
    """Barrier distance in ATRs (both sides) and the time-out in bars; stored in a model's metadata."""

    barrier_atr: float = 1.5
    horizon_bars: int = 30


def triple_barrier(bars: pd.DataFrame, atr: np.ndarray | pd.Series, config: LabelConfig | None = None) -> pd.DataFrame:
    """Triple-barrier outcome of entering at each bar's close.

    Parameters
    ----------
    bars : pandas.DataFrame
        A bar frame (``ts_ns``, ``high``, ``low``, ``close``), strictly increasing ``ts_ns``.
    atr : array-like
        The ATR in price units at each bar's close (NaN where not yet known), aligned with ``bars``.
    config : LabelConfig, optional

    Returns
    -------
    pandas.DataFrame
        Indexed like ``bars``: ``outcome``, ``label``, ``bars_to_exit``, ``exit_ret`` (float64) and
        ``t1_ns`` (int64), as described in the module docstring.
    """
    c = config or LabelConfig()
    h = c.horizon_bars
    ts = bars["ts_ns"].to_numpy(dtype=np.int64)
    high, low, close = (bars[k].to_numpy(dtype=np.float64) for k in ("high", "low", "close"))
    atr = np.asarray(atr, dtype=np.float64)
    n = len(ts)
    known = np.isfinite(atr) & (atr > 0) & (np.arange(n) + h < n)
    upper = close + c.barrier_atr * atr
    lower = close - c.barrier_atr * atr

    outcome = np.where(known, 0.0, np.nan)
    exit_k = np.where(known, h, 0)
    open_rows = known.copy()  # rows not resolved yet, as the scan moves forward
    for k in range(1, h + 1):
        rows = np.flatnonzero(open_rows[: n - k])
        down = low[rows + k] <= lower[rows]
        up = high[rows + k] >= upper[rows]
        hit = down | up
        resolved = rows[hit]
        outcome[resolved] = np.where(down[hit], -1.0, 1.0)  # both in one bar: the lower one
        exit_k[resolved] = k
        open_rows[resolved] = False

    rows = np.arange(n)
    exit_row = np.minimum(rows + np.where(known, exit_k, h), n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        timeout_ret = (close[exit_row] - close) / atr
    exit_ret = np.where(outcome == 0, timeout_ret, outcome * c.barrier_atr)
    label = np.where(outcome == 1, 1.0, np.where(outcome == -1, 0.0, np.nan))
    return pd.DataFrame({
        "outcome": outcome,
        "label": label,
        "bars_to_exit": np.where(known, exit_k, np.nan).astype(np.float64),
        "exit_ret": np.where(known, exit_ret, np.nan),
        "t1_ns": ts[exit_row] if n else np.empty(0, dtype=np.int64),
    }, index=bars.index)


def resolved_share(labels: pd.DataFrame) -> float:
    """Share of the samples with a known outcome that hit a barrier before the time-out.

    Parameters
    ----------
    labels : pandas.DataFrame
        The output of :func:`triple_barrier`.

    Returns
    -------
    float
        In [0, 1]; NaN when no outcome is known.
    """
    outcome = labels["outcome"].to_numpy(dtype=np.float64)
    known = np.isfinite(outcome)
    return float(np.count_nonzero(outcome[known] != 0) / known.sum()) if known.any() else float("nan")
