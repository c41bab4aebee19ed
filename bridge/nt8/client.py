"""A Python NT8 client: speaks wire protocol v1 on a DEALER socket, as the NinjaScript strategy does.

Used by tests, benchmarks and ``nt8bridge playback --engine python``. In lockstep it waits, after
each message, for the sidecar's HEARTBEAT acknowledging that message, collecting every reply that
came before it: the replies to message N are exactly what arrives between the acks of N-1 and N.
"""

from __future__ import annotations

import time

import zmq

from bridge.protocol import codec
from bridge.protocol.messages import (
    Bye,
    Error,
    Heartbeat,
    Hello,
    HelloFlags,
    InstrumentDecl,
    Message,
    Tick,
    TickBatch,
    Welcome,
)


class ClientError(RuntimeError):
    """The sidecar refused the session or stopped answering; the message says what to check."""


class Nt8Client:
    def __init__(self, endpoint: str, *, instance_id: str, account: str, instruments: list[InstrumentDecl],
                 lockstep: bool = True, timeout_s: float = 10.0, context: zmq.Context | None = None) -> None:
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

    def __enter__(self) -> Nt8Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message) -> int:
        self.seq += 1
        self.sock.send_multipart(codec.encode(msg, self.seq, time.time_ns()), copy=True)
        return self.seq

    def send_ticks(self, ticks: list[Tick]) -> int:
        """Several ticks in one TICKS message (a live burst); returns its seq."""
        return self.send(TickBatch(ticks))

    def recv(self, timeout_ms: int) -> Message | None:
        """One decoded message, or None when nothing arrived in time."""
        if not self.sock.poll(timeout_ms):
            return None
        _, msg = codec.decode(self.sock.recv_multipart())
        if isinstance(msg, Error):
            self.errors.append(msg)
        return msg

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
