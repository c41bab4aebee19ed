"""What deciding costs per closed bar: the whole pipeline on real minute bars, with and without strategies.

    .venv/bin/python bench/bench_strategies.py [--bars N] [--strategies momentum,reversion,spread] [--smoke]

Feeds real ES and NQ one-minute bars (../shared/data/nt8) as BAR messages into one session's
``DecisionPipeline`` (quality gate, features, strategies, portfolio with regimes, correlation and
Kelly sizing, risk, record to an in-memory sink) and times each message. The baseline, measured in
the same run on the same bars, is the pipeline with no strategy (quality gate, features, record),
so the ratio is what strategies, regimes and sizing add. Orders are not filled (nothing plays NT8
here), so after a bracket the instrument stays busy: entries are rarer than in a backtest, the
per-bar path (every strategy, every regime and correlation update) runs on every bar.

Also reports the regime model's refit time (a 5,000-sample Gaussian mixture, single-threaded).

It fails (exit code 1) when the workload no longer exercises what is measured: no features
computed, or not one decision (a signal the portfolio sized, traded or not) in the run with
strategies. ``--smoke`` runs it on 1,000 bars per instrument (a regime refit included) for that check.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.core.config import Config  # noqa: E402
from bridge.data.nt8files import read_nt8  # noqa: E402
from bridge.core.instruments import InstrumentMaster  # noqa: E402
from bridge.engine.pipeline import STAGES, DecisionPipeline, SessionInstrument  # noqa: E402
from bridge.protocol.messages import Bar, InstrumentDecl  # noqa: E402
from bridge.audit.recorder import Recorder  # noqa: E402
from bridge.core.timing import StageTimings  # noqa: E402
from strategies.registry import build_strategies  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nt8"
# --smoke: enough bars per instrument for the features, a few decisions and a regime refit
SMOKE = {"bars": 1000}


class NullSink:
    def write(self, table: str, row: tuple) -> None:
        pass

    def update(self, table, key, values) -> None:
        pass


def bars(n: int) -> list[Bar]:
    out = []
    for iid, name in enumerate(("ES 12-23", "NQ 12-23")):
        df = read_nt8(DATA / f"{name}.Last.txt").head(n)
        for o, h, lo, c, v, ts in zip(df["open"], df["high"], df["low"], df["close"], df["volume"], df["ts_ns"]):
            out.append(Bar(iid, 60, float(o), float(h), float(lo), float(c), int(v), int(ts)))
    out.sort(key=lambda b: (b.ts_close_ns, b.instrument_id))
    return out


def run(messages: list[Bar], names: str) -> tuple[np.ndarray, DecisionPipeline, list[float]]:
    c = Config()
    c = replace(c, strategy=replace(c.strategy, names=names))
    master = InstrumentMaster.default()
    insts = [SessionInstrument(i, InstrumentDecl(n, 0.25, pv), master.resolve(n))
             for i, (n, pv) in enumerate((("ES 12-23", 50.0), ("NQ 12-23", 20.0)))]
    p = DecisionPipeline(config=c, instruments=insts, recorder=Recorder(NullSink(), 1),
                         strategies=build_strategies(c.strategy), timings=StageTimings(STAGES), id_prefix="B")
    times = np.empty(len(messages), dtype=np.int64)
    perf = time.perf_counter_ns
    detectors = list(p.portfolio._detectors.values())
    fits = [0] * len(detectors)
    fit_seconds: list[float] = []
    for k, m in enumerate(messages):
        t0 = perf()
        p.on_bar(k, m)
        times[k] = perf() - t0
        for j, det in enumerate(detectors):
            if det.fits != fits[j]:
                fits[j] = det.fits
                fit_seconds.append(det.last_fit_seconds or 0.0)
    return times, p, fit_seconds


def fmt(t: np.ndarray) -> str:
    return (f"p50 {np.percentile(t, 50) / 1e3:7.1f} us  p99 {np.percentile(t, 99) / 1e3:7.1f} us  "
            f"mean {t.mean() / 1e3:7.1f} us  ({1e9 / t.mean():,.0f} bars/s)")


def workload_problems(base: DecisionPipeline, full: DecisionPipeline) -> list[str]:
    """Why the figures would not measure what they say, if they would not."""
    problems = []
    for label, p in (("the baseline", base), ("the run with strategies", full)):
        missing = sorted(set(p.instruments) - set(p.feature_engine.latest))
        if missing:
            problems.append(f"{label} computed no features for instrument(s) {missing}")
    if not full.decisions:
        problems.append("the strategies made no decision: no signal reached the portfolio, so the per-bar cost "
                        "leaves out sizing, risk and recording")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bars", type=int, default=20_000, help="bars per instrument (default 20,000)")
    ap.add_argument("--strategies", default="momentum,reversion,spread",
                    help="strategies of the timed run (default momentum,reversion,spread)")
    args = smoke.parse_args(ap, argv, SMOKE, 'the workload no longer computes features or decides anything')
    if args.bars < 1:
        ap.error("--bars must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not DATA.is_dir():
        print(f"needs the real data at {DATA}", file=sys.stderr)
        return 2
    messages = bars(args.bars)
    print(f"{len(messages):,} BAR messages (ES and NQ 1-minute bars, {args.bars:,} each)")
    base, base_pipeline, _ = run(messages, "none")
    full, p, fit_s = run(messages, args.strategies)
    print(f"baseline (quality, features, record):   {fmt(base)}")
    print(f"with {args.strategies} + portfolio:  {fmt(full)}")
    print(f"ratio p50 {np.percentile(full, 50) / np.percentile(base, 50):.2f}x, "
          f"p99 {np.percentile(full, 99) / np.percentile(base, 99):.2f}x, mean {full.mean() / base.mean():.2f}x")
    if fit_s:
        f = np.array(fit_s) * 1e3
        print(f"regime model refits: {len(f)}, p50 {np.percentile(f, 50):.1f} ms, p99 {np.percentile(f, 99):.1f} ms, "
              f"max {f.max():.1f} ms (in the p99 above only where a refit fell on the bar)")
    else:
        print("regime model refits: none in this run")
    print(f"decisions {p.decisions:,}, orders {p.orders_sent:,}")
    problems = workload_problems(base_pipeline, p)
    if problems:
        print("bench_strategies: FAILED, the workload no longer exercises what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
