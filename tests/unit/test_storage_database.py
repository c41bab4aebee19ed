"""URLs, engines, errors, backups and outages of the recording database."""

from __future__ import annotations

import logging
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from bridge.storage import database, schema
from bridge.storage.database import (
    StorageError,
    backup,
    create_engine_for,
    current_revision,
    default_db_url,
    parse_url,
    safe_url,
    upgrade,
)
from bridge.storage.writer import StorageWriter
from tests.unit.test_storage_writer import TS0, count, sample_rows

# --------------------------------------------------------------------------- URLs


def test_default_db_url_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = default_db_url()
    assert url == f"sqlite:///{tmp_path / 'xdg' / 'nt8bridge' / 'nt8bridge.sqlite'}"
    assert (tmp_path / "xdg" / "nt8bridge").is_dir()
    assert parse_url(url).database == str(tmp_path / "xdg" / "nt8bridge" / "nt8bridge.sqlite")


def test_default_db_url_without_xdg_uses_local_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG spec says: ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_url() == f"sqlite:///{tmp_path / '.local' / 'share' / 'nt8bridge' / 'nt8bridge.sqlite'}"


def test_default_db_url_on_windows_uses_localappdata(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert default_db_url() == f"sqlite:///{tmp_path / 'Local' / 'nt8bridge' / 'nt8bridge.sqlite'}"
    assert (tmp_path / "Local" / "nt8bridge").is_dir()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://u:pw@host/db", "unsupported database URL"),
        ("postgresql+psycopg2://u@h/db", "unsupported database URL"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("not a url", "cannot parse"),
    ],
)
def test_bad_urls_say_what_is_accepted(url: str, match: str) -> None:
    with pytest.raises(StorageError, match=match) as info:
        create_engine_for(url)
    assert "pw" not in str(info.value)
    assert info.value.transient is False


def test_postgres_urls_default_to_psycopg() -> None:
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert parse_url("postgres://u@h/db").drivername == "postgresql+psycopg"


def test_safe_url_hides_passwords() -> None:
    assert "s3cret" not in safe_url("postgresql+psycopg://trader:s3cret@db:5432/rec")
    assert "trader" in safe_url("postgresql+psycopg://trader:s3cret@db:5432/rec")
    assert "s3cret" not in safe_url("weird://trader:s3cret@[bad")


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'x.sqlite'}")
    try:
        with engine.connect() as conn:
            names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            pragma = {n: conn.exec_driver_sql(f"PRAGMA {n}").scalar() for n in names}
    finally:
        engine.dispose()
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 0, "busy_timeout": 5000}


# --------------------------------------------------------------------------- errors


def test_corrupt_sqlite_file_is_a_clear_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "rec.sqlite"
    path.write_bytes(b"this is not an SQLite database, it only has the extension" * 100)
    with pytest.raises(StorageError, match="not a database or is damaged") as info:
        upgrade(f"sqlite:///{path}")
    assert info.value.transient is False and "backup" in str(info.value)
    with pytest.raises(StorageError, match="not a database"):
        StorageWriter(f"sqlite:///{path}").start()  # not retried forever: it raises at once


def test_missing_folder_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist") as info:
        upgrade(f"sqlite:///{tmp_path / 'nowhere' / 'rec.sqlite'}")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_current_revision_does_not_create_a_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite"
    assert current_revision(f"sqlite:///{path}") is None
    assert not path.exists()


def test_refused_postgres_connection_is_transient_and_hides_the_password() -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://trader:s3cret@127.0.0.1:{port}/rec"
    with pytest.raises(StorageError, match="cannot reach PostgreSQL") as info:
        upgrade(url)
    assert info.value.transient is True
    assert "s3cret" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


def test_missing_pg_dump_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(database.shutil, "which", lambda name: None)
    with pytest.raises(StorageError, match="postgresql-client"):
        backup("postgresql+psycopg://u:pw@127.0.0.1:1/db", tmp_path / "x.dump")
    assert not list(tmp_path.iterdir())  # no partial file left behind


# --------------------------------------------------------------------------- backups


def _write_everything(url: str, n: int = 30) -> StorageWriter:
    w = StorageWriter(url, batch_rows=11)
    w.start()
    for table in schema.COLUMNS:
        if table not in ("storage_rejects", "storage_progress"):  # written by the writer itself
            for row in sample_rows(table, n):
                w.write(table, row)
    w.sync()
    return w


def _counts(url: str) -> dict[str, int]:
    return {table: count(url, table) for table in schema.COLUMNS}


def _restore_pg(dump: Path, make_db: Callable[[], str]) -> str:
    target = make_db()
    libpq = sa.engine.make_url(target).set(drivername="postgresql").render_as_string(hide_password=False)
    subprocess.run(["pg_restore", "--no-owner", f"--dbname={libpq}", str(dump)], check=True, capture_output=True)
    return target


def test_backup_opens_with_the_same_row_counts(storage_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    w = _write_everything(storage_url)
    try:
        out = backup(storage_url, tmp_path)  # a folder: a time-stamped name is chosen inside
        assert out.parent == tmp_path and out.exists() and not out.name.endswith(".partial")
        if storage_url.startswith("sqlite"):
            copy_url = f"sqlite:///{out}"
            with sqlite3.connect(out) as conn:  # a plain single file, intact
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        else:
            if database.shutil.which("pg_restore") is None:
                pytest.skip("pg_restore not on PATH (apt install postgresql-client)")
            copy_url = _restore_pg(out, request.getfixturevalue("pg_database_factory"))
        assert _counts(copy_url) == _counts(storage_url)
        assert current_revision(copy_url) == "0006"
    finally:
        w.close()


def test_sqlite_backup_is_a_consistent_snapshot_while_writing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rec.sqlite'}"
    w = StorageWriter(url, batch_rows=100, queue_batches=1000)
    w.start()
    try:
        for row in sample_rows("ticks", 20_000):
            w.write("ticks", row)  # full batches only: each commit adds exactly 100 rows
        snapshot = backup(url, tmp_path / "during.sqlite")  # the writer is still committing
        with sqlite3.connect(snapshot) as conn:
            during = conn.execute("SELECT count(*) FROM ticks").fetchone()[0]
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert during % 100 == 0  # never half a transaction
        w.sync()
        after = backup(url, tmp_path / "after.sqlite")
        assert count(f"sqlite:///{after}", "ticks") == 20_000
    finally:
        w.close()


# --------------------------------------------------------------------------- outages


class _SqliteLock:
    """Another program locking an SQLite file, like a database browser left with a transaction open."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def take(self, *, readers_too: bool) -> None:
        """Lock out writers; with ``readers_too``, everyone (only possible while no one else has it open)."""
        self._conn = sqlite3.connect(self._path, isolation_level=None, timeout=30)
        if readers_too:
            self._conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            self._conn.execute("BEGIN EXCLUSIVE")
            self._conn.execute("COMMIT")  # in exclusive locking mode the lock outlives the transaction
        else:
            self._conn.execute("BEGIN IMMEDIATE")  # the one write lock, held until released

    def release(self) -> None:
        assert self._conn is not None
        self._conn.close()  # also rolls back the open transaction
        self._conn = None


def test_sqlite_unavailable_at_start_and_mid_run_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nt8bridge.storage")
    path = tmp_path / "rec.sqlite"
    url = f"sqlite:///{path}?timeout=0.05"  # short busy timeout: fail fast, retry often
    sqlite3.connect(path).execute("PRAGMA journal_mode = WAL").fetchall()
    lock = _SqliteLock(path)
    rows = sample_rows("ticks", 300)

    lock.take(readers_too=True)  # even the schema check at start cannot read
    w = StorageWriter(url, batch_rows=10, queue_batches=100, retry_initial_s=0.02, retry_max_s=0.1)
    w.start()  # does not raise: the database is only unavailable
    for row in rows[:100]:
        w.write("ticks", row)  # nor does writing: the hot path keeps going
    with pytest.raises(StorageError) as info:
        w.sync(timeout=0.5)
    assert info.value.transient and "locked" in str(info.value)
    assert any("locked" in r.getMessage() for r in caplog.records)
    lock.release()
    w.sync()
    assert count(url, "ticks") == 100

    lock.take(readers_too=False)  # it goes away again while recording
    for row in rows[100:]:
        w.write("ticks", row)
    w.flush()
    with pytest.raises(StorageError):
        w.sync(timeout=0.5)
    lock.release()
    w.close()
    assert count(url, "ticks") == 300
    assert w.stats.errors > 0 and w.stats.rows_written["ticks"] == 300
    assert current_revision(url) == "0006"


def test_sqlite_rejects_bad_rows_and_keeps_order_in_other_tables(tmp_path: Path) -> None:
    # A bad row in an insert-or-ignore table goes through the same reject path.
    url = f"sqlite:///{tmp_path / 'rec.sqlite'}"
    with StorageWriter(url, batch_rows=3) as w:
        w.write("instruments", ("NQ 06-18", "NQ", 0.25, 20.0, "USD", "CME", TS0))
        w.write("instruments", ("MES 06-18", None, 0.25, 5.0, "USD", "CME", TS0))  # root is NOT NULL
        w.write("instruments", ("MYM 06-18", "MYM", 1.0, 0.5, None, None, TS0))
    assert count(url, "instruments") == 2 and count(url, "storage_rejects") == 1

