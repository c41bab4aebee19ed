"""Which sidecar of a hot-standby pair leads: a PostgreSQL advisory lock, watched from a thread.

Both sidecars of a pair point at the same PostgreSQL database and try the same session-level
advisory lock (``pg_try_advisory_lock``); the one that holds it leads and serves NT8, the other
refuses sessions. PostgreSQL's guarantees do the work, no consensus of our own:

* A leader that dies (a crash, ``kill -9``, its host rebooting) closes its connection and the
  server releases the lock at once; the standby's next poll (``ha.poll_ms``) takes it.
* A leader that is alive but cut off from the database (a network partition, a frozen process)
  stops confirming the lock; after ``ha.lease_ms`` without a confirmation it steps down on its own.
  Its database session is set to ``idle_session_timeout = 1.5 x lease_ms``, so the server ends it,
  and releases the lock, only after the leader has stepped down: never two leaders at once.
* After a database restart both sidecars lost their connection; the one that led tries again at
  once, the standby only after ``lease_ms``, so a restart does not move the leadership for nothing.

The ``leadership`` row (``bridge.storage.schema``) numbers the leaders (``epoch``) and says where
the leader is reachable, so that a standby can name it when it refuses a HELLO.

The thread never touches the server: it publishes changes, and the server's own loop applies them
(``changes``), so every session is handled on the hot-path thread as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("nt8bridge.leadership")


class Role(StrEnum):
    STANDBY = "standby"
    LEADER = "leader"


@dataclass(frozen=True)
class LeaderInfo:
    """Who took the lock last (the ``leadership`` row)."""

    cluster: str
    epoch: int
    node: str
    endpoint: str
    since_ns: int


@dataclass(frozen=True)
class RoleChange:
    role: Role
    info: LeaderInfo | None  # the leader as known when the change happened (this node when it leads)
    reason: str
    at_ns: int


def lock_key(cluster: str) -> int:
    """The advisory lock's key: a signed 64-bit number from the cluster name (stable across versions)."""
    return int.from_bytes(hashlib.sha256(b"nt8bridge leadership " + cluster.encode()).digest()[:8], "little",
                          signed=True)


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (the driver suffix dropped)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"a hot-standby pair needs PostgreSQL storage (ha.enabled needs storage.url = "
                         f"postgresql+psycopg://...); this sidecar stores to {parsed.get_backend_name()}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class Leadership:
    """Compete for the leadership of ``cluster`` until ``stop``; see the module docstring."""

    def __init__(self, db_url: str, cluster: str, endpoint: str, *, poll_ms: int = 200, lease_ms: int = 2000,
                 node: str | None = None) -> None:
        self._conninfo = libpq_url(db_url)
        self.cluster = cluster
        self.endpoint = endpoint
        self.node = node or node_name()
        self.poll_s = poll_ms / 1000.0
        self.lease_s = lease_ms / 1000.0
        self.key = lock_key(cluster)
        self.changes: queue.SimpleQueue[RoleChange] = queue.SimpleQueue()
        self._role = Role.STANDBY
        self._epoch = 0
        self._leader: LeaderInfo | None = None
        self._conn: Any = None
        self._locked_conn: Any = None  # the connection whose session holds the lock
        self._confirmed = 0.0  # monotonic time the lock was last confirmed held
        self._not_before = 0.0  # a standby waits until then after losing its connection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.connection_failures = 0
        self.last_error: str | None = None

    # --- what the server reads (any thread) ---------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def is_leader(self) -> bool:
        return self._role is Role.LEADER

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def leader(self) -> LeaderInfo | None:
        """The leader as last read from the database (this node while it leads)."""
        return self._leader

    def describe_leader(self) -> str:
        info = self._leader
        if info is None or info.node == self.node:
            return "no leader is known yet (the other sidecar may be starting, or the database unreachable)"
        return f"the leader is {info.endpoint} ({info.node}, epoch {info.epoch})"

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nt8bridge leadership", daemon=True)
        self._thread.start()

    def wait_until(self, role: Role, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._role is not role and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._role is role

    def stop(self) -> None:
        """Release the lock (by closing its connection) so that the standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_s + 5)
        self._close()

    # --- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # a bug must not end the competition silently
                log.exception("leadership poll failed: %s", exc)
            self._stop.wait(self.poll_s)

    def _poll(self) -> None:
        self.polls += 1
        now = time.monotonic()
        if self._conn is None and not self._connect(now):
            self._maybe_step_down(now, self.last_error or "the database is unreachable")
            return
        try:
            if self._role is Role.LEADER:
                if self._locked_conn is self._conn:  # the session that took the lock still lives
                    held = self._query_one("SELECT true", ())
                else:  # a new connection after a loss: take the lock again if nobody else has
                    held = self._query_one("SELECT pg_try_advisory_lock(%s)", (self.key,))
                    if held:
                        self._locked_conn = self._conn
                if held:
                    self._confirmed = now
                else:
                    self._read_leader()
                    self._step_down("another sidecar took the lock while this one was cut off from the database")
                return
            if now < self._not_before:
                return
            if self._query_one("SELECT pg_try_advisory_lock(%s)", (self.key,)):
                self._locked_conn = self._conn
                self._lead(now)
            else:
                self._read_leader()
        except Exception as exc:
            self._lost_connection(now, exc)
            self._maybe_step_down(now, self.last_error or str(exc))

    def _connect(self, now: float) -> bool:
        import psycopg

        try:
            timeout = max(1, int(self.lease_s / 2))
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=timeout,
                                   application_name=f"nt8bridge leadership {self.cluster}"[:63])
            # the server ends a session silent for this long, and so frees the lock of a frozen leader
            conn.execute(f"SET idle_session_timeout = {int(self.lease_s * 1500)}")
            conn.execute(f"SET statement_timeout = {int(self.lease_s * 1000)}")
        except Exception as exc:
            self.connection_failures += 1
            self._note_error(f"cannot reach the database for the leadership lock: {_first_line(exc)}")
            return False
        self._conn = conn
        return True

    def _query_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        row = self._conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def _lead(self, now: float) -> None:
        since = time.time_ns()
        epoch = int(self._query_one(
            "INSERT INTO leadership (cluster, epoch, node, endpoint, since_ns) VALUES (%s, 1, %s, %s, %s) "
            "ON CONFLICT (cluster) DO UPDATE SET epoch = leadership.epoch + 1, node = EXCLUDED.node, "
            "endpoint = EXCLUDED.endpoint, since_ns = EXCLUDED.since_ns RETURNING epoch",
            (self.cluster, self.node, self.endpoint, since)))
        previous = self._leader
        self._epoch = epoch
        self._leader = LeaderInfo(self.cluster, epoch, self.node, self.endpoint, since)
        self._confirmed = now
        self._role = Role.LEADER
        self.last_error = None
        reason = (f"took the lock of cluster {self.cluster!r} (epoch {epoch}); the last leader was "
                  f"{previous.node if previous else 'unknown'}")
        log.warning("LEADER: %s", reason)
        self.changes.put(RoleChange(Role.LEADER, self._leader, reason, since))

    def _read_leader(self) -> None:
        row = self._conn.execute("SELECT cluster, epoch, node, endpoint, since_ns FROM leadership WHERE cluster = %s",
                                 (self.cluster,)).fetchone()
        self._leader = LeaderInfo(*row) if row else None

    def _maybe_step_down(self, now: float, why: str) -> None:
        if self._role is Role.LEADER and now - self._confirmed > self.lease_s:
            self._step_down(f"the lock could not be confirmed for {now - self._confirmed:.1f} s "
                            f"(ha.lease_ms = {self.lease_s * 1000:.0f}): {why}")

    def _step_down(self, reason: str) -> None:
        self._role = Role.STANDBY
        self._close()
        # first go when the database is back: this sidecar may still hold rows (audit records among them) that
        # its writer has not committed; the one to lead next should be the one whose chain they continue
        self._not_before = 0.0
        log.warning("STANDBY: stepped down from the leadership of %r: %s", self.cluster, reason)
        self.changes.put(RoleChange(Role.STANDBY, self._leader, reason, time.time_ns()))

    def _lost_connection(self, now: float, exc: BaseException) -> None:
        self.connection_failures += 1
        self._note_error(f"the leadership connection failed: {_first_line(exc)}")
        self._close()
        if self._role is Role.STANDBY:
            self._not_before = now + self.lease_s  # the leader gets the first go when the database returns

    def _note_error(self, text: str) -> None:
        if text != self.last_error:
            log.warning("%s", text)
        self.last_error = text

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._locked_conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
