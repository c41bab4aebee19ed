"""The sidecar as it is now: its event stream read by a background thread into memory, and handed on to
every browser that watches.

One thread (:class:`LiveFeed`) owns the ZeroMQ SUB socket (``EventFeed``, bridge/transport/events.py)
and folds each event into :class:`LiveState`: the last snapshot, the last rows of each table (bounded),
the last tick of each instrument. ZeroMQ reconnects by itself when the sidecar comes back; the state
is kept meanwhile, so the page shows the last known picture, marked as such.

Each WebSocket client has a :class:`Subscriber`: a small mailbox that conflates. A snapshot replaces
the one the client has not taken yet, ticks replace earlier ticks of the same instrument, and rows wait
in a bounded queue that drops its oldest when full (counted; the page is told to read storage again).
A slow browser therefore costs a bounded amount of memory and gets the latest picture, never a backlog.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.transport.events import Event, EventFeed

__all__ = ["LiveFeed", "LiveState", "Subscriber"]

log = logging.getLogger("nt8bridge.console.live")

ROWS_KEPT = 200          # recent rows per table held for a page that connects
SUBSCRIBER_ROWS = 500    # rows waiting for one client before its oldest are dropped
# The tables the page shows or reloads on; the rest (audit records, order updates, quality events: most of a busy
# sidecar's rows) stay in the console's state for the API and are not pushed to every browser
PAGE_TABLES = frozenset({"executions", "orders", "positions", "decisions", "account_values", "sessions"})


class Outgoing(dict):
    """A message bound for every client, encoded once: the first client's task encodes it, the others send the
    same text (all of them run on the web server's one event loop)."""

    text: str | None = None

    def encoded(self) -> str:
        if self.text is None:
            self.text = json.dumps(self, default=str)
        return self.text


@dataclass(eq=False)  # compared and hashed by identity: each is one client
class Subscriber:
    """One client's mailbox. ``put`` is called by the feed thread; ``take`` by the client's task.

    The client's task waits on ``wake``, an asyncio.Event set through its loop (thread-safe)."""

    loop: asyncio.AbstractEventLoop | None = None
    max_rows: int = SUBSCRIBER_ROWS
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0          # rows this client never got (its queue was full)
    conflated: int = 0        # snapshots and ticks replaced by newer ones before it took them
    _snapshot: dict[str, Any] | None = None
    _ticks: dict[tuple[Any, Any], dict[str, Any]] = field(default_factory=dict)
    _ticks_ts: int = 0
    _rows: deque = field(default_factory=deque)
    _status: dict[str, Any] | None = None
    _dropped_unreported: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        with self._lock:
            if kind == "snapshot":
                if self._snapshot is not None:
                    self.conflated += 1
                self._snapshot = message
            elif kind == "ticks":
                for tick in message["ticks"]:
                    key = (tick.get("session_id"), tick.get("instrument"))
                    if key in self._ticks:
                        self.conflated += 1
                    self._ticks[key] = tick
                self._ticks_ts = message["ts_ns"]
            elif kind == "status":
                self._status = message
            else:  # row, update
                if len(self._rows) >= self.max_rows:
                    self._rows.popleft()
                    self.dropped += 1
                    self._dropped_unreported += 1
                self._rows.append(message)
        self._notify()

    def _notify(self) -> None:
        if self.loop is None:
            self.wake.set()
            return
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the client's loop is closed: it is going away
            pass

    def take(self) -> list[dict[str, Any]]:
        """What waits, oldest first: the status, a 'dropped' note, rows, the latest ticks and snapshot."""
        with self._lock:
            out: list[dict[str, Any]] = []
            if self._status is not None:
                out.append(self._status)
                self._status = None
            if self._dropped_unreported:
                out.append({"type": "dropped", "rows": self._dropped_unreported, "ts_ns": time.time_ns()})
                self._dropped_unreported = 0
            out.extend(self._rows)
            self._rows.clear()
            if self._ticks:
                out.append({"type": "ticks", "ts_ns": self._ticks_ts, "ticks": list(self._ticks.values())})
                self._ticks.clear()
            if self._snapshot is not None:
                out.append(self._snapshot)
                self._snapshot = None
            return out


class LiveState:
    """What the console knows of the running sidecar; shared between the feed thread and the web server."""

    def __init__(self, events_endpoint: str, rows_kept: int = ROWS_KEPT, clock: Callable[[], float] = time.monotonic,
                 alive_s: float = 2.0) -> None:
        self.events_endpoint = events_endpoint
        self.rows_kept = rows_kept
        self.alive_s = alive_s
        self._clock = clock
        self._lock = threading.Lock()
        self.snapshot: dict[str, Any] | None = None
        self.snapshot_ts_ns: int | None = None
        self.rows: dict[str, deque] = {}
        self.ticks: dict[tuple[Any, Any], dict[str, Any]] = {}
        self.subscribers: set[Subscriber] = set()
        self.received = 0
        self.lost = 0
        self.malformed = 0
        self.bad_events = 0  # events that parsed but did not have the form of their topic
        self.restarts = 0
        self.last_heard: float | None = None
        self.last_event_ts_ns: int | None = None
        self.up = False
        self.feed_error: str | None = None

    # --- read by the web server ---

    @property
    def sidecar_up(self) -> bool:
        return self.last_heard is not None and self._clock() - self.last_heard <= self.alive_s

    def status(self) -> dict[str, Any]:
        with self._lock:
            subscribers = list(self.subscribers)
        return {"sidecar_up": self.sidecar_up, "events_endpoint": self.events_endpoint,
                "events_received": self.received, "events_lost": self.lost, "events_malformed": self.malformed + self.bad_events,
                "sidecar_restarts": self.restarts,
                "last_event_age_s": None if self.last_heard is None else round(self._clock() - self.last_heard, 3),
                "snapshot_ts_ns": self.snapshot_ts_ns, "feed_error": self.feed_error,
                "clients": len(subscribers), "clients_dropped_rows": sum(s.dropped for s in subscribers),
                "clients_conflated": sum(s.conflated for s in subscribers)}

    def full_state(self) -> dict[str, Any]:
        """The first message a new client gets: everything known now."""
        with self._lock:
            return {"type": "state", "ts_ns": time.time_ns(), "status": self.status_unlocked(),
                    "snapshot": self.snapshot, "rows": {table: list(rows) for table, rows in self.rows.items()},
                    "ticks": list(self.ticks.values())}

    def status_unlocked(self) -> dict[str, Any]:
        """The short status that travels on the WebSocket (the caller may hold the lock)."""
        return {"sidecar_up": self.sidecar_up, "events_endpoint": self.events_endpoint,
                "events_lost": self.lost, "last_event_ts_ns": self.last_event_ts_ns}

    def recent_rows(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.rows.get(table, ()))

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self.subscribers.discard(subscriber)

    # --- written by the feed thread ---

    def apply(self, event: Event) -> None:
        """Fold one event into the state and hand it to every client."""
        topic, body = event.topic, event.body
        message: dict[str, Any] | None
        with self._lock:
            self.last_event_ts_ns = event.ts_ns
            if topic == "snapshot":
                state = body.get("state")
                if not isinstance(state, dict):
                    self.bad_events += 1
                    return
                self.snapshot, self.snapshot_ts_ns = state, event.ts_ns
                message = Outgoing(type="snapshot", seq=event.seq, ts_ns=event.ts_ns, state=state)
            elif topic == "ticks":
                ticks = [t for t in body.get("ticks", ()) if isinstance(t, dict)]
                for tick in ticks:
                    self.ticks[(tick.get("session_id"), tick.get("instrument"))] = tick
                message = Outgoing(type="ticks", seq=event.seq, ts_ns=event.ts_ns, ticks=ticks)
            elif topic.startswith("row."):
                table, row = body.get("table"), body.get("row")
                if not isinstance(table, str) or not isinstance(row, dict):
                    self.bad_events += 1
                    return
                self.rows.setdefault(table, deque(maxlen=self.rows_kept)).append(row)
                message = (Outgoing(type="row", seq=event.seq, ts_ns=event.ts_ns, table=table, row=row)
                           if table in PAGE_TABLES else None)
            elif topic.startswith("update."):
                table, key, values = body.get("table"), body.get("key"), body.get("values")
                if not isinstance(table, str) or not isinstance(values, dict):
                    self.bad_events += 1
                    return
                self._update_row(table, key, values)
                message = (Outgoing(type="update", seq=event.seq, ts_ns=event.ts_ns, table=table, key=key,
                                    values=values) if table in PAGE_TABLES else None)
            else:
                return  # a topic of a later sidecar: ignored, not an error
            if message is None:
                return
            subscribers = list(self.subscribers)
        for s in subscribers:
            s.put(message)

    def _update_row(self, table: str, key: Any, values: dict[str, Any]) -> None:
        # an update names its row by primary key; only sessions are updated today (their end)
        rows = self.rows.get(table)
        if not rows:
            return
        pk = {"sessions": "session_id", "orders": "client_order_id", "decisions": "decision_id"}.get(table)
        for row in rows:
            if pk is not None and row.get(pk) == key:
                row.update(values)

    def heard(self, feed: EventFeed) -> None:
        """Copy the feed's counters (the feed thread calls this after each poll) and tell every client when the
        sidecar comes or goes."""
        self.received, self.lost, self.malformed, self.restarts = (feed.received, feed.lost, feed.malformed,
                                                                   feed.restarts)
        self.last_heard = feed.last_heard
        up = self.sidecar_up
        if up != self.up:
            self.up = up
            if up:
                log.info("sidecar's event stream %s: receiving", self.events_endpoint)
            else:
                log.warning("sidecar's event stream %s: nothing for %.1f s; showing stored history, reconnecting",
                            self.events_endpoint, self.alive_s)
            with self._lock:
                message = {"type": "status", "ts_ns": time.time_ns(), "status": self.status_unlocked()}
                subscribers = list(self.subscribers)
            for s in subscribers:
                s.put(message)


class LiveFeed:
    """The thread that reads the event stream into a :class:`LiveState` until :meth:`stop`."""

    def __init__(self, state: LiveState, feed_factory: Callable[[], EventFeed] | None = None) -> None:
        self.state = state
        self._factory = feed_factory or (lambda: EventFeed(state.events_endpoint, alive_s=state.alive_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-live-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            feed = self._factory()  # the socket lives and dies in this thread (ZeroMQ sockets are not thread-safe)
        except Exception as exc:  # noqa: BLE001 - a bad endpoint: said in /api/v1/status, the console still serves history
            self.state.feed_error = f"cannot read the event stream at {self.state.events_endpoint}: {exc}"
            log.error("%s", self.state.feed_error)
            return
        try:
            while not self._stop.is_set():
                try:
                    events = feed.poll(100)
                except Exception as exc:  # noqa: BLE001 - never let the thread die silently
                    log.exception("console live feed: %s", exc)
                    time.sleep(0.5)
                    continue
                for event in events:
                    try:
                        self.state.apply(event)
                    except Exception:  # noqa: BLE001 - one bad event must not stop the feed
                        self.state.bad_events += 1
                        log.exception("console live feed: event %s seq %d not applied", event.topic, event.seq)
                self.state.heard(feed)
        finally:
            feed.close()
