"""A Python NT8 client: speaks wire protocol v1 on a DEALER socket, as the NinjaScript strategy does.

Used by tests, benchmarks and ``nt8bridge playback --engine python``. In lockstep it waits, after
each message, for the sidecar's HEARTBEAT acknowledging that message, collecting every reply that
came before it: the replies to message N are exactly what arrives between the acks of N-1 and N.

With ``secret`` (remote mode, bridge/protocol/auth.py) every message carries an HMAC trailer, and a
message from the sidecar whose MAC is missing or wrong, or whose seq is not above the last one, is
dropped and counted in ``auth_failures``, never returned.
"""

from __future__ import annotations

import time

import zmq

from bridge.protocol import auth, codec
from bridge.protocol.auth import AuthError, SessionAuth
from bridge.protocol.messages import (
    Bye,
    Error,
    Heartbeat,
    Hello,
    HelloFlags,
    InstrumentDecl,
    Message,
    MsgType,
    Tick,
    TickBatch,
    Welcome,
)


class ClientError(RuntimeError):
    """The sidecar refused the session or stopped answering; the message says what to check."""


class Nt8Client:
    def __init__(self, endpoint: str, *, instance_id: str, account: str, instruments: list[InstrumentDecl],
                 lockstep: bool = True, timeout_s: float = 10.0, context: zmq.Context | None = None,
                 secret: bytes | None = None) -> None:
        self.endpoint = endpoint
        self.instance_id = instance_id
        self.account = account
        self.instruments = instruments
        self.lockstep = lockstep
        self.timeout_ms = int(timeout_s * 1000)
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self.seq = 0
        self.welcome: Welcome | None = None
        self.errors: list[Error] = []
        self.last_ack = 0
        self.secret = secret  # remote mode: the shared secret (never logged)
        self.auth: SessionAuth | None = None  # the session's keys, from WELCOME
        self._client_nonce = b""
        self._last_seq_in = 0
        self.auth_failures = 0  # messages from the sidecar dropped: MAC missing or wrong, or a replayed seq

    def __enter__(self) -> Nt8Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message) -> int:
        self.seq += 1
        now = time.time_ns()
        if self.secret is None:
            frames = codec.encode(msg, self.seq, now)
        elif isinstance(msg, Hello):  # a new session: a fresh nonce, and no key until its WELCOME
            self._client_nonce, self.auth, self._last_seq_in = auth.new_nonce(), None, 0
            frames = auth.encode_hello(msg, self.seq, now, self.secret, self._client_nonce)
        elif self.auth is not None:
            frames = self.auth.encode(msg, self.seq, now)
        else:
            raise ClientError("remote mode: no session key before WELCOME; connect() first")
        self.sock.send_multipart(frames, copy=True)
        return self.seq

    def send_ticks(self, ticks: list[Tick]) -> int:
        """Several ticks in one TICKS message (a live burst); returns its seq."""
        return self.send(TickBatch(ticks))

    def recv(self, timeout_ms: int) -> Message | None:
        """One decoded message, or None when nothing (authentic) arrived in time."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if not self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                return None
            frames = self.sock.recv_multipart()
            msg = codec.decode(frames)[1] if self.secret is None else self._open(frames)
            if msg is None:
                continue
            if isinstance(msg, Error):
                self.errors.append(msg)
            return msg

    def _open(self, frames: list[bytes]) -> Message | None:
        """Remote mode: the message if it is authentic, else None (counted)."""
        header = codec.decode_header(frames[0])
        if self.auth is None:
            if header.msg_type == MsgType.WELCOME:
                try:
                    self.auth = auth.open_welcome(frames, self.secret, self._client_nonce)
                except AuthError:
                    self.auth_failures += 1
                    return None
            elif len(frames) == 2 and header.msg_type == MsgType.ERROR:
                return codec.decode(frames)[1]  # a refused HELLO: there is no session key to MAC it with
            else:
                self.auth_failures += 1
                return None
        else:
            try:
                self.auth.check(frames[0], frames[1], frames[2] if len(frames) == 3 else None)
            except AuthError:
                self.auth_failures += 1
                return None
            if header.seq <= self._last_seq_in:  # authentic but seen: a replay
                self.auth_failures += 1
                return None
        self._last_seq_in = header.seq
        return codec.decode(frames[:2])[1]

    def connect(self) -> Welcome:
        """Send HELLO and wait for WELCOME."""
        flags = int(HelloFlags.LOCKSTEP) if self.lockstep else 0
        self.send(Hello(self.instance_id, self.account, flags, 1000, time.time_ns(), "nt8bridge-python-client",
                        self.instruments))
        deadline = time.monotonic() + self.timeout_ms / 1000
        while time.monotonic() < deadline:
            msg = self.recv(100)
            if isinstance(msg, Welcome):
                self.welcome = msg
                return msg
            if isinstance(msg, Error):
                raise ClientError(f"the sidecar refused HELLO: {msg.text}")
        if self.auth_failures:
            raise ClientError(f"no authentic WELCOME from {self.endpoint} within {self.timeout_ms} ms "
                              f"({self.auth_failures} messages failed their MAC): does the sidecar hold this secret?")
        raise ClientError(f"no WELCOME from {self.endpoint} within {self.timeout_ms} ms: is `nt8bridge serve` "
                          "running there?")

    def step(self, msg: Message) -> list[Message]:
        """Send one message; in lockstep, wait for its acknowledgement and return the replies to it."""
        seq = self.send(msg)
        if not self.lockstep:
            return []
        return self.wait_ack(seq)

    def wait_ack(self, seq: int) -> list[Message]:
        """Wait until message ``seq`` is acknowledged; the replies that came before the ack."""
        return [m for group in self.wait_acks(seq).values() for m in group]

    def wait_acks(self, last_seq: int) -> dict[int, list[Message]]:
        """Wait until every message up to ``last_seq`` is acknowledged (lockstep).

        Returns the replies grouped by the message that caused them: the sidecar processes in
        order and acknowledges each message after its replies, so whatever arrives after the ack
        of N-1 and before the ack of N answers N.
        """
        grouped: dict[int, list[Message]] = {}
        while self.last_ack < last_seq:
            msg = self.recv(self.timeout_ms)
            if msg is None:
                raise ClientError(f"no acknowledgement of message {self.last_ack + 1} within {self.timeout_ms} ms: "
                                  "the sidecar stopped answering (see its log)")
            if isinstance(msg, Heartbeat):
                self.last_ack = max(self.last_ack, msg.ack_seq)
            else:
                grouped.setdefault(self.last_ack + 1, []).append(msg)
        return grouped

    def drain(self, timeout_ms: int = 0) -> list[Message]:
        """Whatever the sidecar sent that has not been read (free-running mode)."""
        out = []
        while (msg := self.recv(timeout_ms)) is not None:
            if not isinstance(msg, Heartbeat):
                out.append(msg)
            timeout_ms = 0
        return out

    def flush(self, timeout_ms: int | None = None) -> bool:
        """Wait until the sidecar has acknowledged every message sent (its heartbeats carry the last
        processed seq); True when it has. A free-running client calls this before it goes away, or
        whatever is still queued would be lost with the socket."""
        deadline = time.monotonic() + (self.timeout_ms if timeout_ms is None else timeout_ms) / 1000
        while self.last_ack < self.seq:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                return False
            msg = self.recv(min(left, 100))
            if isinstance(msg, Heartbeat):
                self.last_ack = max(self.last_ack, msg.ack_seq)
        return True

    def close(self, reason: str | None = "playback finished") -> None:
        """End the session with BYE after everything sent was processed; ``reason=None`` just drops it."""
        if self.sock.closed:
            return
        if reason is not None and self.welcome is not None:
            self.flush()
            try:
                self.send(Bye(reason))
            except zmq.ZMQError:
                pass
        self.sock.close(linger=self.timeout_ms if reason else 0)
