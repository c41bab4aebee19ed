"""Benchmark the storage writer against raw sqlite3 on the ticks table.

    .venv/bin/python bench/bench_storage.py [--rows N] [--db URL] [--batch-rows B] [--paths] [--smoke]

Prints, for N tick rows:
* end to end: rows/s from the first ``write()`` until ``sync()`` returns (everything committed);
* hot path: ns per ``write()`` call, p50/p99/max over blocks of ``--block`` calls (a single call
  is too short for the clock), measured while the writer thread competes for the GIL; once over
  all blocks (this loop produces rows far faster than any database takes them, so many blocks
  include waits on the full queue) and once over the blocks that never waited;
* baseline: raw ``sqlite3`` executemany on the same table (same schema, pragmas and batch size)
  in a fresh file, in the same run, and the ratio writer/baseline;
* with ``--paths``: single-threaded insert rates of the candidate SQLAlchemy paths.

Without ``--db`` the writer uses a fresh SQLite file in a temporary folder.

It fails (exit code 1) when a path measured did not store every row it was given (counted in the
database afterwards), or the writer reports errors. ``--smoke`` runs it, ``--paths`` included, at
a tiny size in a few seconds for that check alone.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.storage.database import create_engine_for, parse_url, safe_url, upgrade
from bridge.storage.schema import COLUMNS, ticks
from bridge.storage.writer import StorageWriter

Row = tuple[Any, ...]
TS0 = 1_529_000_000_000_000_000
# --smoke: a few batches through every path; options given explicitly win
SMOKE = {"rows": 5000, "batch_rows": 500, "block": 100, "paths": True}


def stored_ticks(url: str) -> int:
    """Rows in the ticks table at ``url`` (0 before the schema exists)."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            if not conn.dialect.has_table(conn, "ticks"):
                return 0
            return int(conn.execute(select(func.count()).select_from(ticks)).scalar_one())
    finally:
        engine.dispose()


def make_rows(n: int) -> list[Row]:
    """n realistic ES ticks: distinct seq and times, a few prices, NaN quotes on some trades."""
    nan = float("nan")
    rows = []
    for i in range(n):
        kind = i % 3
        price = 2750.0 + (i % 16) * 0.25
        rows.append(
            (1, i, "ES 06-18", kind, price, 1 + i % 9, price - 0.25 if kind else nan, price if kind else nan,
             TS0 + i * 250_000, TS0 + i * 250_000 + 41_000, TS0 + i * 250_000 + 95_000)
        )
    return rows


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def bench_writer(url: str, rows: list[Row], batch_rows: int, queue_batches: int, block: int) -> dict[str, Any]:
    """Write all rows through StorageWriter; time blocks of write() calls and the whole run."""
    before = stored_ticks(url)
    writer = StorageWriter(url, batch_rows=batch_rows, queue_batches=queue_batches)
    writer.start()  # schema upgrade: not part of the measurement
    write = writer.write
    per_call_ns: list[float] = []
    unblocked_ns: list[float] = []  # blocks in which the queue always had room
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for first in range(0, len(rows), block):
        part = rows[first : first + block]  # sliced outside the timed region
        waits_before = writer.stats.backpressure_waits
        t0 = clock()
        for row in part:
            write("ticks", row)
        ns = (clock() - t0) / len(part)
        per_call_ns.append(ns)
        if writer.stats.backpressure_waits == waits_before:
            unblocked_ns.append(ns)
    handed = time.perf_counter()
    writer.sync()
    elapsed = time.perf_counter() - started
    stats = writer.stats
    writer.close()
    return {
        "rows_s": len(rows) / elapsed,
        "hot_loop_s": handed - started,
        "p50": percentile(per_call_ns, 50),
        "p99": percentile(per_call_ns, 99),
        "max": max(per_call_ns),
        "mean": statistics.fmean(per_call_ns),
        "unblocked": unblocked_ns,
        "stats": stats,
        "stored": stored_ticks(url) - before,
    }


def loop_overhead_ns(rows: list[Row], block: int) -> float:
    """ns per call of the same timing loop around a function that does nothing."""

    def noop(table: str, row: Row) -> None:
        return None

    clock = time.perf_counter_ns
    samples = []
    for first in range(0, min(len(rows), 200 * block), block):
        part = rows[first : first + block]
        t0 = clock()
        for row in part:
            noop("ticks", row)
        samples.append((clock() - t0) / len(part))
    return percentile(samples, 50)


def bench_raw_sqlite(path: Path, rows: list[Row], batch_rows: int) -> tuple[float, int]:
    """rows/s of plain sqlite3 executemany into the same ticks table, one commit per batch; rows stored."""
    upgrade(f"sqlite:///{path}")  # same table and index as the writer's
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    cols = COLUMNS["ticks"]
    sql = f"INSERT INTO ticks ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    started = time.perf_counter()
    for first in range(0, len(rows), batch_rows):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[first : first + batch_rows])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed, stored_ticks(f"sqlite:///{path}")


def bench_paths(folder: Path, rows: list[Row], batch_rows: int) -> dict[str, tuple[float, int]]:
    """Single-threaded rows/s of the candidate insert paths on fresh SQLite files, and rows stored."""
    cols = COLUMNS["ticks"]
    sql = f"INSERT INTO ticks ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    stmt = ticks.insert()

    def via_dicts(conn: Any, batch: list[Row]) -> None:
        conn.execute(stmt, [dict(zip(cols, r, strict=False)) for r in batch])

    def via_driver_sql(conn: Any, batch: list[Row]) -> None:
        conn.exec_driver_sql(sql, batch)

    candidates: dict[str, Callable[[Any, list[Row]], None]] = {
        "connection.execute(table.insert(), list_of_dicts)": via_dicts,
        "connection.exec_driver_sql(sql, list_of_tuples)": via_driver_sql,
    }
    results = {}
    for i, (name, insert) in enumerate(candidates.items()):
        url = f"sqlite:///{folder / f'path{i}.sqlite'}"
        upgrade(url)
        engine = create_engine_for(url)
        started = time.perf_counter()
        for first in range(0, len(rows), batch_rows):
            with engine.begin() as conn:
                insert(conn, rows[first : first + batch_rows])
        results[name] = (len(rows) / (time.perf_counter() - started), stored_ticks(url))
        engine.dispose()
    return results


def workload_problems(n: int, stored: dict[str, int], writer_errors: int) -> list[str]:
    """Why the figures would not measure what they say, if they would not."""
    problems = [f"{what} stored {got} of the {n} rows" for what, got in stored.items() if got != n]
    if writer_errors:
        problems.append(f"the writer reports {writer_errors} error(s)")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="tick rows to insert (default 500000)")
    parser.add_argument("--db", help="database URL for the writer (default: a fresh SQLite file)")
    parser.add_argument("--batch-rows", type=int, default=2000, help="rows per batch (default 2000)")
    parser.add_argument("--queue-batches", type=int, default=64, help="the writer's queue, in batches (default 64)")
    parser.add_argument("--block", type=int, default=1000, help="write() calls per timing sample (default 1000)")
    parser.add_argument("--paths", action="store_true", help="also compare SQLAlchemy insert paths")
    args = smoke.parse_args(parser, argv, SMOKE, 'a path no longer stores every row')
    if min(args.rows, args.batch_rows, args.queue_batches, args.block) < 1:
        parser.error("--rows, --batch-rows, --queue-batches and --block must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    rows = make_rows(args.rows)
    # The benchmark's own 500k tuples are not the sidecar's: keep them out of the GC's scans.
    gc.collect()
    gc.freeze()

    with tempfile.TemporaryDirectory(prefix="nt8bridge-bench-") as tmp:
        folder = Path(tmp)
        url = args.db or f"sqlite:///{folder / 'writer.sqlite'}"
        if parse_url(url).get_backend_name() != "sqlite":
            engine = create_engine_for(url)
            with engine.begin() as conn:
                if conn.dialect.has_table(conn, "ticks"):
                    conn.exec_driver_sql("TRUNCATE ticks")
            engine.dispose()
        print(f"{args.rows} tick rows, batch_rows={args.batch_rows}, queue_batches={args.queue_batches}, "
              f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
        print(f"writer database: {safe_url(url)}")

        w = bench_writer(url, rows, args.batch_rows, args.queue_batches, args.block)
        raw, raw_stored = bench_raw_sqlite(folder / "baseline.sqlite", rows, args.batch_rows)
        stored = {"StorageWriter": w["stored"], "raw sqlite3": raw_stored}
        overhead = loop_overhead_ns(rows, args.block)
        s = w["stats"]

        print(f"StorageWriter end to end : {w['rows_s']:>10,.0f} rows/s  (write loop alone {w['hot_loop_s']:.2f}s)")
        print(f"raw sqlite3 executemany  : {raw:>10,.0f} rows/s  (same table, one thread, no queue)")
        print(f"ratio writer / raw       : {w['rows_s'] / raw:>10.2f}")
        print(f"write() per call         : p50 {w['p50']:.0f} ns, p99 {w['p99']:.0f} ns, max {w['max']:.0f} ns, "
              f"mean {w['mean']:.0f} ns (blocks of {args.block}; an empty call in the same loop: {overhead:.0f} ns)")
        ub = w["unblocked"]
        if ub:
            print(f"write() without a wait   : p50 {percentile(ub, 50):.0f} ns, p99 {percentile(ub, 99):.0f} ns "
                  f"({len(ub)} of {-(-args.rows // args.block)} blocks never found the queue full)")
        print(f"backpressure             : {s.backpressure_waits} waits, {s.backpressure_seconds:.3f}s; "
              f"{s.batches_committed} batches committed; errors {s.errors}")
        if args.paths:
            for name, (rate, path_stored) in bench_paths(folder, rows, args.batch_rows).items():
                print(f"path {name:52s}: {rate:>10,.0f} rows/s")
                stored[f"path {name}"] = path_stored
    problems = workload_problems(args.rows, stored, s.errors)
    if problems:
        print("bench_storage: FAILED, the workload no longer stores what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
