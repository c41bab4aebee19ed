"""Benchmark the sidecar's own database lookups on a year of sessions, with and without the lookup indexes.

    .venv/bin/python bench/bench_db_lookups.py [--days N] [--db URL] [--iterations N] [--rebuild] [--smoke]

Builds a database holding ``--days`` trading days of synthetic sessions (default 250, a year) through the
storage writer (executemany on SQLite, COPY on PostgreSQL). Per day: two strategy instances with one
session each, 200 decisions (30 % send an order, 10 % are risk denials), 60 orders, 200 order updates, 40
executions, 40 position and 40 account snapshots, 20 quality events, 168 five-minute bars and about 280
audit-chain records. Ticks are left out (their session index predates these and nothing here reads
them); the day's last sessions stay open, as a running sidecar's would.

Without ``--db`` the SQLite file is cached under the temporary folder (``nt8bridge-bench/``) and reused by
the next run (``--rebuild`` builds it again); with ``--db`` the database must be empty (it is filled) or
one this benchmark filled for the same ``--days`` (it is reused).

Then it times the lookups through the functions that run them: the console's ``History`` (one decision
with its orders, fills and audit record; the newest orders with their updates; the blotter; current
positions; recent denied decisions and risk acts; the sessions of the window), the recovery on HELLO
(``read_instance_history``) and the playback report's ``count_session``: the window and the recovery's
24 h lookback end an hour after the last day's close; a decision or a session is any of the year's. Each
runs ``--iterations`` times, and prints p50/p99 in microseconds: of the
function, and of its statements alone (captured as it ran, run again on a driver cursor and fetched: the
database's part, without the Python that builds the rows). The baseline is a copy of the same database at
the previous schema revision, the lookup indexes dropped (an SQLite copy; on PostgreSQL a database made
from it as a template, so the role needs CREATEDB, dropped afterwards); the two take turns in blocks of 20
calls, so that outside load on a shared machine hits both alike, and the ratio baseline/indexed is printed.
SQLite is not ANALYZEd (the sidecar never does); PostgreSQL is, after a build.

It fails (exit code 1) when the database does not hold the rows generated, or a lookup finds nothing
(no decision, no orders, no positions...). ``--smoke`` builds four days in a temporary folder and times
a few iterations, for that check alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Connection, Engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's bridge, not an installed one

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.console.history import History  # noqa: E402
from bridge.storage.database import (  # noqa: E402
    create_engine_for,
    current_revision,
    downgrade,
    head_revision,
    parse_url,
    safe_url,
    upgrade,
)
from bridge.storage.explain import Statement, selects_sent  # noqa: E402
from bridge.storage.queries import count_session, read_instance_history  # noqa: E402
from bridge.storage.schema import COLUMNS, metadata  # noqa: E402
from bridge.storage.writer import StorageWriter  # noqa: E402

Row = tuple[Any, ...]
NS = 1_000_000_000
DAY_NS = 86_400 * NS
FIRST_DAY_NS = 1_735_776_000 * NS  # 2025-01-02 00:00 UTC, a Thursday
OPEN_NS, CLOSE_NS = (13 * 3600 + 1800) * NS, 20 * 3600 * NS  # 13:30..20:00 UTC
INSTANCES = (("es-trend", "ES 03-25", "Sim101"), ("nq-revert", "NQ 03-25", "Sim102"))
PER_SESSION = {"decisions": 100, "orders": 30, "filled": 10, "quality_events": 10, "bars": 78}
PREVIOUS_REVISION = "0005"  # the schema before the lookup indexes: the baseline
BUILD_VERSION = 1  # of the generator, in the cached file's name: a changed generator builds a new file
SMOKE = {"days": 4, "iterations": 20}


# --------------------------------------------------------------------------- the synthetic year


def trading_days(n: int) -> list[int]:
    """Midnight UTC of the first ``n`` weekdays from 2025-01-02."""
    days, d = [], 0
    while len(days) < n:
        if (3 + d) % 7 not in (5, 6):  # 2025-01-02 is weekday 3 (Thursday); 5, 6: the weekend
            days.append(FIRST_DAY_NS + d * DAY_NS)
        d += 1
    return days


@dataclass
class Generator:
    """Rows of realistic shape and count, day by day; the audit chain's seq runs on across days."""

    days: int
    rng: random.Random
    audit_seq: int = 0

    def _audit(self, out: dict[str, list[Row]], ts_ns: int, kind: str, subject: str, session_id: int | None,
               payload: dict[str, Any]) -> None:
        self.audit_seq += 1
        digest = f"{self.audit_seq:064x}"  # nothing verifies this chain: only its size and shape matter
        out["audit_chain"].append((self.audit_seq, ts_ns // 1000, kind, subject, session_id,
                                   json.dumps(payload, separators=(",", ":")), f"{self.audit_seq - 1:064x}", digest))

    def day(self, index: int, midnight_ns: int) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {name: [] for name in COLUMNS}
        last_day = index == self.days - 1
        for k, (instance, instrument, account) in enumerate(INSTANCES):
            sid = 1_000_000 + index * len(INSTANCES) + k
            start = midnight_ns + OPEN_NS
            out["sessions"].append((sid, instance, account, "127.0.0.1:52000", 1, start,
                                    None if last_day else midnight_ns + CLOSE_NS, None if last_day else "BYE", 41_000))
            self._session(out, sid, instance, instrument, account, start)
        if index % 10 == 0:
            self._audit(out, midnight_ns + OPEN_NS - NS, "limit_change", "account.max_position", None,
                        {"operator": "desk", "old": 4, "new": 5, "reason": "vol regime"})
        return out

    def _session(self, out: dict[str, list[Row]], sid: int, instance: str, instrument: str, account: str,
                 start: int) -> None:
        rng, span = self.rng, CLOSE_NS - OPEN_NS
        price, seq = (5900.0 if instrument.startswith("ES") else 21000.0), 0
        n_dec, n_ord, n_fill = PER_SESSION["decisions"], PER_SESSION["orders"], PER_SESSION["filled"]
        for b in range(PER_SESSION["bars"]):
            t = start + b * 300 * NS
            o = price + rng.randint(-8, 8) * 0.25
            out["bars"].append((sid, instrument, 300, t, t + 300 * NS, o, o + 2.0, o - 2.0, o + 0.5,
                                rng.randint(2000, 9000), rng.randint(500, 3000), "ticks"))
        order_of = set(rng.sample(range(n_dec), n_ord))
        denied = set(rng.sample(sorted(set(range(n_dec)) - order_of), n_dec // 10))
        position, n = 0, 0
        for i in range(n_dec):
            t = start + (i * span) // n_dec + rng.randint(0, 10**8)
            did = f"S{sid}-D{i + 1}"
            outcome = "EMITTED" if i in order_of else \
                "DENIED:RISK_MAX_POSITION (position 5 >= 5)" if i in denied else "NO_SIGNAL"
            inputs = {"features": {f"f{j}": round(rng.gauss(0, 1), 6) for j in range(12)},
                      "signal": {"side": "BUY", "win_probability": round(rng.random(), 4)},
                      "sizing": {"mode": "kelly", "kelly_f": 0.12, "applied_f": 0.05},
                      "risk": [{"check": "max_position", "passed": i not in denied, "value": 4, "limit": 5,
                                "scope": "account"}], "position": position, "working": 0, "equity": 100_000.0}
            out["decisions"].append((did, sid, instrument, "trend", t, t + 40_000, outcome, "breakout above VWAP",
                                     json.dumps(inputs, separators=(",", ":"))))
            self._audit(out, t + 50_000, "decision", did, sid, {"outcome": outcome, "inputs_sha256": "0" * 64})
            if i in denied:
                self._audit(out, t + 60_000, "risk_event", did, sid, {"check": "max_position", "value": 5})
            if i not in order_of:
                continue
            cid, side, filled = f"S{sid}-O{n + 1}", "BUY" if n % 2 == 0 else "SELL", n < n_fill
            n += 1
            out["orders"].append((cid, sid, did, instrument, side, 1, "LIMIT", price, price - 4.0, price + 8.0,
                                  "DAY", "trend", t + 45_000))
            self._audit(out, t + 70_000, "order", cid, sid, {"side": side, "quantity": 1})
            states = [("ENTRY", "ACCEPTED", 0), ("ENTRY", "FILLED", 1), ("STOP", "ACCEPTED", 0),
                      ("TARGET", "ACCEPTED", 0)] if filled else \
                [("ENTRY", "ACCEPTED", 0), ("ENTRY", "WORKING", 0), ("ENTRY", "CANCELLED", 0)]
            for j, (role, state, qty_filled) in enumerate(states):
                seq += 1
                out["order_updates"].append((sid, seq, cid, role, f"nt8-{sid}-{n}-{role}", state, 1, qty_filled,
                                             price, None, price if qty_filled else None, t + (j + 1) * 10**7,
                                             None, None))
            if not filled:
                continue
            exit_side = "SELL" if side == "BUY" else "BUY"
            for role, fill_side, dt in (("ENTRY", side, 10**7), ("TARGET", exit_side, 6 * 10**10)):
                seq += 1
                position += 1 if fill_side == "BUY" else -1
                out["executions"].append((sid, seq, f"X{sid}-{seq}", cid, role, f"nt8-{sid}-{n}-{role}", instrument,
                                          fill_side, price, 1, 2.25, t + dt))
                mp = "FLAT" if position == 0 else "LONG" if position > 0 else "SHORT"
                out["positions"].append((sid, seq, instrument, mp, abs(position), None if position == 0 else price,
                                         t + dt + 1000))
                out["account_values"].append((sid, seq, account, 100_000.0 + seq, 12.5 * seq, 0.0, 400_000.0,
                                              t + dt + 2000))
        for q in range(PER_SESSION["quality_events"]):
            t = start + rng.randint(0, span)
            out["quality_events"].append((sid, None, instrument, "STALE_QUOTE" if q % 2 else "SEQ_GAP", "2.1 s",
                                          t, t + 1000, None))


def expected_counts(days: int) -> dict[str, int]:
    """Rows per table a build of ``days`` holds (generated once more with the same seed, not stored)."""
    gen, counts = Generator(days, random.Random(7)), {name: 0 for name in COLUMNS}
    for i, midnight in enumerate(trading_days(days)):
        for name, rows in gen.day(i, midnight).items():
            counts[name] += len(rows)
    counts["instruments"] = len(INSTANCES)
    return counts


def build(url: str, days: int, spool: Path) -> None:
    """Fill ``url`` (at the newest schema) with ``days`` of sessions through the storage writer."""
    gen = Generator(days, random.Random(7))
    writer = StorageWriter(url, batch_rows=5000, spool_path=spool)
    writer.start()
    for _, instrument, _ in INSTANCES:
        writer.write("instruments", (instrument, instrument.split()[0], 0.25,
                                     50.0 if instrument.startswith("ES") else 20.0, "USD", "CME", FIRST_DAY_NS))
    progress = Progress(TextColumn("[bold]building {task.description}"), BarColumn(),
                        TextColumn("{task.completed:,}/{task.total:,} days"), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    try:
        with progress:
            task = progress.add_task(safe_url(url), total=days)
            for i, midnight in enumerate(trading_days(days)):
                for name, rows in gen.day(i, midnight).items():
                    for row in rows:
                        writer.write(name, row)
                progress.advance(task)
            writer.sync()
    finally:
        writer.close()
    if parse_url(url).get_backend_name() != "sqlite":
        engine = create_engine_for(url)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))  # what autovacuum would have done by the time a year is stored
        finally:
            engine.dispose()


def stored_counts(url: str) -> dict[str, int]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return {name: int(conn.execute(select(func.count()).select_from(metadata.tables[name])).scalar_one())
                    for name in COLUMNS}
    finally:
        engine.dispose()


def database_bytes(url: str) -> int:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Path(str(parsed.database)).stat().st_size
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def prepare(args: argparse.Namespace, scratch: Path, console: Console) -> str:
    """The database to measure: built now, or reused when it holds what this run would build."""
    if args.db is None:
        folder = scratch if args.smoke else Path(tempfile.gettempdir()) / "nt8bridge-bench"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"db_lookups-{args.days}d-rev{head_revision()}-v{BUILD_VERSION}.sqlite"
        if path.exists() and not args.rebuild:
            console.print(f"reusing {path} (--rebuild builds it again)")
            return sqlite_url(path)
        partial = path.with_suffix(".partial")
        leftovers = (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        build(sqlite_url(partial), args.days, scratch / "build.spool")
        with closing(sqlite3.connect(partial)) as conn:  # closed before the rename (Windows refuses it open)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        partial.replace(path)  # only a finished build is ever reused
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return sqlite_url(path)
    url = args.db
    upgrade(url)
    held = stored_counts(url)
    if held["sessions"] == 0:
        build(url, args.days, scratch / "build.spool")
    elif held["sessions"] != args.days * len(INSTANCES) or held["decisions"] != expected_counts(args.days)["decisions"]:
        raise SystemExit(f"FAILED: {safe_url(url)} holds other rows ({held['sessions']} sessions): give an empty "
                         f"database, or one this benchmark filled with --days {args.days}")
    else:
        console.print(f"reusing the {args.days} days already in {safe_url(url)}")
    return url


@contextmanager
def without_indexes(url: str, scratch: Path) -> Iterator[str]:
    """A copy of the database at the previous schema revision: an SQLite file (the online backup API), or a
    PostgreSQL database made from it as a template (the role needs CREATEDB), dropped afterwards."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        copy = scratch / "baseline.sqlite"
        with closing(sqlite3.connect(str(parsed.database))) as src, closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        downgrade(sqlite_url(copy), PREVIOUS_REVISION)
        yield sqlite_url(copy)
        return
    name = f"{parsed.database}_before_indexes"
    # CREATE DATABASE ... TEMPLATE wants nobody connected to the template: connect to the server's own database
    admin = create_engine_for(parsed.set(database="postgres").render_as_string(hide_password=False))
    admin = admin.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"')
        copy = parsed.set(database=name).render_as_string(hide_password=False)
        downgrade(copy, PREVIOUS_REVISION)
        yield copy
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()


# --------------------------------------------------------------------------- the lookups


@dataclass
class Lookup:
    label: str
    run: Callable[[random.Random], int]  # returns how many rows it found (0: the workload is broken)


class Lookups:
    """The lookups: the console's window and the recovery's lookback end now, an hour after the last day's
    close (the window: the last day's sessions); one decision or one session is any of the year's."""

    def __init__(self, url: str, days: int) -> None:
        self.days = trading_days(days)
        self.now = self.days[-1] + CLOSE_NS + 3600 * NS  # an hour after the last day's close, as a desk would look
        self.history = History(url, history_days=1.0, clock=lambda: self.now)
        self.engine = create_engine_for(url)
        self.conn: Connection = self.engine.connect()
        self.per_day = len(INSTANCES)
        d = metadata.tables["decisions"]  # the decisions that sent an order, read once, outside the timing
        self.emitted = list(self.conn.execute(select(d.c.decision_id).where(d.c.outcome == "EMITTED")).scalars())

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()
        self.history.close()

    def _session(self, rng: random.Random) -> int:
        return 1_000_000 + rng.randrange(len(self.days)) * self.per_day + rng.randrange(self.per_day)

    def all(self) -> list[Lookup]:
        def decision(rng: random.Random) -> int:
            # a decision that sent an order: its orders, fills and audit record are all looked up
            d = self.history.decision(rng.choice(self.emitted))
            return len(d["orders"]) + len(d["executions"]) + (d["audit"] is not None)

        def orders(rng: random.Random) -> int:
            return sum(1 for o in self.history.orders(limit=50)["orders"] if o["state"])

        def blotter(rng: random.Random) -> int:
            return sum(1 for f in self.history.blotter(limit=50)["blotter"] if f["decision_id"])

        def positions(rng: random.Random) -> int:
            return len(self.history.positions()["positions"])

        def risk(rng: random.Random) -> int:
            return len(self.history.risk(recent=50)["recent_denials"])

        def sessions(rng: random.Random) -> int:
            return sum(r["decisions"] for r in self.history.sessions()["sessions"])

        def hello(rng: random.Random) -> int:
            instance, _, account = INSTANCES[rng.randrange(self.per_day)]
            # the default recovery.lookback_h: what a strategy instance reconnecting now resumes from
            h = read_instance_history(self.conn, instance, account, self.now - 24 * 3600 * NS)
            return len(h.brackets) + len(h.fills)

        def counts(rng: random.Random) -> int:
            c = count_session(self.conn, self._session(rng))
            return c.decisions + c.orders + c.order_updates + c.executions + c.bars + c.audit_records

        return [
            Lookup("History.decision: a decision, its orders, their fills, its audit record", decision),
            Lookup("History.orders: the 50 newest orders, each with its last updates", orders),
            Lookup("History.blotter: the 50 newest fills, each with its order and decision", blotter),
            Lookup("History.positions: current positions (latest per session+instrument)", positions),
            Lookup("History.risk: latest denied decisions, risk acts from the audit chain", risk),
            Lookup("History.sessions: the window's sessions with their counts", sessions),
            Lookup("read_instance_history: recovery on HELLO (brackets, states, fills)", hello),
            Lookup("count_session: one session's row counts (playback report)", counts),
        ]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class Timing:
    p50_us: float
    p99_us: float
    driver_p50_us: float  # its statements alone, run again straight on the driver and fetched
    driver_p99_us: float


def driver_us(engine: Engine, statements: list[Statement]) -> float:
    """The statements run again on a driver cursor, each fetched whole: the database's part of a lookup,
    without SQLAlchemy's and the function's Python work."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        t0 = time.perf_counter_ns()
        for statement, parameters in statements:
            cursor.execute(statement, parameters)
            cursor.fetchall()
        elapsed = time.perf_counter_ns() - t0
        cursor.close()
        raw.rollback()
    finally:
        raw.close()
    return elapsed / 1000


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    sent: list[list[Statement]] = field(default_factory=list)

    def timing(self, engine: Engine) -> Timing:
        driver = [driver_us(engine, statements) for statements in self.sent]
        return Timing(percentile(self.times, 50), percentile(self.times, 99),
                      percentile(driver, 50), percentile(driver, 99))


def measure(urls: dict[str, str], days: int, iterations: int, block: int = 20
            ) -> tuple[dict[str, dict[str, Timing]], list[str]]:
    """Per database (by its key in ``urls``) and lookup, p50/p99 in microseconds of the function and of its
    statements alone; and the lookups that found nothing. The databases take turns in blocks of ``block``
    calls, so that a burst of outside load (a shared machine) hits them alike."""
    sides = {key: Lookups(url, days) for key, url in urls.items()}
    out: dict[str, dict[str, Timing]] = {key: {} for key in urls}
    empty: list[str] = []
    try:
        labels = [lookup.label for lookup in next(iter(sides.values())).all()]
        for index, label in enumerate(labels):
            runs = {key: side.all()[index].run for key, side in sides.items()}
            rngs = {key: random.Random(11) for key in sides}  # the same arguments on each side
            samples = {key: Samples() for key in sides}
            for key, run in runs.items():
                found = run(rngs[key])  # warm-up: the engine's first connection, SQLAlchemy's statement cache
                if found == 0 and label not in empty:
                    empty.append(label)
            for start in range(0, iterations, block):
                for key, run in runs.items():
                    rng, got = rngs[key], samples[key]
                    for _ in range(min(block, iterations - start)):
                        with selects_sent() as statements:
                            t0 = time.perf_counter_ns()
                            run(rng)
                            got.times.append((time.perf_counter_ns() - t0) / 1000)
                        got.sent.append(statements)
            for key, side in sides.items():
                out[key][label] = samples[key].timing(side.engine)
    finally:
        for side in sides.values():
            side.close()
    return out, empty


def engine_per_call_us(url: str, iterations: int) -> float:
    """What the URL-taking query functions add per call: an engine, a connection, its disposal (p50)."""
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        engine = create_engine_for(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return percentile(times, 50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=250, help="trading days of sessions to store (250: a year)")
    parser.add_argument("--db", help="PostgreSQL or SQLite URL to fill (empty) or reuse; default: a cached SQLite "
                                     "file under the temporary folder")
    parser.add_argument("--iterations", type=int, default=300, help="timed calls per lookup, each way")
    parser.add_argument("--rebuild", action="store_true", help="build the cached SQLite file again")
    args = smoke.parse_args(parser, argv, SMOKE, "the database does not hold the rows generated or a lookup "
                                                  "finds nothing")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="bench-db-lookups-") as tmp:
        scratch = Path(tmp)
        t0 = time.perf_counter()
        url = prepare(args, scratch, console)
        prepared_s = time.perf_counter() - t0
        if current_revision(url) != head_revision():
            upgrade(url)
        held, want = stored_counts(url), expected_counts(args.days)
        wrong = {k: (held[k], want[k]) for k in want if held[k] != want[k] and k != "storage_progress"}
        if wrong:
            print(f"FAILED: stored rows differ from those generated (stored, generated): {wrong}", file=sys.stderr)
            return 1
        size = database_bytes(url)
        with without_indexes(url, scratch) as base_url:
            timed, empty = measure({"indexed": url, "baseline": base_url}, args.days, args.iterations)
        indexed, baseline = timed["indexed"], timed["baseline"]
        per_call = engine_per_call_us(url, max(20, args.iterations // 10))
    print(f"database: {safe_url(url)} ({parse_url(url).get_backend_name()}), {args.days} trading days, "
          f"{size / 1e6:.1f} MB, ready in {prepared_s:.1f} s")
    print("rows: " + ", ".join(f"{k} {v:,}" for k, v in held.items() if v and k != "storage_progress"))
    print(f"{args.iterations} calls per lookup (a decision or a session: any of the year's; the window: the last "
          "day); microseconds per call")
    width = max(len(k) for k in indexed)
    print(f"{'':<{width}}  {'with the lookup indexes':^35}   {'without (previous revision)':^35}")
    print(f"{'lookup':<{width}}  {'p50':>8} {'p99':>8} {'stmts p50':>9} {'p99':>7}   {'p50':>8} {'p99':>8} "
          f"{'stmts p50':>9} {'p99':>7}   {'p50 ratio':>9}")
    for label, a in indexed.items():
        b = baseline[label]
        print(f"{label:<{width}}  {a.p50_us:>8.0f} {a.p99_us:>8.0f} {a.driver_p50_us:>9.0f} {a.driver_p99_us:>7.0f}   "
              f"{b.p50_us:>8.0f} {b.p99_us:>8.0f} {b.driver_p50_us:>9.0f} {b.driver_p99_us:>7.0f}   "
              f"{b.p50_us / a.p50_us:>8.1f}x")
    print("(stmts: the lookup's statements alone, run again on the driver and fetched: the database's part)")
    print(f"engine + connection + dispose, paid per call by the URL-taking functions (instance_history, "
          f"session_counts): p50 {per_call:.0f} us")
    if empty:
        print("FAILED: these lookups found nothing: " + "; ".join(empty), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
