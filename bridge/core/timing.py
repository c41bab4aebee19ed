"""Per-stage latency histograms for the decision pipeline, cheap enough for every tick.

The hot path appends raw nanosecond durations to a list (one ``list.append`` per stage); every
``fold_every`` samples, or when read, they are folded into fixed log-spaced microsecond buckets
with numpy. Reading (percentiles, Prometheus buckets) never touches the hot path's lists.
"""

from __future__ import annotations

import threading

import numpy as np

# Bucket upper bounds in microseconds: 0.25 us .. ~1.07 s, 4 per octave (a 19% width), so a
# percentile read from the buckets is within about 10% of the true value.
BUCKET_BOUNDS_US = 0.25 * 2.0 ** (np.arange(0, 4 * 22 + 1) / 4.0)
_BOUNDS_NS = BUCKET_BOUNDS_US * 1000.0


class Histogram:
    """Counts of durations per bucket, with exact count, sum and max."""

    __slots__ = ("counts", "count", "sum_ns", "max_ns")

    def __init__(self) -> None:
        self.counts = np.zeros(len(BUCKET_BOUNDS_US) + 1, dtype=np.int64)  # last: overflow
        self.count = 0
        self.sum_ns = 0
        self.max_ns = 0

    def add_many(self, samples_ns: list[int]) -> None:
        if not samples_ns:
            return
        arr = np.asarray(samples_ns, dtype=np.int64)
        idx = np.searchsorted(_BOUNDS_NS, arr, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.count += len(arr)
        self.sum_ns += int(arr.sum())
        self.max_ns = max(self.max_ns, int(arr.max()))

    def percentile_us(self, q: float) -> float:
        """The q-th percentile (0..100), as the upper bound of its bucket; NaN when empty."""
        if self.count == 0:
            return float("nan")
        rank = q / 100.0 * self.count
        i = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1), side="left"))
        return float(BUCKET_BOUNDS_US[i]) if i < len(BUCKET_BOUNDS_US) else self.max_ns / 1000.0


class StageTimings:
    """Durations per named stage."""

    def __init__(self, stages: tuple[str, ...], fold_every: int = 4096) -> None:
        self.stages = stages
        self.fold_every = fold_every
        self.pending: dict[str, list[int]] = {s: [] for s in stages}
        self.histograms: dict[str, Histogram] = {s: Histogram() for s in stages}

    def record(self, stage: str, duration_ns: int) -> None:
        pending = self.pending[stage]
        pending.append(duration_ns)
        if len(pending) >= self.fold_every:
            self.histograms[stage].add_many(pending)
            pending.clear()

    def fold(self) -> None:
        for stage, pending in self.pending.items():
            self.histograms[stage].add_many(pending)
            pending.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        self.fold()
        return {s: {"count": h.count, "p50_us": h.percentile_us(50), "p99_us": h.percentile_us(99),
                    "max_us": h.max_ns / 1000.0} for s, h in self.histograms.items() if h.count}


class NoTimings(StageTimings):
    """Stage timings that keep nothing: for runs nobody reads latencies from (a research run over history,
    where a stage's wall time says nothing about the market)."""

    def record(self, stage: str, duration_ns: int) -> None:
        pass


def _percentile_us(counts: np.ndarray, q: float, max_us: float) -> float:
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    i = int(np.searchsorted(np.cumsum(counts), max(q / 100.0 * total, 1), side="left"))
    return float(BUCKET_BOUNDS_US[i]) if i < len(BUCKET_BOUNDS_US) else max_us


class RecentWindow:
    """Percentiles of the last ``window_s`` seconds of cumulative histograms.

    An operator watching latency needs what happens now, not since the sidecar started: a spike an
    hour into the day barely moves a p99 over the day. Every ``step_s`` the bucket counts are copied;
    the recent figures are the counts now less the oldest copy still inside the window. Read from the
    sidecar's own thread (snapshots) and a scrape's: a lock, never touched by the hot path."""

    def __init__(self, window_s: float = 60.0, step_s: float = 5.0) -> None:
        self.window_s = window_s
        self.step_s = step_s
        self._marks: list[tuple[float, dict[str, np.ndarray]]] = []
        self._lock = threading.Lock()

    def figures(self, histograms: dict[str, Histogram], now: float) -> dict[str, dict[str, float | int]]:
        """stage -> {"p50_us", "p99_us", "count"} over the window (NaN percentiles for an idle stage)."""
        with self._lock:
            if not self._marks or now - self._marks[-1][0] >= self.step_s:
                self._marks.append((now, {s: h.counts.copy() for s, h in histograms.items()}))
            while len(self._marks) > 1 and now - self._marks[1][0] >= self.window_s:
                self._marks.pop(0)
            base = self._marks[0][1] if now - self._marks[0][0] > 0 else {}
        out: dict[str, dict[str, float | int]] = {}
        for stage, h in histograms.items():
            counts = h.counts - base[stage] if stage in base else h.counts
            out[stage] = {"p50_us": _percentile_us(counts, 50, h.max_ns / 1000.0),
                          "p99_us": _percentile_us(counts, 99, h.max_ns / 1000.0), "count": int(counts.sum())}
        return out
