"""A hot-standby pair on a real PostgreSQL server: leadership, refusal by the standby, and the real
NinjaScript trading through the standby after the leader is killed with SIGKILL mid-session."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bridge.audit.trail import verify_database
from bridge.core.config import load_config
from bridge.nt8.client import ClientError, Nt8Client
from bridge.protocol.messages import ErrorCode, InstrumentDecl
from bridge.storage.database import create_engine_for, upgrade
from bridge.storage.queries import sessions_of_instance
from bridge.storage.schema import metadata
from bridge.transport.control import send_command
from bridge.transport.leadership import Leadership, Role
from bridge.transport.sidecar import SidecarProcess, master_for
from tests.conftest import PLUMBING_CONFIG
from tests.integration.test_csharp_link import harnesses, make, probe  # noqa: F401 - fixtures
from tests.integration.test_server import wait_until

pytestmark = pytest.mark.postgres

ES = InstrumentDecl("ES 06-18", 0.25, 50.0)
ES_FILE = "nt8/ES 06-18.Last.txt.gz"


def pair_config(tmp_path: Path, name: str) -> Path:
    """The plumbing configuration, as one sidecar of a pair: its own audit journal and key."""
    path = tmp_path / f"{name}.toml"
    path.write_text(PLUMBING_CONFIG.read_text() + f"""
[ha]
enabled = true
cluster = "test"

[audit]
dir = "{tmp_path / (name + '-audit')}"
key_path = "{tmp_path / (name + '-key.pem')}"
""")
    return path


def role_of(proc: SidecarProcess) -> str:
    return send_command(proc.control_endpoint, "status")["role"]


def competing(db_url: str) -> tuple[Leadership, Leadership]:
    """Two competitors for one lock, polling fast; the first leads, the second is started and polling."""
    upgrade(db_url)
    a = Leadership(db_url, "pair", "tcp://a:1", poll_ms=20, lease_ms=1000, node="a")
    b = Leadership(db_url, "pair", "tcp://b:1", poll_ms=20, lease_ms=1000, node="b")
    a.start()
    assert a.wait_until(Role.LEADER, 30)
    b.start()
    return a, b


def test_one_leader_at_a_time_and_the_lock_passes_on_when_it_is_released(pg_clean_url):
    a, b = competing(pg_clean_url)
    wait_until(lambda: b.leader is not None and b.polls > 5, "the standby to read who leads")
    assert b.role is Role.STANDBY and b.leader.node == "a" and b.leader.epoch == 1
    assert "tcp://a:1" in b.describe_leader()
    a.stop()  # closing its connection releases the lock
    assert b.wait_until(Role.LEADER, 30)
    assert b.epoch == 2
    change = b.changes.get_nowait()
    assert change.role is Role.LEADER and "the last leader was a" in change.reason
    b.stop()


def test_a_leader_whose_connection_is_cut_takes_the_lock_again_before_the_standby(pg_clean_url, pg_url):
    """A database restart or a killed backend: the incumbent gets the first go, so leadership does not
    move for nothing; the standby keeps standing by."""
    import psycopg

    from tests.conftest import _libpq_url

    a, b = competing(pg_clean_url)
    wait_until(lambda: b.polls > 5, "the standby to poll")
    with psycopg.connect(_libpq_url(pg_url), autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                               "'nt8bridge leadership pair'").fetchall()
    assert len(killed) == 2
    wait_until(lambda: a.connection_failures >= 1, "the leader to notice its connection is gone")
    wait_until(lambda: a._locked_conn is not None, "the leader to take the lock again")
    # The two backends die one after the other: a poll of the standby's that was already running can take the
    # lock the leader's death released, just before its own backend dies. It then believes it leads until its
    # next poll finds the connection dead and the lock taken (a CI rehearsal caught that moment): wait it out.
    wait_until(lambda: b.role is Role.STANDBY, "the standby to stand by again")
    assert a.role is Role.LEADER and b.role is Role.STANDBY
    assert a.epoch == 1  # the same leadership, not a new one
    a.stop()
    b.stop()


@pytest.fixture
def pair(pg_clean_url, tmp_path):
    """Two sidecars of one cluster on one PostgreSQL database; the first started leads."""
    procs = []

    def start(name: str) -> SidecarProcess:
        proc = SidecarProcess(pg_clean_url, pair_config(tmp_path, name), log_path=tmp_path / f"{name}.log")
        proc.start()
        procs.append(proc)
        return proc

    primary = start("primary")
    wait_until(lambda: role_of(primary) == "leader", "the first sidecar to lead")
    standby = start("standby")
    wait_until(lambda: send_command(standby.control_endpoint, "status")["leader"] is not None,
             "the standby to know the leader")
    yield primary, standby
    for proc in procs:
        if proc.proc.poll() is None:
            proc.stop()


def test_the_standby_refuses_a_session_naming_the_leader_and_takes_over_when_the_leader_stops(pair):
    primary, standby = pair
    assert role_of(standby) == "standby"
    client = Nt8Client(standby.endpoint, instance_id="desk-1", account="Sim101", instruments=[ES])
    with pytest.raises(ClientError, match=f"standby of cluster 'test'; the leader is {primary.endpoint}"):
        client.connect()
    assert [e.code for e in client.errors] == [ErrorCode.SESSION_STANDBY]
    assert send_command(standby.control_endpoint, "status")["sessions_refused"] == {"standby": 1}
    assert primary.stop() == 0  # a clean stop releases the lock once its rows are committed
    wait_until(lambda: role_of(standby) == "leader", "the standby to lead")
    status = send_command(standby.control_endpoint, "status")
    assert status["leader_epoch"] == 2 and status["leader"]["endpoint"] == standby.endpoint
    client.connect()  # the same client, now welcome
    client.close()


def test_nt8sim_primary_killed_mid_session_completes_through_the_standby(pair, shared_data, nt8, tmp_path,
                                                                          pg_clean_url):
    """The acceptance run: the real NinjaScript in the simulator with both endpoints, the leader killed with
    SIGKILL while a position is open; the playback goes on through the standby, which resumes the open
    bracket from storage and NT8's replay. Every fill is stored once, no order is sent twice, the audit chain
    of the pair verifies, and the stored fills add up to the simulator's position."""
    from bridge.nt8.simulator import run_nt8sim
    from tests.integration.test_nt8sim import legs_by_bracket, play

    config = load_config(PLUMBING_CONFIG)
    reference, _ = play([shared_data / ES_FILE], tmp_path, "reference", max_events=40_000)
    entries = [f for f in reference.fills if f["order_name"].endswith(":E")]
    assert entries, "the reference run needs an open position to kill the leader under"
    # mid-position, and late enough that the leader has committed the bracket (it is resumed from storage)
    bracket = entries[0]["order_name"].split(":")[1]
    exits = [f["event_index"] for f in reference.fills if f["order_name"].split(":")[1] == bracket
             and not f["order_name"].endswith(":E")]
    entered = entries[0]["event_index"]
    kill_at = entered + min(3_000, (min(exits) - entered) // 2 if exits else 3_000)
    primary, standby = pair
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= kill_at and not killed:
            os.kill(primary.proc.pid, signal.SIGKILL)
            killed.append(time.time_ns())

    result = run_nt8sim([shared_data / ES_FILE], f"{primary.endpoint},{standby.endpoint}", config, master_for(config),
                        max_events=kill_at + 30_000, instance_id="failover", progress=progress, progress_every=1,
                        parameters={"HeartbeatMs": 250, "HeartbeatTimeoutMs": 1000})
    assert killed and result.strategy_error is None, result.prints[-10:]
    assert result.events == kill_at + 30_000
    assert standby.stop() == 0, standby.tail()

    sessions = sessions_of_instance(pg_clean_url, "failover")
    engine = create_engine_for(pg_clean_url)
    t = metadata.tables
    with engine.connect() as conn:
        started = dict(conn.execute(select(t["sessions"].c.session_id, t["sessions"].c.started_ns)
                                    .where(t["sessions"].c.session_id.in_(sessions))).all())
        stored_fills = conn.execute(select(t["executions"].c.execution_id, t["executions"].c.side,
                                           t["executions"].c.quantity)).all()
        orders = list(conn.execute(select(t["orders"].c.client_order_id)).scalars())
        audit_kinds = collections.Counter(conn.execute(select(t["audit_chain"].c.kind)).scalars())
    engine.dispose()
    after = sorted(s for s, ns in started.items() if ns > killed[0])
    if not after:
        print("\n".join(p for p in result.prints if "nt8bridge" in p))
        print(Path(standby.log_path).read_text()[-5000:])
    assert after, "no session was opened with the standby"
    failover_ms = (started[after[0]] - killed[0]) / 1e6
    print(f"failover: {failover_ms:.0f} ms from SIGKILL of the leader to NT8's session with the standby")

    # every fill stored once, and every one of the simulator's fills is stored
    ids = [f[0] for f in stored_fills]
    assert [i for i, n in collections.Counter(ids).items() if n > 1] == []
    assert sorted(ids) == sorted(f["execution_id"] for f in result.fills)
    # no order sent twice: one entry per bracket at NT8, each bracket known to the sidecar once
    for bracket, legs in legs_by_bracket(result.orders).items():
        if not bracket.startswith("flatten"):
            assert len(legs["E"]) == 1, bracket
            assert bracket in orders or audit_kinds["bracket_adopted"], (bracket, [p for p in result.prints if "nt8bridge" in p][-12:], audit_kinds)
    assert len(orders) == len(set(orders))
    # the pair's one chain verifies, with the leadership change in it
    verdict = verify_database(pg_clean_url)
    assert verdict.ok, verdict
    assert audit_kinds["leadership"] >= 2 and audit_kinds["resume"] >= 1
    # positions reconcile: the stored fills add up to what the simulator holds
    net = sum(q if side == "BUY" else -q for _, side, q in stored_fills)
    assert net == result.final_position["ES 06-18"]
    # the standby traded: brackets were sent in its session
    assert any(o["name"].split(":")[1].startswith(f"S{after[0]}-") for o in result.orders) or \
        result.final_position["ES 06-18"] == 0


def test_the_threaded_link_follows_the_leader_to_the_standby_with_its_queued_order_event(pair, cs, probe, make,
                                                                                           pg_clean_url):
    """Live (threaded) mode, default heartbeats: the leader is killed; the link notices the broken connection,
    dials the standby (refused until it has taken the lock), then sends it the order event queued meanwhile."""
    from bridge.storage.queries import session_counts

    primary, standby = pair
    h = make(f"{primary.endpoint},{standby.endpoint}")
    assert list(h.link.Endpoints) == [primary.endpoint, standby.endpoint]
    h.link.Start()
    h.wait(lambda: h.link.IsConnected, 30, "the session with the leader")
    assert h.link.Endpoint == primary.endpoint
    os.kill(primary.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    h.wait(lambda: h.listener.DownCount == 1, 30, "OnLinkDown after the kill")
    assert h.link.Post(probe.Probe.OrderUpdate("queued-during-failover"))
    h.wait(lambda: h.listener.WelcomeCount == 2, 30, "WELCOME from the standby")
    print(f"threaded link: {(time.monotonic() - killed) * 1000:.0f} ms from SIGKILL to the standby's WELCOME")
    assert h.link.Endpoint == standby.endpoint and h.link.Reconnects == 1
    h.wait(lambda: h.link.Queued == 0, 10, "the queue to drain")
    assert f"reconnected to the sidecar at {standby.endpoint}" in h.log_text()
    h.link.Stop("test done")
    assert standby.stop() == 0
    assert session_counts(pg_clean_url, h.listener.SessionId(1)).order_updates == 1
