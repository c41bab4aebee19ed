"""The sidecar's live event stream: a ZeroMQ PUB socket that the console and the alerts read.

The decision path never waits for a reader. PUB drops what a slow subscriber's queue (``SNDHWM``)
cannot take; every message carries the publisher's sequence number, so a reader counts what it lost
(``EventFeed.lost``) and the console knows to read storage again. What changes often is conflated
before it is sent: the last tick of each instrument goes out at most every ``TICK_INTERVAL_S``, and
the sidecar's state (sessions, positions, working orders, risk, latency) as one snapshot every
``SNAPSHOT_INTERVAL_S``, which doubles as the sidecar's heartbeat. Rows bound for storage that a
person acts on (decisions, orders and their updates, fills, positions, account values, quality and
audit records, sessions) go out as they are written.

Wire: two frames, ``[topic, JSON object]``, UTF-8. Every object has ``"seq"`` (1, 2, ... per
publisher), ``"boot"`` (random per publisher: a restarted sidecar starts counting again) and
``"ts_ns"`` (the sidecar's wall clock when it was sent). Topics:

- ``row.<table>``: ``{"table": ..., "row": {column: value}}``, one stored row (ROW_FIELDS order in
  bridge/audit/recorder.py; non-finite numbers are null);
- ``ticks``: ``{"ticks": [{"session_id", "instrument", "price", "bid", "ask", "size", "ts_exchange_ns",
  "ts_sidecar_ns"}, ...]}``, the last tick of each instrument that ticked since the last one;
- ``update.<table>``: ``{"table": ..., "key": ..., "values": {column: value}}``, a stored row changed
  (a session's end);
- ``snapshot``: ``{"state": STATE}``, what ``SidecarServer.snapshot()`` returns, published every
  ``SNAPSHOT_INTERVAL_S`` whether or not a session is connected, and once more as the sidecar stops.

STATE (built by bridge/transport/snapshot.py, which says how each figure is computed; a value not
known is null, a list may be empty; money in the instrument's currency, P&L in dollars)::

    sidecar:   pid, version, role ("single", "leader", "standby"), endpoint, control_endpoint,
               events_endpoint, uptime_s, trading_state ("ACTIVE" | "HALTED": the kill switch),
               halted_by, halted_reason, halted_at_ns (the kill in force), storage (what
               ``nt8bridge status`` shows under storage: the writer's state, spool, holds)
    sessions:  [{session_id, instance_id, account, peer, lockstep, started_ns, clock_offset_ms,
                 ticks_accepted, ticks_rejected, orders_sent,
                 instruments: [{instrument (NT8's name, "ES 06-24"), root, last_price,
                                last_tick_age_s (wall seconds since its last tick), feed ("ok" |
                                "stale": the stale-feed watchdog's verdict | "none": no tick yet)}]}]
    positions: [{session_id, account, instrument, strategy (null: contracts no bracket accounts
                 for), quantity (signed), avg_price, last_price, unrealized, realized}]
    orders:    [{session_id, account, client_order_id, decision_id, instrument, strategy, side,
                 quantity, entry_type, entry_price, stop_price, target_price, state ("SENT" |
                 "WORKING" | "OPEN"), filled (entry contracts filled)}], the brackets still working
    pnl:       [{session_id, account, realized, unrealized, equity}], one per session
    risk:      {trading_state ("ACTIVE" | "REDUCING" | "HALTED": what a new order meets desk-wide),
                limits: [{scope, limit, value, use, utilization (use / value, or null)}],
                denials: {reason: count} (since the sidecar started), holds: [text] (the sidecar's
                own holds and every risk scope not ACTIVE), overrides: [the operators' overrides
                still running, with remaining_s]}
    latency:   {stages: {stage: {p50_us, p99_us, count}} (the stages timed so far), tick_to_bracket:
                {p50_us, p99_us, count} (from a stage of that name; nulls and 0 while none is timed)}
    events:    {published, failed, ticks_conflated} (this stream's own counts)

A subscriber filters by topic prefix (``EventFeed(topics=("row.", "snapshot"))``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from bridge.audit.recorder import ROW_FIELDS, RowSink

__all__ = ["PUBLISHED_TABLES", "Event", "EventFeed", "EventPublisher", "PublishingSink", "SNAPSHOT_INTERVAL_S",
           "TICK_INTERVAL_S"]

log = logging.getLogger(__name__)

PUBLISHED_TABLES = frozenset({"decisions", "orders", "order_updates", "executions", "positions", "account_values",
                              "quality_events", "audit_log", "audit_chain", "sessions"})
TICK_INTERVAL_S = 0.05
SNAPSHOT_INTERVAL_S = 0.25
_SNDHWM = 10_000  # per subscriber: about a second of a busy desk's events before a slow reader loses some


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass
class PublisherStats:
    published: int = 0
    failed: int = 0          # send errors (the socket closed under us, an encoding failure): logged, never raised
    ticks_conflated: int = 0  # ticks replaced by a later one of the same instrument before they went out


class EventPublisher:
    """The PUB socket and its conflation buffers; used from the server's own thread only."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _SNDHWM)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._sock: zmq.Socket | None = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.boot = os.urandom(6).hex()
        self.stats = PublisherStats()
        self._seq = 0
        self._ticks: dict[tuple[int, int], tuple] = {}  # (session id, instrument) -> the last tick row
        log.info("event stream on %s (the console and the alerts read it)", self.endpoint)

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        if self._sock is None:
            return
        self._seq += 1
        body = {"seq": self._seq, "boot": self.boot, "ts_ns": time.time_ns(), **body}
        try:
            self._sock.send_multipart([topic.encode(), json.dumps(body, default=str, allow_nan=False).encode()],
                                      zmq.NOBLOCK)
            self.stats.published += 1
        except (zmq.ZMQError, TypeError, ValueError) as exc:
            self.stats.failed += 1
            if self.stats.failed == 1 or self.stats.failed % 1000 == 0:
                log.warning("event stream: %s not published (%s; %d so far)", topic, exc, self.stats.failed)

    def row(self, table: str, row: tuple) -> None:
        if table == "ticks":
            key = (row[0], row[2])
            if key in self._ticks:
                self.stats.ticks_conflated += 1
            self._ticks[key] = row
        elif table in PUBLISHED_TABLES:
            self.publish("row." + table, {"table": table, "row": {k: _finite(v) for k, v in
                                                                  zip(ROW_FIELDS[table], row)}})

    def flush_ticks(self) -> None:
        if not self._ticks:
            return
        names = ROW_FIELDS["ticks"]
        ticks = [{k: _finite(v) for k, v in zip(names, row) if k not in ("seq", "kind", "ts_receive_ns")}
                 for row in self._ticks.values()]
        self._ticks.clear()
        self.publish("ticks", {"ticks": ticks})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class PublishingSink:
    """The storage writer as the recorder sees it, with every row also offered to the event stream."""

    def __init__(self, sink: RowSink, publisher: EventPublisher) -> None:
        self.sink = sink
        self.publisher = publisher
        # bound once: a tick row is the one written on every tick, and EventPublisher.row's work for it is
        # done here inline (a call less: 330 against 270 ns a tick, measured; a plain write is 100)
        self._write = sink.write
        self._row = publisher.row
        self._ticks = publisher._ticks
        self._stats = publisher.stats

    def write(self, table: str, row: tuple) -> None:
        self._write(table, row)
        if table == "ticks":  # EventPublisher.row, inline
            key = (row[0], row[2])
            ticks = self._ticks
            if key in ticks:
                self._stats.ticks_conflated += 1
            ticks[key] = row
        else:
            self._row(table, row)

    def update(self, table: str, key: Any, values: dict[str, Any]) -> None:
        self.sink.update(table, key, values)
        if table in PUBLISHED_TABLES:
            self.publisher.publish("update." + table, {"table": table, "key": key,
                                                       "values": {k: _finite(v) for k, v in values.items()}})

    def flush(self) -> None:
        # delegated by name: a __getattr__ fallback would slow every attribute read of this object, write's
        # own included (140 ns a tick, measured); the writer itself is ``sink``
        self.sink.flush()


@dataclass(frozen=True)
class Event:
    topic: str
    seq: int
    boot: str
    ts_ns: int
    body: dict[str, Any] = field(repr=False)


class EventFeed:
    """A reader of a sidecar's event stream (SUB); reconnects by itself when the sidecar comes back.

    ``lost`` counts the events that never arrived (gaps in ``seq``), ``malformed`` what was not an
    event. ``sidecar_up`` says whether a snapshot came in the last ``alive_s`` seconds."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), ctx: zmq.Context | None = None,
                 alive_s: float = 2.0, clock: Callable[[], float] = time.monotonic, hwm: int = 100_000) -> None:
        self.endpoint = endpoint
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, hwm)  # events queued here unread; beyond them the sidecar drops them
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self.alive_s = alive_s
        self._clock = clock
        self.received = 0
        self.lost = 0
        self.malformed = 0
        self.restarts = 0
        self.last_heard: float | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self._boot: str | None = None
        self._seq = 0

    @property
    def sidecar_up(self) -> bool:
        return self.last_heard is not None and self._clock() - self.last_heard <= self.alive_s

    def poll(self, timeout_ms: int = 100, max_events: int = 10_000) -> list[Event]:
        """The events that arrived, waiting up to ``timeout_ms`` for the first."""
        events: list[Event] = []
        if self._sock is None or not self._sock.poll(timeout_ms):
            return events
        while len(events) < max_events:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = self._decode(frames)
            if event is not None:
                events.append(event)
        return events

    def _decode(self, frames: list[bytes]) -> Event | None:
        try:
            topic = frames[0].decode()
            body = json.loads(frames[1])
            seq, boot, ts_ns = int(body["seq"]), str(body["boot"]), int(body["ts_ns"])
        except (IndexError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                log.warning("event stream %s: %d malformed messages ignored", self.endpoint, self.malformed)
            return None
        if boot != self._boot:
            if self._boot is not None:
                self.restarts += 1
                log.info("event stream %s: the sidecar restarted", self.endpoint)
            self._boot, self._seq = boot, seq - 1 if self._boot is None else 0
        if seq > self._seq + 1:
            self.lost += seq - self._seq - 1
        self._seq = max(self._seq, seq)
        self.received += 1
        self.last_heard = self._clock()
        if topic == "snapshot":
            self.last_snapshot = body.get("state")
        return Event(topic, seq, boot, ts_ns, body)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
