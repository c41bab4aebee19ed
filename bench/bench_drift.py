"""What drift monitoring costs: the DI guard per row (hot path) and a drift check of a window.

    .venv/bin/python bench/bench_drift.py [--rows 20000] [--features 24] [--points 300] [--train-rows 50000]
                                          [--window-rows 10000] [--json] [--smoke]

DI guard: ``DissimilarityGuard.index`` on one raw feature row (standardise, one matrix-vector
product over the reference subsample, a minimum, a square root) against the baseline of a bare
``points @ z`` of the same size, measured in the same run. Each row is timed on both back to back
(``time.perf_counter_ns`` around the call), so a burst of outside load hits both alike; the first
``--warmup`` rows are discarded. Goal: the guard adds a few microseconds at most (p99 under 50 us).

Drift check: ``DriftDetector.check`` on 10,000 rows x 24 features against a reference built from
50,000 training rows (AR(1) features with autocorrelation 0.9), and ``DriftReference.from_training``
itself (done once per trained model). Goal: a check well under a second, so an hourly or per-session
check costs nothing that matters. The benchmark prints the figures and whether the goals are met;
it never fails on a threshold.

It fails (exit code 1) when the workload no longer computes what is measured: a DI that is not a
positive finite number, or a drift report without a finite PSI for every feature. ``--smoke`` runs
it at tiny sizes in a few seconds for that check alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from ml.drift import DissimilarityGuard, DriftDetector, DriftReference  # noqa: E402

GOAL_DI_P99_US = 50.0
GOAL_CHECK_S = 1.0
DI_REFERENCE_ROWS = 20_000  # training rows behind the DI guard's reference (fewer if --train-rows is smaller)
# --smoke: tiny sizes; options given explicitly win
SMOKE = {"rows": 300, "warmup": 50, "train_rows": 3000, "window_rows": 1000}


def _ar1(rng: np.random.Generator, n: int, k: int, rho: float = 0.9) -> np.ndarray:
    e = rng.normal(scale=math.sqrt(1 - rho ** 2), size=(n, k))
    x = np.empty((n, k))
    x[0] = rng.normal(size=k)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + e[t]
    return x


def _percentiles(ns: list[int]) -> dict[str, float]:
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean())}


def bench_di(reference: DriftReference, rows: np.ndarray, n_points: int, warmup: int) -> dict[str, Any]:
    """Per-row cost of the guard and of the bare matrix-vector product, interleaved; and the DI of a few
    rows, computed again after the timing, to show that the guard computes something."""
    guard = DissimilarityGuard(reference, n_points=n_points)
    points = np.ascontiguousarray(guard._points)  # noqa: SLF001 - the baseline uses the very same matrix
    z = np.zeros(points.shape[1])
    guard_ns, base_ns = [], []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for row in rows:
            t0 = clock()
            points @ z
            t1 = clock()
            guard.index(row)
            t2 = clock()
            base_ns.append(t1 - t0)
            guard_ns.append(t2 - t1)
    finally:
        gc.enable()
    return {"baseline_matvec": _percentiles(base_ns[warmup:]), "di_guard": _percentiles(guard_ns[warmup:]),
            "di_sample": [guard.index(row) for row in rows[:10]]}


def bench_check(rng: np.random.Generator, features: int, train_rows: int, window_rows: int) -> dict[str, Any]:
    """Seconds to build a reference and to check one window; the last check's PSI per feature."""
    train = _ar1(rng, train_rows, features)
    names = [f"f{i}" for i in range(features)]
    t0 = time.perf_counter()
    reference = DriftReference.from_training(train, names)
    t1 = time.perf_counter()
    detector = DriftDetector(reference)
    window = _ar1(rng, window_rows, features)
    times = []
    for _ in range(3):
        s = time.perf_counter()
        report = detector.check(window)
        times.append(time.perf_counter() - s)
    return {"from_training_s": t1 - t0, "check_s_min": min(times), "check_s_median": float(np.median(times)),
            "psi": [f.psi for f in report.features]}


def workload_problems(di: dict[str, Any], check: dict[str, Any], features: int) -> list[str]:
    """Why the figures would not measure what they say, if they would not."""
    problems = []
    if not all(math.isfinite(v) and v > 0 for v in di["di_sample"]):
        problems.append(f"the DI guard gave {di['di_sample'][:3]}..., not positive finite distances")
    psi = check["psi"]
    if len(psi) != features or not all(math.isfinite(v) for v in psi):
        problems.append(f"the drift check reported {len(psi)} PSI values for {features} features "
                        f"({sum(not math.isfinite(v) for v in psi)} not finite)")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows timed through the DI guard (default 20000)")
    parser.add_argument("--warmup", type=int, default=1_000, help="rows discarded first (default 1000)")
    parser.add_argument("--features", type=int, default=24, help="features per row (default 24)")
    parser.add_argument("--points", type=int, default=300, help="DI reference subsample size (default 300)")
    parser.add_argument("--train-rows", type=int, default=50_000,
                        help="training rows of the drift check's reference (default 50000)")
    parser.add_argument("--window-rows", type=int, default=10_000, help="rows in the checked window (default 10000)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(parser, argv, SMOKE, 'the guard or the check no longer computes what is measured')
    if min(args.rows, args.features, args.train_rows, args.window_rows) < 1 or args.warmup < 0:
        parser.error("sizes must be positive, --warmup not negative")
    if args.train_rows <= args.points:
        parser.error("--train-rows must exceed --points: the DI threshold is calibrated on the rows left out")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(args.features)]
    di_rows = min(DI_REFERENCE_ROWS, args.train_rows)
    reference = DriftReference.from_training(_ar1(rng, di_rows, args.features), names, window=1_000)
    di = bench_di(reference, _ar1(rng, args.rows + args.warmup, args.features), args.points, args.warmup)
    check = bench_check(rng, args.features, args.train_rows, args.window_rows)

    base, guard = di["baseline_matvec"], di["di_guard"]
    print(f"DI guard, {args.points} reference points x {args.features} features, {args.rows} rows")
    print(f"  {'':24} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}")
    for label, row in (("baseline: points @ z", base), ("DissimilarityGuard.index", guard)):
        print(f"  {label:24} {row['p50_us']:8.2f} {row['p99_us']:8.2f} {row['mean_us']:8.2f}")
    print(f"  ratio p50 {guard['p50_us'] / base['p50_us']:.1f}x, p99 {guard['p99_us'] / base['p99_us']:.1f}x; "
          f"goal p99 < {GOAL_DI_P99_US:g} us: {'met' if guard['p99_us'] < GOAL_DI_P99_US else 'NOT met'}")
    print(f"Drift check, {args.window_rows} rows x {args.features} features (reference from {args.train_rows} rows)")
    print(f"  from_training {check['from_training_s']:.2f} s; check min {check['check_s_min']:.3f} s, "
          f"median {check['check_s_median']:.3f} s; goal < {GOAL_CHECK_S:g} s: "
          f"{'met' if check['check_s_median'] < GOAL_CHECK_S else 'NOT met'}")
    if args.json:
        print(json.dumps({"di": di, "check": check}, indent=2))
    problems = workload_problems(di, check, args.features)
    if problems:
        print("bench_drift: FAILED, the workload no longer computes what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
