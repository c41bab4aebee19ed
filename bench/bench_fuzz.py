"""Hostile traffic against a real sidecar: does it survive, stay small, and still serve a clean session?

    .venv/bin/python bench/bench_fuzz.py [--messages 1000000] [--seed 1] [--peers 8] [--window 4000]
                                         [--config FILE] [--keep] [--json] [--smoke]

The sidecar is ``nt8bridge serve`` in a child process (``SidecarProcess``: a fresh SQLite file,
storage and the audit trail on, the plumbing configuration with the momentum strategy, unless
``--config``). This process sends it ``--messages`` messages, a third of each kind, in random order:

* random frames: one to four frames of random bytes, some starting with a valid magic and version,
  a few over the size limit; from ``--peers`` "garbage" DEALER sockets that never say HELLO on purpose;
* golden messages with mutated bodies: every vector in tests/vectors (HELLO and the sidecar's own
  types included) with bits flipped, bytes overwritten, the body cut, extended or spliced; from the
  same garbage sockets, so that a mutated HELLO that still decodes opens a session there (and the
  next one on that socket, or from another socket with the same instance, ends it: REHELLO, REPLACED);
* the same inside sessions: ``--peers`` other DEALER sockets open sessions with valid HELLOs and send
  mutated golden messages with the right sequence numbers; now and then one says HELLO again
  (REHELLO), takes over another socket's instance (REPLACED), says BYE, or drops its connection with
  its session open and reconnects (a new routing id; the old session ends DISCONNECTED or LOST), or
  floods: ``FLOOD_HELLOS`` new connections each say HELLO and then nothing (their sessions end LOST,
  or DISCONNECTED once closed; beyond ``server.max_sessions_per_peer``, every connection here being
  127.0.0.1, the HELLOs are refused). Garbage sockets drop their connection now and then too (a new
  routing id), their unread replies with it.

Replies are counted as they are read (ERROR by code, WELCOME). A garbage socket reads nothing until
the end: like a hostile peer that never reads, it sends as fast as the sidecar takes its messages in,
its replies wait in the sidecar's outbound queue, and a dropped connection loses them. A session
socket reads whatever has arrived after each send, without waiting (it must know whether it still
has a session), and every ``--window`` messages sends a marker, waiting only while two are
unanswered: it runs up to two windows ahead of the sidecar. A marker is a message NT8 may not send,
with sequence number 0 (a WELCOME; a FLATTEN for the final one, which every socket waits for at the
end), always answered with exactly one ERROR naming its type. A socket that gets no reply at all for
``STALL_MS``, or cannot send for as long, means the sidecar stopped answering.

Messages are made ``CHUNK`` at a time (mutating them costs this process more than sending them) and
each chunk is sent in one burst, so that the flood outruns the sidecar even when both share a busy
core: a sidecar slower than the flood holds what it has received and not yet handled.

Measured: the sidecar's resident memory (VmRSS in /proc/<pid>/status; Linux only, reported as
unsupported elsewhere) when it listens, after a warm-up clean session, at its peak (VmHWM) and at
the end (``SETTLE_S`` after the clean session, with no traffic); hostile messages per second, from
the first until every socket's last marker was answered (this process makes, mutates and reads
everything in Python, so the figure is the pair's); ERROR replies received, by code; sessions opened,
ended (by reason, from the sessions table) and HELLOs refused (the sidecar's ``status``).

Then every hostile socket is closed and, once the sidecar has ended their sessions, a clean lockstep
session (``Nt8Client``) must be fully served: quiet bars and breakouts as in bench_roundtrip.py, every
message acknowledged, a BRACKET for every breakout.

Exit code 1 (``FAILED`` on stderr) when the sidecar died or stopped answering, when the clean session
was not fully served, or, in a full run, when the resident memory at the end exceeds the one after the
warm-up by more than ``GOAL_RSS_GROWTH_MB`` (the acceptance goal; a smoke run reports it only).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import random
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bench_roundtrip import CONFIG_TOML, BracketWorkload, WorkloadError, bars_before_features  # noqa: E402
from bridge.core.config import load_config  # noqa: E402
from bridge.nt8.client import ClientError  # noqa: E402
from bridge.protocol import codec  # noqa: E402
from bridge.protocol.messages import (  # noqa: E402
    FROM_NT8,
    Bye,
    Error,
    ErrorCode,
    Hello,
    InstrumentDecl,
    MsgType,
    Welcome,
)
from bridge.transport.control import send_command  # noqa: E402
from bridge.transport.sidecar import SidecarProcess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors"
GOAL_RSS_GROWTH_MB = 50.0
STALL_MS = 60_000  # no progress at all for this long: the sidecar stopped answering
RESEND_S = 3.0  # a socket that hears nothing for this long at the end sends its final marker again
# The end's resident size is read after this long with no traffic: the sidecar gives memory freed after
# a burst back when its socket is idle, looking every 5 s (bridge/transport/memory.py).
SETTLE_S = 10.0
HEADER = struct.Struct("<4sBBHQqq")
ES = InstrumentDecl("ES 06-18", 0.25, 50.0)
CLEAN_BREAKOUTS = 5  # BRACKETs the clean session must bring
# --smoke: a few thousand messages, still every kind and every session move; options given explicitly win
SMOKE = {"messages": 6000, "peers": 4, "window": 100}
# chances per message a session socket takes a session move instead of a mutated message
P_REHELLO, P_REPLACE, P_BYE, P_DROP, P_FLOOD = 0.004, 0.003, 0.003, 0.003, 0.0003
P_RECONNECT_GARBAGE = 0.001
FLOOD_HELLOS = 40  # new connections, each with a HELLO, in one flood; they never say anything again
CHUNK = 250_000  # messages made in advance, then sent in one burst
FLOOD_KEEP = 120  # flood connections kept open (their sessions wait for the heartbeat timeout); older ones close
_WRONG_DIRECTION, _NO_HELLO = int(ErrorCode.PROTOCOL_WRONG_DIRECTION), int(ErrorCode.SESSION_NO_HELLO)
_WELCOME, _FLATTEN, _HELLO = int(MsgType.WELCOME), int(MsgType.FLATTEN), int(MsgType.HELLO)


# ---------------------------------------------------------------------------------------------
# what is sent
# ---------------------------------------------------------------------------------------------


class Golden:
    """One golden vector: its type, header and body bytes."""

    def __init__(self, path: Path) -> None:
        doc = json.loads(path.read_text(encoding="utf-8"))
        self.name = doc["name"]
        self.msg_type = int(doc["type"])
        self.header = bytes.fromhex(doc["header_hex"])
        self.body = bytes.fromhex(doc["body_hex"])


def load_golden() -> list[Golden]:
    found = [Golden(p) for p in sorted(VECTORS.glob("*.json"))]
    if not found:
        raise WorkloadError(f"no golden vectors in {VECTORS}")
    return found


def header(msg_type: int, seq: int) -> bytes:
    return HEADER.pack(b"NT8B", 1, msg_type, 0, seq, time.time_ns() // 100, 0)


def mutate(body: bytes, rng: random.Random) -> bytes:
    """The body with one to three random mutations: bits flipped, bytes overwritten, cut, extended,
    spliced, a length prefix blown up."""
    b = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        how = rng.randrange(7)
        if how == 0 and b:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif how == 1 and b:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif how == 2:
            del b[rng.randrange(len(b) + 1):]
        elif how == 3:
            b += rng.randbytes(rng.randint(1, 64))
        elif how == 4 and b:
            i = rng.randrange(len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif how == 5 and len(b) >= 2:
            i = rng.randrange(len(b) - 1)
            b[i:i + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\x00\x80", b"\x01\x00"))
        elif how == 6 and b:
            i, j = sorted(rng.randrange(len(b) + 1) for _ in range(2))
            b[i:i] = b[i:j] * rng.randint(1, 4)
    return bytes(b)


def random_frames(rng: random.Random) -> list[bytes]:
    """One to four frames of random bytes; some with a valid magic and version, a few oversize."""
    r = rng.random()
    if r < 0.01:
        return [rng.randbytes(32), bytes(70_000)]  # over max_message_bytes
    frames = [rng.randbytes(rng.choice((0, 1, 8, 31, 32, 32, 33, 64, rng.randrange(200))))
              for _ in range(rng.randint(1, 4))]
    if r < 0.4 and len(frames[0]) >= 6:
        frames[0] = b"NT8B\x01" + bytes([rng.randrange(256)]) + frames[0][6:]
    return frames


# ---------------------------------------------------------------------------------------------
# the hostile peers
# ---------------------------------------------------------------------------------------------


class Peer:
    """One DEALER socket; ``session`` is what its replies (and its own moves) say about it.

    A session socket (``paced``) reads whatever replies have arrived after every send, without
    waiting, and every ``window`` messages sends a marker, waiting only while two of its markers are
    unanswered: it runs up to two windows ahead of the sidecar. A garbage socket reads nothing until
    ``Fuzzer.finish``: it is as far ahead as the sidecar lets it be, and its replies wait in the
    sidecar's outbound queue."""

    def __init__(self, fuzzer: Fuzzer, name: str, paced: bool) -> None:
        self.fuzzer = fuzzer
        self.name = name
        self.paced = paced
        self.instance = name
        self.sock: zmq.Socket | None = None
        self.session = False
        self.seq = 0
        self.since_marker = 0
        self.markers_out = 0
        self.markers_in = 0
        self.synced = False  # its final marker was answered
        self.connect()

    def connect(self) -> None:
        """A new connection (a new routing id); whatever session the old one had is left behind."""
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.fuzzer.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, STALL_MS)  # a send blocked this long: the sidecar stopped reading
        self.sock.connect(self.fuzzer.endpoint)
        self.session = False
        self.seq = 0
        self.markers_out = self.markers_in = 0  # markers on the old connection are answered to nobody
        self.fuzzer.connections += 1

    def send(self, frames: list[bytes]) -> None:
        self._send(frames)
        if self.paced:
            self.drain()
            self.since_marker += 1
            if self.since_marker >= self.fuzzer.window:
                self.send_marker()

    def _send(self, frames: list[bytes]) -> None:
        assert self.sock is not None
        try:
            self.sock.send_multipart(frames, copy=True)
        except zmq.Again:
            raise SidecarGone(f"the sidecar read nothing from {self.name} for {STALL_MS} ms") from None

    def drain(self) -> None:
        """Read every reply that has arrived, without waiting."""
        assert self.sock is not None
        recv, noblock = self.sock.recv_multipart, zmq.NOBLOCK
        while True:
            try:
                frames = recv(noblock)
            except zmq.Again:
                return
            self._note(frames)

    def _note(self, frames: list[bytes]) -> None:
        try:
            _, msg = codec.decode(frames)
        except codec.ProtocolError:
            self.fuzzer.undecodable_replies += 1
            return
        if type(msg) is Error and msg.code == _WRONG_DIRECTION and msg.offending_seq == 0:
            if msg.offending_type == _WELCOME:
                self.markers_in += 1
                return
            if msg.offending_type == _FLATTEN:
                self.synced = True
                return
        self.fuzzer.note_reply(self, msg)

    def send_marker(self) -> None:
        self._send(self.fuzzer.marker)
        self.fuzzer.markers += 1
        self.markers_out += 1
        self.since_marker = 0
        while self.markers_out - self.markers_in > 1:
            self.wait_reply(lambda: f"{self.markers_out - self.markers_in} markers unanswered")

    def wait_reply(self, what: Callable[[], str]) -> None:
        assert self.sock is not None
        if not self.sock.poll(STALL_MS):
            raise SidecarGone(f"no reply to {self.name} for {STALL_MS} ms ({what()})")
        self._note(self.sock.recv_multipart())

    def send_final_marker(self) -> None:
        self._send(self.fuzzer.final_marker)
        self.fuzzer.markers += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class SidecarGone(RuntimeError):
    """The sidecar died or stopped answering."""


class Fuzzer:
    """Sends the three kinds of hostile traffic and counts what comes back."""

    def __init__(self, endpoint: str, ctx: zmq.Context, seed: int, peers: int, window: int) -> None:
        self.endpoint = endpoint
        self.ctx = ctx
        self.rng = random.Random(seed)
        self.window = window
        self.golden = load_golden()
        # The markers: messages NT8 may not send (the golden WELCOME, FLATTEN for the final one) with seq 0,
        # each answered with exactly one ERROR naming its type, and setting no sequence number in a session.
        welcome = next(g for g in self.golden if g.msg_type == _WELCOME)
        flatten = next(g for g in self.golden if g.msg_type == _FLATTEN)
        self.marker = [header(welcome.msg_type, 0), welcome.body]
        self.final_marker = [header(flatten.msg_type, 0), flatten.body]
        self.from_nt8 = [g for g in self.golden if g.msg_type in {int(t) for t in FROM_NT8}
                         and g.msg_type != int(MsgType.HELLO)]
        self.errors: collections.Counter[str] = collections.Counter()
        self.welcomes = 0
        self.markers = 0
        self.connections = 0
        self.undecodable_replies = 0
        self.sent: collections.Counter[str] = collections.Counter()
        self.flood: collections.deque[zmq.Socket] = collections.deque()
        self.sent_s = 0.0  # when the last message was sent, from the first
        self.garbage = [Peer(self, f"garbage-{i}", paced=False) for i in range(peers)]
        self.in_session = [Peer(self, f"session-{i}", paced=True) for i in range(peers)]

    # -- replies

    def note_reply(self, peer: Peer | None, msg: Any) -> None:
        t = type(msg)
        if t is Welcome:
            self.welcomes += 1
            if peer is not None:
                peer.session = True
        elif t is Error:
            try:
                code = ErrorCode(msg.code).name
            except ValueError:
                code = f"code {msg.code}"
            self.errors[code] += 1
            if peer is not None and (msg.code == _NO_HELLO or msg.offending_type == _HELLO):
                peer.session = False  # replaced by another socket, timed out, or its HELLO was refused

    # -- the three kinds

    def prepare(self, n: int) -> list[tuple]:
        """``n`` messages made in advance, a third of each kind, so that they are then sent in one burst:
        a hostile peer does not pay for its garbage as it goes. What a session socket does with its draw
        depends on what its replies said by then, so only the dice and the mutated bodies are made here."""
        rng = self.rng
        garbage, sessions = len(self.garbage), len(self.in_session)
        plans: list[tuple] = []
        for _ in range(n):
            kind = rng.randrange(3)
            if kind == 0:
                plans.append((0, rng.randrange(garbage), random_frames(rng)))
            elif kind == 1:
                g = rng.choice(self.golden)
                h = g.header if rng.random() < 0.5 else header(g.msg_type, rng.randrange(1, 1 << 20))
                reconnect = rng.randrange(garbage) if rng.random() < P_RECONNECT_GARBAGE else -1
                plans.append((1, rng.randrange(garbage), [h, mutate(g.body, rng)], reconnect))
            else:
                g = rng.choice(self.from_nt8)
                plans.append((2, rng.randrange(sessions), rng.random(), rng.randrange(sessions), g.msg_type,
                              mutate(g.body, rng)))
        return plans

    def send(self, plan: tuple) -> None:
        if plan[0] == 0:
            self.garbage[plan[1]].send(plan[2])
            self.sent["random frames"] += 1
        elif plan[0] == 1:
            self.garbage[plan[1]].send(plan[2])
            self.sent["mutated golden"] += 1
            if plan[3] >= 0:
                self.garbage[plan[3]].connect()  # its unread replies are lost with the connection
        else:
            self.in_session_move(*plan[1:])

    def hello(self, peer: Peer, instance: str) -> None:
        """A valid HELLO (lockstep, ES) on ``peer``: a new session, or a refusal."""
        peer.seq = 1
        peer.session = True  # until a reply says otherwise (send reads the replies that have arrived)
        peer.instance = instance
        msg = Hello(instance, "Sim101", 1, 1000, time.time_ns(), "bench_fuzz", [ES])
        peer.send(codec.encode(msg, peer.seq, time.time_ns()))
        self.sent["valid HELLO"] += 1

    def in_session_move(self, index: int, r: float, other_index: int, msg_type: int, body: bytes) -> None:
        peer = self.in_session[index]
        if not peer.session:
            self.hello(peer, peer.name)
        elif r < P_REHELLO:
            self.hello(peer, peer.instance)  # the same connection again: REHELLO
        elif r < P_REHELLO + P_REPLACE:
            other = self.in_session[other_index]
            if other is not peer:
                other.session = False  # its session ends: REPLACED
            self.hello(peer, other.instance)
        elif r < P_REHELLO + P_REPLACE + P_BYE:
            peer.seq += 1
            peer.session = False
            peer.send(codec.encode(Bye("bench_fuzz"), peer.seq, time.time_ns()))
            self.sent["BYE"] += 1
        elif r < P_REHELLO + P_REPLACE + P_BYE + P_DROP:
            peer.connect()  # the session is left behind, open
            self.sent["connection dropped"] += 1
        elif r < P_REHELLO + P_REPLACE + P_BYE + P_DROP + P_FLOOD:
            self.hello_flood()
        else:
            peer.seq += 1
            peer.send([header(msg_type, peer.seq), body])
            self.sent["mutated in session"] += 1

    def hello_flood(self) -> None:
        """``FLOOD_HELLOS`` new connections, each a valid HELLO (unique instance, not lockstep) and then silence."""
        for _ in range(FLOOD_HELLOS):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self.connections += 1
            msg = Hello(f"flood-{self.connections}", "Sim101", 0, 1000, time.time_ns(), "bench_fuzz", [ES])
            sock.send_multipart(codec.encode(msg, 1, time.time_ns()))
            self.flood.append(sock)
        self.sent["flood HELLO"] += FLOOD_HELLOS
        while len(self.flood) > FLOOD_KEEP:
            sock = self.flood.popleft()
            self._drain_flood(sock)
            sock.close(linger=0)
        for sock in self.flood:
            self._drain_flood(sock)

    def _drain_flood(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.note_reply(None, codec.decode(frames)[1])
            except codec.ProtocolError:
                self.undecodable_replies += 1

    def run(self, n: int) -> float:
        """Send ``n`` messages or a few more (a flood is sent whole), made ``CHUNK`` at a time and each
        chunk sent in one go; returns the seconds it took, until every socket's last marker was answered."""
        flooded = False
        t0 = time.perf_counter()
        while (left := n - self.messages) > 0:
            if not flooded and self.messages >= n // 2:
                self.hello_flood()  # at least one, whatever the dice say (a smoke run is short)
                flooded = True
                continue
            for plan in self.prepare(min(CHUNK, left if flooded else max(1, n // 2 - self.messages))):
                self.send(plan)
        self.sent_s = time.perf_counter() - t0
        self.finish()
        for sock in self.flood:
            self._drain_flood(sock)
        return time.perf_counter() - t0

    def finish(self) -> None:
        """Every socket sends its final marker, then all read until each has its answer. A socket that
        did not read had replies refused once its outbound queue in the sidecar was full, and its final
        marker's may be among them: one that hears nothing for ``RESEND_S`` while it reads sends its
        final marker again."""
        peers = self.garbage + self.in_session
        poller = zmq.Poller()
        for peer in peers:
            peer.send_final_marker()
            poller.register(peer.sock, zmq.POLLIN)
        now = time.monotonic()
        heard = {peer.name: now for peer in peers}
        last_any = now
        pending = list(peers)
        while pending:
            ready = dict(poller.poll(200))
            now = time.monotonic()
            for peer in pending:
                if peer.sock in ready:
                    peer.drain()
                    heard[peer.name] = last_any = now
                elif now - heard[peer.name] > RESEND_S:
                    peer.send_final_marker()
                    heard[peer.name] = now
            pending = [peer for peer in pending if not peer.synced]
            if now - last_any > STALL_MS / 1000:
                raise SidecarGone(f"no reply at all for {STALL_MS} ms while {len(pending)} sockets wait for their "
                                  "final marker")

    @property
    def messages(self) -> int:
        return self.sent.total() - self.sent["connection dropped"]

    def close(self) -> None:
        for peer in self.garbage + self.in_session:
            peer.close()
        while self.flood:
            self.flood.popleft().close(linger=0)


# ---------------------------------------------------------------------------------------------
# measuring the sidecar
# ---------------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM in bytes from /proc/<pid>/status; None where there is no /proc (Windows, macOS)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def mb(n: int | None) -> str:
    return "unsupported" if n is None else f"{n / 1e6:.1f} MB"


def wait_sessions_ended(sidecar: SidecarProcess, timeout_s: float) -> int:
    """Wait until the sidecar holds no session; returns how many it still holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = send_command(sidecar.control_endpoint, "status")["sessions"]
        if live == 0 or time.monotonic() > deadline:
            return live
        time.sleep(0.2)


def clean_session(endpoint: str, ctx: zmq.Context, quiet_bars: int, prefix: str) -> int:
    """A lockstep session that must be fully served: every message acknowledged (``Nt8Client.step``
    waits for each ack), a BRACKET for every breakout; returns the BRACKETs."""
    w = BracketWorkload(endpoint, ctx, quiet_bars, per_session=CLEAN_BREAKOUTS, prefix=prefix)
    try:
        for _ in range(CLEAN_BREAKOUTS):
            w.sample()
    finally:
        w.close()
    return CLEAN_BREAKOUTS


def sessions_by_end(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT coalesce(end_reason, 'open'), count(*) FROM sessions GROUP BY 1").fetchall()
    return dict(rows)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    config_path = args.config
    if config_path is None:
        config_path = workdir / "sidecar.toml"
        config_path.write_text(CONFIG_TOML, encoding="utf-8")
    config = load_config(config_path)
    quiet_bars = bars_before_features(config.strategy)
    db_path = workdir / "fuzz.sqlite"
    sidecar = SidecarProcess(f"sqlite:///{db_path}", config_path, log_path=workdir / "sidecar.log")
    ctx = zmq.Context()
    out: dict[str, Any] = {"messages": args.messages, "seed": args.seed, "peers": args.peers, "window": args.window,
                           "config": str(args.config or "plumbing (momentum, 1 contract, no regime filter)"),
                           "failures": []}
    fuzzer = None
    sidecar.start()
    assert sidecar.proc is not None and sidecar.endpoint is not None
    pid = sidecar.proc.pid
    try:
        out["rss_listening"] = (proc_status(pid) or {}).get("VmRSS")
        try:
            clean_session(sidecar.endpoint, ctx, quiet_bars, "warm-up")
        except (ClientError, WorkloadError) as exc:
            out["failures"].append(f"the warm-up clean session was not served: {exc}")
            return out
        out["rss_start"] = (proc_status(pid) or {}).get("VmRSS")
        fuzzer = Fuzzer(sidecar.endpoint, ctx, args.seed, args.peers, args.window)
        try:
            elapsed = fuzzer.run(args.messages)
        except SidecarGone as exc:
            code = sidecar.proc.poll()
            what = f"died (exit code {code})" if code is not None else "stopped answering"
            out["failures"].append(f"the sidecar {what}: {exc}")
            return out
        finally:
            fuzzer.close()
        out["elapsed_s"] = elapsed
        out["messages_sent"] = fuzzer.messages
        out["messages_per_s"] = fuzzer.messages / elapsed
        out["all_sent_s"] = fuzzer.sent_s
        out["sent"] = dict(fuzzer.sent)
        out["errors"] = dict(fuzzer.errors.most_common())
        out["welcomes"] = fuzzer.welcomes
        out["connections"] = fuzzer.connections
        out["markers"] = fuzzer.markers
        out["undecodable_replies"] = fuzzer.undecodable_replies
        if sidecar.proc.poll() is not None:
            out["failures"].append(f"the sidecar died (exit code {sidecar.proc.returncode})")
            return out
        config_hb_s = config.server.heartbeat_timeout_ms / 1000
        out["sessions_left"] = wait_sessions_ended(sidecar, 3 * config_hb_s + 5)
        try:
            out["clean_brackets"] = clean_session(sidecar.endpoint, ctx, quiet_bars, "clean")
        except (ClientError, WorkloadError) as exc:
            out["failures"].append(f"the clean session after the hostile traffic was not fully served: {exc}")
        time.sleep(0 if args.smoke else SETTLE_S)
        status = proc_status(pid) or {}
        out["rss_end"], out["rss_peak"] = status.get("VmRSS"), status.get("VmHWM")
        out["status"] = send_command(sidecar.control_endpoint, "status")
    finally:
        code = sidecar.stop()
        ctx.term()
        out["sidecar_exit_code"] = code
        out["sidecar_log"] = str(sidecar.log_path)
    if code != 0:
        out["failures"].append(f"the sidecar exited with code {code}")
    out["sessions_by_end"] = sessions_by_end(db_path)
    return out


def report(out: dict[str, Any], full: bool) -> None:
    print(f"hostile messages: {out['messages']:,} (seed {out['seed']}, {out['peers']} garbage sockets that never read "
          f"and {out['peers']} session sockets with a marker every {out['window']} messages); sidecar config "
          f"{out['config']}")
    if "messages_per_s" in out:
        print(f"sent {out['messages_sent']:,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(out["sent"].items())))
        print(f"hostile messages/s, sent and answered {out['messages_per_s']:10,.0f}   ({out['elapsed_s']:.1f} s; all "
              f"sent after {out['all_sent_s']:.1f} s)")
        print("ERROR replies received, by code: " + ", ".join(f"{k} {v:,}" for k, v in out["errors"].items()))
        print(f"WELCOMEs {out['welcomes']:,}; connections {out['connections']:,}; undecodable replies "
              f"{out['undecodable_replies']}")
    status = out.get("status") or {}
    by_end = out.get("sessions_by_end", {})
    refused = status.get("sessions_refused", {})
    print(f"sessions opened {sum(by_end.values()):,} (2 of them clean); ended by reason: "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(by_end.items()))
          + f"; HELLOs refused: {sum(refused.values()):,}"
          + (" (" + ", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())) + ")" if refused else "")
          + (f"; limits {status['max_sessions']} sessions, {status['max_sessions_per_peer']} per peer"
             if "max_sessions" in status else ""))
    if "send_failures" in status:
        print(f"replies the sidecar could not send (a peer's outbound queue full, or the peer gone): "
              f"{status['send_failures']:,}")
    if out.get("sessions_left"):
        print(f"sessions the sidecar still held when the clean session began: {out['sessions_left']}")
    if "clean_brackets" in out:
        print(f"clean lockstep session after it: every message acknowledged, {out['clean_brackets']} BRACKETs")
    rss = {k: out.get(k) for k in ("rss_listening", "rss_start", "rss_peak", "rss_end")}
    print(f"sidecar RSS: listening {mb(rss['rss_listening'])}, after warm-up {mb(rss['rss_start'])}, "
          f"peak {mb(rss['rss_peak'])}, end {mb(rss['rss_end'])}")
    if rss["rss_start"] is not None and rss["rss_end"] is not None:
        growth = (rss["rss_end"] - rss["rss_start"]) / 1e6
        out["rss_growth_mb"] = growth
        met = growth <= GOAL_RSS_GROWTH_MB
        print(f"RSS growth (end - after warm-up) {growth:10.1f} MB   goal <= {GOAL_RSS_GROWTH_MB:g} MB: "
              f"{'met' if met else 'NOT met'}{'' if full else ' (not judged in a smoke run)'}")
        if full and not met:
            out["failures"].append(f"the sidecar's RSS grew by {growth:.1f} MB (goal <= {GOAL_RSS_GROWTH_MB:g} MB)")
    elif sys.platform != "linux":
        print("RSS: unsupported on this platform (read from /proc on Linux)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000, help="hostile messages (default 1,000,000)")
    p.add_argument("--seed", type=int, default=1, help="of the random traffic (default 1)")
    p.add_argument("--peers", type=int, default=8, help="garbage sockets, and as many session sockets (default 8)")
    p.add_argument("--window", type=int, default=4000,
                   help="messages a session socket sends between markers; it runs at most two windows ahead of the "
                        "sidecar (default 4,000)")
    p.add_argument("--config", type=Path, default=None,
                   help="the sidecar's configuration (default: the plumbing configuration with momentum); the clean "
                        "session needs a BRACKET for every breakout")
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, sidecar log)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(p, argv, SMOKE, "the sidecar dies or stops answering, or the clean session after the "
                            "hostile traffic is not fully served")
    if args.messages < 1 or args.peers < 1 or args.window < 1:
        p.error("--messages, --peers and --window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nt8bridge-fuzz-") as tmp:
        workdir = Path(tempfile.mkdtemp(prefix="nt8bridge-fuzz-")) if args.keep else Path(tmp)
        out = run(args, workdir)
        report(out, full=not args.smoke)
        out["date"] = dt.datetime.now().isoformat(timespec="seconds")
        if args.keep:
            print(f"work folder kept: {workdir}")
        if args.json:
            print(json.dumps(out, indent=2, default=str))
    if out["failures"]:
        print("bench_fuzz: FAILED: " + "; ".join(out["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
