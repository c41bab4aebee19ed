"""The live event stream of a real sidecar (`nt8bridge serve` in its own process) read by EventFeed: rows and
snapshots during playbacks, a subscriber that never reads, a restart, the stream turned off, and the trading
metrics of the same sidecar."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zmq

from bridge.audit.recorder import ROW_FIELDS
from bridge.core.config import build_config, load_config, to_toml
from bridge.nt8.client import Nt8Client
from bridge.nt8.playback import TickStream, load_stream, run_playback
from bridge.protocol import messages as m
from bridge.protocol.messages import MarketPosition, OrderRole, Side
from bridge.transport.control import send_command
from bridge.transport.events import Event, EventFeed
from bridge.transport.sidecar import SidecarProcess, master_for
from tests.conftest import PLUMBING_CONFIG
from tests.integration.test_server import free_port, wait_until

CLI = [sys.executable, "-m", "bridge.cli"]
ES = m.InstrumentDecl("ES 06-18", 0.25, 50.0)
T0 = int(datetime(2018, 5, 8, 14, 30, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
SIGN = {"LONG": 1, "SHORT": -1, "FLAT": 0}


class Reader:
    """An EventFeed polled on a thread of its own; every event kept, in order."""

    def __init__(self, endpoint: str, **kw) -> None:
        self.feed = EventFeed(endpoint, **kw)
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            got = self.feed.poll(50)
            with self._lock:
                self.events.extend(got)

    def seen(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def snapshot(self, after_ns: int = 0, where=lambda state: True, what: str = "a snapshot") -> Event:
        """The first snapshot published after ``after_ns`` (the sidecar's wall clock) that ``where`` accepts."""
        found: list[Event] = []

        def arrived() -> bool:
            found[:] = [e for e in self.seen() if e.topic == "snapshot" and e.ts_ns > after_ns
                        and where(e.body["state"])][:1]
            return bool(found)
        wait_until(arrived, what)
        return found[0]

    def rows(self, table: str, session_id: int | None = None, before_seq: int | None = None) -> list[dict]:
        return [e.body["row"] for e in self.seen() if e.topic == "row." + table
                and (session_id is None or e.body["row"]["session_id"] == session_id)
                and (before_seq is None or e.seq < before_seq)]

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)
        self.feed.close()


def db_rows(db: Path, table: str, where: str = "", args: tuple = ()) -> list[dict]:
    names = ROW_FIELDS[table]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        got = conn.execute(f"select {', '.join(names)} from {table} {where}", args).fetchall()
    return [dict(zip(names, row)) for row in got]


@pytest.fixture(scope="module")
def es(shared_data) -> TickStream:
    return load_stream([shared_data / "nt8" / "ES 06-18.Last.txt.gz"])


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_playback_reaches_a_subscriber_as_rows_and_snapshots_that_match_storage(es, tmp_path):
    config = load_config(PLUMBING_CONFIG)
    master = master_for(config)
    db = tmp_path / "events.sqlite"
    checked: dict[str, object] = {}
    with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG) as proc:
        assert proc.events_endpoint
        reader = Reader(proc.events_endpoint)
        idle = reader.snapshot(what="a snapshot with no session connected").body["state"]
        assert idle["sessions"] == [] and idle["positions"] == [] and idle["orders"] == []
        sidecar = idle["sidecar"]
        assert sidecar["pid"] == proc.proc.pid and sidecar["trading_state"] == "ACTIVE"
        assert (sidecar["endpoint"], sidecar["control_endpoint"], sidecar["events_endpoint"]) == (
            proc.endpoint, proc.control_endpoint, proc.events_endpoint)
        status = send_command(proc.control_endpoint, "status")
        assert status["events_endpoint"] == proc.events_endpoint

        full = run_playback(es, proc.endpoint, config, master, window=64, instance_id="events-full")
        assert full.brackets > 0 and full.fills > 0
        # when the first position opened: a second playback stops there, its bracket still open
        opened = [r for r in reader.rows("positions", full.session_id) if r["quantity"]]
        assert opened, "the playback never held a position"
        prefix = es.before(opened[0]["ts_event_ns"] + 1)

        def at_the_end(n: int) -> None:
            if n != len(prefix):
                return
            # the playback waits here with every message acknowledged: a snapshot published from now on
            # shows all of it, and the one after it follows the ticks flushed meanwhile
            first = reader.snapshot(time.time_ns(), what="a snapshot after the playback paused")
            snap = reader.snapshot(first.ts_ns, what="the next snapshot")
            state = snap.body["state"]
            session = [s for s in state["sessions"] if s["instance_id"] == "events-open"]
            assert len(session) == 1, state["sessions"]
            sid = session[0]["session_id"]
            instrument = session[0]["instruments"][0]
            ticks = [t for e in reader.seen() if e.topic == "ticks" and e.seq < snap.seq for t in e.body["ticks"]
                     if t["session_id"] == sid and t["instrument"] == "ES 06-18"]
            assert instrument["instrument"] == "ES 06-18" and instrument["feed"] == "ok"
            assert instrument["last_price"] == ticks[-1]["price"]
            rows = [p for p in state["positions"] if p["session_id"] == sid]
            # what storage has once it has every fill the stream had published before the snapshot
            fills = len(reader.rows("executions", sid, before_seq=snap.seq))
            wait_until(lambda: len(db_rows(db, "executions", "where session_id = ?", (sid,))) == fills,
                       "storage has committed the fills")
            ledger = sum((1 if r["side"] == "BUY" else -1) * r["quantity"]
                         for r in db_rows(db, "executions", "where session_id = ?", (sid,)))
            reported = db_rows(db, "positions", "where session_id = ? order by seq", (sid,))[-1]
            checked.update(held=sum(p["quantity"] for p in rows), ledger=ledger,
                           nt8=SIGN[reported["market_position"]] * reported["quantity"], rows=rows,
                           orders=[o for o in state["orders"] if o["session_id"] == sid], last=instrument["last_price"])

        opening = run_playback(prefix, proc.endpoint, config, master, window=64, instance_id="events-open",
                               progress=at_the_end)
        ended = reader.snapshot(time.time_ns(), lambda s: not s["sessions"], "a snapshot after both sessions ended")
        assert ended.body["state"]["positions"] == []
        # the sidecar's own tick-to-BRACKET timing counted each bracket it sent on market data
        brackets = len(db_rows(db, "orders", "where session_id in (?, ?)", (full.session_id, opening.session_id)))
        latency = ended.body["state"]["latency"]
        assert latency["since_start"]["tick_to_bracket"]["count"] == brackets > 0
        # the live figures are the last minute's: this run's brackets, unless it took longer than that
        assert 0 < latency["tick_to_bracket"]["count"] <= brackets
        assert 0 < latency["tick_to_bracket"]["p50_us"] <= latency["tick_to_bracket"]["p99_us"]
        assert latency["stages"]["risk"]["count"] >= latency["tick_to_bracket"]["count"]
    reader.stop()

    assert checked["held"] == checked["ledger"] == checked["nt8"] == opening.final_position["ES 06-18"] != 0
    (row,) = checked["rows"]
    assert row["strategy"] and row["quantity"] == checked["held"] and row["last_price"] == checked["last"]
    assert row["unrealized"] == pytest.approx((row["last_price"] - row["avg_price"]) * row["quantity"] * 50.0)
    assert [o["state"] for o in checked["orders"]] == ["OPEN"]
    assert reader.feed.lost == 0 and reader.feed.malformed == 0 and reader.feed.restarts == 0
    # every row the sessions stored went out on the stream, as stored
    sessions = (full.session_id, opening.session_id)
    for table, order in (("decisions", "decision_id"), ("orders", "client_order_id"),
                         ("order_updates", "session_id, seq"), ("executions", "session_id, seq"),
                         ("positions", "session_id, seq")):
        stored = db_rows(db, table, f"where session_id in (?, ?) order by {order}", sessions)
        streamed = sorted((r for s in sessions for r in reader.rows(table, s)),
                          key=lambda r: tuple(r[k.strip()] for k in order.split(",")))
        assert stored and streamed == stored, table
    ends = [e.body for e in reader.seen() if e.topic == "update.sessions"]
    assert sorted(e["key"] for e in ends) == sorted(sessions)
    assert {e["values"]["end_reason"] for e in ends} == {"BYE"}


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_subscriber_that_never_reads_does_not_hold_the_sidecar_back(es, tmp_path):
    # every trade carries a crossed quote: each one is a stored quality event, so the stream carries one
    # message per trade (75,000) while the playback runs, far beyond what libzmq (10,000 per subscriber) and
    # the kernel's socket buffers hold for a subscriber that does not read
    crossed = dataclasses.replace(es, bid=es.price + 0.25, ask=es.price - 0.25)
    config = load_config(PLUMBING_CONFIG)
    db = tmp_path / "stuck.sqlite"
    ctx = zmq.Context.instance()
    with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG) as proc:
        stuck = ctx.socket(zmq.SUB)
        stuck.setsockopt(zmq.RCVHWM, 1)
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.LINGER, 0)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(proc.events_endpoint)
        assert stuck.poll(30_000), "the stuck subscriber never heard the sidecar"
        stuck.recv_multipart()  # its last read
        behind = EventFeed(proc.events_endpoint, hwm=10)
        got: list[Event] = []
        wait_until(lambda: got.extend(behind.poll(50)) or got, "the lagging feed hears the sidecar")
        reader = Reader(proc.events_endpoint)
        reader.snapshot(what="a first snapshot")

        result = run_playback(crossed, proc.endpoint, config, master_for(config), window=64,
                              instance_id="events-stuck")
        assert result.ticks_read == len(crossed) and result.ticks_rejected == 0  # served to the end
        done = reader.snapshot(time.time_ns(), lambda s: not s["sessions"], "a snapshot after the session ended")
        # the lagging feed reads at last: what its queue kept, then what came after; the rest it counts
        def caught_up() -> bool:
            got.extend(behind.poll(50))
            return any(e.topic == "snapshot" and e.ts_ns >= done.ts_ns for e in got)
        wait_until(caught_up, "the lagging feed reads a snapshot published after the playback")
        status = send_command(proc.control_endpoint, "status")
        assert status["sessions_ended"] == {"BYE": 1}
    reader.stop()
    stuck.close()
    assert behind.lost > 0
    assert behind.received + behind.lost == got[-1].seq - got[0].seq + 1  # every seq is one or the other
    behind.close()
    assert reader.feed.lost == 0  # a subscriber that keeps up loses nothing meanwhile
    flagged = reader.rows("quality_events", result.session_id)
    assert len(flagged) == len(crossed)  # every trade, flagged and kept
    assert len(flagged) == len(db_rows(db, "quality_events", "where session_id = ?", (result.session_id,)))


def test_a_restarted_sidecar_is_seen_as_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'restart.sqlite'}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    feed = Reader(endpoint)  # before the sidecar: a SUB connects whenever the PUB comes
    pids = []
    try:
        for run in range(2):
            with SidecarProcess(url, extra_args=("--events-bind", endpoint)) as proc:
                assert proc.events_endpoint == endpoint
                pids.append(proc.proc.pid)
                seen = feed.snapshot(where=lambda s: s["sidecar"]["pid"] == proc.proc.pid,
                                     what=f"a snapshot of sidecar run {run + 1}")
                assert seen.body["state"]["sidecar"]["events_endpoint"] == endpoint
    finally:
        feed.stop()
    assert feed.feed.restarts == 1
    boots = [e.boot for e in feed.seen()]
    assert len(set(boots)) == 2 and sum(a != b for a, b in zip(boots, boots[1:])) == 1  # one boot, then the other


def test_an_event_stream_beyond_loopback_is_refused(tmp_path):
    out = subprocess.run([*CLI, "serve", "--bind", "tcp://127.0.0.1:*", "--control-bind", "",
                          "--events-bind", "tcp://0.0.0.0:*", "--db", f"sqlite:///{tmp_path / 'x.sqlite'}",
                          "--no-metrics"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "server.events_bind tcp://0.0.0.0:* is reachable from other machines" in out.stderr, out.stderr


def position(signed: int, avg: float, ts: int) -> m.Position:
    mp = MarketPosition.FLAT if signed == 0 else MarketPosition.LONG if signed > 0 else MarketPosition.SHORT
    return m.Position(0, int(mp), abs(signed), avg, ts)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_with_the_stream_off_the_trading_metrics_show_a_position_and_the_halt_after_kill(tmp_path):
    ports = {"bind": free_port(), "control": free_port(), "metrics": free_port()}
    values = {"server": {"bind": f"tcp://127.0.0.1:{ports['bind']}",
                         "control_bind": f"tcp://127.0.0.1:{ports['control']}", "events_bind": ""},
              "storage": {"url": f"sqlite:///{tmp_path / 'desk.sqlite'}"},
              "metrics": {"enabled": True, "port": ports["metrics"]}}
    config = tmp_path / "config.toml"
    config.write_text(to_toml(build_config(values, env={})), encoding="utf-8")
    ready = tmp_path / "ready"
    with open(tmp_path / "sidecar.log", "wb") as log:
        sidecar = subprocess.Popen([*CLI, "--config", str(config), "serve", "--ready-file", str(ready)], stdout=log,
                                   stderr=subprocess.STDOUT)
    control = f"tcp://127.0.0.1:{ports['control']}"
    try:
        wait_until(lambda: ready.exists() or sidecar.poll() is not None, "the sidecar listens")
        assert sidecar.poll() is None, (tmp_path / "sidecar.log").read_text()
        assert not Path(str(ready) + ".events").exists()  # events_bind = "": no stream
        assert send_command(control, "status")["events_endpoint"] is None
        with Nt8Client(ready.read_text(encoding="utf-8"), instance_id="desk", account="Sim101",
                       instruments=[ES]) as client:
            client.connect()
            client.step(m.Tick(0, 0, 2670.0, 1, float("nan"), float("nan"), T0, T0))
            # a trade on the account that no bracket of the sidecar accounts for: still contracts held
            client.step(m.Execution("manual-1", "", int(OrderRole.OTHER), "nt-1", 0, int(Side.BUY), 2670.0, 3, 0.0,
                                    T0 + 1))
            client.step(position(3, 2670.0, T0 + 1))
            held = ("nt8bridge_position_contracts", (("account", "Sim101"), ("instrument", "ES 06-18"),
                                                     ("strategy", "")))
            wait_until(lambda: scrape(ports["metrics"]).get(held) == 3, "the metrics show the position")
            metrics = scrape(ports["metrics"])
            assert metrics[("nt8bridge_trading_halted", ())] == 0
            assert metrics[("nt8bridge_reconciliation_breaks_total", (("kind", "EXTRA"),))] == 1
            assert not [k for k in metrics if k[0].startswith("nt8bridge_events_")]  # no stream, no stream counts
            out = subprocess.run([*CLI, "kill", "--control", control, "--reason", "metrics test", "--operator",
                                  "alice"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            metrics = scrape(ports["metrics"])
            assert metrics[("nt8bridge_trading_halted", ())] == 1
            assert metrics[("nt8bridge_kill_switch_activations_total", ())] == 1
            assert metrics[held] == 3  # a kill asks NT8 to flatten; the position is what NT8 reports next
    finally:
        if sidecar.poll() is None:
            try:
                send_command(control, "shutdown", operator="test", reason="done")
                sidecar.wait(60)
            except Exception:  # noqa: BLE001 - the kill below is the fallback
                sidecar.kill()
                sidecar.wait()
