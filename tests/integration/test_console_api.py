"""The operator console's API against the real thing: storage filled by a real sidecar playing back real
ES ticks, the live feed from a real sidecar's event stream (and a real EventPublisher where a test must
control exactly what is sent), the kill switch through a real sidecar's control channel, and the console
itself as the `nt8bridge console` process on uvicorn."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the console needs the console extra: pip install nt8bridge[console]")

import zmq  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from bridge import __version__  # noqa: E402
from bridge.console import auth, csrf  # noqa: E402
from bridge.console.app import create_app  # noqa: E402
from bridge.console.live import LiveFeed, LiveState, Outgoing, Subscriber  # noqa: E402
from bridge.core.config import build_config, load_config  # noqa: E402
from bridge.nt8.client import Nt8Client  # noqa: E402
from bridge.protocol import messages as m  # noqa: E402
from bridge.transport.events import Event, EventPublisher  # noqa: E402
from bridge.transport.sidecar import SidecarProcess, child_creationflags, interrupt_signal  # noqa: E402
from tests.conftest import PLUMBING_CONFIG  # noqa: E402
from tests.integration.console_support import CLI, clean_env, free_port  # noqa: E402
from tests.integration.test_server import wait_until  # noqa: E402

HOST = "http://127.0.0.1:8080"  # the TestClient's address: a loopback console answers only requests addressed so
WS_HEADERS = {"host": "127.0.0.1:8080"}  # the TestClient's WebSocket ignores base_url


def rows(db: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def post_headers(client: TestClient) -> dict[str, str]:
    """What the page sends with a POST: the CSRF cookie's token in the header, and its own origin."""
    client.get("/")
    return {"x-csrf-token": client.cookies[csrf.COOKIE], "origin": HOST}


class Reader:
    """A WebSocket read in a thread, so a test waits for a message with a deadline instead of forever."""

    def __init__(self, ws) -> None:
        self.messages: queue.Queue = queue.Queue()
        self._ws = ws
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                self.messages.put(self._ws.receive_json())
        except Exception as exc:  # noqa: BLE001 - the socket closed: the test sees it as a message
            self.messages.put({"type": "closed", "error": repr(exc)})

    def until(self, predicate, what: str, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s  # a bound on waiting, not a speed requirement
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"never received: {what}"
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                raise AssertionError(f"never received: {what}") from None
            assert msg["type"] != "closed", msg
            if predicate(msg):
                return msg


# --------------------------------------------------------------------------- storage filled by a real sidecar


@pytest.fixture(scope="module")
def recorded(shared_data, tmp_path_factory):
    """A playback of the real ES 2018 ticks through a real sidecar (`nt8bridge playback`), stored in SQLite."""
    folder = tmp_path_factory.mktemp("console-recorded")
    db = folder / "pb.sqlite"
    out = subprocess.run([*CLI, "--config", str(PLUMBING_CONFIG), "playback", "--json", "--quiet", "--data",
                          str(shared_data / "nt8" / "ES 06-18.Last.txt.gz"), "--db", f"sqlite:///{db}"],
                         capture_output=True, text=True, timeout=900, env=clean_env(folder))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["fills"] > 0 and summary["brackets"] > 0
    return db, summary


def recorded_config(db: Path):
    """The sidecar's configuration as the console reads it: the same audit signing key (the sidecar of
    ``recorded`` ran without a user config folder, so its key is in the stand-in folder)."""
    config = load_config(PLUMBING_CONFIG, env={})
    key = db.parent / "no-user-config" / "nt8bridge" / "audit-ed25519.pem"
    return dataclasses.replace(config, audit=dataclasses.replace(config.audit, key_path=str(key)))


def recorded_app(db: Path, **kwargs):
    return create_app(recorded_config(db), db_url=f"sqlite:///{db}", control_endpoint="tcp://127.0.0.1:9",
                      events_endpoint=f"tcp://127.0.0.1:{free_port()}", **kwargs)


@pytest.mark.shared_data
@pytest.mark.slow
def test_stored_views_are_what_the_sidecar_stored(recorded):
    db, summary = recorded
    (sid,) = summary["session_ids"]
    with TestClient(recorded_app(db), base_url=HOST) as c:
        # stored positions: the latest positions row of each session and instrument, as NT8 reported it
        expected = rows(db, """select session_id, instrument, market_position, quantity, avg_price from positions
                               where id in (select max(id) from positions group by session_id, instrument)
                               order by session_id, instrument""")
        assert expected, "the playback stored no positions"
        got = c.get("/api/v1/positions").json()
        assert got["source"] == "stored"
        assert [(p["session_id"], p["instrument"], p["market_position"], p["quantity"], p["avg_price"])
                for p in got["positions"]] == expected
        final = summary["final_position"]["ES 06-18"]
        assert [p["quantity_signed"] for p in got["positions"]] == [final]

        # P&L from the stored fills is what the playback's own broker booked, to the cent
        pnl = c.get("/api/v1/pnl").json()
        assert pnl["total"]["realized"] == pytest.approx(sum(summary["realized_pnl"].values()), abs=0.005)
        assert pnl["total"]["commission"] == pytest.approx(summary["commission"], abs=0.005)
        assert pnl["total"]["net"] == pytest.approx(summary["net_pnl"], abs=0.005)
        assert got["positions"][0]["realized"] == pytest.approx(summary["realized_pnl"]["ES 06-18"], abs=0.005)
        equity = c.get("/api/v1/equity").json()
        assert equity["source"] == "executions"  # the Python NT8 client reports no account values
        (series,) = equity["series"].values()
        assert len(series) == summary["fills"] and series[-1][1] == pytest.approx(summary["net_pnl"], abs=0.005)

        # the blotter: every stored fill, each with its order and the decision that sent it
        blotter = c.get("/api/v1/blotter").json()["blotter"]
        stored = rows(db, """select e.execution_id, o.decision_id from executions e
                             left join orders o on o.client_order_id = e.client_order_id""")
        assert sorted((f["execution_id"], f["decision_id"]) for f in blotter) == sorted(stored)
        assert len(blotter) == summary["fills"]
        assert all(f["decision_id"] and f["outcome"] == "EMITTED" for f in blotter if f["role"] == "ENTRY")

        # orders, each with the last state NT8 reported for its entry
        orders = c.get("/api/v1/orders").json()["orders"]
        assert len(orders) == summary["brackets"] == rows(db, "select count(*) from orders")[0][0]
        last_entry = dict(rows(db, """select client_order_id, state from order_updates where id in
                                      (select max(id) from order_updates where role = 'ENTRY' group by client_order_id)"""))
        assert {o["client_order_id"]: o["state"] for o in orders} == last_entry
        assert c.get("/api/v1/orders?limit=2").json()["orders"] == orders[:2]

        # one decision, with everything that went into it
        entry = next(f for f in blotter if f["role"] == "ENTRY")
        d = c.get(f"/api/v1/decisions/{entry['decision_id']}").json()
        [(inputs,)] = rows(db, "select inputs from decisions where decision_id = ?", entry["decision_id"])
        inputs = json.loads(inputs)
        assert d["outcome"] == "EMITTED" and d["session_id"] == sid
        assert d["probability"] == inputs["signal"]["win_probability"]
        assert d["features"] == inputs["features"] and d["sizing"] == inputs["sizing"]
        assert [c_["check"] for c_ in d["risk_checks"]] == [c_["check"] for c_ in inputs["risk"]]
        assert d["risk_checks"] and all(c_["passed"] for c_ in d["risk_checks"])
        assert entry["execution_id"] in {e["execution_id"] for e in d["executions"]}
        assert d["audit"]["inputs_match"] is True  # the audit record's SHA-256 vouches for the stored inputs

        sessions = c.get("/api/v1/sessions").json()["sessions"]
        assert [(s["session_id"], s["end_reason"], s["executions"]) for s in sessions] == [(sid, "BYE", summary["fills"])]

        # the audit trail: verified in the background up to the stored head, and its last signed checkpoint
        head = rows(db, "select max(seq) from audit_chain")[0][0]
        wait_until(lambda: c.get("/api/v1/audit").json()["verification"] is not None, "the audit chain verified")
        audit = c.get("/api/v1/audit").json()
        assert audit["verification"]["ok"] is True and audit["verification"]["up_to_seq"] == head, audit
        assert audit["verification"]["signatures_checked"] is True and audit["verification"]["checkpoints_verified"] >= 1
        assert audit["head"]["seq"] == head and audit["last_checkpoint"]["seq"] <= head

        status = c.get("/api/v1/status").json()
        assert status["console_version"] == __version__ and status["storage"]["readable"] is True
        assert status["sidecar_up"] is False  # nothing publishes on this console's event endpoint
        risk = c.get("/api/v1/risk").json()
        assert risk["live"] is None and risk["stored"]["denials_by_reason"] == {}
        assert c.get("/api/v1/models").json()["models"] == []


@pytest.mark.shared_data
@pytest.mark.slow
def test_history_window_is_a_window_of_sessions(recorded):
    db, _summary = recorded
    app = recorded_app(db, start_background=False)
    with TestClient(app, base_url=HOST) as c:
        assert c.get("/api/v1/blotter").json()["blotter"]  # the session started minutes ago: in the window
        # the same storage seen a week later: the session is out of a one-day window, and so are its rows
        app.state.console.history._clock = lambda: time.time_ns() + 7 * 86_400 * 10**9
        for path, key in (("blotter", "blotter"), ("positions", "positions"), ("orders", "orders"),
                          ("sessions", "sessions"), ("pnl", "pnl")):
            assert c.get(f"/api/v1/{path}").json()[key] == [], path
        # a decision is found by its id whatever its age (a link must keep working)
        did = rows(db, "select decision_id from decisions limit 1")[0][0]
        assert c.get(f"/api/v1/decisions/{did}").status_code == 200


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_tampered_audit_chain_is_reported_broken_at_its_first_bad_record(recorded, tmp_path):
    db, _summary = recorded
    copy = tmp_path / "tampered.sqlite"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as conn:  # what someone with the file and its owner's rights could do
        conn.execute("drop trigger audit_chain_no_update")
        conn.execute("update audit_chain set payload = replace(payload, 'EMITTED', 'NO_TRADE') where seq = "
                     "(select min(seq) from audit_chain where kind = 'decision')")
        bad = conn.execute("select min(seq) from audit_chain where kind = 'decision'").fetchone()[0]
    app = create_app(recorded_config(db), db_url=f"sqlite:///{copy}", control_endpoint="tcp://127.0.0.1:9",
                     events_endpoint=f"tcp://127.0.0.1:{free_port()}")
    with TestClient(app, base_url=HOST) as c:
        wait_until(lambda: c.get("/api/v1/audit").json()["verification"] is not None, "the audit chain verified")
        v = c.get("/api/v1/audit").json()["verification"]
        assert (v["ok"], v["first_bad_seq"], v["up_to_seq"]) == (False, bad, bad - 1)
        assert "hash does not match" in v["reason"]


@pytest.mark.shared_data
@pytest.mark.slow
def test_bad_requests_get_a_4xx_with_a_sentence_never_a_traceback(recorded):
    db, _summary = recorded
    app = recorded_app(db, start_background=False)
    with TestClient(app, base_url=HOST, raise_server_exceptions=False) as c:
        h = post_headers(c)
        kill = {"operator": "carol", "reason": "test", "confirm": "KILL"}
        cases = [
            (c.post("/api/v1/kill", content=b"{not json", headers={**h, "content-type": "application/json"}), 400,
             "not valid JSON"),
            (c.post("/api/v1/kill", json=[1, 2], headers=h), 422, "body"),
            (c.post("/api/v1/kill", json={**kill, "confirm": "kill"}, headers=h), 422, "type KILL"),
            (c.post("/api/v1/enable", json={**kill, "confirm": "KILL"}, headers=h), 422, "type ENABLE"),
            (c.post("/api/v1/kill", json={**kill, "operator": ""}, headers=h), 422, "name the operator"),
            (c.post("/api/v1/kill", json={**kill, "operator": "a\nb"}, headers=h), 422, "printable"),
            (c.post("/api/v1/kill", json={"operator": "carol", "confirm": "KILL"}, headers=h), 422, "reason"),
            (c.post("/api/v1/kill", json={**kill, "reason": 5}, headers=h), 422, "reason"),
            (c.post("/api/v1/kill", json={**kill, "extra": 1}, headers=h), 422, "extra"),
            (c.post("/api/v1/kill", json=kill), 403, "CSRF"),
            (c.post("/api/v1/kill", json=kill, headers={**h, "origin": "https://evil.example"}), 403, "evil.example"),
            (c.post("/api/v1/limits", json={"operator": "carol", "reason": "r", "scope": "*", "limit": "x",
                                            "value": [1]}, headers=h), 422, "value"),
            (c.get("/api/v1/decisions/S1-D999999"), 404, "no decision S1-D999999"),
            (c.get("/api/v1/decisions/has%20space"), 400, "not a decision id"),
            (c.get("/api/v1/positions?source=elsewhere"), 422, "source"),
            (c.get("/api/v1/blotter?limit=0"), 422, "limit"),
            (c.get("/api/v1/blotter?limit=many"), 422, "limit"),
            (c.get("/api/v1/positions?source=live"), 503, "not reachable"),
            (c.get("/api/v1/nothing-here"), 404, "no such page"),
            (c.get("/api/v1/kill"), 405, "GET is not allowed"),
            (c.get("/api/v1/status", headers={"host": "rebound.example"}), 421, "loopback"),
            # past every check: the control endpoint of this console has nobody behind it
            (c.post("/api/v1/kill", json=kill, headers=h), 503, "no answer"),
        ]
        for response, status, words in cases:
            assert response.status_code == status, (response.request.url, response.text)
            body = response.json()
            assert set(body) == {"error"} and words in body["error"], (response.request.url, body)
        counted = c.get("/api/v1/status").json()["bad_requests"]
        assert counted["422"] >= 9 and counted["403"] == 2 and counted["404"] == 2

        # a failure of the console itself: logged with its traceback, answered with a sentence
        def broken(*_a, **_k):
            raise RuntimeError("a bug")
        app.state.console.history.blotter = broken
        r = c.get("/api/v1/blotter")
        assert r.status_code == 500 and r.json() == {"error": "internal error, see the console log"}
        assert "Traceback" not in r.text and "a bug" not in r.text


# --------------------------------------------------------------------------- a real sidecar behind the console


@pytest.mark.slow
def test_kill_enable_and_limits_reach_the_sidecar_and_the_audit_trail_names_the_operator(tmp_path):
    db = tmp_path / "kill.sqlite"
    users = tmp_path / "users.toml"
    auth.write_user(users, "erin", "erins-password", iterations=1000)
    # the NT8 session of this test sends nothing after its HELLO: it must not be ended as lost meanwhile
    config_file = tmp_path / "sidecar.toml"
    config_file.write_text(PLUMBING_CONFIG.read_text(encoding="utf-8") + "\n[server]\nheartbeat_timeout_ms = 600000\n",
                           encoding="utf-8")
    config = load_config(config_file, env={})
    with SidecarProcess(f"sqlite:///{db}", config_file) as proc:
        assert proc.events_endpoint, "the sidecar publishes no event stream"
        nt8 = Nt8Client(proc.endpoint, instance_id="console-kill", account="Sim101", lockstep=False,
                        instruments=[m.InstrumentDecl("ES 06-18", 0.25, 50.0)])
        welcome = nt8.connect()
        app = create_app(config, db_url=f"sqlite:///{db}", control_endpoint=proc.control_endpoint,
                         events_endpoint=proc.events_endpoint)
        with TestClient(app, base_url=HOST) as c:
            wait_until(lambda: c.get("/api/v1/status").json()["sidecar_up"], "the console hears the sidecar")
            status = c.get("/api/v1/status").json()
            assert status["sidecar"]["pid"] == proc.proc.pid and status["trading_state"] == "ACTIVE"
            live = c.get("/api/v1/sessions?source=live").json()["sessions"]
            assert [s["session_id"] for s in live] == [welcome.session_id]
            h = post_headers(c)

            r = c.post("/api/v1/kill", json={"operator": "carol", "reason": "console test", "confirm": "KILL"},
                       headers=h)
            assert r.status_code == 200, r.text
            assert (r.json()["state"], r.json()["sessions_flattened"], r.json()["operator"]) == ("HALTED", 1, "carol")
            flatten = []
            wait_until(lambda: flatten.extend(x for x in nt8.drain(50) if isinstance(x, m.Flatten)) or flatten,
                       "NT8 told to flatten")
            wait_until(lambda: c.get("/api/v1/status").json()["trading_state"] == "HALTED", "the snapshot says HALTED")
            assert c.get("/api/v1/status").json()["sidecar"]["halted_by"] == "carol"

            r = c.post("/api/v1/limits", json={"operator": "carol", "reason": "smaller orders today", "scope": "*",
                                               "limit": "max_order_quantity", "value": 2}, headers=h)
            assert r.status_code == 200 and r.json()["applied"] == 1, r.text
            r = c.post("/api/v1/limits", json={"operator": "carol", "reason": "typo", "scope": "*",
                                               "limit": "no_such_limit", "value": 2}, headers=h)
            assert r.status_code == 409 and r.json()["error"].startswith("the sidecar refused"), r.text

            r = c.post("/api/v1/enable", json={"operator": "dave", "reason": "checked", "confirm": "ENABLE"},
                       headers=h)
            assert r.status_code == 200 and r.json()["state"] == "ACTIVE", r.text

        # a console with users: the logged-in user is the operator, and may not claim to be another
        with_users = build_config({"console": {"users_file": str(users)}}, env={})
        app = create_app(with_users, db_url=f"sqlite:///{db}", control_endpoint=proc.control_endpoint,
                         events_endpoint=proc.events_endpoint)
        with TestClient(app, base_url=HOST) as c:
            h = post_headers(c)
            assert c.post("/api/v1/login", json={"user": "erin", "password": "erins-password"},
                          headers=h).status_code == 200
            r = c.post("/api/v1/kill", json={"operator": "carol", "reason": "as someone else", "confirm": "KILL"},
                       headers=h)
            assert r.status_code == 403 and "logged in as erin" in r.json()["error"]
            r = c.post("/api/v1/kill", json={"reason": "second kill", "confirm": "KILL"}, headers=h)
            assert r.status_code == 200 and r.json()["operator"] == "erin", r.text
            r = c.post("/api/v1/enable", json={"reason": "done", "confirm": "ENABLE"}, headers=h)
            assert r.status_code == 200 and r.json()["state"] == "ACTIVE"
        nt8.close()

    # the sidecar wrote the audit records, naming each operator (its storage is flushed: it has stopped)
    audits = rows(db, "select kind, subject_id, payload from audit_chain where kind in ('kill', 'enable', "
                      "'limit_change') order by seq")
    assert [(k, s) for k, s, _ in audits] == [("kill", "carol"), ("limit_change", "carol"), ("enable", "dave"),
                                             ("kill", "erin"), ("enable", "erin")]
    kill = json.loads(audits[0][2])
    assert (kill["operator"], kill["reason"], kill["sessions_flattened"]) == ("carol", "console test", 1)
    change = json.loads(audits[1][2])
    assert (change["scope"], change["field"], change["value"], change["reason"]) == \
        ("*", "max_order_quantity", 2, "smaller orders today")
    # and the console shows them from storage
    with TestClient(create_app(config, db_url=f"sqlite:///{db}", control_endpoint="tcp://127.0.0.1:9",
                               events_endpoint=f"tcp://127.0.0.1:{free_port()}", start_background=False),
                    base_url=HOST) as c:
        actions = c.get("/api/v1/risk").json()["stored"]["actions"]
        assert [(a["kind"], a["subject_id"]) for a in actions if a["kind"] in ("kill", "enable", "limit_change")] == \
            [("enable", "erin"), ("kill", "erin"), ("enable", "dave"), ("limit_change", "carol"), ("kill", "carol")]


@pytest.mark.slow
def test_console_without_a_sidecar_says_so_and_picks_it_up_when_it_starts(tmp_path):
    db = tmp_path / "later.sqlite"
    events = f"tcp://127.0.0.1:{free_port()}"
    config = load_config(PLUMBING_CONFIG, env={})
    app = create_app(config, db_url=f"sqlite:///{db}", control_endpoint="tcp://127.0.0.1:9", events_endpoint=events)
    with TestClient(app, base_url=HOST) as c:
        status = c.get("/api/v1/status").json()
        assert status["sidecar_up"] is False and status["sidecar"] is None
        assert status["events_endpoint"] == events
        assert status["storage"]["readable"] is False and "no recordings yet" in status["storage"]["error"]
        assert c.get("/api/v1/latency").json()["live"] is None
        with c.websocket_connect("/api/v1/stream", headers=WS_HEADERS) as ws:
            reader = Reader(ws)
            first = reader.until(lambda msg: True, "the full state")
            assert first["type"] == "state" and first["status"]["sidecar_up"] is False and first["snapshot"] is None

            with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG, extra_args=("--events-bind", events)) as proc:
                wait_until(lambda: c.get("/api/v1/status").json()["sidecar_up"], "the console picks the sidecar up")
                status = c.get("/api/v1/status").json()
                assert status["sidecar"]["pid"] == proc.proc.pid and status["storage"]["readable"] is True
                # the page is told at once, then gets the sidecar's snapshots
                reader.until(lambda msg: msg["type"] == "status" and msg["status"]["sidecar_up"], "sidecar up")
                snap = reader.until(lambda msg: msg["type"] == "snapshot", "a snapshot")
                assert snap["state"]["sidecar"]["pid"] == proc.proc.pid and snap["ts_ns"] > 0
                assert c.get("/api/v1/positions?source=live").json() == {"source": "live", "positions": []}
                assert c.get("/api/v1/latency").json()["live"] is not None
            # the sidecar stopped: said, and the console keeps trying (ZeroMQ reconnects by itself)
            reader.until(lambda msg: msg["type"] == "status" and not msg["status"]["sidecar_up"], "sidecar down")
            assert c.get("/api/v1/status").json()["sidecar_up"] is False
            assert c.get("/api/v1/positions?source=live").status_code == 503
            # what it stored is there: its start (the configuration) and its stop are audit records
            assert [r["kind"] for r in c.get("/api/v1/audit").json()["recent"]][:1] == ["shutdown"]
            with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG, extra_args=("--events-bind", events)) as again:
                reader.until(lambda msg: msg["type"] == "snapshot" and msg["state"]["sidecar"]["pid"] == again.proc.pid,
                             "the restarted sidecar's snapshot")
                assert c.get("/api/v1/status").json()["events"]["sidecar_restarts"] >= 1


def test_a_slow_client_gets_the_latest_snapshot_and_a_bounded_backlog():
    """A browser that reads nothing for a while costs one snapshot, the last tick of each instrument and
    at most max_rows rows; what it missed is counted and it is told to read storage again."""
    pub = EventPublisher(zmq.Context.instance(), "tcp://127.0.0.1:*")
    state = LiveState(pub.endpoint)
    feed = LiveFeed(state)
    feed.start()
    try:
        slow = Subscriber(max_rows=100)
        state.subscribe(slow)
        # a SUB socket joins a moment after connecting: publish until the feed hears something
        wait_until(lambda: pub.publish("snapshot", {"state": {"n": -1}}) or state.snapshot is not None,
                   "the feed hears the publisher")
        slow.take()
        for i in range(300):
            pub.publish("snapshot", {"state": {"n": i}})
            pub.row("executions", (1, i, f"x-{i}", "C1", "ENTRY", None, "ES 06-18", "BUY", 2700.0 + i, 1, 2.09, i))
            pub.row("ticks", (1, i, "ES 06-18", 0, 2700.0 + i, 1, None, None, i, i, i))
            pub.row("ticks", (1, i, "NQ 06-18", 0, 7000.0 + i, 1, None, None, i, i, i))
            if i % 50 == 49:
                pub.flush_ticks()
        wait_until(lambda: state.snapshot == {"n": 299} and len(state.recent_rows("executions")) == state.rows_kept
                   and state.recent_rows("executions")[-1]["execution_id"] == "x-299", "every event read")
        assert state.lost == 0
        messages = slow.take()
        snapshots = [msg for msg in messages if msg["type"] == "snapshot"]
        assert [s["state"] for s in snapshots] == [{"n": 299}]  # only the latest
        fills = [msg["row"]["execution_id"] for msg in messages if msg["type"] == "row"]
        assert fills == [f"x-{i}" for i in range(200, 300)]  # the newest, in order
        assert [msg["rows"] for msg in messages if msg["type"] == "dropped"] == [200]
        ticks = [msg for msg in messages if msg["type"] == "ticks"]
        assert len(ticks) == 1 and sorted((t["instrument"], t["price"]) for t in ticks[0]["ticks"]) == \
            [("ES 06-18", 2999.0), ("NQ 06-18", 7299.0)]
        assert slow.dropped == 200 and slow.conflated >= 299
        assert state.status()["clients_dropped_rows"] == 200
        assert slow.take() == []  # nothing waits any more
    finally:
        feed.stop()
        pub.close()


# --------------------------------------------------------------------------- the real process


@pytest.mark.slow
def test_the_console_process_serves_the_api_and_stops_cleanly(tmp_path):
    import httpx
    from websockets.sync.client import connect

    ready = tmp_path / "url"
    log = tmp_path / "console.log"
    # --open (the Start-menu entry's): $BROWSER is how Python's webbrowser is told which browser to start
    opened = tmp_path / "opened"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys\nwith open({str(opened)!r}, 'a') as f: f.write(sys.argv[1] + '\\n')\n")
    env = {**clean_env(tmp_path), "BROWSER": f"{sys.executable} {browser} %s"}
    common = ["--db", f"sqlite:///{tmp_path / 'none.sqlite'}", "--events", f"tcp://127.0.0.1:{free_port()}",
              "--sidecar", f"tcp://127.0.0.1:{free_port()}"]
    cmd = [*CLI, "console", "--bind", "127.0.0.1:0", "--ready-file", str(ready), "--open", *common]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                creationflags=child_creationflags())
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, "the console listens", timeout_s=60)
        assert proc.poll() is None, log.read_text()
        url = ready.read_text(encoding="utf-8")
        assert url.startswith("http://127.0.0.1:")
        if hasattr(os, "getpriority"):  # console.below_normal_priority: it yields the CPU to the sidecar
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) >= min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)
        if sys.platform != "win32":
            wait_until(lambda: opened.exists(), "the browser was started on the console", timeout_s=30)
            assert opened.read_text().split() == [url]
            # clicked again while it runs: the running console is shown, no second one started
            again = subprocess.run([*CLI, "console", "--bind", url.split("//")[1].rstrip("/"), "--open", *common],
                                   env=env, capture_output=True, text=True, timeout=60)
            assert again.returncode == 0 and "already runs" in again.stdout, again.stdout + again.stderr
            wait_until(lambda: len(opened.read_text().split()) == 2, "the browser shown the running console",
                       timeout_s=30)
        status = httpx.get(url + "api/v1/status", timeout=30)
        assert status.status_code == 200
        assert status.json()["console_version"] == __version__ and status.json()["sidecar_up"] is False
        page = httpx.get(url, timeout=30)
        assert page.headers["content-type"].startswith("text/html") and 'data-testid="kill-button"' in page.text
        assert csrf.COOKIE in page.cookies
        assert httpx.get(url + "static/app.js", timeout=30).text.count("__paintLog") >= 2
        with connect(url.replace("http://", "ws://") + "api/v1/stream", open_timeout=30) as ws:
            first = json.loads(ws.recv(timeout=30))
            assert first["type"] == "state" and first["status"]["sidecar_up"] is False
        proc.send_signal(interrupt_signal())  # Ctrl+C (Ctrl+Break on Windows): a clean stop
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def test_browsers_get_the_tables_the_page_shows_each_message_encoded_once():
    state = LiveState("tcp://127.0.0.1:9")
    a, b = Subscriber(), Subscriber()
    state.subscribe(a)
    state.subscribe(b)
    boot = "b"
    for seq, (table, row) in enumerate([("audit_chain", {"seq": 1, "kind": "decision"}),
                                        ("order_updates", {"session_id": 1, "seq": 2}),
                                        ("executions", {"session_id": 1, "execution_id": "X1"})], start=1):
        state.apply(Event("row." + table, seq, boot, seq, {"table": table, "row": row}))
    state.apply(Event("snapshot", 4, boot, 4, {"state": {"sessions": []}}))
    got_a, got_b = a.take(), b.take()
    assert [(m["type"], m.get("table")) for m in got_a] == [("row", "executions"), ("snapshot", None)]
    # every table is still there for the API
    assert [r["kind"] for r in state.recent_rows("audit_chain")] == ["decision"]
    # the same message object reaches both, and its text is made once
    assert got_a[-1] is got_b[-1] and isinstance(got_a[-1], Outgoing)
    text = got_a[-1].encoded()
    assert got_b[-1].encoded() is text and json.loads(text)["state"] == {"sessions": []}
