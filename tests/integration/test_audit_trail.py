"""The tamper-evident audit trail end to end: a real sidecar's chain, `nt8bridge audit verify`, tampering in
SQLite and PostgreSQL, and a SIGKILL in the middle of a playback."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys

import pytest
from sqlalchemy import text

from bridge.core.config import load_config
from bridge.nt8.client import Nt8Client
from bridge.nt8.playback import load_stream, run_playback
from bridge.protocol.messages import InstrumentDecl, SubmitBracket, Tick
from bridge.transport.sidecar import SidecarProcess, master_for
from bridge.storage.database import create_engine_for
from tests.conftest import PLUMBING_CONFIG

CLI = [sys.executable, "-m", "bridge.cli"]
ES_FILE = "nt8/ES 06-18.Last.txt.gz"


def verify(db_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "audit", "verify", "--db", db_url], capture_output=True, text=True, timeout=300)


def record_playback(shared_data, db_url: str, events: int = 40_000, cfg=PLUMBING_CONFIG):
    """A sidecar on ``db_url`` records the first ``events`` ES ticks of a playback (with brackets)."""
    config = load_config(cfg)
    stream = load_stream([shared_data / ES_FILE])
    stream = stream.before(int(stream.ts_ns[events]))
    with SidecarProcess(db_url, cfg) as proc:
        result = run_playback(stream, proc.endpoint, config, master_for(config), window=256, instance_id="audit")
    assert result.brackets > 0
    return result


def _sqlite_tamper(db, statements):
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER audit_chain_no_update")  # an intruder with write access to the file
        conn.execute("DROP TRIGGER audit_chain_no_delete")
        for sql in statements:
            conn.execute(sql)


@pytest.mark.shared_data
@pytest.mark.slow
def test_sqlite_chain_verifies_and_every_kind_of_tampering_is_named(shared_data, tmp_path):
    db = tmp_path / "audit.sqlite"
    url = f"sqlite:///{db}"
    record_playback(shared_data, url)
    ok = verify(url)
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout
    with sqlite3.connect(db) as conn:
        kinds = {k for (k,) in conn.execute("select distinct kind from audit_chain")}
        n = conn.execute("select count(*) from audit_chain").fetchone()[0]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("update audit_chain set payload = '{}' where seq = 5")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("delete from audit_chain where seq = 5")
    assert {"decision", "order_sent", "order_update", "execution"} <= kinds
    k = n // 2
    cases = {
        "payload": [f"update audit_chain set payload = replace(payload, '\"', '\"') || ' ' where seq = {k}"],
        "deletion": [f"delete from audit_chain where seq = {k}"],
        "insertion": [f"insert into audit_chain select seq + {n}, ts_us, kind, subject_id, session_id, payload, "
                      f"prev_hash, hash from audit_chain where seq = {k}"],
        "reorder": [f"update audit_chain set seq = -1 where seq = {k}", f"update audit_chain set seq = {k} "
                    f"where seq = {k + 1}", f"update audit_chain set seq = {k + 1} where seq = -1"],
    }
    for name, statements in cases.items():
        copy = tmp_path / f"{name}.sqlite"
        shutil.copy(db, copy)
        _sqlite_tamper(copy, statements)
        shutil.copytree(str(db) + ".audit", str(copy) + ".audit")  # the same checkpoints beside it
        bad = verify(f"sqlite:///{copy}")
        assert bad.returncode == 1, (name, bad.stdout, bad.stderr)
        expected = n + 1 if name == "insertion" else k
        assert f"first bad record {expected}:" in bad.stderr, (name, bad.stderr)


@pytest.mark.postgres
@pytest.mark.shared_data
@pytest.mark.slow
def test_postgres_rejects_changes_and_verify_names_a_tampered_record(shared_data, pg_clean_url, tmp_path):
    record_playback(shared_data, pg_clean_url, events=30_000)
    assert verify(pg_clean_url).returncode == 0
    engine = create_engine_for(pg_clean_url)
    try:
        with engine.begin() as conn:
            n = conn.execute(text("select count(*) from audit_chain")).scalar_one()
        for sql in ("update audit_chain set kind = 'x' where seq = 3", "delete from audit_chain where seq = 3",
                    "truncate audit_chain"):
            with pytest.raises(Exception, match="append-only"):
                with engine.begin() as conn:
                    conn.execute(text(sql))
        k = n // 3
        with engine.begin() as conn:  # the table's owner can switch the triggers off: the chain still tells
            conn.execute(text("alter table audit_chain disable trigger user"))
            conn.execute(text(f"update audit_chain set payload = payload || ' ' where seq = {k}"))
            first = k
    finally:
        engine.dispose()
    bad = verify(pg_clean_url)
    assert bad.returncode == 1
    assert f"first bad record {first}:" in bad.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_sigkill_mid_playback_loses_no_audit_record_of_a_sent_order(shared_data, tmp_path):
    """Every BRACKET the client received had its decision and order recorded in the chain first; after a
    SIGKILL and a restart, those records are in the database and the chain verifies."""
    db = tmp_path / "killed.sqlite"
    url = f"sqlite:///{db}"
    stream = load_stream([shared_data / ES_FILE])
    received: list[str] = []
    proc = SidecarProcess(url, PLUMBING_CONFIG)
    endpoint = proc.start()
    with Nt8Client(endpoint, instance_id="sigkill", account="Playback101",
                   instruments=[InstrumentDecl("ES 06-18", 0.25, 50.0)]) as client:
        client.connect()
        ts, price = stream.ts_ns.tolist(), stream.price.tolist()
        k = 0
        # nothing fills here (no broker), so the strategy sends one bracket and then waits on it
        while not received and k < len(ts):
            last = 0
            for j in range(k, min(k + 64, len(ts))):
                last = client.send(Tick(0, 0, price[j], 1, float("nan"), float("nan"), ts[j], ts[j]))
            k += 64
            for group in client.wait_acks(last).values():
                received += [m.client_order_id for m in group if isinstance(m, SubmitBracket)]
        assert received, "the strategy should have sent a bracket by now"
        proc.proc.send_signal(signal.SIGKILL)  # no flush, no clean shutdown
        proc.proc.wait(30)
        client.close(reason=None)
    proc.stop()
    # what reached the database before the kill may be less than what was sent: the journal has it all
    with SidecarProcess(url, PLUMBING_CONFIG):  # a restart stores what the journal holds and the db lacks
        pass
    with sqlite3.connect(db) as conn:
        sent = {s for (s,) in conn.execute("select subject_id from audit_chain where kind = 'order_sent'")}
        decisions = {json.loads(p)["outcome"] for (p,) in conn.execute(
            "select payload from audit_chain where kind = 'decision'")}
    assert set(received) <= sent
    assert "EMITTED" in decisions
    ok = verify(url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
