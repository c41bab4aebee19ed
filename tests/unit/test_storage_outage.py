"""The storage writer while its SQLite database is locked by another program: the backlog goes to the
spool, the hot path never waits, and the rows are stored once, in order, when the database is back;
a spool left by a stopped or crashed writer is stored first by the next one, without duplicates."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bridge.storage import schema
from bridge.storage.database import StorageError, create_engine_for
from bridge.storage.spool import Spool
from bridge.storage.writer import StorageWriter, spool_identity
from tests.unit.test_storage_database import _SqliteLock
from tests.unit.test_storage_writer import TS0, expected, sample_rows, stored

SESSION = (7, "inst", "Sim101", None, 3, TS0, None, None, None)


def _setup(tmp_path: Path) -> tuple[str, _SqliteLock]:
    path = tmp_path / "rec.sqlite"
    sqlite3.connect(path).execute("PRAGMA journal_mode = WAL").fetchall()
    return f"sqlite:///{path}?timeout=0.05", _SqliteLock(path)  # short busy timeout: fail fast


def _writer(url: str, spool: Path | None, **kwargs: Any) -> StorageWriter:
    kwargs.setdefault("retry_initial_s", 0.02)
    kwargs.setdefault("retry_max_s", 0.2)
    return StorageWriter(url, batch_rows=25, queue_batches=8, spool_path=spool, **kwargs)


def _until(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    """Wait for ``condition()``; the timeout only keeps a broken writer from hanging the suite."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_outage_goes_to_the_spool_and_is_stored_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nt8bridge.storage")
    url, lock = _setup(tmp_path)
    spool = tmp_path / "rec.spool"
    rows = sample_rows("ticks", 1000)
    w = _writer(url, spool)
    w.start()
    w.write("sessions", SESSION)
    for row in rows[:200]:
        w.write("ticks", row)
    w.sync()
    assert w.stats.state == "ok" and spool.stat().st_size == 0  # no outage: an empty spool (held, locked)
    waits = w.stats.backpressure_waits  # a writer slower than this loop, at its start: not the outage's

    lock.take(readers_too=False)
    # The queue holds 8 hand-overs; this outage lasts 25: each one must reach the spool (the queue drains),
    # or the hot path would have to wait (the writer before the spool kept the failed batch and waited).
    spooled = 0
    for burst in range(24):
        for row in rows[200 + burst * 25:225 + burst * 25]:
            w.write("ticks", row)
        spooled += 25
        if burst == 12:
            w.update("sessions", 7, {"ended_ns": TS0 + 1, "end_reason": "during"})  # an update, in its place
            spooled += 1
        _until(lambda: w.stats.rows_spooled == spooled, f"{spooled} rows in the spool")
    assert w.stats.queue_depth == 0 and w.stats.rows_held == 0
    stats = w.stats
    assert stats.state == "database_down" and stats.outage_since is not None
    assert stats.rows_spooled == 601 and stats.spool_bytes == spool.stat().st_size > 0
    assert stats.backpressure_waits == waits
    with pytest.raises(StorageError, match="state database_down"):
        w.sync(timeout=0.3)  # not committed: sync still says so

    lock.release()
    for row in rows[800:]:
        w.write("ticks", row)
    w.sync()
    stats = w.stats
    assert stats.state == "ok" and stats.rows_spooled == 0 and stats.rows_replayed >= 601
    assert stats.outages == 1
    w.close()
    assert stored(url, "ticks") == expected(rows)  # every row once, in the order handed over
    assert stored(url, "sessions")[0][6:8] == (TS0 + 1, "during")
    assert not spool.exists()  # emptied once committed, removed at close
    messages = _messages(caplog)
    # one line entering the outage, one when the database is back, one when the backlog is stored
    assert sum("DATABASE DOWN" in m for m in messages) == 1
    assert sum("available again" in m for m in messages) == 1
    assert sum("storage caught up" in m for m in messages) == 1


def test_a_stop_during_the_outage_leaves_the_spool_for_the_next_writer(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nt8bridge.storage")
    url, lock = _setup(tmp_path)
    spool = tmp_path / "rec.spool"
    rows = sample_rows("ticks", 300)
    first = _writer(url, spool, stop_grace_s=0.2)
    first.start()
    for row in rows[:100]:
        first.write("ticks", row)
    first.sync()
    lock.take(readers_too=False)
    for row in rows[100:200]:
        first.write("ticks", row)
    first.close()  # the database is still away: close returns, the rows stay in the spool
    assert first.stats.rows_spooled == 100 and spool.stat().st_size > 0
    assert any("100 rows stay in the storage spool" in m for m in _messages(caplog))

    lock.release()
    second = _writer(url, spool)
    second.start()  # replays the spool before anything it is given
    assert any("holds 100 rows (4 records) a previous run could not store" in m for m in _messages(caplog))
    for row in rows[200:]:
        second.write("ticks", row)
    second.close()
    assert stored(url, "ticks") == expected(rows)
    assert second.stats.rows_replayed == 100 and second.stats.rows_skipped == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crash
def test_replay_skips_what_was_committed_just_before_a_crash(tmp_path: Path) -> None:
    url, lock = _setup(tmp_path)
    spool_path = tmp_path / "rec.spool"
    rows = sample_rows("ticks", 200)
    first = _writer(url, spool_path)
    first._group_rows = 50  # replay in several transactions, so that the crash comes after the first
    first.start()
    lock.take(readers_too=False)
    for row in rows[:150]:
        first.write("ticks", row)
    first.flush()
    _until(lambda: first.stats.rows_spooled == 150, "the outage's rows are spooled")
    spool = first._spool
    assert spool is not None

    def crash(_record: object) -> None:  # the process dies between the commit and moving past the record
        raise SystemExit("killed")

    spool.consumed = crash  # type: ignore[method-assign]
    lock.release()
    _until(lambda: not first._thread.is_alive(), "the writer thread dies after its first replayed commit")  # type: ignore[union-attr]
    spool.close(remove_if_empty=False)  # what the kill would have released
    committed = len(stored(url, "ticks"))
    assert 0 < committed < 150  # a first group is in the database, and still in the spool

    second = _writer(url, spool_path)
    second.start()
    for row in rows[150:]:
        second.write("ticks", row)
    second.close()
    assert stored(url, "ticks") == expected(rows)  # nothing twice, nothing missing
    assert second.stats.rows_skipped == committed
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.select(sa.func.count()).select_from(schema.storage_progress)).scalar_one()
    finally:
        engine.dispose()
    assert runs == 2  # one progress row per writer run


def test_without_a_spool_the_backlog_waits_in_memory(tmp_path: Path) -> None:
    url, lock = _setup(tmp_path)
    rows = sample_rows("ticks", 100)
    w = _writer(url, None)
    w.start()
    lock.take(readers_too=False)
    for row in rows:
        w.write("ticks", row)
    w.flush()
    _until(lambda: w.stats.rows_held == 100, "the rows are held by the writer thread")
    assert w.stats.state == "database_down" and w.stats.rows_spooled == 0 and w.stats.spool_path is None
    lock.release()
    w.close()
    assert stored(url, "ticks") == expected(rows)


def test_a_spool_for_another_database_stops_the_start(tmp_path: Path) -> None:
    url, _lock = _setup(tmp_path)
    path = tmp_path / "other.spool"
    other = Spool(path, spool_identity(f"sqlite:///{tmp_path / 'other.sqlite'}"))
    other.append([(1, b"x")])
    other.close()
    w = _writer(url, path)
    with pytest.raises(StorageError, match="holds rows for .*other.sqlite"):
        w.start()
