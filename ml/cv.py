"""Walk-forward cross-validation with purging and an embargo (after López de Prado, ch. 7).

Samples are labels with an interval ``[t0, t1]``: ``t0`` the entry bar's close, ``t1`` the exit
(``ml.labels.triple_barrier``'s ``t1_ns``), sorted by ``t0`` (several instruments may share a
``t0``). The samples from ``min_train`` on are cut into ``n_splits`` consecutive test windows of
about equal size, never separating samples with the same ``t0``; each fold trains on the samples
before its test window (all of them, or the last ``max_train`` when rolling) minus

- **purged** samples: those whose label interval overlaps the test window's time span, from the
  first test ``t0`` to the last test ``t1`` (their outcome is partly decided inside the test);
- **embargoed** samples: those with ``t0`` less than the embargo before the first test ``t0``.
  De Prado's embargo follows a test window because his k-fold trains on both sides of it; in a
  walk-forward nothing after a test window is ever trained on for that fold, so the only place
  left for the gap is between the last training entry and the first test entry. It is needed
  there too: features are built from overlapping windows (60-bar returns, 60-bar z-scores), so a
  training row just before the test shares most of its inputs with the first test rows, which
  purging (labels only) does not remove.

The embargo is a duration: ``embargo_bars`` bars of ``bar_s`` seconds, plus ``embargo_fraction`` of
the whole sample's time span.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["PurgedWalkForward"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class PurgedWalkForward:
    """Purged, embargoed walk-forward splits.

    Parameters
    ----------
    n_splits : int
        Number of test windows (folds).
    embargo_bars : int
        Embargo in bars of ``bar_s`` seconds.
    embargo_fraction : float
        Further embargo as a share of the sample's time span (``t0`` first to last).
    min_train : int
        Samples before the first test window; 0 means one window's worth (the sample is then cut in
        ``n_splits + 1`` equal parts, the first used only for training).
    max_train : int or None
        Rolling training window in samples (the last ones before the test); None expands.
    bar_s : float
        Bar length in seconds, for ``embargo_bars``.
    """

    n_splits: int = 5
    embargo_bars: int = 0
    embargo_fraction: float = 0.0
    min_train: int = 0
    max_train: int | None = None
    bar_s: float = 60.0

    def __post_init__(self) -> None:
        if self.n_splits < 1:
            raise ValueError(f"n_splits must be at least 1, got {self.n_splits}")
        if self.embargo_bars < 0 or self.embargo_fraction < 0 or self.min_train < 0:
            raise ValueError("embargo_bars, embargo_fraction and min_train must not be negative")
        if self.max_train is not None and self.max_train < 1:
            raise ValueError(f"max_train must be positive or None, got {self.max_train}")

    def embargo_ns(self, t0_ns: np.ndarray) -> int:
        """The embargo as a duration in ns for these sample times."""
        span = int(t0_ns[-1] - t0_ns[0]) if len(t0_ns) else 0
        return int(round(self.embargo_bars * self.bar_s * _NS + self.embargo_fraction * span))

    def test_windows(self, t0_ns: np.ndarray) -> list[tuple[int, int]]:
        """The folds' test windows as index ranges ``[start, stop)`` of the sorted samples."""
        n = len(t0_ns)
        first = self.min_train or n // (self.n_splits + 1)
        cuts = first + (np.arange(self.n_splits + 1) * (n - first)) // self.n_splits
        # a window starts at the first sample of its t0, so samples of one instant stay together
        cuts = np.searchsorted(t0_ns, t0_ns[np.minimum(cuts, n - 1)], side="left")
        cuts[-1] = n
        windows = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
        if first >= n or any(a >= b for a, b in windows) or windows[0][0] == 0:
            raise ValueError(f"{n} samples cannot make {self.n_splits} test windows after {first} training samples")
        return windows

    def split(self, t0_ns: np.ndarray, t1_ns: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` for each fold, in time order.

        Parameters
        ----------
        t0_ns : numpy.ndarray
            Label start times (int64 ns), non-decreasing.
        t1_ns : numpy.ndarray
            Label end times (int64 ns), ``t1 >= t0``.

        Yields
        ------
        (numpy.ndarray, numpy.ndarray)
            Positions of the training and the test samples (int64, increasing).
        """
        t0 = np.asarray(t0_ns, dtype=np.int64)
        t1 = np.asarray(t1_ns, dtype=np.int64)
        if t0.shape != t1.shape or t0.ndim != 1:
            raise ValueError("t0_ns and t1_ns must be 1-d arrays of the same length")
        if np.any(np.diff(t0) < 0) or np.any(t1 < t0):
            raise ValueError("t0_ns must be sorted and every t1_ns at or after its t0_ns")
        embargo = self.embargo_ns(t0)
        for start, stop in self.test_windows(t0):
            test = np.arange(start, stop)
            lo = 0 if self.max_train is None else max(0, start - self.max_train)
            candidates = np.arange(lo, start)
            first_t0 = t0[start]
            # candidates start before the test's first t0, so their interval overlaps the test's span
            # [first t0, last t1] exactly when it ends at or after that first t0
            purged = t1[candidates] >= first_t0
            embargoed = t0[candidates] >= first_t0 - embargo
            train = candidates[~(purged | embargoed)]
            if len(train) == 0:
                raise ValueError(f"the fold testing samples {start}..{stop - 1} has no training sample left "
                                 "after purging and the embargo (more data, or a shorter embargo)")
            yield train, test
