"""PostgreSQL going away and coming back under a running StorageWriter, on a real throwaway cluster.

The behaviour tests shared with SQLite live in tests/unit/test_storage_*.py (parametrised with
the ``postgres`` marker); this module covers what needs a server the test may stop and start.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bridge.storage.database import StorageError, current_revision, upgrade
from bridge.storage.writer import StorageWriter
from tests.unit.test_storage_writer import count, expected, sample_rows, stored

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PASSWORD = "s3cret-not-for-logs"


def _with_password(url: str) -> str:
    # The throwaway cluster trusts everyone; a password in the URL lets us check it never leaks.
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def test_server_down_at_start_and_mid_run_loses_nothing(pg_private_cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nt8bridge.storage")
    cluster = pg_private_cluster
    url = _with_password(cluster.url)
    rows = sample_rows("ticks", 300)

    cluster.stop()
    w = StorageWriter(url, batch_rows=10, queue_batches=100, retry_initial_s=0.05, retry_max_s=0.3)
    try:
        w.start()  # the server is down: logged, not raised
        w.write("sessions", (1, "inst", "Sim101", None, 3, 1, None, None, None))
        for row in rows[:100]:
            w.write("ticks", row)  # the caller's thread is never disturbed
        with pytest.raises(StorageError) as info:
            w.sync(timeout=1.0)
        assert info.value.transient
        assert "cannot reach PostgreSQL" in (w.stats.last_error or "")

        cluster.start()
        w.sync()
        assert count(url, "ticks") == 100
        assert current_revision(url) == "0006"

        cluster.stop()  # goes away while recording: pooled connections die
        for row in rows[100:]:
            w.write("ticks", row)
        w.update("sessions", 1, {"ended_ns": 2, "end_reason": "shutdown"})
        with pytest.raises(StorageError):
            w.sync(timeout=1.0)
        cluster.start()
        w.close()
    finally:
        if not cluster.running:
            cluster.start()
        w.close(timeout=60)

    assert stored(url, "ticks") == expected(rows)  # every row once, in order
    assert stored(url, "sessions")[0][6:8] == (2, "shutdown")
    assert w.stats.errors > 0 and w.stats.rows_written["ticks"] == 300
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot reach PostgreSQL" in m for m in messages)
    assert any("available again" in m for m in messages)
    assert not any(PASSWORD in m for m in messages)


def test_missing_database_is_a_permanent_error(pg_url: str) -> None:
    url = _with_password(make_url(pg_url).set(database="nt8bridge_no_such_db").render_as_string(hide_password=False))
    with pytest.raises(StorageError, match="does not exist") as info:
        upgrade(url)
    assert not info.value.transient and "createdb" in str(info.value)
    assert PASSWORD not in str(info.value)
    with pytest.raises(StorageError, match="does not exist"):
        StorageWriter(url).start()  # raised in the caller's thread, not retried forever


def test_copy_path_handles_large_batches(pg_clean_url: str) -> None:
    rows = sample_rows("ticks", 20_000)
    with StorageWriter(pg_clean_url, batch_rows=2000) as w:
        for row in rows:
            w.write("ticks", row)
    got = stored(pg_clean_url, "ticks")
    assert len(got) == 20_000 and got[::997] == expected(rows)[::997]
