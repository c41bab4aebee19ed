"""Remote mode against a real sidecar over real ZeroMQ sockets (docs/security.md): a client with the
secret trades exactly as one without; missing and wrong MACs, replayed messages and HELLOs, peers outside
the allowlist, wrong operator keys and self-approved overrides are refused with their codes, counted,
and change nothing; a non-loopback bind without a secret does not start; no secret reaches a log."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zmq

from bridge.core.config import Config, SecurityConfig, load_config
from bridge.nt8.client import ClientError, Nt8Client
from bridge.nt8.playback import load_stream, run_playback
from bridge.protocol import auth, codec
from bridge.protocol import messages as m
from bridge.protocol.messages import ErrorCode
from bridge.storage.writer import StorageWriter
from bridge.transport import operators as ops
from bridge.transport.control import ControlError, send_command
from bridge.transport.security import new_secret_file, read_secret_file
from bridge.transport.server import SidecarServer
from bridge.transport.sidecar import SidecarProcess, make_strategy_factory, master_for
from tests.conftest import PLUMBING_CONFIG

ES = m.InstrumentDecl("ES 06-18", 0.25, 50.0)
T0 = int(datetime(2018, 5, 8, 14, 30, tzinfo=timezone.utc).timestamp()) * 1_000_000_000


class Sidecar:
    """A SidecarServer in this process, data and control channels on loopback ports, run on a thread."""

    def __init__(self, config: Config, db_url: str) -> None:
        self.writer = StorageWriter(db_url, batch_rows=500)
        self.writer.start()
        self.server = SidecarServer(config, self.writer, master_for(config), make_strategy_factory(config))
        self.endpoint = self.server.bind("tcp://127.0.0.1:*")
        self.control = self.server.bind_control("tcp://127.0.0.1:*")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    @property
    def refused(self) -> dict[str, dict[str, int]]:
        return {channel: dict(c) for channel, c in self.server.stats.auth_refused.items()}

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.request_stop()
            self.thread.join(10)
            self.writer.close()
        self.server.close_control()


@pytest.fixture
def keys(tmp_path) -> dict[str, object]:
    """A secret file, and operators alice, bob and carol in an operators file."""
    secret_file = new_secret_file(tmp_path / "secret.hex")
    made = {name: ops.new_operator_key(name, tmp_path / f"{name}.key", tmp_path / "operators.toml")
            for name in ("alice", "bob", "carol")}
    return {"secret_file": secret_file, "secret": read_secret_file(secret_file)[0],
            "operators_file": tmp_path / "operators.toml", **made}


@pytest.fixture
def remote_factory(tmp_path, keys):
    started: list[Sidecar] = []

    def start(base: Config | None = None, **security) -> Sidecar:
        fields = {"secret_file": str(keys["secret_file"]), "operators_file": str(keys["operators_file"]), **security}
        config = Config(**{**(base.__dict__ if base else {}), "security": SecurityConfig(**fields)})
        s = Sidecar(config, f"sqlite:///{tmp_path}/remote-{len(started)}.sqlite")
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def remote(remote_factory) -> Sidecar:
    return remote_factory()


class AuthPeer:
    """A DEALER that does the remote-mode handshake by hand, so that it can then send anything: what an
    attacker on the path, or a broken client, could send."""

    def __init__(self, endpoint: str, secret: bytes) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.secret = secret
        self.session: auth.SessionAuth | None = None
        self.seq = 0

    def hello(self, instance: str = "remote", ts_send_ns: int | None = None, nonce: bytes | None = None) -> list[bytes]:
        self.seq += 1
        self.nonce = nonce or auth.new_nonce()
        msg = m.Hello(instance, "Sim101", 0, 1000, time.time_ns(), "test", [ES])
        return auth.encode_hello(msg, self.seq, ts_send_ns or time.time_ns(), self.secret, self.nonce)

    def connect(self, instance: str = "remote") -> m.Welcome:
        frames = self.hello(instance)
        self.sock.send_multipart(frames)
        self.hello_frames = frames
        reply = self.recv_frames()
        self.session = auth.open_welcome(reply, self.secret, self.nonce)
        return codec.decode(reply[:2])[1]

    def frames(self, msg: m.Message, seq: int | None = None) -> list[bytes]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.session.encode(msg, seq, time.time_ns())

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv_frames(self, timeout_ms: int = 5000) -> list[bytes]:
        assert self.sock.poll(timeout_ms), "no reply from the sidecar"
        return self.sock.recv_multipart()

    def recv(self, timeout_ms: int = 5000) -> m.Message:
        frames = self.recv_frames(timeout_ms)
        if self.session is not None and len(frames) == 3:
            self.session.check(*frames)  # what the sidecar sends in a session is authentic
        return codec.decode(frames[:2])[1]

    def recv_error(self) -> m.Error:
        while not isinstance(msg := self.recv(), m.Error):
            pass
        return msg

    def quiet(self, timeout_ms: int = 300) -> bool:
        """Nothing but heartbeats arrives for a while."""
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := int((deadline - time.monotonic()) * 1000)) > 0:
            if self.sock.poll(left) and not isinstance(self.recv(), m.Heartbeat):
                return False
        return True

    def close(self) -> None:
        self.sock.close()


def tick(price: float, ts: int = T0) -> m.Tick:
    return m.Tick(0, 0, price, 1, float("nan"), float("nan"), ts, ts)


def wait_until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --------------------------------------------------------------------------- a client with the secret trades

@pytest.fixture(scope="module")
def es_session(tmp_path_factory) -> Path:
    from bridge.data.nt8files import Nt8Format, write_nt8
    from bridge.data.synthetic import generate_session

    folder = tmp_path_factory.mktemp("remote-data")
    frames = generate_session(["ES 03-24"], datetime(2024, 3, 12, 13, 30, tzinfo=timezone.utc), 120, seed=11)
    path = folder / "ES 03-24.Last.txt"
    write_nt8(frames["ES 03-24"], path, Nt8Format.TICK_REPLAY)
    return path


def test_a_client_with_the_secret_trades_exactly_as_one_on_loopback_without(remote_factory, es_session, keys, tmp_path):
    plumbing = load_config(PLUMBING_CONFIG)
    stream = load_stream([es_session])
    remote = remote_factory(plumbing)
    plain = Sidecar(plumbing, f"sqlite:///{tmp_path}/plain.sqlite")
    try:
        secured = run_playback(stream, remote.endpoint, plumbing, master_for(plumbing), secret=keys["secret"])
        reference = run_playback(stream, plain.endpoint, plumbing, master_for(plumbing))
    finally:
        plain.stop()
    assert secured.brackets >= 3 and secured.fills >= 3
    assert (secured.digest, secured.brackets, secured.fills) == (reference.digest, reference.brackets, reference.fills)
    assert remote.refused == {"data": {}, "control": {}}
    assert remote.server.stats.sessions_ended["BYE"] == 1


def test_a_client_without_the_secret_or_with_another_is_refused_and_counted(remote):
    with pytest.raises(ClientError, match="HMAC trailer"):
        Nt8Client(remote.endpoint, instance_id="none", account="a", instruments=[ES]).connect()
    with pytest.raises(ClientError, match="different shared secrets"):
        Nt8Client(remote.endpoint, instance_id="other", account="a", instruments=[ES], secret=bytes(32)).connect()
    assert remote.refused["data"] == {"AUTH_REQUIRED": 1, "AUTH_BAD_MAC": 1}
    sent = remote.server.stats.errors_sent
    assert sent["AUTH_REQUIRED"] == 1 and sent["AUTH_BAD_MAC"] == 1
    assert not remote.server.sessions


# --------------------------------------------------------------------------- refusals in a session

def test_missing_and_wrong_macs_are_refused_counted_and_move_nothing(remote, keys):
    peer = AuthPeer(remote.endpoint, keys["secret"])
    peer.connect()
    session = next(iter(remote.server.sessions.values()))
    header, body = codec.encode(tick(2670.0), 2, time.time_ns())
    peer.send([header, body])  # no trailer at all
    err = peer.recv_error()
    assert (err.code, err.offending_seq) == (ErrorCode.AUTH_REQUIRED, 2)
    forged = peer.frames(tick(2670.0), seq=10**12)  # a far-ahead seq, then the body altered under the MAC
    forged[1] = codec.encode(tick(9999.0), 10**12, 0)[1]
    peer.send(forged)
    assert peer.recv_error().code == ErrorCode.AUTH_BAD_MAC
    wrong_key = auth.SessionAuth(send_key=bytes(32), recv_key=bytes(32), server_nonce=b"").encode(tick(2670.0), 3,
                                                                                                   time.time_ns())
    peer.send(wrong_key)
    assert peer.recv_error().code == ErrorCode.AUTH_BAD_MAC
    # none of it moved the session: the next real message, seq 2, is taken
    peer.send(peer.frames(tick(2670.0), seq=2))
    assert peer.quiet()
    assert session.last_seq_in == 2 and session.pipeline.ticks_accepted == 1
    assert remote.refused["data"] == {"AUTH_REQUIRED": 1, "AUTH_BAD_MAC": 2}
    peer.close()


def test_a_replayed_message_is_refused_and_counted(remote, keys):
    peer = AuthPeer(remote.endpoint, keys["secret"])
    peer.connect()
    frames = peer.frames(tick(2670.0))
    peer.send(frames)
    assert peer.quiet()
    peer.send(frames)  # the very same bytes again: MAC valid, seq not new
    err = peer.recv_error()
    assert (err.code, err.offending_seq) == (ErrorCode.AUTH_REPLAY, codec.decode_header(frames[0]).seq)
    assert next(iter(remote.server.sessions.values())).pipeline.ticks_accepted == 1
    assert remote.refused["data"] == {"AUTH_REPLAY": 1}
    peer.close()


def test_a_message_from_another_session_fails_its_mac(remote, keys):
    first, second = AuthPeer(remote.endpoint, keys["secret"]), AuthPeer(remote.endpoint, keys["secret"])
    first.connect("first")
    second.connect("second")
    second.send(first.frames(tick(2670.0), seq=2))  # valid in the first session only
    assert second.recv_error().code == ErrorCode.AUTH_BAD_MAC
    first.close()
    second.close()


def test_a_replayed_hello_opens_nothing_and_the_real_session_goes_on(remote, keys):
    real = AuthPeer(remote.endpoint, keys["secret"])
    real.connect("chart-1")
    session = next(iter(remote.server.sessions.values()))
    attacker = AuthPeer(remote.endpoint, b"unknown" * 5)
    attacker.send(real.hello_frames)  # recorded on the wire, played again at once
    err = attacker.recv_error()
    assert err.code == ErrorCode.AUTH_REPLAY and "seen" in err.text
    # recorded long ago: valid MAC, but outside the freshness window
    old = AuthPeer(remote.endpoint, keys["secret"])
    old.send(old.hello("chart-1", ts_send_ns=time.time_ns() - 120 * 1_000_000_000))
    err = old.recv_error()
    assert err.code == ErrorCode.AUTH_REPLAY and "window" in err.text
    real.send(real.frames(tick(2670.0)))
    assert real.quiet()
    assert list(remote.server.sessions.values()) == [session] and session.pipeline.ticks_accepted == 1
    assert "REPLACED" not in remote.server.stats.sessions_ended
    assert remote.refused["data"] == {"AUTH_REPLAY": 2}
    for p in (real, attacker, old):
        p.close()


def test_a_peer_outside_the_allowlist_is_refused_before_anything_else(remote_factory, keys):
    closed = remote_factory(allow="10.9.9.9, 192.168.0.0/16")
    with pytest.raises(ClientError, match="security.allow"):
        Nt8Client(closed.endpoint, instance_id="x", account="a", instruments=[ES], secret=keys["secret"]).connect()
    assert closed.refused["data"] == {"AUTH_PEER_NOT_ALLOWED": 1} and not closed.server.sessions
    open_ = remote_factory(allow="127.0.0.0/8")
    with Nt8Client(open_.endpoint, instance_id="x", account="a", instruments=[ES], secret=keys["secret"]) as c:
        c.connect()
        assert c.step(tick(2670.0)) == []
    assert open_.refused["data"] == {}


def test_the_allowlist_works_without_a_secret_too(tmp_path):
    s = Sidecar(Config(security=SecurityConfig(allow="10.9.9.9")), f"sqlite:///{tmp_path}/a.sqlite")
    try:
        with pytest.raises(ClientError, match="security.allow"):
            Nt8Client(s.endpoint, instance_id="x", account="a", instruments=[ES]).connect()
        assert s.refused["data"] == {"AUTH_PEER_NOT_ALLOWED": 1}
    finally:
        s.stop()


# --------------------------------------------------------------------------- the client refuses forgeries too

def test_the_python_client_drops_forged_and_replayed_commands(keys):
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = Nt8Client(f"tcp://127.0.0.1:{port}", instance_id="c", account="a", instruments=[ES], secret=keys["secret"],
                       lockstep=False, timeout_s=5)
    try:
        client.send(m.Hello("c", "a", 0, 1000, time.time_ns(), "t", [ES]))
        rid, *hello = router.recv_multipart()
        secret, nonce = auth.open_hello(*hello, (keys["secret"],))
        fake = auth.accept_hello(secret, nonce)
        now = time.time_ns()
        router.send_multipart([rid, *fake.encode(m.Welcome(7, "fake", 1000, 5000, now, 65536), 1, now)])
        assert isinstance(client.recv(2000), m.Welcome)
        bracket = m.SubmitBracket("B-1", 0, 1, 1, 1, float("nan"), 2668.0, 2674.0, 1, "a", "d")
        good = fake.encode(bracket, 2, now)
        bad = list(good)
        bad[1] = codec.encode(m.SubmitBracket("B-1", 0, 1, 9, 1, float("nan"), 2668.0, 2674.0, 1, "a", "d"), 2, now)[1]
        for frames in (bad, good[:2], good, good):  # altered, no trailer, authentic, the authentic one replayed
            router.send_multipart([rid, *frames])
        got = [client.recv(500) for _ in range(4)]
        assert [type(x).__name__ for x in got] == ["SubmitBracket", "NoneType", "NoneType", "NoneType"]
        assert got[0].quantity == 1 and client.auth_failures == 3
    finally:
        client.close(reason=None)
        router.close()


# --------------------------------------------------------------------------- the control channel

def control_reply(endpoint: str, req: dict) -> dict:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(json.dumps(req).encode())
        assert sock.poll(5000)
        return json.loads(sock.recv())
    finally:
        sock.close()


def test_operators_sign_with_their_own_keys_and_every_other_request_is_refused_and_counted(remote, keys):
    alice, bob = keys["alice"], keys["bob"]
    kill = {"cmd": "kill", "operator": "alice", "reason": "test"}
    unsigned = control_reply(remote.control, kill)
    assert unsigned["ok"] is False and unsigned["code"] == 400 and "--key" in unsigned["error"]
    forged = ops.sign_request(kill, ops.OperatorKey("alice", bytes(32)))
    assert control_reply(remote.control, forged)["code"] == 401
    as_other = ops.sign_request({**kill, "operator": "bob"}, alice)
    assert control_reply(remote.control, as_other)["code"] == 401
    stale = ops.sign_request(kill, alice, now_ns=time.time_ns() - 120 * 1_000_000_000)
    assert control_reply(remote.control, stale)["code"] == 402
    assert remote.server.switch.halted is False  # nothing of it acted
    signed = ops.sign_request(kill, alice)
    assert control_reply(remote.control, signed)["ok"] is True
    assert remote.server.switch.halted
    assert control_reply(remote.control, signed)["code"] == 402  # the same request again
    with pytest.raises(ControlError, match="AUTH_BAD_MAC"):
        send_command(remote.control, "enable", operator="bob", reason="r", key=alice)
    send_command(remote.control, "enable", operator="bob", reason="checked", key=bob)
    assert not remote.server.switch.halted
    assert remote.refused["control"] == {"AUTH_REQUIRED": 1, "AUTH_BAD_MAC": 3, "AUTH_REPLAY": 2}


def test_an_override_needs_a_second_operator_with_a_second_key(remote, keys):
    alice, bob, carol = keys["alice"], keys["bob"], keys["carol"]
    override = {"scope": "*", "field": "max_net", "value": 3, "why": "roll", "duration_s": 600.0}
    with pytest.raises(ControlError, match="AUTH_APPROVER_SAME_KEY"):
        send_command(remote.control, "override", who="alice", approved_by="alice", key=alice, approver_key=alice,
                     **override)
    with pytest.raises(ControlError, match="AUTH_REQUIRED"):
        send_command(remote.control, "override", who="alice", approved_by="bob", key=alice, **override)
    with pytest.raises(ControlError, match="AUTH_BAD_MAC"):  # carol signs where bob is named
        send_command(remote.control, "override", who="alice", approved_by="bob", key=alice, approver_key=carol,
                     **override)
    assert not remote.server.limit_commands.accepted
    reply = send_command(remote.control, "override", who="alice", approved_by="bob", key=alice, approver_key=bob,
                         **override)
    assert reply["ok"] and [c.approved_by for c in remote.server.limit_commands.accepted] == ["bob"]
    assert remote.refused["control"] == {"AUTH_APPROVER_SAME_KEY": 1, "AUTH_REQUIRED": 1, "AUTH_BAD_MAC": 1}


def test_status_and_metrics_show_what_remote_mode_refused_and_no_secret(remote, keys):
    from bridge.transport.metrics import serve_metrics

    port = serve_metrics(remote.server, remote.writer, "127.0.0.1", 0)
    with pytest.raises(ClientError):
        Nt8Client(remote.endpoint, instance_id="x", account="a", instruments=[ES], secret=bytes(32)).connect()
    with pytest.raises(ControlError):
        send_command(remote.control, "kill", operator="alice", reason="r", key=ops.OperatorKey("alice", bytes(32)))
    status = send_command(remote.control, "status", key=keys["carol"])
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert status["security"]["remote"] is True and status["security"]["operators"] == ["alice", "bob", "carol"]
    assert status["security"]["refused"] == {"data": {"AUTH_BAD_MAC": 1}, "control": {"AUTH_BAD_MAC": 1}}
    assert 'nt8bridge_auth_refused_total{channel="data",code="AUTH_BAD_MAC"} 1.0' in text
    assert 'nt8bridge_auth_refused_total{channel="control",code="AUTH_BAD_MAC"} 1.0' in text
    for secret in (keys["secret"], keys["alice"].key, keys["bob"].key, keys["carol"].key):
        assert secret.hex() not in json.dumps(status) and secret.hex() not in text


def test_no_secret_key_or_mac_reaches_the_log(remote, keys, caplog):
    caplog.set_level(logging.DEBUG)
    peer = AuthPeer(remote.endpoint, keys["secret"])
    peer.connect()
    good = peer.frames(tick(2670.0))
    peer.send(good)
    peer.send(good)  # a replay: logged
    peer.recv_error()
    bad = list(good)
    bad[2] = bytes(32)
    peer.send(bad)  # a bad MAC: logged
    peer.recv_error()
    with pytest.raises(ClientError):
        Nt8Client(remote.endpoint, instance_id="x", account="a", instruments=[ES], secret=bytes(32)).connect()
    with pytest.raises(ControlError):
        send_command(remote.control, "kill", operator="alice", reason="r", key=ops.OperatorKey("alice", bytes(32)))
    remote.stop()
    text = caplog.text
    assert "AUTH_REPLAY" in text and "AUTH_BAD_MAC" in text  # the refusals are logged...
    for secret in (keys["secret"], keys["alice"].key, peer.session.send_key, peer.session.recv_key, good[2]):
        assert secret.hex() not in text and repr(secret) not in text  # ...and nothing secret with them
    peer.close()


# --------------------------------------------------------------------------- starting

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_sidecar_beyond_loopback_without_a_secret_does_not_start(tmp_path, capsys):
    from bridge.cli.main import main

    port = free_port()
    config = tmp_path / "open.toml"
    config.write_text("[metrics]\nenabled = false\n")
    code = main(["--config", str(config), "serve", "--bind", f"tcp://0.0.0.0:{port}", "--db",
                 f"sqlite:///{tmp_path}/x.sqlite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("nt8bridge: server.bind tcp://0.0.0.0:") and "nt8bridge secret new" in err[-1]
    assert not (tmp_path / "x.sqlite").exists()  # refused before anything started
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # and nothing listens there


def test_a_sidecar_beyond_loopback_with_the_secret_serves_remote_clients(tmp_path, keys):
    port = free_port()
    config = tmp_path / "remote.toml"
    config.write_text(PLUMBING_CONFIG.read_text() + f'\n[security]\nsecret_file = "{keys["secret_file"].as_posix()}"\n')
    with SidecarProcess(f"sqlite:///{tmp_path}/r.sqlite", config, extra_args=("--bind", f"tcp://0.0.0.0:{port}")) as sc:
        assert sc.endpoint.startswith("tcp://0.0.0.0:")
        with Nt8Client(f"tcp://127.0.0.1:{port}", instance_id="far", account="a", instruments=[ES],
                       secret=keys["secret"]) as c:
            c.connect()
            assert c.step(tick(2670.0)) == []
        status = send_command(sc.control_endpoint, "status")
    assert status["security"]["remote"] and status["security"]["refused"]["data"] == {}
    assert keys["secret"].hex() not in Path(sc.log_path).read_text()
    # the configuration recorded in the audit trail at start names the file, never what is in it
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*")
                      if p.is_file() and p.suffix not in (".hex", ".toml"))  # the database and the audit journal
    assert str(keys["secret_file"].as_posix()).encode() in stored and keys["secret"].hex().encode() not in stored
