"""Benchmark the storage writer through a database outage: the hot path during it, the catch-up after it.

    .venv/bin/python bench/bench_outage.py [--rows N] [--rate R] [--batch-rows B] [--block K] [--smoke] [--json]

One writer (``StorageWriter`` with its spool, as the sidecar runs it) on a fresh SQLite file, fed
realistic ES tick rows at ``--rate`` rows/s (a busy market; the hot path is paced, as NT8 paces it),
in three phases of ``--rows`` rows each:

* normal: the database takes every commit;
* outage: another connection holds the database's write lock (SQLite answers "database is locked",
  which the writer treats as the database being away, like a PostgreSQL server that is down): the
  backlog goes to the spool;
* catch-up: the lock is released; the time from then until everything is committed (``sync``).

Printed: ``write()`` per call (ns, p50/p99/max over blocks of ``--block`` calls) normal and during the
outage, and their ratio (the goal: the same order of magnitude, and no wait on the queue during the
outage); the rate at which the outage's rows reached the spool; the catch-up rate (rows/s replayed from
the spool) with, as its baseline, the normal phase's commit rate measured in the same run.

It fails (exit code 1) when a row is missing or stored twice, when the outage phase did not use the
spool (the workload no longer causes an outage), or when the writer never reported ``database_down``.
``--smoke`` runs it at a tiny size in a few seconds for that check alone; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.storage.database import create_engine_for
from bridge.storage.schema import ticks
from bridge.storage.writer import StorageWriter

Row = tuple[Any, ...]
TS0 = 1_529_000_000_000_000_000
SMOKE = {"rows": 6000, "rate": 60_000, "batch_rows": 500, "block": 100}


def make_rows(n: int, start: int) -> list[Row]:
    """n ES ticks with distinct seq and times from ``start``; NaN quotes on some trades."""
    nan = float("nan")
    rows = []
    for i in range(start, start + n):
        kind = i % 3
        price = 2750.0 + (i % 16) * 0.25
        rows.append((1, i, "ES 06-18", kind, price, 1 + i % 9, price - 0.25 if kind else nan, price if kind else nan,
                     TS0 + i * 250_000, TS0 + i * 250_000 + 41_000, TS0 + i * 250_000 + 95_000))
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def feed(writer: StorageWriter, rows: list[Row], rate: float, block: int) -> list[float]:
    """Write ``rows`` at ``rate`` rows/s in blocks of ``block``; ns per write() call of each block."""
    write = writer.write
    clock = time.perf_counter_ns
    per_call: list[float] = []
    started = time.perf_counter()
    for first in range(0, len(rows), block):
        part = rows[first:first + block]
        t0 = clock()
        for row in part:
            write("ticks", row)
        per_call.append((clock() - t0) / len(part))
        writer.flush_if_due()
        due = started + (first + len(part)) / rate  # paced: a market, not a loop flat out
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    writer.flush()
    return per_call


def stored_seqs(url: str) -> list[int]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(select(ticks.c.seq).order_by(ticks.c.id))]
    finally:
        engine.dispose()


def run(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], list[str]]:
    db = folder / "outage.sqlite"
    sqlite3.connect(db).execute("PRAGMA journal_mode = WAL").fetchall()
    url = f"sqlite:///{db}?timeout=0.05"  # a short busy timeout: the outage is found at once
    n = args.rows
    normal_rows, outage_rows, after_rows = make_rows(n, 0), make_rows(n, n), make_rows(n // 10, 2 * n)
    writer = StorageWriter(url, batch_rows=args.batch_rows, queue_batches=args.queue_batches,
                           spool_path=folder / "outage.spool", retry_initial_s=0.05, retry_max_s=1.0)
    writer.start()
    problems: list[str] = []
    try:
        t0 = time.perf_counter()
        normal = feed(writer, normal_rows, args.rate, args.block)
        writer.sync()
        normal_commit_s = time.perf_counter() - t0
        waits_normal = writer.stats.backpressure_waits

        lock = sqlite3.connect(db, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")  # another program takes the write lock: the database is away
        t1 = time.perf_counter()
        outage = feed(writer, outage_rows, args.rate, args.block)
        deadline = time.monotonic() + 300
        while writer.stats.rows_spooled < n and time.monotonic() < deadline:
            time.sleep(0.005)
        spooled_s = time.perf_counter() - t1
        during = writer.stats
        waits_outage = during.backpressure_waits - waits_normal

        t2 = time.perf_counter()
        lock.close()  # back: the spool is replayed
        writer.sync()
        catch_up_s = time.perf_counter() - t2
        replayed = writer.stats.rows_replayed
        feed(writer, after_rows, args.rate, args.block)  # and new rows go straight in again
        writer.sync()
        final = writer.stats
    finally:
        writer.close()

    seqs = stored_seqs(url)
    expected = [r[1] for r in normal_rows + outage_rows + after_rows]
    if seqs != expected:
        missing = len(set(expected) - set(seqs))
        problems.append(f"{len(seqs)} rows stored for {len(expected)} written ({missing} missing, "
                        f"{len(seqs) - len(set(seqs))} twice, or out of order)")
    if during.state != "database_down":
        problems.append(f"the writer said {during.state!r} during the outage, not 'database_down'")
    if during.rows_spooled < n:
        problems.append(f"only {during.rows_spooled} of the outage's {n} rows reached the spool")
    figures = {
        "rows_per_phase": n, "rate_rows_s": args.rate, "block": args.block,
        "write_ns_normal": {"p50": percentile(normal, 50), "p99": percentile(normal, 99), "max": max(normal)},
        "write_ns_outage": {"p50": percentile(outage, 50), "p99": percentile(outage, 99), "max": max(outage)},
        "backpressure_waits_normal": waits_normal, "backpressure_waits_outage": waits_outage,
        "spooled_rows_s": n / spooled_s, "spool_bytes": during.spool_bytes,
        "catch_up_rows_s": replayed / catch_up_s if catch_up_s > 0 else 0.0, "catch_up_s": catch_up_s,
        "rows_replayed": replayed, "normal_commit_rows_s": n / normal_commit_s,
        "final_state": final.state, "outages": final.outages,
    }
    return figures, problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="tick rows per phase (default 200000)")
    parser.add_argument("--rate", type=float, default=20_000, help="rows/s the hot path hands over (default 20000)")
    parser.add_argument("--batch-rows", type=int, default=2000, help="rows per batch (default 2000)")
    parser.add_argument("--queue-batches", type=int, default=64, help="the writer's queue, in batches (default 64)")
    parser.add_argument("--block", type=int, default=500, help="write() calls per timing sample (default 500)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = smoke.parse_args(parser, argv, SMOKE, "a row is lost or doubled, or the outage does not reach the spool")
    if min(args.rows, args.batch_rows, args.queue_batches, args.block) < 1 or args.rate <= 0:
        parser.error("--rows, --rate, --batch-rows, --queue-batches and --block must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="nt8bridge-bench-outage-") as tmp:
        f, problems = run(args, Path(tmp))
    wn, wo = f["write_ns_normal"], f["write_ns_outage"]
    print(f"{f['rows_per_phase']} tick rows per phase at {f['rate_rows_s']:,.0f} rows/s, batch_rows={args.batch_rows}, "
          f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}; outage: the write lock held elsewhere")
    print(f"write() normal, ns per call      : p50 {wn['p50']:>8.0f}  p99 {wn['p99']:>8.0f}  max {wn['max']:>9.0f}  "
          f"(blocks of {f['block']})")
    print(f"write() during the outage        : p50 {wo['p50']:>8.0f}  p99 {wo['p99']:>8.0f}  max {wo['max']:>9.0f}")
    print(f"ratio outage / normal            : p50 {wo['p50'] / wn['p50']:>8.2f}  p99 {wo['p99'] / wn['p99']:>8.2f}")
    print(f"hot path waits on the queue      : normal {f['backpressure_waits_normal']}, outage "
          f"{f['backpressure_waits_outage']} (goal: 0 during the outage)")
    print(f"outage rows into the spool       : {f['spooled_rows_s']:>10,.0f} rows/s  ({f['spool_bytes'] / 1e6:.1f} MB)")
    print(f"catch-up from the spool          : {f['catch_up_rows_s']:>10,.0f} rows/s  ({f['rows_replayed']} rows in "
          f"{f['catch_up_s']:.2f}s)")
    print(f"baseline: the market rate        : {f['rate_rows_s']:>10,.0f} rows/s  (normal phase, write to committed: "
          f"{f['normal_commit_rows_s']:,.0f} rows/s)")
    times = f["catch_up_rows_s"] / f["rate_rows_s"]
    print(f"ratio catch-up / market rate     : {times:>10.1f}  (a backlog drains while the market goes on only above "
          f"1; a 60 s outage then takes {60 / (times - 1) if times > 1 else float('inf'):.0f}s to catch up)")
    if args.json:
        print(json.dumps(f, indent=2))
    if problems:
        print("bench_outage: FAILED, the workload no longer measures an outage and its catch-up: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
