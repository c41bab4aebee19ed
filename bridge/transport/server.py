"""The sidecar's ZeroMQ server: a ROUTER socket, many NT8 sessions, one hot-path thread.

The loop polls the socket with a timeout, drains what is there, and between bursts runs the
timers: heartbeats, lost-session detection, the stale-feed watchdog, handing partial storage
batches to the writer, folding stage timings, and the event stream's conflated ticks and snapshots
(``bridge/transport/events.py``). Every refused frame is answered with ERROR
(where the peer can be addressed), counted by code and logged; an exception while handling one
message becomes INTERNAL_ERROR for that message, never a dead server.

What a peer can make the sidecar hold is bounded per session and per connection: sessions by
``server.max_sessions`` and ``server.max_sessions_per_peer`` (a HELLO beyond either is refused with
SESSION_LIMIT_REACHED); an ended session leaves nothing behind but its rows in storage and its counts
folded into the server's totals; a peer without a session leaves nothing at all; what libzmq queues
per connection is capped by the socket's high-water marks (``_RCVHWM``, ``_SNDHWM``); and memory
freed after a burst is given back to the operating system (``bridge/transport/memory.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from bridge import __version__
from bridge.core.config import Config, to_toml
from bridge.core.errors import ControlError
from bridge.risk.switch import TradingSwitch
from bridge.transport.control import parse_request
from bridge.transport.feeds import FeedHub, enabled_feeds
from bridge.transport.events import SNAPSHOT_INTERVAL_S, TICK_INTERVAL_S, EventPublisher, PublishingSink
from bridge.transport.snapshot import StateBuilder
from bridge.core.instruments import InstrumentMaster
from bridge.engine.pipeline import STAGES, DecisionPipeline, SessionInstrument, risk_engine_for
from bridge.protocol import codec
from bridge.protocol.codec import ProtocolError
from bridge.protocol.messages import (
    FROM_NT8,
    PROTOCOL_VERSION,
    ALL_INSTRUMENTS,
    SubmitBracket,
    Error,
    ErrorCode,
    Flatten,
    Heartbeat,
    Hello,
    Message,
    MsgType,
    Welcome,
)
from bridge.engine.quality import QualityReason
from bridge.audit.recorder import Recorder, RowSink
from bridge.risk.commands import DeskLimitCommands, command_from_request
from bridge.core.timing import StageTimings
from bridge.transport.memory import MemoryTrimmer
from bridge.transport.storage_health import StorageHealth
from bridge.protocol.auth import AuthError, SessionAuth, accept_hello, open_hello
from bridge.transport.operators import ControlAuthError, verify_request
from bridge.transport.security import Security
from strategies.base import Strategy

log = logging.getLogger("nt8bridge.server")

HARD_MAX_MESSAGE_BYTES = 1 << 20  # ZMQ_MAXMSGSIZE: beyond this libzmq drops the peer's connection
# Messages libzmq queues per connection, each way. Inbound, a full queue makes libzmq stop reading that
# connection (TCP pushes back on the sender; nothing is lost while it stays open), so a peer faster than
# the sidecar waits mostly in its own buffers rather than in the sidecar's memory; a small message that
# arrived in a read of its own holds a whole 8 KiB read buffer until it is handled, and with 100,000 per
# connection a flood over 16 connections grew the sidecar by 470 MB (with 1,000: 30 MB). The queue stays deep
# enough that what a fast client sent before closing its connection (up to this many messages) is read
# before the close is noticed, and handled (see _send); beyond it the rest is lost with the connection.
# Outbound, a full queue refuses the send (counted in send_failures): a peer that never reads its replies
# (an NT8 reads every one) makes the sidecar hold at most this many.
_RCVHWM = 10_000
_SNDHWM = 10_000
# A broken or hostile peer must not flood the log: refusals are always counted and answered, but
# logged at most _LOG_BURST times per code per _LOG_WINDOW_S, then summarised.
_LOG_BURST = 20
_LOG_WINDOW_S = 10.0
_DRAIN_BURST = 512  # messages handled before the timers get a look in
# How often a session's clock offset (NT8 send stamp against the sidecar's clock at receipt) is
# sampled into the audit trail: a regulator asks how far apart the two clocks were, and when.
CLOCK_SAMPLE_S = 60.0
# Message types as plain ints for the dispatch: comparing with an IntEnum member costs 245 ns
# against 39 ns for an int, several times per message.
_HELLO, _TICK, _TICKS, _HEARTBEAT, _BAR = (int(MsgType.HELLO), int(MsgType.TICK), int(MsgType.TICKS),
                                           int(MsgType.HEARTBEAT), int(MsgType.BAR))
_ORDER_UPDATE, _EXECUTION, _POSITION, _ACCOUNT, _BYE = (int(MsgType.ORDER_UPDATE), int(MsgType.EXECUTION),
                                                        int(MsgType.POSITION), int(MsgType.ACCOUNT), int(MsgType.BYE))
_FROM_NT8 = frozenset(int(t) for t in FROM_NT8)
_MARKET_DATA = frozenset({_TICK, _TICKS, _BAR})
TICK_TO_BRACKET = "tick_to_bracket"  # a timing beside the pipeline's stages (see SidecarServer.timings)


@dataclass
class ServerStats:
    messages_in: int = 0
    messages_out: int = 0
    errors_sent: Counter = field(default_factory=Counter)  # ErrorCode name -> count
    ticks_accepted: int = 0
    ticks_rejected: int = 0
    sessions_opened: int = 0
    sessions_lost: int = 0
    sessions_active: int = 0
    sessions_ended: Counter = field(default_factory=Counter)  # end reason (BYE, REHELLO, LOST...) -> count
    sessions_refused: Counter = field(default_factory=Counter)  # the limit a HELLO hit -> count
    seq_gaps: int = 0
    send_failures: int = 0
    internal_errors: int = 0
    # remote mode's refusals (bridge/transport/security.py): channel ("data", "control") -> AUTH_* code name -> count
    auth_refused: dict[str, Counter] = field(default_factory=lambda: {"data": Counter(), "control": Counter()})


@dataclass
class Session:
    session_id: int
    routing_id: bytes
    peer: str  # who is behind the connection: its IP address, else the routing id (see _peer_of)
    hello: Hello
    pipeline: DecisionPipeline
    recorder: Recorder
    last_heard: float  # monotonic seconds
    last_sent: float
    last_seq_in: int = 0
    seq_out: int = 0
    last_tick_wall: dict[int, float] = field(default_factory=dict)
    stale_flagged: set[int] = field(default_factory=set)
    peer_gone: bool = False  # a send found its connection closed; what it sent before is still being read
    last_clock_sample: float = -math.inf  # monotonic seconds
    clock_offset_ns: int | None = None  # the last sample: NT8's send stamp minus the sidecar's clock at receipt
    clock_sampled_ns: int | None = None  # when it was taken (sidecar wall clock)
    auth: SessionAuth | None = None  # remote mode: the session's keys (bridge/protocol/auth.py); None: unauthenticated
    started_ns: int = 0  # wall clock at its HELLO


class SidecarServer:
    """Serve NT8 sessions until ``request_stop``; see the module docstring."""

    def __init__(self, config: Config, sink: RowSink, master: InstrumentMaster,
                 strategy_factory: Callable[[], list[Strategy]],
                 context: zmq.Context | None = None, chain: Any = None, leadership: Any = None,
                 on_lead: Callable[[Any], Any] | None = None,
                 history: Callable[[str, str, int], Any] | None = None,
                 timings: StageTimings | None = None) -> None:
        self.config = config
        self.sink = sink
        self.master = master
        self.strategy_factory = strategy_factory
        self.ctx = context or zmq.Context.instance()
        self.stats = ServerStats()
        # the stages, and the sidecar's whole answer to market data: from a TICK, TICKS or BAR read off the socket
        # to its BRACKET handed to ZeroMQ (what NT8 waits for, less the wire)
        self.timings = timings if timings is not None else StageTimings(STAGES + (TICK_TO_BRACKET,))
        self._t_in = 0  # perf_counter_ns() when the message being handled was read
        self.sessions: dict[bytes, Session] = {}
        self.quality_counts: Counter = Counter()  # QualityReason -> count, of the ended sessions
        self.strategy_counts: Counter = Counter()  # (strategy name, event) -> what ended sessions' strategies counted
        self.memory = MemoryTrimmer()
        self.endpoint: str | None = None
        self._socket: zmq.Socket | None = None
        self._stop = False
        self._last_session_id = 0
        self._log_window: dict[str, list] = {}  # code -> [window start, lines logged, lines suppressed]
        self.switch = TradingSwitch()  # desk-wide: a kill halts every session, the ones to come too
        self.chain = chain  # the audit chain (bridge/audit/chain.py), shared by every session; None: audit_log rows
        self._desk = Recorder(sink, None, chain=chain)  # records that belong to no session (kill, enable)
        # the database away, the audit journal's disk full: alerts and trading holds (storage_health.py)
        self.storage_health = StorageHealth(config.storage.on_outage, sink, lambda: self.chain, self.switch,
                                            lambda *record: self._desk.audit(*record))
        self.control_endpoint: str | None = None
        self._control: zmq.Socket | None = None
        self.metrics_port: int | None = None  # set by whoever serves the metrics; reported by ``status``
        self.analytics: Any = None  # the analytics feed (bridge/analytics/feed.py) when analytics.url is set
        # run-time limit changes and overrides, validated on a scratch engine, applied to every session
        self.limit_commands = DeskLimitCommands(lambda: risk_engine_for(config, [], lambda iid, ts: True))
        # A hot-standby pair (bridge/transport/leadership.py): None for a sidecar on its own, which always leads.
        # ``on_lead`` is called on this thread when this sidecar becomes the leader and returns the audit chain,
        # resumed on the database's head: a standby appends nothing to the chain the leader is writing.
        self.leadership = leadership
        self._on_lead = on_lead
        # (instance id, account, since ns) -> bridge.storage.queries.InstanceHistory: what a new session of a
        # strategy instance resumes from; None starts every session empty (tests, tools)
        self.history = history
        # remote mode (docs/security.md): the secret, the allowlist, operator keys, replay guards; read from the files
        # security.* names (ConfigError when one is unusable). Off by default: loopback, unauthenticated.
        self.security = Security.from_config(config.security)
        self._hello_auth: tuple[bytes, SessionAuth] | None = None  # a verified HELLO's keys, until _hello opens it
        # the live event stream (bridge/transport/events.py): None until bind_events, and when disabled
        self.events: EventPublisher | None = None
        self.events_endpoint: str | None = None
        self.started_monotonic = time.monotonic()
        self.denial_counts: Counter = Counter()  # denied decisions by reason, of the ended sessions
        self.break_counts: Counter = Counter()  # reconciliation breaks by kind, of the ended sessions
        self._state = StateBuilder(self)
        # the last snapshot the loop built (while the event stream or the metrics read it) and when (monotonic)
        self.last_state: dict[str, Any] | None = None
        self.last_state_at = -math.inf
        self.snapshot_failures = 0
        # the feeds beside NT8 and which one to believe (bridge/transport/feeds.py): None with feeds.enabled empty;
        # whoever runs the server starts and stops them (bridge/transport/sidecar.py)
        self.feeds: FeedHub | None = (FeedHub(config, master, self.switch, lambda *record: self._desk.audit(*record))
                                      if enabled_feeds(config) else None)
        self.feed_poll_failures = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def bind(self, endpoint: str | None = None) -> str:
        """Bind the ROUTER socket; returns the endpoint actually bound (``tcp://127.0.0.1:*`` picks a port)."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished peer raises, and is counted
        sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.SNDHWM, _SNDHWM)
        sock.setsockopt(zmq.RCVHWM, _RCVHWM)
        sock.bind(endpoint or self.config.server.bind)
        self._socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("sidecar listening on %s", self.endpoint)
        return self.endpoint

    def bind_control(self, endpoint: str | None = None) -> str | None:
        """Bind the control channel (REP); ``""`` in the config disables it."""
        endpoint = self.config.server.control_bind if endpoint is None else endpoint
        if not endpoint:
            return None
        sock = self.ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 65536)
        sock.bind(endpoint)
        self._control = sock
        self.control_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("control channel on %s (nt8bridge kill / enable)", self.control_endpoint)
        return self.control_endpoint

    def bind_events(self, endpoint: str | None = None) -> str | None:
        """Bind the event stream (PUB) and publish every stored row through it; ``""`` in the config disables it.
        Before ``run``: the sessions' recorders and the desk's write through the wrapped sink from here on."""
        endpoint = self.config.server.events_bind if endpoint is None else endpoint
        if not endpoint:
            return None
        self.events = EventPublisher(self.ctx, endpoint)
        self.events_endpoint = self.events.endpoint
        self.sink = PublishingSink(self.sink, self.events)
        self._desk.sink = self.sink
        return self.events_endpoint

    def close_events(self) -> None:
        if self.events is not None:
            self.events.close()

    def snapshot(self) -> dict[str, Any]:
        """The sidecar's state as the event stream publishes it every ``SNAPSHOT_INTERVAL_S`` (bridge/transport/
        snapshot.py says what each figure is)."""
        return self._state.build()

    def record_config(self) -> None:
        """The configuration in force is an audit record at every start: a change of config between two
        runs shows in the chain as two different records (what it was, and from when)."""
        text = to_toml(self.config)
        self._desk.audit("config", "start", time.time_ns(),
                         {"sha256": hashlib.sha256(text.encode()).hexdigest(), "toml": text})

    # --- kill switch ----------------------------------------------------------------------------

    def kill(self, operator: str, reason: str) -> int:
        """Halt new orders everywhere and FLATTEN every instrument of every session; returns the sessions told."""
        now = time.time_ns()
        event = self.switch.kill(operator, reason, now)
        told = 0
        for session in list(self.sessions.values()):
            if not session.peer_gone:
                self._send(session, Flatten(ALL_INSTRUMENTS, f"kill switch: {event.reason}"[:200]))
                told += 1
        self._desk.audit("kill", event.operator, now, {"reason": event.reason, "operator": event.operator,
                                                       "state": str(self.switch.state), "sessions_flattened": told,
                                                       "sessions": sorted(s.session_id for s in self.sessions.values())})
        log.warning("KILL SWITCH by %s: %s; %d sessions flattened, new orders refused until enabled",
                    event.operator, event.reason, told)
        return told

    def enable(self, operator: str, reason: str) -> None:
        now = time.time_ns()
        event = self.switch.enable(operator, reason, now)
        self._desk.audit("enable", event.operator, now, {"reason": event.reason, "operator": event.operator,
                                                         "state": str(self.switch.state)})
        log.warning("trading re-enabled by %s: %s", event.operator, event.reason)

    def shutdown(self, operator: str, reason: str) -> None:
        """A clean stop asked for on the control channel: recorded like a kill, then the loop ends and the
        caller flushes storage. Needs who and why: a stopped sidecar stops trading for every session."""
        operator, reason = operator.strip(), reason.strip()
        if not operator or not reason:
            raise ControlError("stopping the sidecar needs a named operator and a reason (--operator NAME "
                               "--reason TEXT)")
        now = time.time_ns()
        self._desk.audit("shutdown", operator, now, {"reason": reason, "operator": operator,
                                                     "state": str(self.switch.state),
                                                     "sessions": sorted(s.session_id for s in self.sessions.values())})
        log.warning("shutdown asked by %s: %s; %d sessions will end", operator, reason, len(self.sessions))
        self.request_stop()

    def status_report(self) -> dict[str, Any]:
        """What ``nt8bridge status`` and ``doctor`` read: who this sidecar is, where it listens, and each
        session's last clock offset to its NT8 host (the sample the audit trail records)."""
        cfg = self.config.server
        return {"pid": os.getpid(), "version": __version__, "protocol_version": PROTOCOL_VERSION,
                "endpoint": self.endpoint, "control_endpoint": self.control_endpoint,
                "events_endpoint": self.events_endpoint,
                "metrics_port": self.metrics_port,
                "live_sessions": [{"session_id": s.session_id, "instance_id": s.hello.instance_id,
                                  "account": s.hello.account, "peer": s.peer, "clock_offset_ns": s.clock_offset_ns,
                                  "clock_sampled_ns": s.clock_sampled_ns}
                                 for s in self.sessions.values()],
                "max_sessions": cfg.max_sessions, "max_sessions_per_peer": cfg.max_sessions_per_peer,
                "sessions_opened": self.stats.sessions_opened, "sessions_ended": dict(self.stats.sessions_ended),
                "sessions_refused": dict(self.stats.sessions_refused), "send_failures": self.stats.send_failures,
                "storage": self.storage_health.report(),
                "analytics": self.analytics.report() if self.analytics is not None else None,
                "role": self.role, "leader_epoch": self.leadership.epoch if self.leadership else None,
                "leader": dataclasses.asdict(self.leadership.leader) if self.leadership and self.leadership.leader
                else None}

    @property
    def role(self) -> str:
        """"leader" or "standby" in a hot-standby pair; "single" on its own."""
        return "single" if self.leadership is None else str(self.leadership.role)

    def change_limit(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """A ``set_limit`` or ``override`` command: validated, applied to every session (and the ones to
        come), recorded in the audit trail; returns each session's resulting event."""
        cmd = command_from_request(req)
        sessions = list(self.sessions.values())
        events = self.limit_commands.submit(cmd, [s.pipeline.risk for s in sessions])
        now = time.time_ns()
        kind = "limit_change" if cmd.kind == "set_limit" else "override"
        self._desk.audit(kind, cmd.operator, now, {**cmd.to_dict(), "sessions": [s.session_id for s in sessions],
                                                   "events": events})
        log.warning("%s %s.%s = %r by %s%s: %s (%d sessions)", kind, cmd.scope, cmd.field, cmd.value, cmd.operator,
                    f" approved by {cmd.approved_by} for {cmd.duration_s:g} s" if cmd.approved_by else "",
                    cmd.reason, len(sessions))
        return events

    def record_backup_proof(self, req: dict[str, Any]) -> str:
        """A backup's proof (restored into a scratch database, its audit chain verified there) goes into the
        audit trail, so the trail itself says which backups are known to restore; returns the backup's name."""
        proof = req.get("proof")
        if not isinstance(proof, dict) or not isinstance(proof.get("backup"), str) or not isinstance(
                proof.get("ok"), bool):
            raise ControlError('backup_proof needs "proof": {"backup": NAME, "ok": true|false, ...}')
        self._desk.audit("backup_proof", proof["backup"], time.time_ns(),
                         {**proof, "operator": req.get("operator", "")})
        log.info("backup %s %s: %s", proof["backup"], "proven" if proof["ok"] else "NOT PROVEN",
                 proof.get("reason", ""))
        return proof["backup"]

    def limits_report(self) -> dict[str, Any]:
        """What is in force: the accepted commands, and each session's limits, overrides and states."""
        return {"commands": [c.to_dict() for c in self.limit_commands.accepted],
                "sessions": {str(s.session_id): {"limits": s.pipeline.risk.limits_in_force(),
                                                 "overrides": [o.to_dict() for o in s.pipeline.risk.overrides()],
                                                 "states": {k: [str(st), why] for k, (st, why)
                                                            in s.pipeline.risk.states().items()}}
                             for s in self.sessions.values()}}

    def _on_control(self) -> None:
        sock = self._control
        assert sock is not None
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        data = frame.bytes
        try:
            req = parse_request(data)
            if self.security.operators is not None:
                verify_request(req, self.security.operators, self.security.control_guard)
            cmd = req["cmd"]
            reply: dict[str, Any] = {"ok": True}
            if cmd == "kill":
                reply["sessions_flattened"] = self.kill(req.get("operator", ""), req.get("reason", ""))
            elif cmd == "enable":
                self.enable(req.get("operator", ""), req.get("reason", ""))
            elif cmd in ("set_limit", "override"):
                reply["applied"] = self.change_limit(req)
            elif cmd == "limits":
                reply["limits"] = self.limits_report()
            elif cmd == "backup_proof":
                reply["recorded"] = self.record_backup_proof(req)
            elif cmd == "shutdown":
                self.shutdown(req.get("operator", ""), req.get("reason", ""))
            elif cmd == "status":
                reply |= self.status_report()
                if self.feeds is not None:
                    reply["feeds"] = self.feeds.report()
                reply["security"] = self.security_report()
            reply |= {"state": str(self.switch.state), "sessions": len(self.sessions),
                      "events": [dataclasses.asdict(e) for e in self.switch.events[-5:]]}
        except ControlAuthError as exc:
            self.stats.auth_refused["control"][exc.code.name] += 1
            self._log_limited("CONTROL_" + exc.code.name, "refused control request from %s: %s",
                              _peer_of(frame, b""), exc)
            reply = {"ok": False, "error": str(exc), "code": int(exc.code)}
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        sock.send(json.dumps(reply).encode())

    def security_report(self) -> dict[str, Any]:
        """Remote mode as ``status`` shows it: what is enforced and what was refused, never a secret."""
        refused = self.stats.auth_refused
        return {**self.security.describe(), "refused": {channel: dict(c) for channel, c in refused.items()}}

    def request_stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stop = True

    def run(self) -> None:
        """Serve until ``request_stop``; then end every session and close the socket."""
        if self._socket is None:
            self.bind()
        sock = self._socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self._control is not None:
            poller.register(self._control, zmq.POLLIN)
        hb_s = self.config.server.heartbeat_ms / 1000.0
        flush_s = self.config.storage.flush_interval_ms / 1000.0
        next_timers = time.monotonic()
        next_flush = next_timers + flush_s
        next_ticks = next_snapshot = next_timers  # the event stream's: conflated ticks, and the snapshot (heartbeat)
        # recv + get(RCVMORE) with plain ints: recv_multipart converts options through enums on
        # every frame (measured 4.7 against 4.0 us per message)
        recv, more, noblock, rcvmore = sock.recv, sock.get, int(zmq.NOBLOCK), int(zmq.RCVMORE)
        try:
            while not self._stop:
                timeout_ms = max(0, min(50, int((min(next_timers, next_ticks) - time.monotonic()) * 1000)))
                if poller.poll(timeout_ms):
                    if self._control is not None and self._control.poll(0):
                        self._on_control()
                    self._read_burst(recv, more, noblock, rcvmore)
                else:  # nothing queued: a moment to give back what a burst left freed
                    self._trim_memory()
                now = time.monotonic()
                if now >= next_timers:
                    self._apply_leadership()
                    self._heartbeats_and_timeouts(now)
                    self.storage_health.poll()
                    if self.feeds is not None:
                        self._poll_feeds()
                    next_timers = now + min(hb_s / 2, 0.25)
                if now >= next_flush:
                    self.sink.flush()
                    self.timings.fold()
                    next_flush = now + flush_s
                if now >= next_ticks:
                    if self.events is not None:
                        self.events.flush_ticks()
                    next_ticks = now + TICK_INTERVAL_S
                if now >= next_snapshot:
                    self._publish_snapshot(now)
                    next_snapshot = now + SNAPSHOT_INTERVAL_S
            self._drain_on_stop(poller, recv, more, noblock, rcvmore)
        finally:
            for session in list(self.sessions.values()):
                self._end_session(session, "SIDECAR_SHUTDOWN")
            self.timings.fold()
            sock.close(linger=200)  # let the last replies out, but never hang on a dead peer
            self._socket = None
            if self.events is not None:  # the sessions' ends, then the state without them, then silence
                self.events.flush_ticks()
                self._publish_snapshot(time.monotonic())
                self.close_events()
            log.info("sidecar stopped")

    def _poll_feeds(self) -> None:
        """The feeds' values into the reference book, and what follows from it (bridge/transport/feeds.py); a
        failure is logged and counted, never the loop's end."""
        try:
            self.feeds.poll(list(self.sessions.values()))
        except Exception:  # noqa: BLE001 - NT8's sessions go on without the other feeds' verdicts
            self.stats.internal_errors += 1
            self.feed_poll_failures += 1
            if self.feed_poll_failures == 1 or self.feed_poll_failures % 1000 == 0:
                log.exception("could not evaluate the feeds (%d times so far)", self.feed_poll_failures)

    def _publish_snapshot(self, now: float) -> None:
        """Build the snapshot while anybody reads it (the event stream, the metrics), keep it for the metrics'
        scrapes, and publish it. A failure to build one is logged and counted, never the loop's end."""
        if self.events is None and self.metrics_port is None:
            return
        try:
            state = self.snapshot()
        except Exception:  # noqa: BLE001 - the hot path goes on; the readers see the snapshots stop
            self.stats.internal_errors += 1
            self.snapshot_failures += 1
            if self.snapshot_failures == 1 or self.snapshot_failures % 1000 == 0:
                log.exception("could not build the sidecar's snapshot (%d times so far)", self.snapshot_failures)
            return
        self.last_state, self.last_state_at = state, now
        if self.events is not None:
            self.events.publish("snapshot", {"state": state})

    def close_control(self) -> None:
        """Release the control endpoint. Left to the owner, after storage is flushed: a released endpoint
        tells ``nt8bridge stop --wait`` that the stop is complete."""
        if self._control is not None:
            self._control.close(linger=500)  # a shutdown's reply may still be on its way out
            self._control = None

    def _drain_on_stop(self, poller: zmq.Poller, recv: Callable, more: Callable, noblock: int, rcvmore: int) -> None:
        """A clean stop first handles what the sessions already sent (a playback's last ticks, its
        BYE), so nothing received is lost; bounded by ``server.stop_drain_ms`` and by a quiet socket."""
        deadline = time.monotonic() + self.config.server.stop_drain_ms / 1000.0
        handled = 0
        while self.sessions and time.monotonic() < deadline and poller.poll(50):
            handled += self._read_burst(recv, more, noblock, rcvmore)
        if handled:
            log.info("stopping: handled %d messages the sessions had already sent", handled)

    def _read_burst(self, recv: Callable, more: Callable, noblock: int, rcvmore: int) -> int:
        """Handle up to _DRAIN_BURST messages already queued; returns how many.

        A session's messages are read as plain bytes. From a connection without a session, the frame
        after the routing id is read as a zmq.Frame to learn the peer's address (the HELLO's peer)."""
        sessions = self.sessions
        for n in range(_DRAIN_BURST):
            try:
                rid = recv(noblock)
            except zmq.Again:
                return n
            frames = [rid]
            peer = None
            if rid not in sessions and more(rcvmore):
                frame = recv(noblock, copy=False)
                peer = _peer_of(frame, rid)
                frames.append(frame.bytes)
            while more(rcvmore):
                frames.append(recv(noblock))
            self.handle(frames, peer)
        return _DRAIN_BURST

    # --- message handling -----------------------------------------------------------------------

    def handle(self, frames: list[bytes], peer: str | None = None) -> None:
        """Handle one message as received from the ROUTER: [routing id, header, body]; ``peer`` is who
        sent it (``_peer_of``), needed for a HELLO from a connection without a session: None means the
        routing id."""
        self._t_in = time.perf_counter_ns()
        self.stats.messages_in += 1
        rid = frames[0]
        body_frames = frames[1:]
        session = self.sessions.get(rid)
        header = None
        guarded = self.security.guarded
        try:
            trailer = self._admit(session, body_frames, peer) if guarded else None
            size = sum(len(f) for f in body_frames)
            if size > self.config.server.max_message_bytes:
                seq, msg_type = _peek_seq(body_frames)
                raise ProtocolError(ErrorCode.PROTOCOL_OVERSIZE,
                                    f"message of {size} bytes; at most {self.config.server.max_message_bytes}",
                                    seq, msg_type)
            header, msg = codec.decode(body_frames)
            if guarded and self.security.remote:
                self._authenticate(rid, session, header, body_frames, trailer)
            if header.msg_type not in _FROM_NT8:
                raise ProtocolError(ErrorCode.PROTOCOL_WRONG_DIRECTION,
                                    f"{MsgType(header.msg_type).name} is sent by the sidecar, not by NT8",
                                    header.seq, header.msg_type)
            if header.msg_type == _HELLO:
                try:
                    self._hello(rid, header, msg, peer)
                finally:
                    self._hello_auth = None
                return
            if session is None:
                raise ProtocolError(ErrorCode.SESSION_NO_HELLO, "send HELLO first", header.seq, header.msg_type)
            self._dispatch(session, header, msg)
        except AuthError as exc:
            self._refuse_auth(rid, session, exc, peer)
        except ProtocolError as exc:
            self._refuse(rid, session, exc)
        except Exception:
            self.stats.internal_errors += 1
            seq = header.seq if header else 0
            log.exception("internal error on message seq %s from %r; the session goes on", seq, rid)
            self._send_error(rid, session, ErrorCode.INTERNAL_ERROR, seq, header.msg_type if header else 0,
                             "the sidecar failed on this message; see its log")
            self._ack_refused(session, seq)

    def _dispatch(self, session: Session, header: codec.Header, msg: Message) -> None:
        session.last_heard = time.monotonic()
        seq = header.seq
        if seq <= session.last_seq_in:
            raise ProtocolError(ErrorCode.SESSION_DUPLICATE_SEQ,
                                f"seq {seq} is not above the last one seen ({session.last_seq_in})", seq,
                                header.msg_type)
        if seq != session.last_seq_in + 1:
            self.stats.seq_gaps += 1
            log.warning("session %s: seq jumped from %d to %d (%d messages missing)", session.session_id,
                        session.last_seq_in, seq, seq - session.last_seq_in - 1)
        session.last_seq_in = seq
        if session.last_heard - session.last_clock_sample >= CLOCK_SAMPLE_S:
            session.last_clock_sample = session.last_heard
            self._clock_sample(session, header)
        t = header.msg_type
        if t == _BYE:
            log.info("session %s ended by NT8: %s", session.session_id, msg.reason)
            self._end_session(session, "BYE")
            return
        replies = self.deliver(session, seq, t, msg)
        bracket = False
        for reply in replies:
            kind = type(reply)
            if kind is Error:
                self.stats.errors_sent[ErrorCode(reply.code).name] += 1
            elif kind is SubmitBracket:
                bracket = True
            self._send(session, reply, header.ts_send_ns)
        if bracket and t in _MARKET_DATA:
            self.timings.record(TICK_TO_BRACKET, time.perf_counter_ns() - self._t_in)
        if session.hello.lockstep:
            self._send(session, Heartbeat(seq), header.ts_send_ns)

    def deliver(self, session: Session, seq: int, t: int, msg: Message) -> tuple | list:
        """What one message from NT8 (any but HELLO and BYE) does to its session's pipeline: the replies to send.
        The socket path (``_dispatch``) and the in-process research engine (bridge/research) both come here, so
        both run the same decisions. An undeclared instrument is a ProtocolError."""
        p = session.pipeline
        replies: tuple | list = ()
        if t == _TICK:
            iid = msg.instrument_id
            if iid not in p.instruments:
                raise _unknown_instrument(iid, seq, t)
            replies = p.on_tick(seq, msg)
            session.last_tick_wall[iid] = session.last_heard
        elif t == _TICKS:
            replies = self._tick_batch(session, seq, msg.ticks)
        elif t == _HEARTBEAT:
            pass
        elif t == _BAR:
            if msg.instrument_id not in p.instruments:
                raise _unknown_instrument(msg.instrument_id, seq, t)
            replies = p.on_bar(seq, msg)
        elif t == _ORDER_UPDATE:
            replies = p.on_order_update(seq, msg)
        elif t == _EXECUTION:
            if msg.instrument_id not in p.instruments:
                raise _unknown_instrument(msg.instrument_id, seq, t)
            replies = p.on_execution(seq, msg)
        elif t == _POSITION:
            if msg.instrument_id not in p.instruments:
                raise _unknown_instrument(msg.instrument_id, seq, t)
            p.on_position(seq, msg)
        elif t == _ACCOUNT:
            p.on_account(seq, msg)
        return replies

    def _tick_batch(self, session: Session, seq: int, ticks: list) -> list[Message]:
        """Each tick of a TICKS message on its own; a refusal names the tick's index in the batch."""
        p = session.pipeline
        replies: list[Message] = []
        n = len(ticks)
        for i, tick in enumerate(ticks):
            iid = tick.instrument_id
            if iid not in p.instruments:
                replies.append(Error(int(ErrorCode.SESSION_UNKNOWN_INSTRUMENT), seq, int(MsgType.TICKS),
                                     f"tick {i} of {n}: instrument_id {iid} was not declared in HELLO"))
                continue
            for reply in p.on_tick(seq, tick):
                if type(reply) is Error:
                    reply = Error(reply.code, seq, int(MsgType.TICKS), f"tick {i} of {n}: {reply.text}")
                replies.append(reply)
            session.last_tick_wall[iid] = session.last_heard
        return replies

    def _hello(self, rid: bytes, header: codec.Header, hello: Hello, peer: str | None = None) -> None:
        if self.leadership is not None:
            self._apply_leadership()  # a leader's first session finds the chain resumed and the start recorded
        if self.leadership is not None and not self.leadership.is_leader:
            self.stats.sessions_refused["standby"] += 1
            raise ProtocolError(ErrorCode.SESSION_STANDBY,
                                f"this sidecar ({self.leadership.node}) is the standby of cluster "
                                f"{self.leadership.cluster!r}; {self.leadership.describe_leader()}: the NinjaScript "
                                "tries every endpoint listed in 'Sidecar endpoint'", header.seq, header.msg_type)
        old = self.sessions.get(rid)
        if old is not None:
            peer = old.peer  # the same connection
            self._end_session(old, "REHELLO")
        if peer is None:
            peer = _peer_of(None, rid)
        session, resumed = self.open_session(rid, peer, hello, header.seq, header.msg_type)
        session.auth = self._take_hello_auth(rid)  # remote mode: every message from WELCOME on is MAC'd
        cfg = self.config.server
        self._send(session, Welcome(session.session_id, __version__, cfg.heartbeat_ms, cfg.heartbeat_timeout_ms,
                                    session.started_ns, cfg.max_message_bytes), header.ts_send_ns)
        for msg in resumed:
            self._send(session, msg)

    def open_session(self, rid: bytes, peer: str, hello: Hello, seq: int,
                     msg_type: int) -> tuple[Session, list[Message]]:
        """A new session for a HELLO: its instruments checked against the instrument master, the same instance's
        older sessions ended, its pipeline built and its start recorded; returns it and what it resumes from
        storage. The socket path sends WELCOME after it; the in-process research engine calls it directly. A
        HELLO that cannot be served is a ProtocolError."""
        if not hello.instruments:
            raise ProtocolError(ErrorCode.SESSION_BAD_HELLO, "HELLO declares no instruments", seq, msg_type)
        instruments = []
        for iid, decl in enumerate(hello.instruments):
            if not (math.isfinite(decl.tick_size) and decl.tick_size > 0
                    and math.isfinite(decl.point_value) and decl.point_value > 0):
                raise ProtocolError(ErrorCode.SESSION_BAD_HELLO,
                                    f"{decl.name}: tick size {decl.tick_size} and point value "
                                    f"{decl.point_value} must be finite and positive", seq, msg_type)
            try:
                spec = self.master.resolve(decl.name)
            except ValueError as exc:  # UnknownInstrumentError, or a name that is not a name at all
                raise ProtocolError(ErrorCode.SESSION_UNKNOWN_INSTRUMENT, str(exc), seq, msg_type) from None
            if not (math.isclose(spec.tick_size, decl.tick_size, rel_tol=1e-9)
                    and math.isclose(spec.point_value, decl.point_value, rel_tol=1e-9)):
                # sizing and P&L would be wrong on one side or the other: refuse, say how to fix it
                raise ProtocolError(ErrorCode.SESSION_BAD_HELLO,
                                    f"{decl.name}: NT8 says tick size {decl.tick_size} and point value "
                                    f"{decl.point_value}, the instrument master {spec.tick_size} and "
                                    f"{spec.point_value}; correct the instrument in NT8 or declare it under "
                                    "[[instruments]] in the sidecar's config", seq, msg_type)
            instruments.append(SessionInstrument(iid, decl, spec))
        replaced = [s for s in self.sessions.values() if s.hello.instance_id == hello.instance_id]
        self._check_limits(peer, replaced, seq, msg_type)
        for other in replaced:
            self._end_session(other, "REPLACED")  # the same NT8 instance reconnected
        now_ns = time.time_ns()
        session_id = max(now_ns // 1000, self._last_session_id + 1)
        self._last_session_id = session_id
        recorder = Recorder(self.sink, session_id, self.config.storage.store_ticks, chain=self.chain)
        pipeline = DecisionPipeline(config=self.config, instruments=instruments, recorder=recorder,
                                    strategies=self.strategy_factory(), timings=self.timings,
                                    id_prefix=f"S{session_id}", switch=self.switch, account=hello.account,
                                    references=self.feeds.reference if self.feeds is not None else None)
        for event in self.limit_commands.replay(pipeline.risk):  # run-time changes made before it connected
            recorder.audit("risk_event", event["event"], now_ns, event)
        now = time.monotonic()
        session = Session(session_id, rid, peer, hello, pipeline, recorder, now, now, last_seq_in=seq,
                          started_ns=now_ns)
        for i in instruments:
            recorder.instrument(i.decl.name, i.spec.root, i.decl.tick_size, i.decl.point_value, i.spec.currency,
                                i.spec.exchange, now_ns)
        recorder.session_started(hello.instance_id, hello.account, rid.hex(), PROTOCOL_VERSION, now_ns,
                                 now_ns - hello.nt8_clock_ns)
        self.sessions[rid] = session
        self.stats.sessions_opened += 1
        self.stats.sessions_active = len(self.sessions)
        log.info("session %s opened from %s: instance %r account %r instruments %s%s", session_id, peer,
                 hello.instance_id, hello.account, [d.name for d in hello.instruments],
                 " (lockstep)" if hello.lockstep else "")
        return session, self._resume(session, now_ns)

    def _resume(self, session: Session, now_ns: int) -> list[Message]:
        """Give a new session what storage knows of its strategy instance: open brackets, positions, the
        day's realized P&L (``recovery.lookback_h``). Then NT8's replay after WELCOME confirms or corrects
        it. With ``recovery.flatten``, what was resumed open is closed at market instead (FLATTEN)."""
        if self.history is None or self.config.recovery.lookback_h <= 0:
            return []
        hello = session.hello
        since = now_ns - int(self.config.recovery.lookback_h * 3600e9)
        try:
            history = self.history(hello.instance_id, hello.account, since)
        except Exception as exc:  # the database away: NT8's replay is what the session starts from
            log.warning("session %s: could not read the history of %r from storage (%s); starting from what NT8 "
                        "replays", session.session_id, hello.instance_id, str(exc).splitlines()[0] if str(exc) else exc)
            session.recorder.audit("resume", hello.instance_id, now_ns, {"error": str(exc)[:500]})
            return []
        if not history.brackets and not history.fills:
            return []
        summary = session.pipeline.resume(history)
        session.recorder.audit("resume", hello.instance_id, now_ns, summary)
        log.info("session %s resumed %d brackets of %r from storage: open %s, positions %s, realized %.2f",
                 session.session_id, summary["brackets"], hello.instance_id, summary["active"], summary["positions"],
                 summary["realized"])
        if not self.config.recovery.flatten:
            return []
        p = session.pipeline
        out: list[Message] = []
        for iid in sorted(p.instruments):
            if p.orders.position(iid) or p.orders.active(iid):
                out.append(p.flatten(iid, "resumed after a restart or failover; recovery.flatten is on", "recovery",
                                      p._last_event_ns, now_ns, {"position": p.orders.position(iid)}))
        return out

    def _check_limits(self, peer: str, replaced: list[Session], seq: int, msg_type: int) -> None:
        """Refuse a HELLO that would open a session beyond ``server.max_sessions`` or
        ``server.max_sessions_per_peer``; the sessions it replaces (the same instance reconnecting) do
        not count, so a reconnect is never refused for its own stale session."""
        cfg = self.config.server
        others = [s for s in self.sessions.values() if s not in replaced]
        if len(others) >= cfg.max_sessions:
            limit, text = "max_sessions", (f"the sidecar already holds {len(others)} sessions (server.max_sessions "
                                           f"= {cfg.max_sessions}); retry once one has ended")
        elif (n := sum(1 for s in others if s.peer == peer)) >= cfg.max_sessions_per_peer:
            limit, text = "max_sessions_per_peer", (f"{peer} already holds {n} sessions (server.max_sessions_per_peer"
                                                    f" = {cfg.max_sessions_per_peer}); retry once one has ended")
        else:
            return
        self.stats.sessions_refused[limit] += 1
        raise ProtocolError(ErrorCode.SESSION_LIMIT_REACHED, text, seq, msg_type)

    def _end_session(self, session: Session, reason: str) -> None:
        """End a session: what it recorded is with the writer already; its counts are folded into the
        server's totals (bounded by the reasons, codes and strategy events there are), and the server
        keeps no reference to it."""
        if self.sessions.get(session.routing_id) is not session:
            return
        if reason == "LOST":
            self._flatten_lost(session)
        del self.sessions[session.routing_id]
        p = session.pipeline
        self.stats.ticks_accepted += p.ticks_accepted
        self.stats.ticks_rejected += p.ticks_rejected
        self.quality_counts.update(p.gate.counts)
        self.denial_counts.update(p.denials_by_reason)
        self.break_counts.update(p.breaks_by_kind)
        for strategy in p.strategies:
            for event, value in strategy.metrics().items():
                self.strategy_counts[(strategy.name, event)] += value
        session.recorder.session_ended(time.time_ns(), reason)
        self.stats.sessions_active = len(self.sessions)
        self.stats.sessions_ended[reason] += 1
        if reason == "LOST":
            self.stats.sessions_lost += 1
        log.info("session %s ended: %s (%d ticks accepted, %d refused, %d orders)", session.session_id, reason,
                 p.ticks_accepted, p.ticks_rejected, p.orders_sent)

    def _flatten_lost(self, session: Session) -> None:
        """A lost heartbeat does what the kill switch does, for that session: FLATTEN (delivered if the
        peer is only slow, not gone; NT8's own OnSidecarLost covers the rest), and an audit record."""
        self._send(session, Flatten(ALL_INSTRUMENTS, "sidecar lost the heartbeat of this session"))
        session.recorder.audit("kill", "heartbeat", time.time_ns(),
                               {"reason": "heartbeat lost", "operator": "sidecar", "scope": "session",
                                "session_id": session.session_id, "instance_id": session.hello.instance_id})

    def _clock_sample(self, session: Session, header: codec.Header) -> None:
        """Store the offset between NT8's send stamp and the sidecar's clock (it includes the one-way latency)."""
        now_ns = time.time_ns()
        session.clock_offset_ns, session.clock_sampled_ns = header.ts_send_ns - now_ns, now_ns
        session.recorder.audit("clock_offset", str(session.session_id), now_ns,
                               {"nt8_ts_send_ns": header.ts_send_ns, "sidecar_ns": now_ns,
                                "offset_ns": session.clock_offset_ns, "seq": header.seq})

    # --- leadership -----------------------------------------------------------------------------

    def _apply_leadership(self) -> None:
        """Apply what the leadership thread decided, on this thread: a new leader resumes the audit chain
        on the database's head and records that it leads; a sidecar that stepped down ends its sessions
        with SESSION_STANDBY, so that each NT8 moves to the new leader at once."""
        if self.leadership is None:
            return
        while True:
            try:
                change = self.leadership.changes.get_nowait()
            except queue.Empty:
                return
            if change.role == "leader":
                if self._on_lead is not None:
                    self.chain = self._on_lead(change.info)
                    self._desk.chain = self.chain
                self.record_config()
                self._desk.audit("leadership", self.leadership.node, change.at_ns,
                                 {"role": "leader", "epoch": change.info.epoch, "node": change.info.node,
                                  "endpoint": change.info.endpoint, "reason": change.reason})
                continue
            # another sidecar may be extending the chain already: from here on, plain audit_log rows
            self.chain = self._desk.chain = None
            for session in list(self.sessions.values()):
                session.recorder.chain = None
                self._send_error(session.routing_id, session, ErrorCode.SESSION_STANDBY, 0, 0,
                                 f"this sidecar stepped down ({change.reason}); {self.leadership.describe_leader()}")
                self._end_session(session, "STEPPED_DOWN")
            self._desk.audit("leadership", self.leadership.node, change.at_ns,
                             {"role": "standby", "epoch": self.leadership.epoch, "reason": change.reason})

    # --- timers ---------------------------------------------------------------------------------

    def _trim_memory(self) -> None:
        released = self.memory.maybe_trim(time.monotonic())
        if released is not None and released >= 1 << 20:
            log.info("returned %.0f MB of memory freed after a burst to the operating system (resident now "
                     "%.0f MB)", released / 1e6, (self.memory.last_rss or 0) / 1e6)

    def _heartbeats_and_timeouts(self, now: float) -> None:
        cfg = self.config
        hb_s = cfg.server.heartbeat_ms / 1000.0
        timeout_s = cfg.server.heartbeat_timeout_ms / 1000.0
        stale_s = cfg.quality.stale_after_s
        for session in list(self.sessions.values()):
            if session.peer_gone:
                # libzmq still hands out what the peer sent before its connection closed (a fast client can
                # be tens of thousands of messages ahead): the session ends with its BYE, or once that is read
                if now - session.last_heard > hb_s:
                    self._end_session(session, "DISCONNECTED")
                continue
            if now - session.last_heard > timeout_s:
                log.warning("session %s lost: nothing heard for %.1f s", session.session_id,
                            now - session.last_heard)
                self._end_session(session, "LOST")
                continue
            if now - session.last_sent >= hb_s:
                self._send(session, Heartbeat(session.last_seq_in))
            if not session.hello.lockstep:  # a playback's clock is its data, not the wall
                self._stale_watchdog(session, now, stale_s)

    def _stale_watchdog(self, session: Session, now: float, stale_s: float) -> None:
        p = session.pipeline
        wall_ns = time.time_ns()
        for iid, last in session.last_tick_wall.items():
            if now - last > stale_s and iid not in session.stale_flagged and p.gate.is_open(iid, wall_ns):
                session.stale_flagged.add(iid)
                detail = f"no tick for {now - last:.1f} s of wall time while the market is open"
                log.warning("session %s %s: %s", session.session_id, p.instruments[iid].decl.name, detail)
                p.gate.counts[QualityReason.STALE_FEED] += 1
                session.recorder.quality_event(0, iid, QualityReason.STALE_FEED, detail, wall_ns, wall_ns, {})
            elif now - last <= stale_s:
                session.stale_flagged.discard(iid)

    # --- sending --------------------------------------------------------------------------------

    def _send(self, session: Session, msg: Message, ts_echo_ns: int = 0) -> None:
        if session.peer_gone:
            return  # nothing reaches it any more; what it sent is still processed
        session.seq_out += 1
        auth = session.auth
        frames = (codec.encode(msg, session.seq_out, time.time_ns(), ts_echo_ns) if auth is None
                  else auth.encode(msg, session.seq_out, time.time_ns(), ts_echo_ns))
        sent = self._send_frames(session.routing_id, frames)
        if sent:
            session.last_sent = time.monotonic()
        elif sent is None:
            # The peer's connection is gone, but messages it sent before may still be queued here (ZeroMQ
            # delivers them after the disconnect): they are processed, and stored, as if it were there. The
            # session ends with its BYE if one is queued, else as DISCONNECTED once nothing more arrives.
            session.peer_gone = True
            log.warning("session %s: the peer's connection is gone; what it sent before is still processed, then the "
                        "session ends", session.session_id)

    def _send_frames(self, rid: bytes, frames: list[bytes]) -> bool | None:
        """True when sent; False when the peer is not reading (EAGAIN); None when it is gone."""
        try:
            self._socket.send_multipart([rid, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # never block the hot path on a peer
            self.stats.send_failures += 1
            self._log_limited("SEND_FAILED", "could not send to peer %s: %s", rid.hex(), exc.strerror)
            return None if exc.errno == zmq.EHOSTUNREACH else False
        self.stats.messages_out += 1
        return True

    def _send_error(self, rid: bytes, session: Session | None, code: ErrorCode, seq: int, msg_type: int,
                    text: str) -> None:
        self.stats.errors_sent[code.name] += 1
        err = Error(int(code), seq, msg_type, text)
        if session is not None:
            self._send(session, err)
        else:  # no session yet: sequence numbers start with the WELCOME of a session
            self._send_frames(rid, codec.encode(err, 0, time.time_ns()))

    def _refuse(self, rid: bytes, session: Session | None, exc: ProtocolError) -> None:
        self._log_refusal(rid, exc)
        self._send_error(rid, session, exc.code, exc.seq, exc.msg_type, exc.text)
        self._ack_refused(session, exc.seq)

    # --- remote mode (bridge/transport/security.py) ---------------------------------------------

    def _admit(self, session: Session | None, body_frames: list[bytes], peer: str | None) -> bytes | None:
        """Before anything is decoded: a connection without a session must come from an address in
        ``security.allow``; in remote mode the trailer is taken off ``body_frames`` (checked by
        ``_authenticate`` once the header is read) and returned."""
        if session is None and not self.security.allows(peer):
            seq, msg_type = _peek_seq(body_frames)
            raise AuthError(ErrorCode.AUTH_PEER_NOT_ALLOWED, f"{peer or 'a peer without an IP address'} is not in "
                            "security.allow; add it there to let it connect", seq, msg_type)
        if self.security.remote and len(body_frames) == 3:
            return body_frames.pop()
        return None

    def _authenticate(self, rid: bytes, session: Session | None, header: codec.Header, frames: list[bytes],
                      trailer: bytes | None) -> None:
        """Remote mode: the message's MAC, before anything acts on it. A HELLO must verify under the shared
        secret, be fresh and carry a nonce not seen before, or it opens nothing and replaces no session;
        any other message must verify under its session's key and have a seq above the last one."""
        if header.msg_type == _HELLO:
            secret, nonce = open_hello(frames[0], frames[1], trailer, self.security.secrets, header.seq)
            why = self.security.hello_guard.check(nonce, header.ts_send_ns)
            if why is not None:
                raise AuthError(ErrorCode.AUTH_REPLAY, f"HELLO {why}", header.seq, header.msg_type)
            self._hello_auth = (rid, accept_hello(secret, nonce))
            return
        if session is None:
            return  # SESSION_NO_HELLO follows: there is no key to check it with
        if session.auth is None:
            raise AuthError(ErrorCode.AUTH_REQUIRED, "the session was opened without authentication; send HELLO again",
                            header.seq, header.msg_type)
        session.auth.check(frames[0], frames[1], trailer, header.seq, header.msg_type)
        if header.seq <= session.last_seq_in:
            raise AuthError(ErrorCode.AUTH_REPLAY, f"seq {header.seq} is not above the last one seen "
                            f"({session.last_seq_in}): a replay", header.seq, header.msg_type)

    def _take_hello_auth(self, rid: bytes) -> SessionAuth | None:
        """The keys ``_authenticate`` derived for the HELLO being opened on ``rid`` (None when unauthenticated)."""
        pending, self._hello_auth = self._hello_auth, None
        return pending[1] if pending is not None and pending[0] == rid else None

    def _refuse_auth(self, rid: bytes, session: Session | None, exc: AuthError, peer: str | None) -> None:
        """Answered and counted like any refusal, but never acknowledged: nothing in the message can be
        trusted, its seq included, and it must not move the session's."""
        self.stats.auth_refused["data"][exc.code.name] += 1
        who = session.peer if session is not None else (peer or _peer_of(None, rid))
        self._log_limited(exc.code.name, "refused message from %s (%s, seq %s): %s: %s", who, rid.hex(), exc.seq,
                          exc.code.name, exc.text)
        self._send_error(rid, session, exc.code, exc.seq, exc.msg_type, exc.text)

    def _ack_refused(self, session: Session | None, seq: int) -> None:
        """A lockstep peer waits for the acknowledgement of every seq, refused ones included."""
        if session is not None and session.hello.lockstep and seq and self.sessions.get(session.routing_id) is session:
            session.last_seq_in = max(session.last_seq_in, seq)
            self._send(session, Heartbeat(session.last_seq_in))

    def _log_refusal(self, rid: bytes, exc: ProtocolError) -> None:
        self._log_limited(exc.code.name, "refused message from %s (seq %s): %s", rid.hex(), exc.seq, exc)

    def _log_limited(self, key: str, fmt: str, *args: object) -> None:
        """A warning, at most _LOG_BURST per ``key`` per _LOG_WINDOW_S; then how many were left out."""
        now = time.monotonic()
        window = self._log_window.setdefault(key, [now, 0, 0])
        if now - window[0] > _LOG_WINDOW_S:
            if window[2]:
                log.warning("%d more %s lines in the last %.0f s were not logged (all were counted)", window[2], key,
                            now - window[0])
            window[:] = [now, 0, 0]
        if window[1] < _LOG_BURST:
            window[1] += 1
            log.warning(fmt, *args)
        else:
            window[2] += 1

    # --- reading ----------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Ticks accepted and refused so far, closed and open sessions together."""
        open_accepted = sum(s.pipeline.ticks_accepted for s in self.sessions.values())
        open_rejected = sum(s.pipeline.ticks_rejected for s in self.sessions.values())
        return {"ticks_accepted": self.stats.ticks_accepted + open_accepted,
                "ticks_rejected": self.stats.ticks_rejected + open_rejected}


def _unknown_instrument(iid: int, seq: int, msg_type: int) -> ProtocolError:
    return ProtocolError(ErrorCode.SESSION_UNKNOWN_INSTRUMENT, f"instrument_id {iid} was not declared in HELLO", seq,
                         msg_type)


def _peer_of(frame: zmq.Frame | None, rid: bytes) -> str:
    """Who is behind a connection: the IP address libzmq read from the TCP connection (the routing id
    is per connection, so a peer that reconnects gets a new one); the routing id where there is none
    (inproc, or no frame)."""
    if frame is not None:
        try:
            address = frame.get("Peer-Address")
        except zmq.ZMQError:  # inproc: no address
            address = ""
        if address:
            return address
    return "routing id " + rid.hex()


def _peek_seq(frames: list[bytes]) -> tuple[int, int]:
    """Sequence number and type of an oversize message, when its header is readable."""
    if frames and len(frames[0]) == codec.HEADER_SIZE:
        try:
            h = codec.decode_header(frames[0])
            return h.seq, h.msg_type
        except ProtocolError:
            pass
    return 0, 0
