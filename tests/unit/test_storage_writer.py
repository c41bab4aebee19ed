"""StorageWriter behaviour, the same on an SQLite file and on PostgreSQL (marker ``postgres``)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from bridge.storage import schema
from bridge.storage.database import StorageError, create_engine_for
from bridge.storage.writer import StorageWriter

NAN = float("nan")
TS0 = 1_529_000_000_000_000_000  # June 2018 in ns: beyond 2**53, so float handling would show


def _value(column: sa.Column[Any], i: int) -> Any:
    """A distinct value for row i of a column, chosen by its type; gaps where nullable."""
    gap = column.nullable and i % 3 == 1
    if isinstance(column.type, sa.Double):
        return NAN if gap else (i * 0.25 - 1.125 if column.name != "price" else 2700.0 + i * 0.25)
    if gap:
        return None
    if isinstance(column.type, sa.BigInteger):
        return TS0 + i * 1_000_003 if column.name.endswith("_ns") else 10_000_000_000 + i
    if isinstance(column.type, sa.SmallInteger):
        return i % 3
    if isinstance(column.type, sa.Integer):
        return i * 7 - 3
    if isinstance(column.type, sa.Text):
        return json.dumps({"i": i, "note": "ünïcode ✓", "quote": "it's"})
    return f"{column.name}-{i:05d}"


def sample_rows(table: str, n: int) -> list[tuple[Any, ...]]:
    """n rows for ``table`` in COLUMNS order, exercising every column and NaN/None gaps."""
    columns = [schema.metadata.tables[table].c[name] for name in schema.COLUMNS[table]]
    return [tuple(_value(c, i) for c in columns) for i in range(n)]


def stored(url: str, table: str) -> list[tuple[Any, ...]]:
    """The rows of ``table`` in COLUMNS order, in insertion order (by id, else by key)."""
    t = schema.metadata.tables[table]
    order = t.c.id if "id" in t.c else next(iter(t.primary_key.columns))
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.select(*[t.c[c] for c in schema.COLUMNS[table]]).order_by(order))]
    finally:
        engine.dispose()


def count(url: str, table: str) -> int:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(schema.metadata.tables[table])).scalar_one())
    finally:
        engine.dispose()


def expected(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows]


@pytest.fixture
def writer_factory(storage_url: str) -> Iterator[Any]:
    writers: list[StorageWriter] = []

    def make(**kwargs: Any) -> StorageWriter:
        kwargs.setdefault("retry_initial_s", 0.02)
        kwargs.setdefault("retry_max_s", 0.2)
        w = StorageWriter(storage_url, **kwargs)
        writers.append(w)
        return w

    yield make
    for w in writers:
        w.close(timeout=30)


ALL_TABLES = [t for t in schema.COLUMNS if t not in ("storage_rejects", "storage_progress")]  # the writer's own


def test_every_table_stores_exactly_what_it_was_given(storage_url: str, writer_factory: Any) -> None:
    # Small batches so rows go through full hand-overs, partial flushes and many transactions.
    w = writer_factory(batch_rows=7, queue_batches=4)
    w.start()
    given = {table: sample_rows(table, 40) for table in ALL_TABLES}
    for i in range(40):
        for table in ALL_TABLES:
            w.write(table, given[table][i])
    w.sync()
    for table in ALL_TABLES:
        assert stored(storage_url, table) == expected(given[table]), table
        assert w.stats.rows_written[table] == 40
    assert count(storage_url, "storage_rejects") == 0
    assert w.stats.rows_rejected == 0


def test_ticks_volume_and_values(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory(batch_rows=500)
    w.start()
    rows = [
        (7, seq, "ES 06-18", seq % 3, 2750.25 + (seq % 8) * 0.25, 1 + seq % 5,
         NAN if seq % 3 == 0 else 2750.0, NAN if seq % 3 == 0 else 2750.5,
         TS0 + seq * 1000, TS0 + seq * 1000 + 17, TS0 + seq * 1000 + 40)
        for seq in range(5003)
    ]
    for row in rows:
        w.write("ticks", row)
    w.sync()
    got = stored(storage_url, "ticks")
    assert len(got) == len(rows)
    for i in (0, 1, 2, 2500, 5002):
        assert got[i] == expected([rows[i]])[0]
    assert got[0][6] is None and got[1][6] == 2750.0


def test_session_updates_apply_in_order(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory(batch_rows=1000)  # the session rows are still in the hot path's list at update time
    w.start()
    w.write("sessions", (1, "inst-a", "Sim101", "tcp://127.0.0.1:5555", 3, TS0, None, None, None))
    w.update("sessions", 1, {"ended_ns": TS0 + 10, "end_reason": "disconnect"})
    w.write("sessions", (2, "inst-a", "Sim101", None, 3, TS0 + 20, None, None, -1234))
    w.update("sessions", 1, {"end_reason": "shutdown"})  # later update wins
    w.update("sessions", 2, {"ended_ns": TS0 + 30, "end_reason": "shutdown", "clock_offset_ns": NAN})
    w.update("sessions", 99, {"end_reason": "never started"})  # no such row: recorded, not lost
    w.sync()
    got = stored(storage_url, "sessions")
    assert got == [
        (1, "inst-a", "Sim101", "tcp://127.0.0.1:5555", 3, TS0, TS0 + 10, "shutdown", None),
        (2, "inst-a", "Sim101", None, 3, TS0 + 20, TS0 + 30, "shutdown", None),
    ]
    assert w.stats.updates_applied == 3
    rejects = stored(storage_url, "storage_rejects")
    assert len(rejects) == 1 and rejects[0][0] == "sessions" and "99" in rejects[0][2]


def test_resent_rows_are_ignored_where_allowed(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory(batch_rows=3)
    w.start()
    instrument = ("ES 06-18", "ES", 0.25, 50.0, "USD", "CME", TS0)
    order = sample_rows("orders", 1)[0]
    execution = sample_rows("executions", 1)[0]
    for _ in range(4):  # spread over several batches and one flush
        w.write("instruments", instrument)
        w.write("orders", order)
        w.write("executions", execution)
    w.sync()
    assert stored(storage_url, "instruments") == [instrument]
    assert len(stored(storage_url, "orders")) == 1
    assert len(stored(storage_url, "executions")) == 1
    assert count(storage_url, "storage_rejects") == 0


def test_failing_rows_go_to_rejects_and_the_rest_of_the_batch_is_stored(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory(batch_rows=10)
    w.start()
    rows = sample_rows("ticks", 10)
    bad = {
        3: (*rows[3][:4], None, *rows[3][5:]),  # NULL price: NOT NULL
        6: (*rows[6][:4], NAN, *rows[6][5:]),  # NaN price: stored as NULL, so rejected the same way
        8: rows[8][:5],  # too few values
    }
    for i, row in enumerate(rows):
        w.write("ticks", bad.get(i, row))
        w.write("bars", sample_rows("bars", 10)[i])  # same batches, another table: unaffected
    w.sync()
    got = stored(storage_url, "ticks")
    assert got == expected([r for i, r in enumerate(rows) if i not in bad])
    assert len(stored(storage_url, "bars")) == 10
    rejects = stored(storage_url, "storage_rejects")
    assert [r[0] for r in rejects] == ["ticks"] * 3
    seqs = []
    for _table, error, row_json, ts_ns in rejects:
        assert error and ts_ns > 0
        doc = json.loads(row_json)
        seqs.append(doc["seq"] if isinstance(doc, dict) else doc[1])
    assert sorted(seqs) == [rows[i][1] for i in sorted(bad)]
    assert w.stats.rows_rejected == 3 and w.stats.rows_written["ticks"] == 7
    assert w.stats.errors >= 1


def test_backpressure_blocks_the_hot_path_and_loses_nothing(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory(batch_rows=5, queue_batches=1)
    gate = threading.Event()
    w._before_commit = lambda: gate.wait(60)  # a writer that cannot keep up until the gate opens
    w.start()
    rows = sample_rows("ticks", 200)
    failure: list[BaseException] = []

    def hot_path() -> None:  # write/sync all from this one thread, as in the sidecar
        try:
            for row in rows:
                w.write("ticks", row)
            w.sync()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=hot_path)
    thread.start()
    deadline = time.monotonic() + 60
    while w.stats.backpressure_waits == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.stats.backpressure_waits > 0  # the hot path is blocked on a full queue right now
    gate.set()
    thread.join(120)
    assert not thread.is_alive() and not failure
    assert stored(storage_url, "ticks") == expected(rows)
    stats = w.stats
    assert stats.backpressure_seconds > 0 and stats.queue_depth == 0
    assert stats.rows_written["ticks"] == 200


def test_lifecycle_errors_are_clear(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory()
    with pytest.raises(StorageError, match="unknown table"):
        w.write("tick", (1,))
    with pytest.raises(StorageError, match="cannot update 'ticks'"):
        w.update("ticks", 1, {"price": 1.0})
    with pytest.raises(StorageError, match="bad columns"):
        w.update("sessions", 1, {"ended": 1})
    # Rows written before start() are not lost: close() starts the writer to commit them.
    w.write("audit_log", (None, TS0, "startup", None, "{}"))
    w.close()
    w.close()  # idempotent
    assert count(storage_url, "audit_log") == 1
    with pytest.raises(StorageError, match="closed"):
        w.start()
    w.write("audit_log", (None, TS0, "late", None, "{}"))
    with pytest.raises(StorageError, match="closed"):
        w.flush()


def test_rows_that_could_not_be_handed_over_are_kept(storage_url: str, writer_factory: Any) -> None:
    w = writer_factory(batch_rows=2, queue_batches=1)
    rows = sample_rows("ticks", 5)
    w.write("ticks", rows[0])
    w.write("ticks", rows[1])  # first batch: fits in the queue
    w.write("ticks", rows[2])
    with pytest.raises(StorageError, match=r"start\(\) was not called"):
        w.write("ticks", rows[3])  # second batch: queue full and nobody consuming
    w.start()
    w.write("ticks", rows[4])  # the kept batch goes out with this one
    w.sync()
    assert stored(storage_url, "ticks") == expected(rows)


def test_context_manager_and_flush_if_due(storage_url: str) -> None:
    with StorageWriter(storage_url, flush_interval_s=0.0) as w:
        w.write("audit_log", (1, TS0, "k", "s", None))
        assert w.flush_if_due() is True
        w.sync(timeout=60)
        assert count(storage_url, "audit_log") == 1
        w.write("audit_log", (1, TS0 + 1, "k", "s", None))
    assert count(storage_url, "audit_log") == 2
