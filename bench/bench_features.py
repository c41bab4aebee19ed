"""What the ML features cost: per bar online, per tick for the order flow, and offline throughput.

    .venv/bin/python bench/bench_features.py [--bars N] [--ticks N] [--repeat R] [--json] [--smoke]

Real data from ../shared/data/nt8. Each figure has a baseline measured in the same run on the same
input, reported as a ratio (the machines are small and shared; absolute numbers drift run to run):

- ``OnlineFeatures.on_bar`` (ES bars, NQ partner bars interleaved by time; only ES's ``on_bar`` is
  timed) against ``strategies.features.FeatureEngine.on_bar``, the rule strategies' features;
- ``TickFlow.on_tick`` (ES 06-18 ticks, tick rule; SPY ticks, quote rule) against
  ``bridge.core.market.BarBuilder`` (``close_due`` + ``on_trade``), the sidecar's own bar building;
- ``offline_features`` and ``ticks_to_flow_bars``, in bars or ticks per second, against the online
  loop over the same input (the speed-up of the vectorised path).

Each call is timed alone with ``perf_counter_ns`` (the timer's own cost, ~0.1 us, is included in
both sides of a ratio). The runs of a pair alternate ``--repeat`` times and the best of each is kept,
so a burst of outside load does not land on one side only.

It fails (exit code 1) when the workload no longer computes what is measured: no feature row, bar
or snapshot out of one of the timed loops, or no finite row out of the vectorised paths. ``--smoke``
runs it at tiny sizes in a few seconds for that check alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.data.nt8files import read_nt8  # noqa: E402
from strategies.features import FeatureEngine  # noqa: E402
from bridge.core.market import BarBuilder, BarData  # noqa: E402
from ml.features import FeatureConfig, OnlineFeatures, TickFlow, offline_features, ticks_to_flow_bars  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nt8"
_NS = 1_000_000_000
# --smoke: tiny sizes; options given explicitly win
SMOKE = {"bars": 500, "ticks": 3000, "repeat": 1}
# nanoseconds per call, and how many calls produced something (a feature row, a snapshot, a closed bar)
Timed = tuple[list[int], int]


def percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean())}


def time_online_features(bars: pd.DataFrame, partner: pd.DataFrame) -> Timed:
    f = OnlineFeatures(FeatureConfig(), has_partner=True)
    p_ts, p_close = partner["ts_ns"].tolist(), partner["close"].tolist()
    cols = [bars[k].tolist() for k in ("ts_ns", "open", "high", "low", "close", "volume")]
    j, out, rows, clock = 0, [], 0, time.perf_counter_ns
    for ts, o, h, lo, c, v in zip(*cols):
        while j < len(p_ts) and p_ts[j] <= ts:  # the partner's bars up to this minute, as they arrive
            f.on_partner_bar(p_ts[j], p_close[j])
            j += 1
        t = clock()
        row = f.on_bar(ts, o, h, lo, c, v)
        out.append(clock() - t)
        rows += row is not None
    return out, rows


def time_rule_features(bars: pd.DataFrame) -> Timed:
    engine = FeatureEngine()
    cols = [bars[k].tolist() for k in ("ts_ns", "open", "high", "low", "close", "volume")]
    messages = [BarData(0, 60, ts - 60 * _NS, ts, o, h, lo, c, int(v), 1) for ts, o, h, lo, c, v in zip(*cols)]
    out, snapshots, clock = [], 0, time.perf_counter_ns
    for bar in messages:
        t = clock()
        snapshot = engine.on_bar(bar)
        out.append(clock() - t)
        snapshots += snapshot is not None
    return out, snapshots


def tick_columns(ticks: pd.DataFrame) -> list[list]:
    return [ticks[k].tolist() for k in ("ts_ns", "price", "volume", "bid", "ask")]


def time_tickflow(ticks: pd.DataFrame) -> Timed:
    flow, out, bars, clock = TickFlow(60), [], 0, time.perf_counter_ns
    for ts, p, v, b, a in zip(*tick_columns(ticks)):
        t = clock()
        closed = flow.on_tick(ts, p, v, b, a)
        out.append(clock() - t)
        bars += closed is not None
    return out, bars


def time_bar_builder(ticks: pd.DataFrame) -> Timed:
    builder, out, bars, clock = BarBuilder(0, 60), [], 0, time.perf_counter_ns
    for ts, p, v, _, _ in zip(*tick_columns(ticks)):
        t = clock()
        closed = builder.close_due(ts)
        builder.on_trade(ts, p, v)
        out.append(clock() - t)
        bars += closed is not None
    return out, bars


def best_pair(a: Callable[[], Timed], b: Callable[[], Timed], repeat: int) -> tuple[Timed, Timed]:
    """Alternate two timed runs ``repeat`` times; keep the run with the lowest median of each."""
    runs_a, runs_b = [], []
    for _ in range(repeat):
        runs_a.append(a())
        runs_b.append(b())
    return min(runs_a, key=lambda r: np.median(r[0])), min(runs_b, key=lambda r: np.median(r[0]))


def wall(fn: Callable[[], pd.DataFrame], repeat: int) -> tuple[float, pd.DataFrame]:
    """The best of ``repeat`` wall times of ``fn``, and what it returned."""
    best, result = float("inf"), pd.DataFrame()
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def finite_rows(frame: pd.DataFrame) -> int:
    """Rows whose numbers are all finite (warm-up rows of a feature frame are not)."""
    numbers = frame.select_dtypes("number").to_numpy(dtype=float)
    return int(np.isfinite(numbers).all(axis=1).sum()) if numbers.size else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=40_000, help="ES minute bars (all of them by default)")
    ap.add_argument("--ticks", type=int, default=200_000, help="ticks per tick file (default 200000)")
    ap.add_argument("--repeat", type=int, default=3, help="alternated runs of each pair; the best is kept (default 3)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(ap, argv, SMOKE, 'the workload no longer computes features or bars')
    if min(args.bars, args.ticks, args.repeat) < 1:
        ap.error("--bars, --ticks and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not DATA.is_dir():
        print(f"needs the real data at {DATA}", file=sys.stderr)
        return 2
    es = read_nt8(DATA / "ES 12-23.Last.txt").head(args.bars)
    nq = read_nt8(DATA / "NQ 12-23.Last.txt")
    nq = nq[nq["ts_ns"] <= es["ts_ns"].iloc[-1]]
    results: dict[str, dict] = {}
    produced: dict[str, int] = {}  # what each timed loop or vectorised path produced

    (ml, produced["OnlineFeatures.on_bar rows"]), (rule, produced["FeatureEngine.on_bar snapshots"]) = best_pair(
        lambda: time_online_features(es, nq), lambda: time_rule_features(es), args.repeat)
    results["OnlineFeatures.on_bar"] = percentiles_us(ml)
    results["baseline FeatureEngine.on_bar"] = percentiles_us(rule)
    results["OnlineFeatures.on_bar"]["ratio_p50"] = float(np.median(ml) / np.median(rule))
    results["OnlineFeatures.on_bar"]["ratio_p99"] = float(np.percentile(ml, 99) / np.percentile(rule, 99))

    for name, path in (("ES 06-18 (tick rule)", "ES 06-18.Last.txt.gz"), ("SPY (quote rule)", "SPY.Last.txt.gz")):
        ticks = read_nt8(DATA / path).head(args.ticks)
        (flow, produced[f"TickFlow bars {name}"]), (builder, produced[f"BarBuilder bars {name}"]) = best_pair(
            lambda: time_tickflow(ticks), lambda: time_bar_builder(ticks), args.repeat)
        results[f"TickFlow.on_tick {name}"] = {**percentiles_us(flow),
                                               "ratio_p50": float(np.median(flow) / np.median(builder))}
        results[f"baseline BarBuilder {name}"] = percentiles_us(builder)
        vec, flow_bars = wall(lambda: ticks_to_flow_bars(ticks, 60), args.repeat)
        produced[f"ticks_to_flow_bars rows {name}"] = finite_rows(flow_bars)
        results[f"ticks_to_flow_bars {name}"] = {"ticks_per_s": len(ticks) / vec,
                                                 "speedup_vs_online": float(np.sum(flow)) / 1e9 / vec}

    off, frame = wall(lambda: offline_features(es, nq, FeatureConfig()), args.repeat)
    produced["offline_features finite rows"] = finite_rows(frame)
    results["offline_features ES+NQ"] = {"bars_per_s": len(es) / off, "seconds": off,
                                         "speedup_vs_online": float(np.sum(ml)) / 1e9 / off}

    print(f"{'what':46s} {'p50 us':>9s} {'p99 us':>9s} {'ratio':>8s}  throughput")
    for name, r in results.items():
        if "p50_us" in r:
            ratio = f"{r['ratio_p50']:.2f}x" if "ratio_p50" in r else "1"
            print(f"{name:46s} {r['p50_us']:9.2f} {r['p99_us']:9.2f} {ratio:>8s}")
        else:
            rate = r.get("bars_per_s") or r.get("ticks_per_s")
            unit = "bars/s" if "bars_per_s" in r else "ticks/s"
            print(f"{name:46s} {'':9s} {'':9s} {'':8s}  {rate:,.0f} {unit} ({r['speedup_vs_online']:.0f}x the online loop)")
    if args.json:
        print(json.dumps({**results, "produced": produced}, indent=2))
    empty = [what for what, n in produced.items() if n == 0]
    if empty:
        print("bench_features: FAILED, the workload no longer computes what is measured: nothing from "
              + ", ".join(empty), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
