"""Benchmark the analytics store (bridge/analytics) on months of synthetic ticks.

    .venv/bin/python bench/bench_analytics.py [--ticks 10000000] [--repeat 20] [--url chdb:///PATH] [--smoke]

Prints:
* load: rows/s of ``AnalyticsStore.insert`` (batches of ``--batch-rows``, deduplication tokens, the minute
  rollups' views on) from a DataFrame already in memory, and, in the same run, of a plain pandas
  ``to_parquet`` (pyarrow, zstd) of the same frame: the ratio store/Parquet;
* compression of the ticks table from ``system.parts`` (uncompressed / compressed bytes, bytes a row), beside
  the Parquet file's bytes a row;
* query times, p50 and p99 in ms over ``--repeat`` runs: bars at 5m over the whole range and 1m over a session,
  VWAP and the volume profile of every session, the volume profile of one session, and bars built from the
  ticks (a window one nanosecond off the minute, which the rollups cannot answer) for the comparison.

The ticks: ``--ticks`` trades of two instruments (ES and NQ, half each) over as many 23-hour CME sessions
(17:00-16:00 Chicago, weekdays) as 100,000 trades a session fill, prices a random walk in quarter points,
sizes 1-20. Without ``--url`` the embedded engine (chdb) writes to a temporary folder.

It fails (exit code 1) when the store does not hold exactly the rows given, a retried batch changed a count,
or a query answers with no rows. ``--smoke`` runs it at 300,000 ticks and 3 repetitions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.analytics.queries import bars, volume_profile, vwap
from bridge.analytics.store import AnalyticsStore, open_store

SMOKE = {"ticks": 300_000, "repeat": 3}
PER_SESSION = 100_000
SESSION_S = 23 * 3600
FIRST_OPEN = pd.Timestamp("2024-01-01 23:00", tz="UTC")  # Monday 17:00 Chicago (CST), the first session's open


def session_opens(n: int) -> np.ndarray:
    """The opening instants (ns) of ``n`` consecutive weekday sessions (a Friday's close to Sunday's open
    skipped)."""
    days = pd.bdate_range(FIRST_OPEN.tz_localize(None).normalize(), periods=n)
    return (days + pd.Timedelta(hours=23)).tz_localize("UTC").as_unit("ns").asi8


def synthetic_ticks(n: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sessions = max(1, -(-n // PER_SESSION))
    opens = session_opens(sessions)
    which = np.sort(rng.integers(0, sessions, n))
    ts = opens[which] + rng.integers(0, SESSION_S * 10**9, n)
    ts.sort()  # the trades' own order; ties keep seq order
    inst = np.where(rng.random(n) < 0.5, "ES 03-24", "NQ 03-24").astype(object)
    steps = rng.choice(np.array([-0.25, 0.0, 0.25]), n, p=[0.3, 0.4, 0.3])
    price = np.where(inst == "ES 03-24", 4800.0, 16800.0) + np.cumsum(steps)
    return pd.DataFrame({"instrument": inst, "ts": ts.astype(np.int64), "session_id": np.zeros(n, dtype=np.uint64),
                         "seq": np.arange(n, dtype=np.uint64),
                         "price": price, "volume": rng.integers(1, 21, n).astype(np.uint64)})


def load(store: AnalyticsStore, df: pd.DataFrame, batch_rows: int) -> float:
    """Seconds to insert ``df`` in slices of 10 batches, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    step = batch_rows * 10
    started = time.perf_counter()
    with Progress(TextColumn("loading ticks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("load", total=len(df))
        for lo in range(0, len(df), step):
            # one source for the whole frame: the batch ranges (and so the tokens) are the frame's own
            store.insert("ticks", df.iloc[lo:lo + step], source=f"bench:{lo}")
            bar.update(task, advance=min(step, len(df) - lo))
    return time.perf_counter() - started


def parquet_write(df: pd.DataFrame, path: Path) -> float:
    started = time.perf_counter()
    df.to_parquet(path, engine="pyarrow", compression="zstd", index=False)
    return time.perf_counter() - started


def timed(fn, repeat: int) -> tuple[float, float, int]:
    """p50 and p99 in ms over ``repeat`` calls after one warm-up, and the rows the last call returned."""
    rows = len(fn())
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        rows = len(fn())
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--batch-rows", type=int, default=50_000)
    p.add_argument("--url", help="an analytics store to use (default: chdb in a temporary folder)")
    args = smoke.parse_args(p, argv, SMOKE, "the store does not hold every row or a query returns nothing")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp:
        t = time.perf_counter()
        df = synthetic_ticks(args.ticks)
        print(f"{len(df):,} synthetic ticks (ES and NQ, {df['ts'].iloc[0]:,}..{df['ts'].iloc[-1]:,} ns) made in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        pq = Path(tmp) / "ticks.parquet"
        pq_s = parquet_write(df, pq)
        pq_bytes = pq.stat().st_size
        with open_store(args.url or f"chdb://{Path(tmp) / 'ch'}", batch_rows=args.batch_rows) as store:
            load_s = load(store, df, args.batch_rows)
            stored = store.count("ticks")
            if stored != len(df):
                problems.append(f"the store holds {stored:,} ticks, {len(df):,} were given")
            store.insert("ticks", df.iloc[:args.batch_rows], source="bench:0")  # a retried batch
            if store.count("ticks") != stored:
                problems.append("a retried batch changed the count")
            rollup = store.query_df(f"SELECT sum(ticks) AS n FROM `{store.database}`.ticks_1m")
            if int(rollup["n"][0]) != len(df):
                problems.append(f"the minute rollup counts {int(rollup['n'][0]):,} ticks, {len(df):,} were given")
            parts = store.query_df(
                f"SELECT sum(rows) AS rows, sum(data_compressed_bytes) AS c, sum(data_uncompressed_bytes) AS u "
                f"FROM system.parts WHERE database = '{store.database}' AND table = 'ticks' AND active")
            rows, comp, unc = (int(parts[c][0]) for c in ("rows", "c", "u"))
            first_open = int(session_opens(1)[0])
            day = (first_open, first_open + 24 * 3600 * 10**9)
            queries = {
                "bars ES 5m, whole range": lambda: bars(store, "ES", "5m"),
                "bars ES 1m, one session": lambda: bars(store, "ES", "1m", *day),
                "vwap ES, every session": lambda: vwap(store, "ES"),
                "volume profile ES, every session": lambda: volume_profile(store, "ES"),
                "volume profile ES, one session": lambda: volume_profile(store, "ES", *day),
                "bars ES 5m from the ticks (window 1 ns off)": lambda: bars(store, "ES", "5m", 1),
            }
            results = {}
            for name, fn in queries.items():
                results[name] = timed(fn, args.repeat)
                if results[name][2] == 0:
                    problems.append(f"{name}: no rows")

    n = len(df)
    print(f"\nload ({n:,} ticks, batches of {args.batch_rows:,})")
    print(f"  analytics store insert      : {n / load_s:>12,.0f} rows/s ({load_s:.1f} s)")
    print(f"  pandas to_parquet (zstd)    : {n / pq_s:>12,.0f} rows/s ({pq_s:.1f} s)")
    print(f"  store / parquet rate        : {pq_s / load_s:>12.2f}")
    print("\ncompression of the ticks table (system.parts)")
    print(f"  rows {rows:,}: {unc / 1e6:,.1f} MB uncompressed, {comp / 1e6:,.1f} MB on disk, ratio {unc / comp:.1f}x, "
          f"{comp / max(rows, 1):.2f} bytes a row (Parquet zstd: {pq_bytes / n:.2f} bytes a row)")
    print(f"\nqueries over {n:,} ticks, {args.repeat} runs each (ms)")
    for name, (p50, p99, nrows) in results.items():
        print(f"  {name:<45} p50 {p50:>8.1f}  p99 {p99:>8.1f}  ({nrows:,} rows)")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
