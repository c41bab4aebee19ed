"""``StorageWriter(on_committed=...)``: the writer thread tells a listener what it committed, once per queue
item, after the commit, also for rows replayed from the spool, never for rejected rows; a failing listener
does not stop storage."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from bridge.storage.writer import StorageWriter
from tests.integration.test_server import wait_until
from tests.unit.test_storage_database import _SqliteLock
from tests.unit.test_storage_writer import count, expected, sample_rows


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any], str, int, str]] = []

    def __call__(self, table: str, rows: list[Any], stream: str, seq: int) -> None:
        self.calls.append((table, list(rows), stream, seq, threading.current_thread().name))

    def rows(self, table: str) -> list[Any]:
        return [r for t, rows, *_ in self.calls if t == table for r in rows]


def test_every_committed_row_is_told_once_after_its_commit_from_the_writer_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rec.sqlite'}"
    seen_committed: list[int] = []

    def check(table: str, rows: list[Any], stream: str, seq: int) -> None:
        seen_committed.append(count(url, table))  # another connection already sees them: committed
        listener(table, rows, stream, seq)

    listener = Listener()
    rows = sample_rows("ticks", 250)
    with StorageWriter(url, batch_rows=40, on_committed=check) as w:
        for r in rows:
            w.write("ticks", r)
    assert expected(listener.rows("ticks")) == expected(rows)
    assert {name for *_x, name in listener.calls} == {"nt8bridge-storage"}  # never the hot path
    assert len({(s, q) for _t, _r, s, q, _n in listener.calls}) == len(listener.calls)  # a name per item
    told = 0
    for (_t, batch, *_rest), seen in zip(listener.calls, seen_committed):
        told += len(batch)
        assert seen >= told


def test_rows_replayed_from_the_spool_are_told_and_rejected_rows_are_not(tmp_path: Path) -> None:
    path = tmp_path / "rec.sqlite"
    url = f"sqlite:///{path}?timeout=0.05"
    sqlite3.connect(path).execute("PRAGMA journal_mode = WAL").fetchall()
    listener = Listener()
    rows = sample_rows("ticks", 120)
    bad = (*rows[0][:4], None, *rows[0][5:])  # price NULL: NOT NULL refuses it
    w = StorageWriter(url, batch_rows=10, queue_batches=100, retry_initial_s=0.02, retry_max_s=0.1,
                      spool_path=tmp_path / "storage.spool", on_committed=listener)
    w.start()
    w.write("ticks", rows[0])
    w.sync()
    lock = _SqliteLock(path)
    lock.take(readers_too=False)  # the database away: the rows go to the spool
    for r in rows[1:60]:
        w.write("ticks", r)
    w.write("ticks", bad)
    for r in rows[60:]:
        w.write("ticks", r)
    w.flush()
    wait_until(lambda: w.stats.rows_spooled > 0, "rows spooled while the database is away")
    lock.release()
    w.close()
    assert w.stats.rows_replayed > 0 and w.stats.rows_rejected == 1
    assert expected(listener.rows("ticks")) == expected(rows)  # every stored row once, in order, not the rejected


def test_a_failing_listener_never_stops_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rec.sqlite'}"

    def broken(*_args: Any) -> None:
        raise RuntimeError("listener bug")

    rows = sample_rows("ticks", 50)
    with StorageWriter(url, batch_rows=10, on_committed=broken) as w:
        for r in rows:
            w.write("ticks", r)
    assert count(url, "ticks") == 50 and w.stats.rows_written["ticks"] == 50
