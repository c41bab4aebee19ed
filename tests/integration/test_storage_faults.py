"""Storage faults with real components: a real sidecar (``nt8bridge serve`` in a child process) serving
the Python NT8 client while its PostgreSQL server is stopped and restarted, while it is SIGKILLed with
the database away, and while the disk of its audit journal or of its spool is full (a real tmpfs).

What is checked is what the desk is promised: every row sent is in the database exactly once, the hot
path never waited nor refused a message, the state and the alerts say what is going on, trading is
held back where configured (REDUCING while the database is away) or required (HALTED while the audit
journal cannot be written), and the audit chain verifies afterwards. Waits below wait for events (a
state, a count); their timeouts only keep a broken sidecar from hanging the suite.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bridge.audit.chain import AuditJournal, verify_journal
from bridge.audit.trail import verify_database
from bridge.core.config import Config, StorageConfig, load_config
from bridge.core.market import BarData
from bridge.nt8.client import Nt8Client
from bridge.protocol.messages import (
    Error,
    Execution,
    InstrumentDecl,
    OrderRole,
    Side,
    SubmitBracket,
    Tick,
    TickKind,
)
from bridge.storage.database import create_engine_for
from bridge.storage.spool import _scan
from bridge.storage.writer import StorageWriter
from bridge.transport.control import send_command
from bridge.transport.metrics import SidecarCollector
from bridge.transport.server import SidecarServer
from bridge.transport.sidecar import SidecarProcess, make_strategy_factory, master_for
from strategies.features import FeatureEngine, FeatureWindows
from tests.conftest import PLUMBING_CONFIG
from tests.unit.test_storage_database import _SqliteLock
from tests.unit.test_storage_writer import expected, sample_rows, stored

ES = InstrumentDecl("ES 06-18", 0.25, 50.0)
TICK = 0.25
NS = 1_000_000_000
MINUTE_NS = 60 * NS


# --------------------------------------------------------------------------- helpers


def until(condition: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    """Wait for ``condition()`` to be truthy and return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """The plumbing configuration (one contract per bracket, no regime filter) plus ``sections``."""
    lines = [PLUMBING_CONFIG.read_text(encoding="utf-8")]
    for name, values in sections.items():
        lines.append(f"\n[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def quiet_bars_needed() -> int:
    """Closed bars the feature engine needs before its first snapshot (no strategy decides before it)."""
    sc = load_config(PLUMBING_CONFIG).strategy
    engine = FeatureEngine(FeatureWindows(sc.atr_bars, sc.lookback_bars, sc.band_bars, sc.er_bars, sc.vol_bars))
    for k in range(10_000):
        if engine.on_bar(BarData(0, 60, k * MINUTE_NS, (k + 1) * MINUTE_NS, 2700.25, 2700.5, 2700.0, 2700.0, 3,
                                 3)) is not None:
            return k
    raise AssertionError("the feature engine gave no snapshot")


class Staircase:
    """One NT8 session in lockstep that makes the momentum strategy trade on demand.

    Quiet bars first (as many as the features need), then a staircase: each ``breakout()`` closes a bar
    above every high before it, so the strategy buys (a BRACKET) unless something holds trading back;
    an entry and a target fill follow, so the position is flat again. ``ticks(n)`` adds trades inside the
    current bar (no bar closes, no decision): volume for the storage. Every tick sent has its own
    exchange time, recorded in ``sent``, so the test can find each one in the database."""

    def __init__(self, endpoint: str, instance_id: str) -> None:
        self.client = Nt8Client(endpoint, instance_id=instance_id, account="Sim101", instruments=[ES])
        self.client.connect()
        self.sent: list[int] = []  # ts_exchange_ns of every tick sent
        self.brackets: list[str] = []
        self.denied = 0
        self.executions = 0
        self.refused: list[Error] = []
        self.minute = int(dt.datetime(2018, 5, 8, tzinfo=dt.timezone.utc).timestamp()) * NS
        for _ in range(quiet_bars_needed()):
            for k, price in enumerate((2700.25, 2700.50, 2700.00)):
                self._step(self._trade(price, self.minute + k * 20 * NS))
            self.minute += MINUTE_NS
        self.price = 2700.75
        for k in range(3):
            self._step(self._trade(self.price, self.minute + k * 20 * NS))
        self.offset = 41 * NS  # extra ticks go after the bar's own trades

    def _trade(self, price: float, ts: int) -> Tick:
        self.sent.append(ts)
        return Tick(0, int(TickKind.LAST), price, 1, price - TICK, price, ts, ts)

    def _step(self, msg: Any) -> list[Any]:
        replies = self.client.step(msg)
        self.refused += [r for r in replies if isinstance(r, Error)]
        return replies

    def ticks(self, n: int) -> None:
        """n trades inside the current bar, in one TICKS message."""
        batch = []
        for _ in range(n):
            self.offset += 1000
            batch.append(self._trade(self.price, self.minute + self.offset))
        seq = self.client.send_ticks(batch)
        self.refused += [r for group in self.client.wait_acks(seq).values() for r in group if isinstance(r, Error)]

    def breakout(self) -> bool:
        """Close a bar above the channel; True when a BRACKET came (then filled and closed)."""
        self.minute += MINUTE_NS
        self.price += TICK
        self.offset = 41 * NS
        replies = self._step(self._trade(self.price, self.minute))
        bracket = next((r for r in replies if isinstance(r, SubmitBracket)), None)
        if bracket is None:
            self.denied += 1
            return False
        cid = bracket.client_order_id
        self.brackets.append(cid)
        ts = self.minute + NS
        self._step(Execution(f"{cid}-E", cid, int(OrderRole.ENTRY), f"{cid}-n1", 0, int(Side.BUY), self.price,
                             bracket.quantity, 2.09, ts))
        self._step(Execution(f"{cid}-T", cid, int(OrderRole.TARGET), f"{cid}-n3", 0, int(Side.SELL),
                             self.price + 4, bracket.quantity, 2.09, ts + NS))
        self.executions += 2
        return True

    def close(self) -> None:
        self.client.close()


def status(proc: SidecarProcess) -> dict[str, Any]:
    assert proc.control_endpoint
    return send_command(proc.control_endpoint, "status")


def storage(proc: SidecarProcess) -> dict[str, Any]:
    return status(proc)["storage"]


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def assert_every_tick_once(url: str, sent: list[int]) -> None:
    rows = query(url, "select ts_exchange_ns from ticks")
    assert len(rows) == len(sent), f"{len(rows)} tick rows for {len(sent)} ticks sent"
    assert sorted(r[0] for r in rows) == sorted(sent)  # each one, once


def assert_chain_whole(url: str, audit_dir: Path, key: Path) -> int:
    """The chain verifies in the database and in the journal, and both hold the same records."""
    result = verify_database(url, audit_dir / "checkpoints.jsonl", Path(str(key) + ".pub"))
    assert result.ok, result.reason
    journal = verify_journal(audit_dir / "journal.jsonl", audit_dir / "checkpoints.jsonl", Path(str(key) + ".pub")
                             .read_bytes())
    assert journal.ok and not journal.torn_tail, journal.reason
    assert journal.records == result.records
    assert not list(audit_dir.glob("*.torn-*")), "a torn journal line was found at a restart"
    return result.records


def log_of(proc: SidecarProcess) -> str:
    return Path(str(proc.log_path)).read_text(errors="replace")


# --------------------------------------------------------------------------- PostgreSQL away


@pytest.mark.postgres
@pytest.mark.parametrize("outage_s", [pytest.param(4.0, id="seconds"),
                                      pytest.param(60.0, id="a-minute", marks=pytest.mark.slow)])
def test_postgres_outage_mid_session_loses_no_row(pg_private_cluster: Any, tmp_path: Path, outage_s: float) -> None:
    cluster = pg_private_cluster
    url = cluster.url
    audit_dir, key = tmp_path / "audit", tmp_path / "key.pem"
    config = write_config(tmp_path / "sidecar.toml", storage={"spool_path": str(tmp_path / "storage.spool")},
                          audit={"dir": str(audit_dir), "key_path": str(key)})
    proc = SidecarProcess(url, config, tmp_path / "sidecar.log")
    proc.start()
    seen_states: set[str] = set()
    spooled_max = 0
    try:
        s = Staircase(proc.endpoint or "", "outage")
        for _ in range(3):
            assert s.breakout()
            s.ticks(50)
        brackets_before = len(s.brackets)

        cluster.stop()  # connections cut, new ones refused
        started = time.monotonic()
        next_breakout = started
        while time.monotonic() - started < outage_s:  # the session goes on as if nothing happened
            if time.monotonic() >= next_breakout:  # a decision every half second, a bar a minute of event time
                assert s.breakout(), "continue: trading goes on while the database is away"
                next_breakout += 0.5
                st = storage(proc)
                seen_states.add(st["state"])
                spooled_max = max(spooled_max, st["rows_spooled"])
            s.ticks(40)
            time.sleep(0.01)
        during = storage(proc)
        assert during["state"] == "database_down" and during["outage_since"] is not None
        assert during["rows_spooled"] > 0 and during["holds"] == []  # continue: no hold
        cluster.start()

        for _ in range(3):
            assert s.breakout()
            s.ticks(50)
        until(lambda: storage(proc)["state"] == "ok", "the backlog is stored")
        s.close()
        final = storage(proc)
    finally:
        if not cluster.running:
            cluster.start()
        assert proc.stop() == 0, proc.tail()
    assert "database_down" in seen_states and spooled_max > 0
    assert final["backpressure_waits"] == 0  # the hot path never waited on the outage
    assert final["outages"] == 1 and final["rows_replayed"] >= spooled_max
    assert s.refused == []  # and refused nothing
    assert len(s.brackets) > brackets_before + 3
    assert_every_tick_once(url, s.sent)
    assert query(url, "select count(*), count(distinct client_order_id) from orders") == [(len(s.brackets),) * 2]
    assert query(url, "select count(*) from executions") == [(s.executions,)]
    assert query(url, "select count(*) from decisions where outcome = 'EMITTED'") == [(len(s.brackets),)]
    records = assert_chain_whole(url, audit_dir, key)
    assert query(url, "select count(*), max(seq) from audit_chain") == [(records, records)]
    text = log_of(proc)
    assert text.count("DATABASE DOWN") == 1 and text.count("storage caught up") == 1
    assert "available again" in text


@pytest.mark.postgres
def test_sidecar_killed_while_the_database_is_away_replays_its_spool(pg_private_cluster: Any, tmp_path: Path) -> None:
    """REDUCING while the database is away (storage.on_outage = reducing); a SIGKILL then; a torn tail on the
    spool as if the power had gone too; a restart stores the spool first, once, and the chain verifies."""
    cluster = pg_private_cluster
    url = cluster.url
    audit_dir, key, spool = tmp_path / "audit", tmp_path / "key.pem", tmp_path / "storage.spool"
    config = write_config(tmp_path / "sidecar.toml", storage={"spool_path": str(spool), "on_outage": "reducing"},
                          audit={"dir": str(audit_dir), "key_path": str(key)})
    proc = SidecarProcess(url, config, tmp_path / "first.log")
    proc.start()
    s = Staircase(proc.endpoint or "", "killed")
    assert s.breakout()
    s.ticks(100)
    cluster.stop()
    s.ticks(100)
    hold = until(lambda: storage(proc)["holds"], "the REDUCING hold")
    assert hold[0]["source"] == "storage" and hold[0]["state"] == "REDUCING"
    assert not s.breakout() and not s.breakout()  # flat: a new entry would not reduce anything
    for _ in range(5):
        s.ticks(100)
    # everything handed over is in the spool (fsynced) once the flush timer has run and nothing is held
    total = len(s.sent)
    until(lambda: (st := storage(proc))["rows_held"] == 0 and st["queue_depth"] == 0
          and st["rows_spooled"] >= total - st["rows_written"], "every row spooled")
    proc.proc.send_signal(signal.SIGKILL)  # no flush, no clean shutdown
    proc.proc.wait(30)
    s.client.close(reason=None)
    proc.stop()
    first_log = log_of(proc)
    assert "TRADING REDUCING (storage)" in first_log

    with spool.open("ab") as f:  # the power went as a record was being appended
        f.write(b"NTSP\x49\x05\x00\x00\x00\xff\xff")
    cluster.start()
    again = SidecarProcess(url, config, tmp_path / "second.log")
    again.start()
    until(lambda: storage(again)["state"] == "ok", "the spool is stored")
    assert storage(again)["holds"] == []  # lifted once the backlog is stored
    assert again.stop() == 0, again.tail()
    text = log_of(again)
    assert "torn last record" in text and ".torn-" in text
    assert "a previous run could not store; they are stored first" in text
    assert_every_tick_once(url, s.sent)
    denied = query(url, "select rationale, outcome from decisions where outcome like 'DENIED:%'")
    assert len(denied) == 2 and all("RISK_STATE_REDUCING (storage:" in outcome for _, outcome in denied)
    # the hold's audit record, made by the killed sidecar while the database was away, came from its spool
    holds = query(url, "select kind, payload from audit_chain where subject_id = 'storage'")
    assert [k for k, _ in holds] == ["trading_hold"] and '"state":"REDUCING"' in holds[0][1]
    assert_chain_whole(url, audit_dir, key)
    assert not spool.exists() and list(tmp_path.glob("storage.spool.torn-*"))


# --------------------------------------------------------------------------- full disks


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real, small file system (tmpfs, 2 MiB) mounted for the test; skipped where mounting is not allowed."""
    where = tmp_path / "small"
    where.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the full-disk tests fill a real file system)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); the full-disk "
                    "tests need one")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system; returns the filler, whose removal frees it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def test_full_audit_disk_halts_new_entries_and_loses_no_record(small_fs: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rec.sqlite'}"
    key = tmp_path / "key.pem"
    config = write_config(tmp_path / "sidecar.toml", audit={"dir": str(small_fs), "key_path": str(key)})
    proc = SidecarProcess(url, config, tmp_path / "sidecar.log")
    proc.start()
    try:
        s = Staircase(proc.endpoint or "", "fulldisk")
        assert s.breakout() and s.breakout()
        filler = fill(small_fs)
        s.breakout()  # its records cannot be journaled: they wait in memory; the hold follows
        st = until(lambda: (x := storage(proc))["holds"] and x, "the HALTED hold")
        assert st["holds"][0]["source"] == "audit" and st["holds"][0]["state"] == "HALTED"
        assert st["audit_journal"]["disk_full"] and st["audit_journal"]["pending_records"] > 0
        assert not s.breakout() and not s.breakout()  # new entries refused, as with the kill switch
        line = subprocess.run([sys.executable, "-m", "bridge.cli", "status", "--control", proc.control_endpoint or ""],
                              capture_output=True, text=True, timeout=60).stdout
        assert "AUDIT JOURNAL DISK FULL" in line and "trading HALTED (audit)" in line, line
        s.ticks(200)  # market data is still taken and stored
        assert s.refused == []
        pending = storage(proc)["audit_journal"]["pending_records"]
        assert pending > st["audit_journal"]["pending_records"]  # the denials' records wait too, in order

        filler.unlink()  # space returns
        until(lambda: not storage(proc)["holds"], "the hold is lifted")
        assert not storage(proc)["audit_journal"]["disk_full"]
        assert s.breakout()  # trading again
        s.close()
    finally:
        assert proc.stop() == 0, proc.tail()
    text = log_of(proc)
    assert "AUDIT JOURNAL DISK FULL" in text and "TRADING HALTED (audit)" in text
    assert "is writable again" in text and "trading hold lifted (audit)" in text
    records = assert_chain_whole(url, small_fs, key)
    assert len(AuditJournal.read(small_fs / "journal.jsonl")) == records
    denied = query(url, "select outcome from decisions where outcome like 'DENIED:%'")
    assert len(denied) == 2 and all("RISK_STATE_HALTED (audit:" in o for (o,) in denied)
    kinds = [k for (k,) in query(url, "select kind from audit_chain where subject_id = 'audit' order by seq")]
    assert kinds == ["trading_hold", "trading_hold_released"]
    assert_every_tick_once(url, s.sent)


def test_full_spool_disk_is_a_state_an_alert_and_loses_no_row(small_fs: Path, tmp_path: Path) -> None:
    """The database away and the spool's disk full: rows wait in memory, the state says disk_full (metric
    and status), nothing in the spool is half written; space, then the database, return: every row once."""
    db = tmp_path / "rec.sqlite"
    sqlite3.connect(db).execute("PRAGMA journal_mode = WAL").fetchall()
    url = f"sqlite:///{db}?timeout=0.05"
    lock = _SqliteLock(db)
    spool = small_fs / "storage.spool"
    config = Config(storage=StorageConfig(on_outage="reducing"))
    writer = StorageWriter(url, batch_rows=500, queue_batches=16, spool_path=spool, retry_initial_s=0.02,
                           retry_max_s=0.2, memory_rows=1_000_000)
    writer.start()
    server = SidecarServer(config, writer, master_for(config), make_strategy_factory(config))
    collector = SidecarCollector(server, writer)

    def gauge(name: str, **labels: str) -> float:
        for family in collector.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        raise AssertionError(f"no metric {name} {labels}")

    rows = sample_rows("ticks", 40_000)
    try:
        lock.take(readers_too=False)
        filler = fill(small_fs)
        written = 0
        while writer.stats.state != "disk_full":  # each batch that does not fit stays in memory
            for row in rows[written:written + 500]:
                writer.write("ticks", row)
            written += 500
            writer.flush()
            assert written < len(rows), "the spool never filled its disk"
            time.sleep(0.01)
        stats = writer.stats
        assert stats.rows_held > 0 and gauge("nt8bridge_storage_state", state="disk_full") == 1.0
        assert gauge("nt8bridge_storage_held_rows") == stats.rows_held
        server.storage_health.poll()
        assert server.switch.holds["storage"].state == "REDUCING"
        assert gauge("nt8bridge_trading_hold", source="storage") == 1.0
        good, bad = _scan(spool.read_bytes(), spool.stat().st_size)
        assert bad == [] and sum(r for _k, _s, _e, r in good) == stats.rows_spooled  # whole records only

        filler.unlink()
        until(lambda: writer.stats.state == "database_down", "the held rows reach the spool")
        assert writer.stats.rows_held == 0 and writer.stats.rows_spooled == written
        lock.release()
        writer.sync()
        assert writer.stats.state == "ok" and gauge("nt8bridge_storage_state", state="ok") == 1.0
        server.storage_health.poll()
        assert "storage" not in server.switch.holds
    finally:
        if lock._conn is not None:
            lock.release()
        writer.close()
    assert stored(url, "ticks") == expected(rows[:written])


def test_restart_journals_again_what_only_the_database_kept(tmp_path: Path) -> None:
    """A process that died while the journal's disk was full left records in the database only: the next
    start journals them again before anything new, so the journal and the database stay one chain."""
    from bridge.audit.trail import audit_paths, open_chain

    url = f"sqlite:///{tmp_path / 'rec.sqlite'}"
    config = load_config(write_config(tmp_path / "c.toml", audit={"dir": str(tmp_path / "audit"),
                                                                  "key_path": str(tmp_path / "key.pem")}))
    with StorageWriter(url) as writer:
        chain = open_chain(config, url, writer)
        recorded = []
        for i in range(12):
            r = chain.append("decision", f"D{i}", 1, {"i": i})
            recorded.append(r)
            writer.write("audit_chain", (r.seq, r.ts_us, r.kind, r.subject_id, r.session_id, r.payload_json(),
                                         r.prev_hash, r.hash))
        chain.close()
    journal = audit_paths(config, url).journal
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:8]))  # the last four never reached the journal
    (tmp_path / "audit" / "checkpoints.jsonl").unlink()
    with StorageWriter(url) as writer:
        chain = open_chain(config, url, writer)
        assert chain.head == (12, recorded[-1].hash)
        r = chain.append("decision", "D12", 1, {"i": 12})
        writer.write("audit_chain", (r.seq, r.ts_us, r.kind, r.subject_id, r.session_id, r.payload_json(),
                                     r.prev_hash, r.hash))
        chain.close()
    assert verify_journal(journal).records == 13
    assert verify_database(url).ok and verify_database(url).records == 13
