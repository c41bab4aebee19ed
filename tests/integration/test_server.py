"""The sidecar server over real ZeroMQ sockets: sessions, heartbeats, and every kind of bad input."""

from __future__ import annotations

import collections
import dataclasses
import gc
import json
import random
import sqlite3
import struct
import threading
import socket
import time
import urllib.request
from datetime import datetime, timezone

import pytest
import zmq

from bridge.core.config import Config, QualityConfig, ServerConfig
from bridge.nt8.client import ClientError, Nt8Client
from bridge.protocol import codec
from bridge.protocol import messages as m
from bridge.protocol.messages import ErrorCode, MsgType
from bridge.transport.server import SidecarServer
from bridge.transport.sidecar import instance_history_reader, make_strategy_factory, master_for
from bridge.storage.queries import session_counts, sessions_of_instance
from bridge.storage.writer import StorageWriter

ES = m.InstrumentDecl("ES 06-18", 0.25, 50.0)
T0 = int(datetime(2018, 5, 8, 14, 30, tzinfo=timezone.utc).timestamp()) * 1_000_000_000


class RunningSidecar:
    """A sidecar server on a thread of the test process; ``resume``: sessions resume their strategy instance
    from storage, as `nt8bridge serve` does."""

    def __init__(self, config: Config, db_url: str, resume: bool = False) -> None:
        self.db_url = db_url
        self.writer = StorageWriter(db_url, batch_rows=500)
        self.writer.start()
        history = instance_history_reader(self.writer, db_url) if resume else None
        self.server = SidecarServer(config, self.writer, master_for(config), make_strategy_factory(config),
                                    history=history)
        self.endpoint = self.server.bind("tcp://127.0.0.1:*")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(10)
        self.writer.close()


@pytest.fixture
def sidecar_factory(tmp_path):
    started: list[RunningSidecar] = []

    def start(quality: dict | None = None, **server_overrides) -> RunningSidecar:
        config = Config(server=dataclasses.replace(ServerConfig(), **server_overrides),
                        quality=dataclasses.replace(QualityConfig(), **(quality or {})))
        s = RunningSidecar(config, f"sqlite:///{tmp_path}/sidecar-{len(started)}.sqlite")
        started.append(s)
        return s

    yield start
    for s in started:
        if s.thread.is_alive():
            s.stop()


@pytest.fixture
def sidecar(sidecar_factory) -> RunningSidecar:
    return sidecar_factory()


class RawPeer:
    """A DEALER that sends arbitrary frames: what a broken or hostile NT8 could send."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int = 5000) -> m.Message:
        assert self.sock.poll(timeout_ms), "no reply from the sidecar"
        return codec.decode(self.sock.recv_multipart())[1]

    def recv_error(self) -> m.Error:
        while True:
            msg = self.recv()
            if isinstance(msg, m.Error):
                return msg

    def close(self) -> None:
        self.sock.close()


def tick(price: float, ts: int = T0, size: int = 1) -> m.Tick:
    return m.Tick(0, 0, price, size, float("nan"), float("nan"), ts, ts)


def hello(instance: str = "test", lockstep: bool = True, instruments=(ES,)) -> m.Hello:
    return m.Hello(instance, "Sim101", 1 if lockstep else 0, 1000, time.time_ns(), "test", list(instruments))


def test_hello_is_welcomed_and_the_session_is_stored(sidecar):
    with Nt8Client(sidecar.endpoint, instance_id="chart-1", account="Sim101", instruments=[ES]) as c:
        welcome = c.connect()
        assert welcome.heartbeat_ms == 1000 and welcome.max_message_bytes == 65536
        assert c.step(tick(2670.0)) == []
    sidecar.stop()
    counts = session_counts(sidecar.db_url, welcome.session_id)
    assert counts.ticks == 1
    assert counts.end_reason == "BYE"


@pytest.mark.parametrize("frames, code", [
    ([b"short"], ErrorCode.PROTOCOL_BAD_FRAME_COUNT),
    ([b"x" * 10, b""], ErrorCode.PROTOCOL_TRUNCATED),
    ([b"XXXX" + bytes(28), b""], ErrorCode.PROTOCOL_BAD_MAGIC),
    ([struct.pack("<4sBBHQqq", b"NT8B", 9, 2, 0, 1, 0, 0), b""], ErrorCode.PROTOCOL_UNSUPPORTED_VERSION),
    ([struct.pack("<4sBBHQqq", b"NT8B", 1, 77, 0, 1, 0, 0), b""], ErrorCode.PROTOCOL_UNKNOWN_TYPE),
    ([struct.pack("<4sBBHQqq", b"NT8B", 1, 2, 0, 1, 0, 0), b"\x00" * 10], ErrorCode.PROTOCOL_TRUNCATED),
    (codec.encode(m.Welcome(1, "x", 1, 1, 1, 1), 1, 0), ErrorCode.PROTOCOL_WRONG_DIRECTION),
    (codec.encode(tick(2670.0), 1, 0), ErrorCode.SESSION_NO_HELLO),
    ([codec.encode(tick(1.0), 1, 0)[0], b"\x00" * 70_000], ErrorCode.PROTOCOL_OVERSIZE),
])
def test_bad_frames_are_answered_counted_and_survived(sidecar, frames, code):
    peer = RawPeer(sidecar.endpoint)
    peer.send(frames)
    err = peer.recv_error()
    assert err.code == code
    assert sidecar.server.stats.errors_sent[code.name] == 1
    peer.close()
    # the server still serves
    with Nt8Client(sidecar.endpoint, instance_id="after", account="a", instruments=[ES]) as c:
        c.connect()
        assert c.step(tick(2670.0)) == []


def test_oversize_error_names_the_offending_sequence_number(sidecar):
    peer = RawPeer(sidecar.endpoint)
    header, _ = codec.encode(tick(1.0), 42, 0)
    peer.send([header, b"\x00" * 70_000])
    err = peer.recv_error()
    assert (err.code, err.offending_seq, err.offending_type) == (ErrorCode.PROTOCOL_OVERSIZE, 42, MsgType.TICK)


def test_nan_price_is_refused_with_error_and_stored_as_a_quality_event(sidecar):
    with Nt8Client(sidecar.endpoint, instance_id="nan", account="a", instruments=[ES]) as c:
        welcome = c.connect()
        replies = c.step(tick(float("nan")))
        assert [type(r) for r in replies] == [m.Error]
        assert replies[0].code == ErrorCode.QUALITY_NONFINITE_PRICE
        assert replies[0].offending_seq == c.seq and replies[0].offending_type == MsgType.TICK
        assert c.step(tick(2670.0)) == []
    sidecar.stop()
    counts = session_counts(sidecar.db_url, welcome.session_id)
    assert counts.ticks == 1
    assert counts.quality_events_by_reason == {"QUALITY_NONFINITE_PRICE": 1}


def test_duplicate_sequence_numbers_are_refused(sidecar):
    peer = RawPeer(sidecar.endpoint)
    peer.send(codec.encode(hello(lockstep=False), 1, time.time_ns()))
    assert isinstance(peer.recv(), m.Welcome)
    peer.send(codec.encode(tick(2670.0), 2, time.time_ns()))
    peer.send(codec.encode(tick(2670.25), 2, time.time_ns()))
    err = peer.recv_error()
    assert (err.code, err.offending_seq) == (ErrorCode.SESSION_DUPLICATE_SEQ, 2)
    peer.close()


def test_a_gap_in_sequence_numbers_is_counted_and_the_message_processed(sidecar):
    with Nt8Client(sidecar.endpoint, instance_id="gap", account="a", instruments=[ES]) as c:
        c.connect()
        c.seq += 5  # five messages lost on the way
        assert c.step(tick(2670.0)) == []
    assert sidecar.server.stats.seq_gaps == 1


def test_unknown_instruments_are_refused(sidecar):
    with pytest.raises(ClientError, match="XYZ"):
        with Nt8Client(sidecar.endpoint, instance_id="u", account="a",
                       instruments=[m.InstrumentDecl("XYZ 06-18", 0.25, 50.0)]) as c:
            c.connect()
    with Nt8Client(sidecar.endpoint, instance_id="u2", account="a", instruments=[ES]) as c:
        c.connect()
        replies = c.step(m.Tick(3, 0, 2670.0, 1, float("nan"), float("nan"), T0, T0))
        assert [r.code for r in replies] == [ErrorCode.SESSION_UNKNOWN_INSTRUMENT]


@pytest.mark.parametrize("decl, match", [
    (m.InstrumentDecl("ES 06-18", 0.0, 50.0), "finite and positive"),
    (m.InstrumentDecl("ES 06-18", 0.25, float("nan")), "finite and positive"),
    (m.InstrumentDecl("ES 06-18", 1e300, 50.0), "instrument master"),
    (m.InstrumentDecl("ES 06-18", 0.25, 5.0), "instrument master"),  # a micro's point value on ES
])
def test_hello_with_impossible_or_disagreeing_instrument_facts_is_refused(sidecar, decl, match):
    with pytest.raises(ClientError, match=match):
        with Nt8Client(sidecar.endpoint, instance_id="bad", account="a", instruments=[decl]) as c:
            c.connect()


def test_sidecar_sends_heartbeats_and_marks_a_silent_session_lost(sidecar_factory):
    s = sidecar_factory(heartbeat_ms=100, heartbeat_timeout_ms=400)
    peer = RawPeer(s.endpoint)
    peer.send(codec.encode(hello(lockstep=False), 1, time.time_ns()))
    welcome = peer.recv()
    assert isinstance(welcome, m.Welcome)
    assert isinstance(peer.recv(2000), m.Heartbeat)  # the sidecar's own heartbeat while idle
    deadline = time.monotonic() + 5
    while s.server.stats.sessions_lost == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.server.stats.sessions_lost == 1
    assert s.server.sessions == {}
    # a lost heartbeat does what the kill switch does, for that session: FLATTEN (this peer is only silent)
    received = []
    while peer.sock.poll(1000):
        received.append(peer.recv())
    flattens = [msg for msg in received if isinstance(msg, m.Flatten)]
    assert len(flattens) == 1 and flattens[0].instrument_id == m.ALL_INSTRUMENTS, received
    s.stop()
    assert session_counts(s.db_url, welcome.session_id).end_reason == "LOST"
    assert audit_rows(s.db_url, "kill") == [("heartbeat", welcome.session_id)]
    peer.close()


def audit_rows(db_url: str, kind: str) -> list[tuple]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return conn.execute("select subject_id, session_id from audit_log where kind = ? order by id", (kind,)).fetchall()


def test_the_clock_offset_to_nt8_is_sampled_into_the_audit_trail(sidecar):
    peer = RawPeer(sidecar.endpoint)
    peer.send(codec.encode(hello(lockstep=False), 1, time.time_ns()))
    welcome = peer.recv()
    behind = 5_000_000_000  # this NT8 host's clock runs 5 s behind the sidecar's
    peer.send(codec.encode(m.Heartbeat(0), 2, time.time_ns() - behind))
    peer.send(codec.encode(m.Heartbeat(0), 3, time.time_ns() - behind))  # within a minute: not sampled again
    deadline = time.monotonic() + 5
    while sidecar.server.stats.messages_in < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sidecar.stop()
    with sqlite3.connect(sidecar.db_url.removeprefix("sqlite:///")) as conn:
        rows = [json.loads(p) for (p,) in conn.execute("select payload from audit_log where kind = 'clock_offset'")]
    assert len(rows) == 1, rows
    assert rows[0]["seq"] == 2
    # the offset includes the one-way latency (loopback: well under a second)
    assert -behind - 1_000_000_000 < rows[0]["offset_ns"] <= -behind
    peer.close()


def test_a_second_hello_from_the_same_instance_replaces_the_old_session(sidecar):
    a = Nt8Client(sidecar.endpoint, instance_id="same", account="a", instruments=[ES])
    first = a.connect()
    b = Nt8Client(sidecar.endpoint, instance_id="same", account="a", instruments=[ES])
    second = b.connect()
    assert second.session_id != first.session_id
    assert len(sidecar.server.sessions) == 1
    a.close(reason=None)
    b.close()
    sidecar.stop()
    assert session_counts(sidecar.db_url, first.session_id).end_reason == "REPLACED"


def test_metrics_endpoint_reports_counters(tmp_path):
    from bridge.transport.metrics import serve_metrics
    s = RunningSidecar(Config(), f"sqlite:///{tmp_path}/m.sqlite")
    port = serve_metrics(s.server, s.writer, "127.0.0.1", 0)
    with Nt8Client(s.endpoint, instance_id="metrics", account="a", instruments=[ES]) as c:
        c.connect()
        c.step(tick(2670.0))
        c.step(tick(float("nan")))
        strategy = next(iter(s.server.sessions.values())).pipeline.strategies[0]
        strategy.metrics = lambda: {"predictions": 3.0}  # what a strategy counts reaches the endpoint
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    wait_until(lambda: not s.server.sessions, "the session ended")
    after = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    s.stop()
    assert f'nt8bridge_strategy_events_total{{event="predictions",strategy="{strategy.name}"}} 3.0' in text
    assert 'nt8bridge_quality_events_total{reason="QUALITY_NONFINITE_PRICE"} 1.0' in text
    assert "nt8bridge_ticks_accepted_total 1.0" in text
    assert 'nt8bridge_stage_latency_microseconds_count{stage="quality"}' in text
    # counters do not go down when the session that counted ends
    assert f'nt8bridge_strategy_events_total{{event="predictions",strategy="{strategy.name}"}} 3.0' in after
    assert 'nt8bridge_quality_events_total{reason="QUALITY_NONFINITE_PRICE"} 1.0' in after
    assert "nt8bridge_sessions_opened_total 1.0" in after
    assert 'nt8bridge_sessions_ended_total{reason="BYE"} 1.0' in after
    assert "nt8bridge_sessions_active 0.0" in after


def test_refused_hellos_are_counted_in_the_metrics(tmp_path):
    from bridge.transport.metrics import serve_metrics
    s = RunningSidecar(Config(server=dataclasses.replace(ServerConfig(), max_sessions=1)), f"sqlite:///{tmp_path}/r.sqlite")
    port = serve_metrics(s.server, s.writer, "127.0.0.1", 0)
    with Nt8Client(s.endpoint, instance_id="one", account="a", instruments=[ES]) as c:
        c.connect()
        with pytest.raises(ClientError):
            Nt8Client(s.endpoint, instance_id="two", account="a", instruments=[ES]).connect()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    s.stop()
    assert 'nt8bridge_sessions_refused_total{limit="max_sessions"} 1.0' in text
    assert 'nt8bridge_errors_sent_total{code="SESSION_LIMIT_REACHED"} 1.0' in text


def _random_frames(rng: random.Random, valid: list[list[bytes]]) -> list[bytes]:
    """A random message: noise, a good header with a random body, or a valid message mutated."""
    kind = rng.randrange(5)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 80)) for _ in range(rng.randrange(1, 4))]
    if kind == 1:
        header = struct.pack("<4sBBHQqq", b"NT8B", 1, rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 21, 99]), 0,
                             rng.randrange(2**64), rng.randrange(-2**63, 2**63), 0)
        return [header, rng.randbytes(rng.randrange(0, 120))]
    frames = [bytearray(f) for f in rng.choice(valid)]
    if kind == 2:  # flip bytes
        for _ in range(rng.randrange(1, 4)):
            f = frames[rng.randrange(len(frames))]
            if f:
                f[rng.randrange(len(f))] = rng.randrange(256)
    elif kind == 3:  # truncate
        f = frames[rng.randrange(len(frames))]
        del f[rng.randrange(len(f) + 1):]
    return [bytes(f) for f in frames]


@pytest.mark.slow
def test_100k_random_frames_never_stop_the_server_from_serving_a_good_client(sidecar):
    rng = random.Random(20261124)
    valid = [codec.encode(msg, rng.randrange(1, 1000), time.time_ns()) for msg in (
        hello(lockstep=False), hello(lockstep=True), tick(2670.0), tick(float("nan")),
        m.Bar(0, 60, 1.0, 2.0, 0.5, 1.5, 10, T0), m.Heartbeat(3), m.Bye("x"),
        m.Position(0, 1, 1, 2670.0, T0), m.Account("a", 1.0, 2.0, 3.0, 4.0, T0),
        m.Execution("x", "B1", 1, "n", 0, 1, 2670.0, 1, 2.0, T0),
        m.OrderUpdate("B1", 1, "n", 0, 4, 0, 1, 1, 0, 1.0, 2.0, 3.0, T0, 0, ""))]
    garbage = [RawPeer(sidecar.endpoint) for _ in range(4)]
    good = Nt8Client(sidecar.endpoint, instance_id="good", account="a", instruments=[ES])
    good.connect()
    sent = 0
    price = 2670.0
    for round_ in range(100):
        for _ in range(1000):
            garbage[rng.randrange(len(garbage))].send(_random_frames(rng, valid))
            sent += 1
        price += 0.25 if round_ % 2 else -0.25
        # the good client keeps getting exactly its acknowledgement, nothing else
        assert good.step(tick(price, T0 + round_ * 1_000_000)) == []
    deadline = time.monotonic() + 300  # a bound on waiting for the backlog, not a speed requirement
    while sidecar.server.stats.messages_in < sent + 101 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sidecar.thread.is_alive()
    assert sidecar.server.stats.messages_in >= sent + 101
    assert sidecar.server.stats.internal_errors == 0, "a random frame hit a bug instead of a clean refusal"
    assert sum(sidecar.server.stats.errors_sent.values()) > 50_000
    assert good.errors == []
    good.close()
    for p in garbage:
        p.close()


def test_a_flood_of_bad_frames_is_counted_in_full_but_logged_in_moderation(sidecar, caplog):
    peer = RawPeer(sidecar.endpoint)
    with caplog.at_level("WARNING", logger="nt8bridge.server"):
        for _ in range(500):
            peer.send([b"garbage"])
        for _ in range(500):
            peer.recv_error()
    assert sidecar.server.stats.errors_sent["PROTOCOL_BAD_FRAME_COUNT"] == 500
    refusals = [r for r in caplog.records if "refused message" in r.getMessage()]
    assert 1 <= len(refusals) <= 20
    peer.close()


def test_live_feed_that_stops_in_session_is_flagged_stale_by_the_watchdog(sidecar_factory):
    # wall-clock watchdog, for live (non-lockstep) sessions; hours are switched off so that the test
    # does not depend on CME being open at this wall-clock moment
    s = sidecar_factory(quality={"stale_after_s": 0.3, "check_session_hours": False}, heartbeat_timeout_ms=60_000)
    now = time.time_ns()
    with Nt8Client(s.endpoint, instance_id="live", account="a", lockstep=False, instruments=[ES]) as c:
        welcome = c.connect()
        c.send(m.Tick(0, 0, 2670.0, 1, float("nan"), float("nan"), now, now))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            c.send(m.Heartbeat(0))  # alive, but no ticks
            time.sleep(0.1)
            session = next(iter(s.server.sessions.values()), None)
            if session is not None and session.stale_flagged:
                break
        assert session is not None and session.stale_flagged == {0}
    s.stop()
    assert session_counts(s.db_url, welcome.session_id).quality_events_by_reason == {"QUALITY_STALE_FEED": 1}


def test_a_tick_batch_is_judged_tick_by_tick(sidecar):
    with Nt8Client(sidecar.endpoint, instance_id="batch", account="a", instruments=[ES]) as c:
        welcome = c.connect()
        batch = [tick(2670.0, T0), tick(float("nan"), T0 + 1), tick(2670.25, T0 + 2),
                 m.Tick(7, 0, 2670.0, 1, float("nan"), float("nan"), T0 + 3, T0 + 3), tick(2670.5, T0 + 4)]
        c.send_ticks(batch)
        replies = c.wait_ack(c.seq)
        assert [(r.code, r.offending_type) for r in replies] == [
            (ErrorCode.QUALITY_NONFINITE_PRICE, MsgType.TICKS), (ErrorCode.SESSION_UNKNOWN_INSTRUMENT, MsgType.TICKS)]
        assert replies[0].text.startswith("tick 1 of 5:") and replies[1].text.startswith("tick 3 of 5:")
    sidecar.stop()
    counts = session_counts(sidecar.db_url, welcome.session_id)
    assert counts.ticks == 3
    assert counts.quality_events_by_reason == {"QUALITY_NONFINITE_PRICE": 1}


def test_a_failure_inside_the_sidecar_is_answered_and_acknowledged(sidecar, monkeypatch):
    with Nt8Client(sidecar.endpoint, instance_id="boom", account="a", instruments=[ES], timeout_s=5) as c:
        c.connect()
        pipeline = next(iter(sidecar.server.sessions.values())).pipeline
        monkeypatch.setattr(pipeline, "on_position", lambda seq, msg: 1 / 0)
        replies = c.step(m.Position(0, 1, 1, 2670.0, T0))  # a lockstep client must not hang
        assert [r.code for r in replies] == [ErrorCode.INTERNAL_ERROR]
        assert c.step(tick(2670.0)) == []  # and the session goes on
    assert sidecar.server.stats.internal_errors == 1


@pytest.mark.parametrize("with_bye", [True, False], ids=["bye", "no-bye"])
def test_what_a_vanished_peer_sent_before_is_still_processed(tmp_path, caplog, with_bye):
    """A fast client can be tens of thousands of messages ahead of the sidecar and close its connection
    (after BYE, or not): ZeroMQ still delivers what it sent, but a send to it fails. The sidecar must
    process those messages in its session (not end it on the failed send and refuse each one), and end it
    with the BYE, or as DISCONNECTED once nothing more arrives."""
    n = 3000
    db = f"sqlite:///{tmp_path}/vanished.sqlite"
    config = Config()
    writer = StorageWriter(db, batch_rows=500)
    writer.start()
    server = SidecarServer(config, writer, master_for(config), make_strategy_factory(config))
    endpoint = server.bind("tcp://127.0.0.1:*")
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.connect(endpoint)
    peer.send_multipart(codec.encode(hello("vanished", lockstep=False), 1, time.time_ns()))
    for i in range(n):
        peer.send_multipart(codec.encode(tick(2670.0 + 0.25 * (i % 4), T0 + i * 1_000_000), 2 + i, time.time_ns()))
    if with_bye:
        peer.send_multipart(codec.encode(m.Bye("done"), n + 2, time.time_ns()))
    peer.close(linger=5000)  # everything written, then the connection is gone before the sidecar reads a thing
    time.sleep(0.5)
    expected = n + 1 + with_bye
    thread = threading.Thread(target=server.run, daemon=True)
    with caplog.at_level("INFO", logger="nt8bridge.server"):
        thread.start()  # the WELCOME for the HELLO already fails
        deadline = time.monotonic() + 30
        while (server.stats.messages_in < expected or server.sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.request_stop()
        thread.join(10)
    writer.close()
    assert server.stats.messages_in == expected and not server.sessions
    assert dict(server.stats.errors_sent) == {}  # nothing refused: no SESSION_NO_HELLO for what it sent
    sessions = sessions_of_instance(db, "vanished")
    assert len(sessions) == 1
    counts = session_counts(db, sessions[0])
    assert counts.ticks == n
    assert counts.end_reason == ("BYE" if with_bye else "DISCONNECTED")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]  # one failed send, one line that says so


def test_a_clean_stop_handles_what_the_sessions_already_sent(sidecar_factory):
    """Ctrl+C / SIGTERM while a session is far ahead: what it sent before is still handled and stored,
    its BYE included, instead of being dropped with the socket."""
    from bridge.protocol.messages import Bye

    sidecar = sidecar_factory()  # with stop_drain_ms=0 it stores about 5,000 of the 20,000 ticks
    n = 20_000
    with Nt8Client(sidecar.endpoint, instance_id="drain", account="Sim101", instruments=[ES], lockstep=False) as c:
        welcome = c.connect()
        for k in range(n):
            price = 2700.0 + 0.25 * (k % 8)
            c.send(m.Tick(0, int(m.TickKind.LAST), price, 1, price - 0.25, price + 0.25, T0 + k * 1_000_000,
                          T0 + k * 1_000_000))
        c.send(Bye("done"))
        time.sleep(0.05)  # in the sidecar's socket, far from handled
        sidecar.stop()
        counts = session_counts(sidecar.db_url, welcome.session_id)
    assert counts.ticks == n
    assert counts.end_reason == "BYE"


# --- what an ended session leaves behind, and how many sessions a peer may hold ---------------------


def per_session_objects() -> collections.Counter:
    """Live objects of the classes every session builds, by class (after a full collection)."""
    from bridge.audit.reconcile import Reconciler
    from bridge.audit.recorder import Recorder
    from bridge.core.market import MarketState
    from bridge.engine.orders import OrderTracker
    from bridge.engine.pipeline import DecisionPipeline
    from bridge.engine.quality import QualityGate
    from bridge.risk.engine import RiskEngine
    from bridge.transport.server import Session
    from strategies.base import Strategy
    from strategies.features import FeatureEngine
    from strategies.portfolio import Portfolio

    kinds = (Session, DecisionPipeline, Recorder, RiskEngine, QualityGate, MarketState, OrderTracker, Reconciler,
             FeatureEngine, Portfolio, Strategy, m.Hello)
    gc.collect()
    counts: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        for kind in kinds:
            if isinstance(obj, kind):
                counts[kind.__name__] += 1
    return counts


def server_sizes(server: SidecarServer) -> dict[str, int]:
    """The length of every container the server and its stats hold."""
    # the log rate-limit windows are keyed by error code, so bounded by design; which codes a run
    # happens to log within one window is timing, not growth
    sizes = {name: len(v) for name, v in vars(server).items()
             if isinstance(v, (dict, list, set, collections.deque)) and name != "_log_window"}
    sizes |= {f"stats.{name}": len(v) for name, v in vars(server.stats).items() if isinstance(v, dict)}
    sizes["limit_commands.accepted"] = len(server.limit_commands.accepted)
    sizes["switch.events"] = len(server.switch.events)
    return sizes


class SessionCycles:
    """HELLO, a lockstep tick, and an end, over and over: by BYE, by a second HELLO on the same connection
    (REHELLO), or by the same instance connecting again (REPLACED)."""

    ENDS = ("BYE", "REHELLO", "REPLACED")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.peer = RawPeer(endpoint)
        self.opened = 0

    def hello(self, peer: RawPeer, instance: str) -> None:
        peer.send(codec.encode(hello(instance), 1, time.time_ns()))
        assert isinstance(peer.recv(), m.Welcome)
        self.opened += 1

    def run(self, first: int, n: int) -> None:
        for i in range(first, first + n):
            instance = f"cycle-{i}"
            self.hello(self.peer, instance)  # after a REHELLO cycle, this HELLO ends the session before it
            self.peer.send(codec.encode(tick(2670.0), 2, time.time_ns()))
            ack = self.peer.recv()
            assert isinstance(ack, m.Heartbeat) and ack.ack_seq == 2, ack
            end = self.ENDS[i % 3]
            if end == "BYE":
                self.peer.send(codec.encode(m.Bye("cycle"), 3, time.time_ns()))
            elif end == "REPLACED":
                other = RawPeer(self.endpoint)
                self.hello(other, instance)
                other.send(codec.encode(m.Bye("cycle"), 2, time.time_ns()))
                self.peer.close()
                self.peer = other  # its session ended with that BYE; its next HELLO opens a new one

    def close(self) -> None:
        self.peer.send(codec.encode(m.Bye("done"), 3, time.time_ns()))
        self.peer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound on waiting, not a speed requirement
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_two_thousand_sessions_opened_and_ended_leave_the_server_as_it_was(sidecar):
    server = sidecar.server
    cycles = SessionCycles(sidecar.endpoint)
    cycles.run(0, 30)  # the first sessions import the strategies and fill the log windows
    cycles.close()
    cycles = SessionCycles(sidecar.endpoint)
    wait_until(lambda: not server.sessions, "the warm-up sessions ended")
    objects, sizes = per_session_objects(), server_sizes(server)
    assert objects["Session"] == 0 and objects["DecisionPipeline"] == 0

    cycles.hello(cycles.peer, "watched")  # what is counted is what a live session holds
    live = per_session_objects()
    assert live["Session"] == 1 and live["DecisionPipeline"] == 1 and live["RiskEngine"] == objects["RiskEngine"] + 1

    cycles.run(1, 2000)
    cycles.close()
    wait_until(lambda: not server.sessions, "every session ended")
    assert per_session_objects() == objects
    assert server_sizes(server) == sizes
    assert set(server._log_window) <= {code.name for code in ErrorCode} | {"SEND_FAILED"}
    ended = server.stats.sessions_ended
    assert ended["REHELLO"] >= 667 and ended["REPLACED"] >= 667 and ended["BYE"] >= 667
    assert server.stats.sessions_opened == sum(ended.values())
    sidecar.stop()
    # what must be kept went to storage: a row per session, with how it ended
    with sqlite3.connect(sidecar.db_url.removeprefix("sqlite:///")) as conn:
        stored = dict(conn.execute("select end_reason, count(*) from sessions group by end_reason").fetchall())
    assert stored == dict(ended)


def test_a_hello_beyond_max_sessions_is_refused_counted_and_logged_and_the_others_go_on(sidecar_factory, caplog):
    s = sidecar_factory(max_sessions=2)
    a = Nt8Client(s.endpoint, instance_id="a", account="Sim101", instruments=[ES])
    b = Nt8Client(s.endpoint, instance_id="b", account="Sim101", instruments=[ES])
    a.connect()
    b.connect()
    c = Nt8Client(s.endpoint, instance_id="c", account="Sim101", instruments=[ES])
    with caplog.at_level("WARNING", logger="nt8bridge.server"):
        with pytest.raises(ClientError, match=r"server\.max_sessions = 2"):
            c.connect()
        assert [e.code for e in c.errors] == [ErrorCode.SESSION_LIMIT_REACHED]
        flood = RawPeer(s.endpoint)
        for k in range(60):
            flood.send(codec.encode(hello(f"flood-{k}"), 1, time.time_ns()))
        for _ in range(60):
            assert flood.recv_error().code == ErrorCode.SESSION_LIMIT_REACHED
    assert s.server.stats.sessions_refused == {"max_sessions": 61}
    assert s.server.stats.errors_sent["SESSION_LIMIT_REACHED"] == 61
    logged = [r for r in caplog.records if "SESSION_LIMIT_REACHED" in r.getMessage()]
    assert 1 <= len(logged) <= 20  # every refusal counted, the log spared
    # the two sessions are untouched, and a session ending frees its place for the one refused
    assert len(s.server.sessions) == 2
    assert a.step(tick(2670.0)) == [] and b.step(tick(2670.25)) == []
    a.close()
    wait_until(lambda: len(s.server.sessions) == 1, "a's session ended")
    c.connect()  # the same connection, trying again
    assert c.step(tick(2670.0)) == []
    assert b.step(tick(2670.5)) == []
    for client in (b, c):
        client.close()
    flood.close()


def test_max_sessions_per_peer_counts_the_sessions_of_one_address(sidecar_factory):
    s = sidecar_factory(max_sessions=10, max_sessions_per_peer=2)
    port = s.endpoint.rsplit(":", 1)[1]
    other_address = f"tcp://127.0.0.2:0;127.0.0.1:{port}"  # the same sidecar, from another loopback address
    a1, a2, a3 = (Nt8Client(s.endpoint, instance_id=f"a{k}", account="Sim101", instruments=[ES]) for k in (1, 2, 3))
    a1.connect()
    a2.connect()
    with pytest.raises(ClientError, match=r"127\.0\.0\.1 already holds 2 sessions \(server\.max_sessions_per_peer"):
        a3.connect()
    b1 = Nt8Client(other_address, instance_id="b1", account="Sim101", instruments=[ES])
    b1.connect()  # another peer: its own allowance
    assert s.server.stats.sessions_refused == {"max_sessions_per_peer": 1}
    peers = collections.Counter(x["peer"] for x in s.server.status_report()["live_sessions"])
    assert peers == {"127.0.0.1": 2, "127.0.0.2": 1}
    assert a1.step(tick(2670.0)) == [] and b1.step(tick(2670.0)) == []
    a2.close()
    wait_until(lambda: len(s.server.sessions) == 2, "a2's session ended")
    a3.connect()
    assert a3.step(tick(2670.0)) == []
    for client in (a1, a3, b1):
        client.close()


def test_at_the_limit_an_instance_that_reconnects_replaces_its_own_session(sidecar_factory):
    s = sidecar_factory(max_sessions=1, max_sessions_per_peer=1)
    first = Nt8Client(s.endpoint, instance_id="desk", account="Sim101", instruments=[ES])
    first_welcome = first.connect()
    with pytest.raises(ClientError, match="SESSION_LIMIT_REACHED|max_sessions"):
        Nt8Client(s.endpoint, instance_id="other", account="Sim101", instruments=[ES]).connect()
    again = Nt8Client(s.endpoint, instance_id="desk", account="Sim101", instruments=[ES])
    again.connect()  # NT8 reconnected before the sidecar noticed the old connection was gone
    assert again.step(tick(2670.0)) == []
    assert s.server.stats.sessions_ended == {"REPLACED": 1}
    first.close(reason=None)
    again.close()
    s.stop()
    assert session_counts(s.db_url, first_welcome.session_id).end_reason == "REPLACED"


def test_without_an_address_each_connection_is_a_peer_of_its_own(tmp_path):
    """inproc has no peer address: a peer is then its connection (routing id)."""
    config = Config(server=dataclasses.replace(ServerConfig(), max_sessions_per_peer=1))
    writer = StorageWriter(f"sqlite:///{tmp_path}/inproc.sqlite")
    writer.start()
    server = SidecarServer(config, writer, master_for(config), make_strategy_factory(config))
    endpoint = server.bind(f"inproc://sessions-{id(tmp_path)}")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    peers = [RawPeer(endpoint) for _ in range(2)]
    try:
        for k, peer in enumerate(peers):
            peer.send(codec.encode(hello(f"inproc-{k}"), 1, time.time_ns()))
            assert isinstance(peer.recv(), m.Welcome)
        peers[0].send(codec.encode(hello("inproc-0b"), 1, time.time_ns()))  # its own session ends first
        assert isinstance(peers[0].recv(), m.Welcome)
        live = server.status_report()["live_sessions"]
        assert len(live) == 2 and all(x["peer"].startswith("routing id ") for x in live)
        assert len({x["peer"] for x in live}) == 2
    finally:
        for peer in peers:
            peer.close()
        server.request_stop()
        thread.join(10)
        writer.close()
