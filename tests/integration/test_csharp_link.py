"""The C# link (ninjascript/AddOns/Nt8Bridge/Link.cs) under Mono: throughput and order, reconnect to a
restarted sidecar, heartbeat loss, garbage from the peer, the bounded queue, and lockstep re-entrancy.

Peers: a pyzmq ROUTER, the real sidecar (``nt8bridge serve`` in a child process), and a raw TCP peer
that speaks ZMTP by hand so that it can go silent or send what libzmq never would. The listener and the
producers are C# (tests/integration/LinkProbe.cs, test-only) so that callbacks run on the link's own
threads and the measured rate is the link's, not pythonnet's.
"""

from __future__ import annotations

import math
import random
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from bridge.protocol import codec
from bridge.protocol import messages as m
from bridge.protocol.messages import MsgType
from bridge.transport.sidecar import SidecarProcess
from bridge.storage.queries import session_counts

HEADER = struct.Struct("<4sBBHQqq")


# --------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def probe(cs, tmp_path_factory):
    """LinkProbe.cs compiled against the shipped library the ``cs`` fixture loaded."""
    import clr

    from bridge.nt8.ninjascript import find_mcs

    shipped = Path(clr.GetClrType(cs.BridgeLink).Assembly.Location)  # whichever assembly the fixture built
    out = tmp_path_factory.mktemp("probe") / "Nt8BridgeLinkProbe.dll"
    cmd = [find_mcs(), "-langversion:7.2", "-sdk:4.8", "-target:library", "-warnaserror+", "-nologo",
           f"-lib:{shipped.parent}", f"-r:{shipped}", f"-out:{out}", str(Path(__file__).with_name("LinkProbe.cs"))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    clr.AddReference(str(out))
    import Nt8BridgeTests

    return Nt8BridgeTests


class Harness:
    """A link with a recording listener and a log sink; stops the link whatever the test did."""

    def __init__(self, cs, probe, endpoint: str, instance: str = "link-test", **options) -> None:
        self.opts = cs.LinkOptions()
        self.opts.Endpoint = endpoint
        for name, value in options.items():
            setattr(self.opts, name, value)
        self.log = probe.LogSink()
        self.opts.Log = self.log.Action
        self.listener = probe.RecordingListener()
        self.link = cs.BridgeLink(self.opts, probe.Probe.HelloFactory(instance), self.listener)
        self.listener.Link = self.link

    def log_text(self) -> str:
        return "\n".join(self.log.Lines())

    def wait(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; link log:\n{self.log_text()}")
            time.sleep(0.01)


@pytest.fixture
def harnesses():
    made: list[Harness] = []
    yield made
    for h in made:
        h.link.Stop("test over")


@pytest.fixture
def make(cs, probe, harnesses):
    def factory(endpoint: str, **options) -> Harness:
        h = Harness(cs, probe, endpoint, **options)
        harnesses.append(h)
        return h
    return factory


@pytest.fixture
def router():
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def welcome_frames(session_id: int, echo_ns: int, seq: int = 1) -> list[bytes]:
    return codec.encode(m.Welcome(session_id, "test-peer", 1000, 5000, time.time_ns(), 65536), seq, time.time_ns(), echo_ns)


class RawPeer:
    """One accepted TCP connection that speaks ZMTP 3.1 by hand (rfc.zeromq.org/spec/37)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.buf = b""
        self.pings = 0

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the link closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def handshake(self) -> None:
        self.sock.sendall(b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\0") + b"\x01" + bytes(31))
        greeting = self.read_exact(64)
        assert greeting[0] == 0xFF and greeting[9] == 0x7F and greeting[10] == 3
        meta = bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"ROUTER"
        self.sock.sendall(self.frame(bytes([5]) + b"READY" + meta, 4))
        flags, body = self.read_frame()
        assert flags & 4 and body[1:6] == b"READY" and b"DEALER" in body

    @staticmethod
    def frame(body: bytes, flags: int = 0) -> bytes:
        if len(body) > 255:
            return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
        return bytes([flags, len(body)]) + body

    def read_frame(self) -> tuple[int, bytes]:
        flags = self.read_exact(1)[0]
        size = struct.unpack(">Q", self.read_exact(8))[0] if flags & 2 else self.read_exact(1)[0]
        return flags, self.read_exact(size)

    def recv_message(self) -> list[bytes]:
        """The next message's frames; ZMTP commands (the link's PINGs) are counted and skipped."""
        frames: list[bytes] = []
        while True:
            flags, body = self.read_frame()
            if flags & 4:
                if body[1:1 + body[0]] == b"PING":
                    self.pings += 1
                continue
            frames.append(body)
            if not flags & 1:
                return frames

    def recv_decoded(self, skip_heartbeats: bool = True) -> tuple[codec.Header, object]:
        while True:
            header, msg = codec.decode(self.recv_message())
            if not (skip_heartbeats and isinstance(msg, m.Heartbeat)):
                return header, msg

    def send(self, frames: list[bytes]) -> None:
        self.sock.sendall(b"".join(self.frame(f, 1 if i < len(frames) - 1 else 0) for i, f in enumerate(frames)))

    def welcome(self, session_id: int) -> codec.Header:
        """Handshake, read HELLO, answer WELCOME; returns HELLO's header."""
        self.handshake()
        header, hello = codec.decode(self.recv_message())
        assert isinstance(hello, m.Hello) and header.seq == 1 and not hello.flags & 1  # threaded: no lockstep flag
        self.send(welcome_frames(session_id, header.ts_send_ns))
        return header

    def close(self) -> None:
        self.sock.close()


class RawServer:
    """A listening socket; each accepted connection goes to ``script(peer, index)`` on a thread of its own."""

    def __init__(self, script=None) -> None:
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.endpoint = f"tcp://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.script = script
        self.peers: list[RawPeer] = []
        self.failures: list[BaseException] = []
        self._closed = False
        if script is not None:
            threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            peer = RawPeer(sock)
            self.peers.append(peer)
            threading.Thread(target=self._run, args=(peer, len(self.peers) - 1), daemon=True).start()

    def _run(self, peer: RawPeer, index: int) -> None:
        try:
            self.script(peer, index)
        except (EOFError, OSError):
            pass  # the link closed this connection: expected in these scripts
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failures.append(exc)

    def close(self) -> None:
        self._closed = True
        self.lsock.close()
        for p in self.peers:
            p.close()


# --------------------------------------------------------------------------- 1. throughput and order

def test_a_million_messages_arrive_in_order_with_consecutive_seqs(cs, probe, make, router):
    sock, endpoint = router
    n = 1_000_000
    result: dict = {"ticks": 0, "problems": [], "types": set()}

    def receive() -> None:
        assert sock.poll(20000)
        rid, header, body = sock.recv_multipart()
        h, hello = codec.decode([header, body])
        result["hello_seq"], result["rid"] = h.seq, rid
        sock.send_multipart([rid, *welcome_frames(77, h.ts_send_ns)])
        expected_seq, expected_volume = 2, 1
        while expected_volume <= n:
            if not sock.poll(30000):
                result["problems"].append(f"nothing for 30 s after tick {expected_volume - 1}")
                return
            _, header, body = sock.recv_multipart()
            _, _, mtype, _, seq, _, _ = HEADER.unpack(header)
            if seq != expected_seq and len(result["problems"]) < 10:
                result["problems"].append(f"seq {seq} where {expected_seq} was expected")
            expected_seq = seq + 1
            result["last_seq"] = seq
            result["types"].add(mtype)
            if mtype == MsgType.TICK:
                volume = struct.unpack_from("<q", body, 11)[0]
                if volume != expected_volume and len(result["problems"]) < 10:
                    result["problems"].append(f"tick volume {volume} where {expected_volume} was expected")
                expected_volume = volume + 1
                result["ticks"] += 1
        result["done"] = time.perf_counter()

    # a generous timeout: the test's ROUTER sends no heartbeats of its own, only libzmq's PONGs answer
    h = make(endpoint, HeartbeatTimeoutMs=10000)
    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    h.link.Start()
    h.wait(lambda: h.listener.WelcomeCount == 1, 10, "WELCOME")
    start = time.perf_counter()
    post_ms = probe.Probe.PostTicksPaced(h.link, n, h.opts.SendQueueCapacity)
    receiver.join(300)
    assert not receiver.is_alive(), f"the receiver did not finish; link log:\n{h.log_text()}"
    assert result["problems"] == []
    assert result["hello_seq"] == 1 and result["ticks"] == n
    assert h.link.Dropped == 0 and h.link.DroppedStale == 0 and h.link.ProtocolErrors == 0
    assert h.link.SessionId == 77
    elapsed = result["done"] - start
    print(f"\n{n:,} TICKs from the C# link to a pyzmq ROUTER in {elapsed:.2f} s: {n / elapsed:,.0f} messages/s "
          f"end to end (posting took {post_ms / 1000:.2f} s)")
    # Stop says goodbye: BYE is the last message, after every tick (and after the peer has acknowledged them,
    # as the sidecar's HEARTBEAT does: Stop waits for that)
    sock.send_multipart([result["rid"], *codec.encode(m.Heartbeat(result["last_seq"]), 2, time.time_ns())])
    h.link.Stop("flood done")
    frames = None
    while sock.poll(5000):
        frames = sock.recv_multipart()
        if frames[1][5] == MsgType.BYE:
            break
    assert frames is not None and frames[1][5] == MsgType.BYE
    assert codec.decode(frames[1:])[1].reason == "flood done"


# --------------------------------------------------------------------------- 2. reconnect

def test_a_killed_and_restarted_sidecar_gets_the_queued_order_event_and_not_the_stale_ticks(cs, probe, make, tmp_path):
    port = free_port()
    bind = ("--bind", f"tcp://127.0.0.1:{port}")  # the same port both times (argparse keeps the last --bind)
    first_db, second_db = f"sqlite:///{tmp_path}/first.sqlite", f"sqlite:///{tmp_path}/second.sqlite"
    first = SidecarProcess(first_db, extra_args=bind)
    second = SidecarProcess(second_db, extra_args=bind)
    try:
        first.start()
        h = make(f"tcp://127.0.0.1:{port}", HeartbeatMs=200, HeartbeatTimeoutMs=2000, BackoffInitialMs=50,
                 BackoffMaxMs=400)
        h.link.Start()
        h.wait(lambda: h.link.IsConnected, 30, "the first session")
        assert h.link.Post(probe.Probe.Tick(1, 2670.0))

        first.proc.kill()  # SIGKILL: no BYE, no clean close of the session
        first.proc.wait(30)
        first.stop()
        h.wait(lambda: h.listener.DownCount == 1, 10, "OnLinkDown after the kill")
        assert not h.link.IsConnected and h.link.LinkDowns == 1

        assert h.link.Post(probe.Probe.OrderUpdate("queued-while-down"))
        for i in range(5):
            assert h.link.Post(probe.Probe.Tick(100 + i, 2670.25))
        assert h.link.Queued == 6

        second.start()
        h.wait(lambda: h.listener.WelcomeCount == 2, 60, "the second WELCOME")
        h.wait(lambda: h.link.Queued == 0, 10, "the queue to drain")
        assert h.link.Reconnects == 1
        assert h.listener.SessionId(1) != h.listener.SessionId(0) and h.link.SessionId == h.listener.SessionId(1)
        assert h.link.DroppedStale == 5 and h.link.Dropped == 0
        assert h.listener.DownCount == 1  # once per lost session, not once per refused redial
        h.link.Stop("test done")
        second.stop()
        counts = session_counts(second_db, h.listener.SessionId(1))
        assert counts.order_updates == 1  # the order event queued while the sidecar was down arrived
        assert counts.ticks == 0  # the stale ticks did not
        assert counts.end_reason == "BYE"
    finally:
        for s in (first, second):
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
            s.stop()


# --------------------------------------------------------------------------- 3. heartbeat loss

def test_a_peer_that_goes_silent_is_declared_lost_once_after_the_heartbeat_timeout(cs, probe, make):
    welcomed = threading.Event()
    t_welcome: list[float] = []

    def script(peer: RawPeer, index: int) -> None:
        if index > 0:
            return  # later redials: the kernel accepts, nobody greets; they must not count as lost sessions
        peer.handshake()
        header, hello = codec.decode(peer.recv_message())
        assert isinstance(hello, m.Hello)
        t_welcome.append(time.time() * 1000)  # before sending: the link cannot have heard it earlier
        peer.send(welcome_frames(5, header.ts_send_ns))
        welcomed.set()  # and then silence, with the connection left open

    server = RawServer(script)
    timeout_ms = 1000
    h = make(server.endpoint, HeartbeatMs=200, HeartbeatTimeoutMs=timeout_ms, ConnectTimeoutMs=500, BackoffInitialMs=100)
    try:
        h.link.Start()
        assert welcomed.wait(10)
        h.wait(lambda: h.listener.DownCount >= 1, 10 * timeout_ms / 1000, "OnLinkDown")
        after_ms = h.listener.DownWallMs(0) - t_welcome[0]
        assert timeout_ms <= after_ms <= 5 * timeout_ms
        assert "nothing heard" in h.listener.Down(0)
        from System.Threading import Thread
        assert h.listener.DownThreadId != Thread.CurrentThread.ManagedThreadId  # on the link's reader thread
        time.sleep(3 * timeout_ms / 1000)
        assert h.listener.DownCount == 1 and h.link.LinkDowns == 1 and h.link.Reconnects == 0
        assert len(server.peers) >= 2  # it kept redialling
        # while alive, the link sent HEARTBEATs acknowledging the WELCOME (seq 1) and ZMTP PINGs
        first = server.peers[0]
        beats = []
        try:
            while True:
                header, msg = codec.decode(first.recv_message())
                beats.append((header.seq, msg))
        except (EOFError, OSError):
            pass
        assert beats and all(isinstance(b, m.Heartbeat) and b.ack_seq == 1 for _, b in beats)
        assert [s for s, _ in beats] == list(range(2, 2 + len(beats)))
        assert first.pings >= 1
        assert server.failures == []
    finally:
        h.link.Stop("test over")
        server.close()


# --------------------------------------------------------------------------- 4. garbage

def _undecodable() -> list[list[bytes]]:
    tick = codec.encode(m.Tick(0, 0, 1.0, 1, 1.0, 1.0, 0, 0), 3, 0)
    return [
        [b"XXXX" + bytes(28), b""],                                      # bad magic
        [HEADER.pack(b"NT8B", 1, 21, 0, 2, 0, 0)],                         # one frame
        [HEADER.pack(b"NT8B", 1, 77, 0, 3, 0, 0), b""],                    # unknown type
        [HEADER.pack(b"NT8B", 1, 21, 0, 4, 0, 0), b"\x01\x00"],            # truncated ERROR body
        [b"NT8B" + bytes(4), b""],                                         # header too short
        tick,                                                              # a type only NT8 sends
    ]


def test_undecodable_messages_are_counted_and_the_connection_is_kept(cs, probe, make):
    garbage = _undecodable()

    def script(peer: RawPeer, index: int) -> None:
        peer.welcome(9)
        for frames in garbage:
            peer.send(frames)
        peer.send(codec.encode(m.Error(105, 0, 0, "a real ERROR after the garbage"), 2, time.time_ns()))
        header, msg = peer.recv_decoded()
        assert isinstance(msg, m.OrderUpdate) and msg.client_order_id == "after-garbage"
        peer.send(codec.encode(m.Heartbeat(header.seq), 3, time.time_ns()))  # acknowledged, as the sidecar would
        peer.sock.settimeout(30)
        peer.recv_message()  # stay connected until the link leaves

    server = RawServer(script)
    h = make(server.endpoint, HeartbeatTimeoutMs=30000)
    try:
        h.link.Start()
        h.wait(lambda: h.listener.CommandCount == 1, 10, "the ERROR sent after the garbage")
        assert h.link.ProtocolErrors == len(garbage)
        assert h.link.ErrorsReceived == 1 and h.listener.Command(0).Text == "a real ERROR after the garbage"
        assert h.link.Post(probe.Probe.OrderUpdate("after-garbage"))  # the connection works both ways
        h.wait(lambda: h.link.Queued == 0, 10, "the ORDER_UPDATE to be written")
        time.sleep(0.2)
        assert h.link.IsConnected and h.link.LinkDowns == 0 and h.link.Reconnects == 0
        assert h.listener.WelcomeCount == 1 and len(server.peers) == 1
        assert "cannot be decoded" in h.log_text()
    finally:
        h.link.Stop("test over")
        server.close()
    assert server.failures == []


@pytest.mark.parametrize("kind", ["oversize frame", "random bytes"])
def test_broken_framing_closes_the_connection_and_the_link_reconnects(cs, probe, make, kind):
    limit = 4096

    def script(peer: RawPeer, index: int) -> None:
        peer.welcome(100 + index)
        if index == 0:
            if kind == "oversize frame":
                header = HEADER.pack(b"NT8B", 1, 21, 0, 2, 0, 0)
                peer.send([header, b"z" * (limit + 1)])
            else:
                peer.sock.sendall(random.Random(7).randbytes(4096))
        peer.sock.settimeout(30)
        while True:
            peer.recv_message()  # stay connected (and silent) until the link leaves

    server = RawServer(script)
    h = make(server.endpoint, MaxFrameBytes=limit, HeartbeatTimeoutMs=30000, BackoffInitialMs=50)
    try:
        h.link.Start()
        h.wait(lambda: h.listener.WelcomeCount == 2, 10, "a second session after the garbage")
        assert h.link.ProtocolErrors == 1 if kind == "oversize frame" else h.link.ProtocolErrors >= 1
        assert h.link.LinkDowns == 1 and h.link.Reconnects == 1 and h.listener.DownCount == 1
        assert "framing" in h.listener.Down(0)
        assert h.link.SessionId == 101
        h.wait(lambda: h.link.IsConnected, 5, "the second session to be up")
    finally:
        h.link.Stop("test over")
        server.close()
    assert server.failures == []


# --------------------------------------------------------------------------- 5. bounded queue

@pytest.mark.parametrize("peer", ["nothing listening", "a peer that never answers"])
def test_a_full_queue_drops_and_counts_the_overflow_without_blocking(cs, probe, make, peer):
    silent = None
    if peer == "nothing listening":
        endpoint = f"tcp://127.0.0.1:{free_port()}"
    else:
        silent = RawServer()  # accepts TCP (the kernel does), never greets: each attempt takes ConnectTimeoutMs
        endpoint = silent.endpoint
    connect_timeout_ms = 3000
    h = make(endpoint, SendQueueCapacity=1000, ConnectTimeoutMs=connect_timeout_ms)
    try:
        h.link.Start()
        accepted, slowest_ms, total_ms = probe.Probe.PostTicks(h.link, 10_000, 0.0, 0.0)
        assert accepted == 1000
        assert h.link.Dropped == 9000 and h.link.Queued == 1000
        assert total_ms < connect_timeout_ms  # no Post waited for a connection attempt
        assert not h.link.IsConnected
        assert "send queue is full" in h.log_text()
        assert h.link.DroppedOrderEvents == 0
        assert not h.link.Post(probe.Probe.OrderUpdate("overflow"))  # a full queue drops order events too, counted apart
        assert h.link.Dropped == 9001 and h.link.DroppedOrderEvents == 1
        h.link.Stop("test over")
        assert h.link.Queued == 0 and h.link.Dropped == 10_001  # what was never sent is counted too
        assert "1 of the dropped were order events" in h.log_text()
        assert h.link.State == cs.LinkState.Stopped
    finally:
        if silent is not None:
            silent.close()


# --------------------------------------------------------------------------- 6. lockstep

def test_lockstep_against_the_real_sidecar_returns_after_each_ack(cs, probe, make, tmp_path):
    db = f"sqlite:///{tmp_path}/lockstep.sqlite"
    with SidecarProcess(db) as sidecar:
        h = make(sidecar.endpoint, Lockstep=True)
        h.link.Start()  # synchronous: the session is up when it returns
        assert h.link.IsConnected and h.listener.WelcomeCount == 1 and h.link.SessionId > 0
        assert h.link.WaitConnected(0)
        session = h.link.SessionId
        assert h.link.Post(probe.Probe.Tick(1, 2670.0))
        assert h.link.Received >= 2  # WELCOME and the ack of seq 2 (and any idle heartbeat of the sidecar's)
        assert h.link.Post(probe.Probe.Tick(2, math.nan))  # refused by the quality gate: ERROR, then the ack
        assert h.listener.CommandCount == 1 and h.link.ErrorsReceived == 1  # dispatched before Post returned
        error = h.listener.Command(0)
        assert int(error.Code) == int(m.ErrorCode.QUALITY_NONFINITE_PRICE) and int(error.OffendingSeq) == 3
        assert h.link.LastRoundTripMs > 0
        assert h.link.Sent == 3 and h.link.Dropped == 0
        h.link.Stop("playback over")
    counts = session_counts(db, session)
    assert counts.ticks == 1 and counts.end_reason == "BYE"


def _lockstep_router(sock, script, stop: threading.Event, seen: list) -> None:
    """A fake sidecar: for each message, ``script(rid, header, msg)`` returns the replies to send."""
    out_seq: dict[bytes, int] = {}
    while not stop.is_set():
        if not sock.poll(50):
            continue
        rid, *frames = sock.recv_multipart()
        header, msg = codec.decode(frames)
        seen.append((rid, header.seq, msg))
        for reply in script(rid, header, msg):
            out_seq[rid] = out_seq.get(rid, 0) + 1
            sock.send_multipart([rid, *codec.encode(reply, out_seq[rid], time.time_ns(), header.ts_send_ns)])


def test_a_post_from_inside_a_lockstep_callback_waits_for_its_own_ack(cs, probe, make, router):
    sock, endpoint = router
    stop, seen = threading.Event(), []

    def script(rid, header, msg):
        if isinstance(msg, m.Hello):
            assert msg.flags & 1  # the link sets the lockstep flag itself
            return [m.Welcome(1, "fake", 1000, 5000, time.time_ns(), 65536)]
        if isinstance(msg, m.Tick):  # refuse it: ERROR, then the ack, as the sidecar does
            return [m.Error(301, header.seq, int(MsgType.TICK), "refused"), m.Heartbeat(header.seq)]
        return [m.Heartbeat(header.seq)]

    thread = threading.Thread(target=_lockstep_router, args=(sock, script, stop, seen), daemon=True)
    thread.start()
    try:
        h = make(endpoint, Lockstep=True, LockstepTimeoutMs=3000)
        h.listener.PostOnFirstError(probe.Probe.OrderUpdate("nested"))
        h.link.Start()
        # the nested Post consumes both acks (2 and 3); the outer one must still see that 2 was acknowledged
        assert h.link.Post(probe.Probe.Tick(1, 2670.0))
        assert list(h.listener.Events()) == ["welcome", "command Error seq 2", "nested post", "nested post returned True"]
        assert [(s, type(x).__name__) for _, s, x in seen] == [(1, "Hello"), (2, "Tick"), (3, "OrderUpdate")]
        from System.Threading import Thread
        assert h.listener.CommandThreadId == Thread.CurrentThread.ManagedThreadId  # on the caller's thread
        assert h.link.Post(probe.Probe.OrderUpdate("after"))  # and the link goes on
        assert h.link.LinkDowns == 0 and h.link.ErrorsReceived == 1
    finally:
        stop.set()
        thread.join(5)


def test_lockstep_without_an_ack_reports_the_link_down_and_a_later_post_reconnects(cs, probe, make, router):
    sock, endpoint = router
    stop, seen = threading.Event(), []
    first_rid: list[bytes] = []

    def script(rid, header, msg):
        if isinstance(msg, m.Hello):
            first_rid.append(rid)
            return [m.Welcome(len(first_rid), "fake", 1000, 5000, time.time_ns(), 65536)]
        if rid == first_rid[0]:
            return []  # the first session never acknowledges anything
        return [m.Heartbeat(header.seq)]

    thread = threading.Thread(target=_lockstep_router, args=(sock, script, stop, seen), daemon=True)
    thread.start()
    try:
        timeout_ms = 1500  # also the wait for WELCOME when redialling: not too tight on a loaded machine
        h = make(endpoint, Lockstep=True, LockstepTimeoutMs=timeout_ms)
        h.link.Start()
        t0 = time.monotonic()
        assert not h.link.Post(probe.Probe.Tick(1, 2670.0))
        # it waited for the ack (Mono's Stopwatch and this clock may differ by a millisecond or so)
        assert time.monotonic() - t0 >= timeout_ms / 1000 - 0.05
        assert h.listener.DownCount == 1 and "no acknowledgement" in h.listener.Down(0)
        assert not h.link.IsConnected and h.link.LinkDowns == 1
        assert h.link.Post(probe.Probe.Tick(2, 2670.0)), h.log_text()  # redials once, synchronously, then sends
        assert h.listener.WelcomeCount == 2 and h.link.Reconnects == 1 and h.link.SessionId == 2
        assert h.link.IsConnected and h.listener.DownCount == 1
    finally:
        stop.set()
        thread.join(5)


def test_lockstep_start_without_a_sidecar_says_what_to_do(cs, probe, make):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    h = make(endpoint, Lockstep=True, ConnectTimeoutMs=1000)
    with pytest.raises(cs.LinkException) as info:
        h.link.Start()
    assert endpoint in str(info.value) and "Start the sidecar" in str(info.value)
    assert h.link.State == cs.LinkState.Down and not h.link.Post(probe.Probe.Tick(1, 2670.0))


# --------------------------------------------------------------------------- 7. stop: drain before BYE, wait for the session

def _late_acker(sock, n_ticks: int, ack_delay_s: float | None, stop: threading.Event, seen: list, acked: dict) -> None:
    """A fake sidecar: WELCOMEs, records every message, and acknowledges the last tick (seq n_ticks + 1) only
    ``ack_delay_s`` after it arrived (never when None), as a sidecar that is that far behind would."""
    rid, last_tick_at, out_seq = None, None, 1
    while not stop.is_set():
        if sock.poll(10):
            rid, *frames = sock.recv_multipart()
            header, msg = codec.decode(frames)
            seen.append((time.monotonic(), header.seq, msg))
            if isinstance(msg, m.Hello):
                sock.send_multipart([rid, *welcome_frames(7, header.ts_send_ns)])
            elif isinstance(msg, m.Tick) and header.seq == n_ticks + 1:
                last_tick_at = time.monotonic()
        if (ack_delay_s is not None and last_tick_at is not None and "at" not in acked
                and time.monotonic() >= last_tick_at + ack_delay_s):
            out_seq += 1
            acked["at"] = time.monotonic()
            sock.send_multipart([rid, *codec.encode(m.Heartbeat(n_ticks + 1), out_seq, time.time_ns())])


def _bye_after_ticks(h: Harness, seen: list, n_ticks: int) -> tuple[float, list]:
    """The BYE's arrival time, and what the link sent between the last tick and BYE."""
    h.wait(lambda: any(isinstance(msg, m.Bye) for _, _, msg in seen), 5, "BYE")
    t_bye = next(t for t, _, msg in seen if isinstance(msg, m.Bye))
    between = [msg for t, seq, msg in seen if seq > n_ticks + 1 and not isinstance(msg, m.Bye)]
    return t_bye, between


def test_stop_waits_for_the_ack_of_the_last_message_before_bye(cs, probe, make, router):
    """Threaded Stop waits until the sidecar has acknowledged the last message sent (HEARTBEAT.ack_seq) before
    BYE: the link closes the connection soon after BYE, and a sidecar still far behind would lose the rest."""
    sock, endpoint = router
    n, delay = 100, 1.5
    stop, seen, acked = threading.Event(), [], {}
    thread = threading.Thread(target=_late_acker, args=(sock, n, delay, stop, seen, acked), daemon=True)
    thread.start()
    try:
        h = make(endpoint, HeartbeatMs=200, HeartbeatTimeoutMs=5000, StopDrainMs=10_000)
        h.link.Start()
        assert h.link.WaitConnected(10_000), h.log_text()
        for i in range(n):
            assert h.link.Post(probe.Probe.Tick(i + 1, 2670.0))
        h.wait(lambda: any(seq == n + 1 for _, seq, _ in seen), 10, "the last tick at the peer")
        t_stop = time.monotonic()
        h.link.Stop("drained")
        stopped_after = time.monotonic() - t_stop
        t_bye, between = _bye_after_ticks(h, seen, n)
        assert "at" in acked and acked["at"] > t_stop + 0.5  # the ack really came late, during Stop
        assert t_bye >= acked["at"], (t_bye - acked["at"])  # BYE only after it
        assert stopped_after < delay + 3  # and not much later: the wait ends when the ack arrives
        assert all(isinstance(msg, m.Heartbeat) for msg in between)  # meanwhile only the link's own heartbeats
        assert "caught up with the" in h.log_text()
        assert h.link.State == cs.LinkState.Stopped and h.link.Dropped == 0
    finally:
        stop.set()
        thread.join(5)


def test_stop_gives_up_waiting_for_the_ack_after_stop_drain_ms(cs, probe, make, router):
    sock, endpoint = router
    n, drain_ms = 10, 700
    stop, seen, acked = threading.Event(), [], {}
    thread = threading.Thread(target=_late_acker, args=(sock, n, None, stop, seen, acked), daemon=True)
    thread.start()
    try:
        h = make(endpoint, HeartbeatMs=200, HeartbeatTimeoutMs=5000, StopDrainMs=drain_ms)
        h.link.Start()
        assert h.link.WaitConnected(10_000), h.log_text()
        for i in range(n):
            assert h.link.Post(probe.Probe.Tick(i + 1, 2670.0))
        h.wait(lambda: any(seq == n + 1 for _, seq, _ in seen), 10, "the last tick at the peer")
        t_stop = time.monotonic()
        h.link.Stop("no ack")
        t_bye, _ = _bye_after_ticks(h, seen, n)
        assert drain_ms / 1000 - 0.05 <= t_bye - t_stop < drain_ms / 1000 + 2.0
        assert "StopDrainMs" in h.log_text()
        assert next(msg for _, _, msg in seen if isinstance(msg, m.Bye)).reason == "no ack"
    finally:
        stop.set()
        thread.join(5)


def test_wait_connected_returns_once_the_session_is_up_or_after_the_timeout(cs, probe, make, router):
    sock, endpoint = router
    delay = 0.4

    def late_welcome() -> None:
        assert sock.poll(10_000)
        rid, *frames = sock.recv_multipart()
        header, _ = codec.decode(frames)
        time.sleep(delay)
        sock.send_multipart([rid, *welcome_frames(3, header.ts_send_ns)])

    thread = threading.Thread(target=late_welcome, daemon=True)
    thread.start()
    h = make(endpoint)
    assert not h.link.WaitConnected(100)  # not started: nothing to wait for
    t0 = time.monotonic()
    h.link.Start()
    assert h.link.WaitConnected(10_000), h.log_text()
    assert time.monotonic() - t0 >= delay - 0.05 and h.link.IsConnected and h.link.SessionId == 3
    thread.join(5)

    away = make(f"tcp://127.0.0.1:{free_port()}", ConnectTimeoutMs=300)
    away.link.Start()
    t0 = time.monotonic()
    assert not away.link.WaitConnected(500)
    assert 0.45 <= time.monotonic() - t0 < 3
    assert not away.link.IsConnected  # and it keeps trying in the background
    away.link.Stop("test over")
    assert not away.link.WaitConnected(1000)  # stopped: returns at once


# --------------------------------------------------------------------------- 9. remote mode (docs/security.md)

def _net(data: bytes):
    from System import Array, Byte
    return Array[Byte](list(data))


@pytest.fixture
def remote_sidecar(tmp_path):
    """``nt8bridge serve`` in remote mode (a secret file in its config), and the secret."""
    from bridge.transport.security import new_secret_file, read_secret_file

    secret_file = new_secret_file(tmp_path / "secret.hex")
    config = tmp_path / "remote.toml"
    config.write_text(f'[security]\nsecret_file = "{secret_file.as_posix()}"\n')
    db = f"sqlite:///{tmp_path}/remote.sqlite"
    with SidecarProcess(db, config) as sidecar:
        yield sidecar, read_secret_file(secret_file)[0], db


def test_remote_mode_a_link_with_the_secret_works_as_on_loopback_in_both_modes(cs, probe, make, remote_sidecar):
    from bridge.transport.control import send_command

    sidecar, secret, db = remote_sidecar
    h = make(sidecar.endpoint, Lockstep=True, Secret=_net(secret))
    h.link.Start()
    assert h.link.IsConnected and h.listener.WelcomeCount == 1
    session = h.link.SessionId
    assert h.link.Post(probe.Probe.Tick(1, 2670.0))
    assert h.link.Post(probe.Probe.Tick(2, math.nan))  # refused by the quality gate: an authenticated ERROR, the ack
    assert h.listener.CommandCount == 1 and int(h.listener.Command(0).Code) == int(m.ErrorCode.QUALITY_NONFINITE_PRICE)
    assert h.link.Post(probe.Probe.OrderUpdate("remote-1"))
    h.link.Stop("playback over")
    assert h.link.AuthFailures == 0 and h.link.ProtocolErrors == 0
    assert "0 unauthenticated dropped" in h.log_text()

    threaded = make(sidecar.endpoint, instance="remote-threaded", Secret=_net(secret), HeartbeatMs=200,
                    HeartbeatTimeoutMs=2000)
    threaded.link.Start()
    threaded.wait(lambda: threaded.link.IsConnected, 30, "the threaded session")
    for i in range(500):
        assert threaded.link.Post(probe.Probe.Tick(10 + i, 2670.25))
    threaded_session = threaded.link.SessionId
    threaded.link.Stop("done")
    assert threaded.link.AuthFailures == 0 and threaded.link.Dropped == 0
    status = send_command(sidecar.control_endpoint, "status")
    assert status["security"]["refused"] == {"data": {}, "control": {}}
    sidecar.stop()
    counts = session_counts(db, session)
    assert counts.ticks == 1 and counts.order_updates == 1 and counts.end_reason == "BYE"
    assert session_counts(db, threaded_session).ticks == 500


def test_remote_mode_a_link_with_another_secret_or_none_is_refused_and_says_why(cs, probe, make, remote_sidecar):
    from bridge.transport.control import send_command

    sidecar, secret, _ = remote_sidecar
    wrong = make(sidecar.endpoint, Lockstep=True, Secret=_net(bytes(32)))
    with pytest.raises(Exception, match="different shared secrets"):
        wrong.link.Start()
    assert not wrong.link.IsConnected
    none = make(sidecar.endpoint, Lockstep=True)
    with pytest.raises(Exception, match="HMAC trailer"):
        none.link.Start()
    status = send_command(sidecar.control_endpoint, "status")
    assert status["security"]["refused"]["data"] == {"AUTH_BAD_MAC": 1, "AUTH_REQUIRED": 1}
    assert status["live_sessions"] == []


def test_remote_mode_the_link_drops_forged_and_replayed_commands_and_never_acts_on_them(cs, probe, make, router):
    from bridge.protocol import auth

    sock, endpoint = router
    secret = b"s" * 32
    h = make(endpoint, Secret=_net(secret))
    h.link.Start()
    assert sock.poll(10_000)
    rid, *hello = sock.recv_multipart()
    assert len(hello) == 3 and auth.flags_of(hello[0]) & auth.FLAG_AUTH
    fake = auth.accept_hello(*auth.open_hello(*hello, (secret,)))
    now = time.time_ns()
    sock.send_multipart([rid, *fake.encode(m.Welcome(5, "fake", 1000, 5000, now, 65536), 1, now)])
    h.wait(lambda: h.link.IsConnected, 10, "WELCOME")
    bracket = m.SubmitBracket("B-1", 0, 1, 1, 1, math.nan, 2668.0, 2674.0, 1, "algo", "D-1")
    good = fake.encode(bracket, 2, now)
    altered = [good[0], codec.encode(m.SubmitBracket("B-1", 0, 1, 9, 1, math.nan, 2668.0, 2674.0, 1, "algo", "D-1"),
                                     2, now)[1], good[2]]
    unauthenticated_error = codec.encode(m.Error(301, 0, 2, "forged"), 3, now)
    for frames in (altered, good[:2], good, good, unauthenticated_error):  # the good one twice: a replay
        sock.send_multipart([rid, *frames])
    h.wait(lambda: h.link.AuthFailures == 4, 10, "four messages dropped as unauthenticated")
    sock.send_multipart([rid, *fake.encode(m.Heartbeat(1), 3, now)])  # an authentic one after them: still taken
    h.wait(lambda: h.link.Received >= 3, 10, "the authentic heartbeat")
    assert h.listener.CommandCount == 1 and int(h.listener.Command(0).Quantity) == 1  # only the authentic bracket
    assert h.link.IsConnected and h.link.LinkDowns == 0 and h.link.ErrorsReceived == 0
    assert "never acted on" in h.log_text()
