"""The storage writer: the hot path hands rows over, a background thread commits them in batches.

Design
------
* ``write`` only appends a tuple to a per-table list owned by the hot path: no lock, no I/O.
  A full list (``batch_rows``) goes to a bounded queue; ``flush`` hands over partial lists.
* The queue is the only thing shared with the writer thread. When it is full, the hot path
  blocks until there is room ("nothing lost"), and the wait is counted in the stats. That happens
  when the database is slower than the market, not when it is away (below).
* The writer thread commits each queue item in one transaction, with one executemany (SQLite)
  or one COPY (PostgreSQL) per table. Queue items are processed strictly in order, so an
  ``update`` is applied after every row handed over before it.
* A batch rejected for its data is retried row by row in savepoints; rows that still fail go to
  ``storage_rejects`` with the error.

When the database is away
-------------------------
A database that is unreachable (``is_transient``: server down, connection cut, file locked, its
disk full) does not stop the queue. The item that failed, and every one after it, go to the
*backlog*, in order: first to memory, then, while the database stays away, to the *spool*
(``bridge.storage.spool``: an append-only file of framed, CRC-checked records, fsynced), so the
queue keeps draining and the hot path never waits on an outage. The database is tried again with
backoff (``retry_initial_s`` doubling to ``retry_max_s``); once it answers, the spool is replayed
in order, in transactions of up to ``8 * batch_rows`` rows, then what is held in memory, and only
then the queue again: the order of the rows is the order they were handed over. The spool is
emptied once every record in it is committed. A spool left non-empty by a process that was killed
is replayed first when the next writer opens it.

Exactly once
------------
Every transaction the writer commits also moves its run's row in ``storage_progress`` forward
(stream id: random per writer; seq: the item's place in the queue order): ``INSERT ... ON CONFLICT
DO UPDATE ... WHERE last_seq < new``. Replaying an item first reads that row and skips items at or
below it, in the same transaction that commits the rest, so an item committed just before a crash
(or whose COMMIT reply was lost with the connection) is not stored twice, whatever its table's keys.

After the commit
----------------
``on_committed(table, rows, stream, seq)``, when given, is called by the writer thread once a
transaction has committed (never in the hot path), for each table of each queue item in it, with the
rows that were stored (those sent to ``storage_rejects`` left out), the run that handed them over and the
item's place in its order (together, a name for the rows that is the same however often they are replayed:
the analytics feed makes its insert tokens of it). Replayed items are passed on too; items found committed
already are not (whoever committed them had the chance). It must return at once (hand the rows to a queue
of its own); an exception from it is logged and counted, and never stops the writer.

States (``stats().state``)
--------------------------
``ok``; ``database_down`` (the database does not answer; the backlog grows in the spool);
``catching_up`` (it answers again; the backlog is being replayed); ``disk_full`` (the spool
cannot be written: ENOSPC, EDQUOT, EFBIG; the backlog is held in memory). Each change of state is
logged once, with what it means, not once per retry.

Bounds
------
What the writer thread holds in memory besides the queue is at most ``memory_rows`` rows (default:
the queue's capacity, ``batch_rows * queue_batches``). Beyond it, it stops taking from the queue,
and the hot path waits once the queue is full, as before: that happens only when the backlog can
be neither committed nor spooled (the database away and the spool's disk full, or no spool).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, select
from sqlalchemy.engine import Connection

from bridge.storage.database import (
    StorageError,
    as_storage_error,
    create_engine_for,
    is_transient,
    parse_url,
    safe_url,
    upgrade,
)
from bridge.storage.schema import (
    COLUMNS,
    IGNORE_DUPLICATES,
    metadata,
    storage_progress,
    storage_rejects,
)
from bridge.storage.spool import Spool, SpoolDiskFull, decode, encode, open_spool

log = logging.getLogger("nt8bridge.storage")

Row = tuple[Any, ...]
OnCommitted = Callable[[str, list[Row], str, int], None]
"""``(table, rows, stream, seq)``: rows just committed, from queue item ``seq`` of writer run ``stream``."""

STATE_OK = "ok"
STATE_DATABASE_DOWN = "database_down"
STATE_CATCHING_UP = "catching_up"
STATE_DISK_FULL = "disk_full"
STATES = (STATE_OK, STATE_CATCHING_UP, STATE_DATABASE_DOWN, STATE_DISK_FULL)
"""Every value of ``WriterStats.state``, least to most serious."""


@dataclass
class WriterStats:
    """A snapshot of the writer's counters (safe to read from any thread).

    Attributes
    ----------
    rows_written
        Per table, rows committed (rows skipped as duplicates in ``IGNORE_DUPLICATES`` tables count).
    batches_committed
        Queue items committed (insert batches and updates).
    backpressure_waits
        Times the hot path found the queue full and had to wait.
    backpressure_seconds
        Total time the hot path spent waiting for room in the queue.
    errors
        Failed attempts in the writer thread: database unavailable, or a batch that had to be
        retried row by row.
    queue_depth
        Items waiting in the queue (not counting the one being committed).
    rows_rejected
        Rows sent to ``storage_rejects`` (updates that failed count here too).
    updates_applied
        Updates committed.
    last_error
        The most recent error message, or None.
    state
        ``ok``, ``catching_up``, ``database_down`` or ``disk_full`` (see the module docstring).
    state_since
        When the current state began (Unix seconds).
    outage_since
        When the database was last found away, while the backlog it caused is not yet replayed
        (Unix seconds); None otherwise.
    rows_spooled
        Rows in the spool not yet committed.
    spool_bytes
        Size of the spool file.
    rows_held
        Rows the writer thread holds in memory, neither committed nor spooled (at most ``memory_rows``).
    rows_replayed
        Rows committed from the backlog (spool and memory) since start.
    rows_skipped
        Rows of replayed items found committed already (by ``storage_progress``), not stored again.
    outages
        Times the database was found away (counted once per outage, not per retry).
    spool_path
        The spool file, or None when the writer has none.
    """

    rows_written: dict[str, int]
    batches_committed: int
    backpressure_waits: int
    backpressure_seconds: float
    errors: int
    queue_depth: int
    rows_rejected: int = 0
    updates_applied: int = 0
    last_error: str | None = None
    state: str = STATE_OK
    state_since: float = 0.0
    outage_since: float | None = None
    rows_spooled: int = 0
    spool_bytes: int = 0
    rows_held: int = 0
    rows_replayed: int = 0
    rows_skipped: int = 0
    outages: int = 0
    spool_path: str | None = None


# ----------------------------------------------------------------------------- queue items


@dataclass(slots=True)
class _Batch:
    rows: dict[str, list[Row]]


@dataclass(slots=True)
class _Update:
    table: str
    key: Any
    values: dict[str, Any]


@dataclass(slots=True)
class _Marker:
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Entry:
    """A queue item in the writer thread: which run handed it over, its place in that run's order."""

    stream: str
    seq: int
    item: _Batch | _Update
    rows: int


_STOP = object()

# Tables the hot path may write: all but the writer's own bookkeeping.
_WRITABLE = tuple(name for name in COLUMNS if name != storage_progress.name)
# Tables the hot path may update: those whose key it knows (not database-assigned ids).
_UPDATABLE = {
    name: table.primary_key.columns.values()[0]
    for name, table in metadata.tables.items()
    if len(table.primary_key.columns) == 1 and name in _WRITABLE
    and table.primary_key.columns.values()[0].name in COLUMNS[name]
}


def _double_positions(table: Table) -> tuple[int, ...]:
    names = COLUMNS[table.name]
    return tuple(i for i, name in enumerate(names) if table.c[name].type.python_type is float)


def _rows_of(item: _Batch | _Update) -> int:
    return sum(len(rows) for rows in item.rows.values()) if isinstance(item, _Batch) else 1


def _encode_entry(entry: _Entry) -> bytes:
    item = entry.item
    if isinstance(item, _Batch):
        return encode((entry.stream, entry.seq, "b", item.rows))
    return encode((entry.stream, entry.seq, "u", (item.table, item.key, item.values)))


def _decode_entry(payload: bytes, rows: int) -> _Entry:
    stream, seq, kind, data = decode(payload)
    if kind == "b":
        return _Entry(stream, seq, _Batch(data), rows)
    table, key, values = data
    return _Entry(stream, seq, _Update(table, key, values), rows)


def spool_identity(url: str) -> str:
    """Which database a spool's rows are for: the URL without password or options, an SQLite path
    made absolute (the same file however it is spelled)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return "sqlite:///" + str(Path(str(parsed.database)).resolve())
    return parsed.set(password=None, query={}).render_as_string(hide_password=False)


def _row_json(table: str, row: Any) -> str:
    """The row as JSON for ``storage_rejects``: keyed by column when it has the right length."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # NaN/inf are not JSON
        if isinstance(value, (bytes, bytearray)):
            return value.hex()
        return value

    try:
        values = [clean(v) for v in row]
        names = COLUMNS.get(table, ())
        doc: Any = dict(zip(names, values, strict=True)) if len(values) == len(names) else values
        return json.dumps(doc, default=repr)
    except TypeError:  # not iterable at all
        return json.dumps(repr(row))


# ----------------------------------------------------------------------------- inserters


class _Inserter:
    """How one back end inserts rows; the fast path is per dialect, the slow path is shared."""

    def __init__(self, engine: Engine, ignore_duplicates: frozenset[str]) -> None:
        quote = engine.dialect.identifier_preparer.quote
        placeholder = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._sql: dict[str, str] = {}
        self._columns_sql: dict[str, str] = {}
        self._doubles: dict[str, tuple[int, ...]] = {}
        for name, cols in COLUMNS.items():
            table = metadata.tables[name]
            col_list = ", ".join(quote(c) for c in cols)
            # ON CONFLICT DO NOTHING is spelled the same on SQLite (>= 3.24) and PostgreSQL.
            suffix = " ON CONFLICT DO NOTHING" if name in ignore_duplicates else ""
            self._sql[name] = (
                f"INSERT INTO {quote(name)} ({col_list}) VALUES ({', '.join([placeholder] * len(cols))}){suffix}"
            )
            self._columns_sql[name] = f"{quote(name)} ({col_list})"
            self._doubles[name] = _double_positions(table)
        self._ignore = ignore_duplicates

    def insert_many(self, conn: Connection, table: str, rows: list[Row]) -> None:
        """Insert all rows with one driver call; raises on the first bad row."""
        conn.exec_driver_sql(self._sql[table], rows)

    def insert_one(self, conn: Connection, table: str, row: Row) -> None:
        """Insert one row (the row-by-row retry)."""
        conn.exec_driver_sql(self._sql[table], [self.clean_row(table, row)])

    def clean_row(self, table: str, row: Row) -> Row:
        """The row with NaN replaced by None in its float columns."""
        doubles = self._doubles[table]
        for i in doubles:
            value = row[i]
            if value != value:  # NaN is the only value not equal to itself; None passes
                out = list(row)
                for j in doubles:
                    if out[j] != out[j]:
                        out[j] = None
                return tuple(out)
        return row


class _SqliteInserter(_Inserter):
    """sqlite3's executemany with tuples, straight to the driver.

    SQLite already stores a NaN bound as a double as NULL, so the rows need no Python-side
    cleaning here: the writer thread does no per-row Python work at all on this path.
    """


class _PostgresInserter(_Inserter):
    """COPY for append-only tables (about three times executemany's rate), INSERT ... ON CONFLICT
    DO NOTHING via executemany for tables whose rows may be re-sent (COPY cannot skip them)."""

    def insert_many(self, conn: Connection, table: str, rows: list[Row]) -> None:
        clean = self.clean_row
        if table in self._ignore:
            conn.exec_driver_sql(self._sql[table], [clean(table, r) for r in rows])
            return
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {self._columns_sql[table]} FROM STDIN") as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(clean(table, row))
        finally:
            cursor.close()


def _make_inserter(engine: Engine, ignore_duplicates: frozenset[str]) -> _Inserter:
    if engine.dialect.name == "sqlite":
        return _SqliteInserter(engine, ignore_duplicates)
    return _PostgresInserter(engine, ignore_duplicates)




# ----------------------------------------------------------------------------- the writer


class StorageWriter:
    """Records rows handed over by the hot path, committing them in batches from a thread.

    Parameters
    ----------
    url
        Database URL (``sqlite:///file`` or ``postgresql+psycopg://...``).
    batch_rows
        Rows per table collected on the hot path before the list is handed to the queue.
    queue_batches
        Capacity of the queue, in hand-overs; when full, the hot path waits.
    flush_interval_s
        How often the hot path should call :meth:`flush` (see :meth:`flush_if_due`), bounding
        how old an uncommitted row can get when traffic is light.
    ignore_duplicates
        Tables where a row whose key exists already is skipped rather than rejected;
        default :data:`bridge.storage.schema.IGNORE_DUPLICATES`.
    retry_initial_s, retry_max_s
        Backoff between attempts while the database is unavailable (doubling up to the max).
    spool_path
        The spool file that takes the backlog while the database is away (see the module
        docstring); None: no spool, the backlog stays in memory (then the hot path waits).
    memory_rows
        Rows the writer thread may hold in memory beyond the queue; default the queue's capacity.
    stop_grace_s
        At :meth:`close`, how long the database is retried before the backlog is left in the spool
        for the next writer (only when everything is in the spool; otherwise close waits, as below).
    on_committed
        Called in the writer thread after each commit (see "After the commit" in the module docstring).

    Notes
    -----
    ``write``, ``update``, ``flush``, ``sync`` and ``close`` must all be called from one thread
    (the hot path); ``stats`` may be read from any thread.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_rows: int = 2000,
        queue_batches: int = 64,
        flush_interval_s: float = 0.25,
        ignore_duplicates: Iterable[str] | None = None,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        spool_path: str | Path | None = None,
        memory_rows: int | None = None,
        stop_grace_s: float = 2.0,
        on_committed: OnCommitted | None = None,
    ) -> None:
        if batch_rows < 1 or queue_batches < 1:
            raise ValueError("batch_rows and queue_batches must be at least 1")
        parse_url(url)  # fail now, in the caller's thread, on a URL that can never work
        self._url = url
        self._batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self._ignore = frozenset(IGNORE_DUPLICATES if ignore_duplicates is None else ignore_duplicates)
        unknown = self._ignore - COLUMNS.keys()
        if unknown:
            raise ValueError(f"ignore_duplicates names unknown tables: {sorted(unknown)}")
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._spool_path = Path(spool_path) if spool_path is not None else None
        self._memory_rows = max(1, batch_rows * queue_batches if memory_rows is None else memory_rows)
        self._stop_grace_s = stop_grace_s
        self._group_rows = batch_rows * 8  # rows per transaction while replaying a backlog

        # Hot-path state: touched only by the thread that calls write/flush.
        self._buffers: dict[str, list[Row]] = {name: [] for name in _WRITABLE}
        self._last_flush = time.monotonic()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_batches)

        # Counters. Each is written by one thread only, so plain attributes are enough.
        self._rows_written: dict[str, int] = {name: 0 for name in _WRITABLE}  # keys fixed: safe to copy
        self._batches_committed = 0
        self._bp_waits = 0
        self._bp_seconds = 0.0
        self._errors = 0
        self._rows_rejected = 0
        self._updates_applied = 0
        self._last_error: str | None = None
        self._rows_replayed = 0
        self._rows_skipped = 0
        self._outages = 0

        # Writer-thread state (read by stats() from other threads, one attribute at a time).
        self._stream = uuid.uuid4().hex  # this run, in storage_progress
        self._seq = 0  # the last queue item taken
        self._committed_seq = 0  # every item of this run up to it is committed
        self._held: deque[_Entry] = deque()  # the backlog in memory: newer than the spool, older than the queue
        self._held_rows = 0
        self._markers: list[tuple[int, _Marker]] = []  # sync() waiting for an item to be committed
        self._db_down = False
        self._spool_full = False
        self._state = STATE_OK
        self._state_since = time.time()
        self._outage_since: float | None = None
        self._down_monotonic = 0.0
        self._failures = 0  # failed attempts in the current outage
        self._delay = retry_initial_s  # backoff after a failure that is not about the database being away
        self._next_attempt = 0.0
        # While the database is away, a probe thread tries it (with backoff) so that the writer thread
        # never waits on a connection attempt: it keeps draining the queue into the spool meanwhile.
        self._probe_ok = threading.Event()  # the probe reached the database: try the backlog
        self._probe_wake = threading.Event()
        self._probe_exit = False
        self._probe_thread: threading.Thread | None = None
        self._probe_engine: Engine | None = None
        self._probe_failures = 0
        self._probe_failures_before = 0  # at the start of the current outage
        self._next_spool_attempt = 0.0
        self._stopping = False
        self._stop_deadline: float | None = None
        self._catch_up_started: float | None = None
        self._catch_up_rows = 0

        self._engine: Engine | None = None
        self._inserter: _Inserter | None = None
        self._progress_sql = ""
        self._spool: Spool | None = None
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._stop_sent = False
        self._closed = False
        self._on_committed = on_committed
        self._callback_errors = 0
        # Test hook: called in the writer thread before each transaction is committed.
        self._before_commit: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the spool, bring the schema up to date, then start the writer thread.

        A database that is unreachable now (server down, file locked) does not stop the start:
        it is logged, rows go to the backlog, and the thread keeps retrying the upgrade. A spool
        left by an earlier run is replayed before anything handed over now. Errors that retrying
        cannot fix (bad URL, damaged file, wrong password, a spool in use or for another database)
        raise.

        Raises
        ------
        StorageError
            For errors that are not transient, or if the writer is closed.
        """
        if self._closed or self._stop_sent:
            raise StorageError("this StorageWriter is closed; create a new one")
        if self._thread is not None:
            return
        if self._spool_path is not None and self._spool is None:
            self._spool = open_spool(self._spool_path, spool_identity(self._url))
            self._spool_path = self._spool.path  # another one when that was taken
            if self._spool.pending_rows:
                log.warning("the storage spool %s holds %d rows (%d records) a previous run could not store; they are "
                            "stored first", self._spool_path, self._spool.pending_rows, self._spool.pending_records)
        try:
            upgrade(self._url)
            self._schema_ready = True
        except StorageError as exc:
            if not exc.transient:
                if self._spool is not None:
                    self._spool.close(remove_if_empty=True)
                    self._spool = None
                raise
            self._note_error(exc)
            log.warning("database unavailable at start; rows will be queued and retried: %s", exc)
        self._engine = create_engine_for(self._url)
        self._inserter = _make_inserter(self._engine, self._ignore)
        self._progress_sql = _progress_sql(self._engine)
        self._update_state()
        self._thread = threading.Thread(target=self._run, name="nt8bridge-storage", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Hand over everything, wait until it is committed, stop the thread. Idempotent.

        When the database is away at that moment, it is retried for ``stop_grace_s``; then, if the
        whole backlog is in the spool, the thread ends and leaves it there (durable; the next writer
        on the same spool stores it first) with a warning. Otherwise (no spool, or its disk full)
        it keeps trying, as long as ``timeout`` allows: nothing is dropped.

        Parameters
        ----------
        timeout
            Seconds to wait; None waits as long as the database needs (nothing is dropped).

        Raises
        ------
        StorageError
            If ``timeout`` passed first; the thread keeps trying, and ``close`` may be called again.
        """
        if self._closed:
            return
        if self._thread is None:
            if not any(self._buffers.values()):
                self._closed = True
                return
            self.start()  # rows were written before start(): commit them rather than lose them
        if not self._stop_sent:
            self.flush()
            self._put(_STOP, timeout)
            self._stop_sent = True
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise StorageError(
                f"storage writer for {safe_url(self._url)} still has {self._queue.qsize()} batch(es) queued and "
                f"{self._held_rows} row(s) held after {timeout}s; last error: {self._last_error}",
                transient=True,
            )
        self._closed = True
        if self._spool is not None:
            self._spool.close(remove_if_empty=True)
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> StorageWriter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hot path

    def write(self, table: str, row: Row) -> None:
        """Record one row (hot path): append it to the table's list, hand the list over when full.

        Parameters
        ----------
        table
            Table name (a key of :data:`bridge.storage.schema.COLUMNS`).
        row
            Values in ``COLUMNS[table]`` order; NaN for a missing price. Not validated here: a
            bad row is found by the database and lands in ``storage_rejects``. Plain values only
            (None, bool, int, float, str, bytes): a value of another type is spooled as its str.

        Raises
        ------
        StorageError
            For an unknown table, or when the writer was never started or is closed.
        """
        try:
            buf = self._buffers[table]
        except KeyError:
            raise StorageError(f"unknown table {table!r}; tables: {', '.join(_WRITABLE)}") from None
        buf.append(row)
        if len(buf) >= self._batch_rows:
            self._buffers[table] = []
            self._hand_over({table: buf})

    def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        """Update one row by primary key, in order with everything written before (hot path).

        Used for rows created once and completed later, e.g. ``sessions.ended_ns``. Partial
        batches are handed over first, so the row being updated is always inserted before.

        Parameters
        ----------
        table
            A table with a caller-chosen key: sessions, instruments, decisions or orders.
        key
            Primary-key value of the row.
        values
            Column -> new value; NaN is stored as NULL.

        Raises
        ------
        StorageError
            For an unknown table or column (a programming error, reported at once).
        """
        if table not in _UPDATABLE:
            raise StorageError(f"cannot update {table!r}: updatable tables are {', '.join(_UPDATABLE)}")
        unknown = set(values) - set(COLUMNS[table])
        if unknown or not values:
            raise StorageError(f"bad columns for {table!r} update: {sorted(unknown) or 'none given'}")
        self.flush()
        self._put(_Update(table, key, dict(values)))

    def flush(self) -> None:
        """Hand over every partial batch now (hot path timer, shutdown).

        Raises
        ------
        StorageError
            If the writer was never started or is closed.
        """
        self._last_flush = time.monotonic()
        pending = {name: rows for name, rows in self._buffers.items() if rows}
        if not pending:
            return
        for name in pending:
            self._buffers[name] = []
        self._hand_over(pending)

    def flush_if_due(self, now: float | None = None) -> bool:
        """Call :meth:`flush` if ``flush_interval_s`` has passed since the last one.

        Parameters
        ----------
        now
            ``time.monotonic()`` if the caller has it already.

        Returns
        -------
        bool
            Whether a flush happened.
        """
        if (time.monotonic() if now is None else now) - self._last_flush < self.flush_interval_s:
            return False
        self.flush()
        return True

    def sync(self, timeout: float | None = None) -> None:
        """Flush and wait until every row handed over so far is committed (and a spool left by an
        earlier run is replayed).

        Parameters
        ----------
        timeout
            Seconds to wait at most; None waits as long as the database needs.

        Raises
        ------
        StorageError
            If the time ran out (the rows stay in the backlog and will still be committed).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.flush()
        marker = _Marker()
        self._put(marker, timeout)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if marker.done.wait(1.0 if remaining is None else min(1.0, remaining)):
                return
            self._check_thread()
            if remaining is not None and remaining <= 0:
                raise StorageError(
                    f"not everything was committed to {safe_url(self._url)} within {timeout}s "
                    f"({self._queue.qsize()} batch(es) queued, state {self._state}); last error: {self._last_error}",
                    transient=True,
                )

    def _hand_over(self, rows: dict[str, list[Row]]) -> None:
        try:
            self._put(_Batch(rows))
        except BaseException:
            # Not handed over (never started, closed, interrupted while blocked): put the rows
            # back in front of anything written since, so a later flush or close still has them.
            for name, batch in rows.items():
                self._buffers[name] = batch + self._buffers[name]
            raise

    def _put(self, item: Any, timeout: float | None = None) -> None:
        if self._stop_sent:
            raise StorageError("this StorageWriter is closed; rows can no longer be written")
        q = self._queue
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            pass
        # Backpressure: wait for room rather than drop, and account for the wait.
        self._check_thread()
        self._bp_waits += 1
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        warned_at = 0.0
        try:
            while True:
                try:
                    q.put(item, timeout=0.5)
                    return
                except queue.Full:
                    self._check_thread()
                    waited = time.perf_counter() - started
                    if waited - warned_at >= 10.0:
                        warned_at = waited
                        log.warning(
                            "hot path blocked %.0fs waiting for the database (%s, storage %s); last error: %s",
                            waited, safe_url(self._url), self._state, self._last_error,
                        )
                    if deadline is not None and time.monotonic() >= deadline:
                        raise StorageError(
                            f"storage queue still full after {timeout}s; last error: {self._last_error}",
                            transient=True,
                        ) from None
        finally:
            self._bp_seconds += time.perf_counter() - started

    def _check_thread(self) -> None:
        if self._thread is None:
            raise StorageError("StorageWriter.start() was not called; the queue has no consumer")
        if not self._thread.is_alive():
            raise StorageError(f"the storage writer thread has stopped; last error: {self._last_error}")

    # ------------------------------------------------------------------ stats

    @property
    def state(self) -> str:
        """``ok``, ``catching_up``, ``database_down`` or ``disk_full`` (one attribute read: any thread)."""
        return self._state

    @property
    def stats(self) -> WriterStats:
        """A consistent-enough snapshot of the counters (each value is read atomically)."""
        spool = self._spool
        return WriterStats(
            rows_written=dict(self._rows_written),
            batches_committed=self._batches_committed,
            backpressure_waits=self._bp_waits,
            backpressure_seconds=self._bp_seconds,
            errors=self._errors + self._probe_failures,
            queue_depth=self._queue.qsize(),
            rows_rejected=self._rows_rejected,
            updates_applied=self._updates_applied,
            last_error=self._last_error,
            state=self._state,
            state_since=self._state_since,
            outage_since=self._outage_since,
            rows_spooled=spool.pending_rows if spool is not None else 0,
            spool_bytes=spool.size if spool is not None else 0,
            rows_held=self._held_rows,
            rows_replayed=self._rows_replayed,
            rows_skipped=self._rows_skipped,
            outages=self._outages,
            spool_path=str(self._spool_path) if self._spool_path is not None else None,
        )

    # ------------------------------------------------------------------ writer thread: the loop

    def _run(self) -> None:
        try:
            self._loop()
            self._stop_probe()
        except BaseException as exc:  # a bug here must be seen: the hot path reports a dead thread
            self._last_error = f"writer thread failed: {exc!r}"
            log.exception("the storage writer thread failed; rows handed over from now on wait in the queue")
            raise

    def _loop(self) -> None:
        q = self._queue
        while True:
            if self._in_backlog():
                if self._backlog_step():
                    return
                continue
            item = q.get()
            if item is _STOP:
                self._stopping = True
                return
            if isinstance(item, _Marker):
                item.done.set()  # nothing is pending: everything before it is committed
                continue
            entry = self._entry(item)
            try:
                self._commit([entry], replayed=False)
            except Exception as exc:  # classified in _failed; the entry goes to the backlog, in order
                self._held.append(entry)
                self._held_rows += entry.rows
                self._failed(exc)

    def _in_backlog(self) -> bool:
        spool = self._spool
        return bool(self._held) or (spool is not None and not spool.drained)

    def _entry(self, item: _Batch | _Update) -> _Entry:
        self._seq += 1
        return _Entry(self._stream, self._seq, item, _rows_of(item))

    def _take(self, item: Any) -> None:
        """A queue item, while there is a backlog: it joins the backlog's end."""
        if item is _STOP:
            self._stopping = True
            self._stop_deadline = time.monotonic() + self._stop_grace_s
            self._next_attempt = 0.0  # one more try now, whatever the backoff
            self._probe_wake.set()
        elif isinstance(item, _Marker):
            self._markers.append((self._seq, item))
        else:
            entry = self._entry(item)
            self._held.append(entry)
            self._held_rows += entry.rows

    def _backlog_step(self) -> bool:
        """One round of work on the backlog; True when the thread should end."""
        q = self._queue
        while self._held_rows < self._memory_rows:  # take what the hot path handed over, within the bound
            try:
                self._take(q.get_nowait())
            except queue.Empty:
                break
        if self._held and (self._db_down or self._held_rows >= self._memory_rows):
            self._spool_held()
        now = time.monotonic()
        if now >= self._next_attempt and (not self._db_down or self._probe_ok.is_set()):
            while self._catch_up_once():  # the database answers: keep going while it does
                if not self._in_backlog():
                    self._caught_up()
                    return self._stopping and q.empty()
                self._release_markers()
                if self._held_rows < self._memory_rows and not q.empty():
                    break  # take the newer items in before more replay, so the queue never fills
        if self._stopping and self._db_down and not self._held and time.monotonic() >= (self._stop_deadline or 0):
            spool = self._spool
            assert spool is not None  # the backlog is all in it
            log.warning("stopping while the database is away: %d rows stay in the storage spool %s (fsynced); the "
                        "next sidecar on this spool stores them first", spool.pending_rows, spool.path)
            return True
        if not self._db_down:
            return False  # catching up: no waiting
        wait = 0.1  # soon enough to notice the probe's success, cheap enough to idle
        if self._held_rows >= self._memory_rows:
            time.sleep(wait)  # the bound is reached: leave the queue alone, the hot path waits
            return False
        try:
            self._take(q.get(timeout=wait))
        except queue.Empty:
            pass
        return False

    # ------------------------------------------------------------------ writer thread: the backlog

    def _spool_held(self) -> None:
        """Move the backlog held in memory to the spool, in order (durable when this returns)."""
        spool = self._spool
        if spool is None or (self._spool_full and time.monotonic() < self._next_spool_attempt):
            return
        entries = list(self._held)
        try:
            spool.append([(e.rows, _encode_entry(e)) for e in entries])
        except SpoolDiskFull as exc:
            self._note_error(exc)
            self._next_spool_attempt = time.monotonic() + self._retry_max_s
            if not self._spool_full:
                self._spool_full = True
                self._update_state()
                log.error("DISK FULL: the storage spool %s cannot be written (%s); %d rows are held in memory (at "
                          "most %d, then the hot path waits) while the database is away: free space on that disk",
                          spool.path, exc.__cause__ or exc, self._held_rows, self._memory_rows)
            return
        except StorageError as exc:
            self._note_error(exc)
            self._next_spool_attempt = time.monotonic() + self._retry_max_s
            log.error("%s; retrying in %.0fs", exc, self._retry_max_s)
            return
        for _ in entries:
            self._held.popleft()
        self._held_rows = sum(e.rows for e in self._held)
        if self._spool_full:
            self._spool_full = False
            self._update_state()
            log.warning("the storage spool %s can be written again: %d rows moved there from memory", spool.path,
                        sum(e.rows for e in entries))

    def _catch_up_once(self) -> bool:
        """Commit the next group of the backlog (the spool first, then memory); False when it failed."""
        spool = self._spool
        records = []
        try:
            if spool is not None and not spool.drained:
                records = spool.read(self._group_rows)
                entries = [_decode_entry(r.payload, r.rows) for r in records]
            else:
                entries = []
                rows = 0
                for e in self._held:
                    if entries and rows + e.rows > self._group_rows:
                        break
                    entries.append(e)
                    rows += e.rows
            if not entries:
                return False
            if self._catch_up_started is None:
                self._catch_up_started = time.monotonic()
                self._catch_up_rows = 0
            self._commit(entries, replayed=True)
        except Exception as exc:  # classified in _failed; the backlog stays as it is
            self._failed(exc)
            return False
        if self._db_down:
            self._database_back()  # said before the backlog shrinks: the line names all of it
        if records:
            assert spool is not None
            for r in records:
                spool.consumed(r)
            if spool.drained:
                spool.reset()  # every record in it is committed
        else:
            for _ in entries:
                self._held.popleft()
            self._held_rows = sum(e.rows for e in self._held)
        self._catch_up_rows += sum(e.rows for e in entries)
        self._update_state()
        return True

    def _release_markers(self) -> None:
        if not self._markers:
            return
        spool = self._spool
        if spool is not None and spool.read_offset < spool.resumed_end:
            return  # an earlier run's rows come first
        done = self._committed_seq
        waiting = []
        for seq, marker in self._markers:
            if seq <= done:
                marker.done.set()
            else:
                waiting.append((seq, marker))
        self._markers = waiting

    def _caught_up(self) -> None:
        """The backlog is empty: everything handed over is committed."""
        self._spool_full = False
        if self._catch_up_started is not None:
            took = time.monotonic() - self._catch_up_started
            log.warning("storage caught up: %d rows stored from the backlog in %.1fs (%.0f rows/s); recording is "
                        "back to normal", self._catch_up_rows, took, self._catch_up_rows / took if took > 0 else 0.0)
        self._catch_up_started = None
        self._outage_since = None
        self._update_state()  # before the markers: whoever sync() wakes sees the state ok
        for _seq, marker in self._markers:
            marker.done.set()
        self._markers = []

    # ------------------------------------------------------------------ writer thread: failures and states

    def _failed(self, exc: Exception) -> None:
        """An attempt failed: note it, schedule the next one, and enter database_down if it is new."""
        error = as_storage_error(self._url, exc, "writing")
        self._note_error(error)
        self._catch_up_started = None
        self._failures += 1
        self._probe_ok.clear()
        self._start_probe()
        retry_in = 0.0  # the probe paces the attempts
        if error.transient:
            # The database may come back as a new, empty file or database: check the schema again.
            self._schema_ready = False
            assert self._engine is not None
            self._engine.dispose()  # connections to a restarted server are dead
            self._next_attempt = 0.0
        else:
            # while stopping, the grace period is short: try often within it rather than wait out a backoff
            retry_in = min(self._delay, 0.25) if self._stopping else self._delay
            self._next_attempt = time.monotonic() + retry_in
            self._delay = min(self._delay * 2, self._retry_max_s)
        if not error.transient and (self._failures == 1 or self._failures % 20 == 0):
            # not about the database being away (a bug, or a failure nobody classified): retried the
            # same way, with its traceback the first time, since it may not go away by itself
            log.error("unexpected storage failure, retrying in %.2fs (attempt %d): %s", retry_in, self._failures,
                      error, exc_info=exc if self._failures == 1 else None)
        if self._db_down:
            log.debug("%s (attempt %d), nothing is dropped", error, self._failures)
            return
        self._db_down = True
        self._outages += 1
        self._down_monotonic = time.monotonic()
        self._probe_failures_before = self._probe_failures
        if self._outage_since is None:
            self._outage_since = time.time()
        self._update_state()
        where = (f"go to the spool {self._spool.path}" if self._spool is not None else
                 f"are held in memory (at most {self._memory_rows}, then the hot path waits)")
        log.warning("DATABASE DOWN: %s; the rows handed over from now on %s and are stored once it answers "
                    "(retrying with backoff up to %gs; nothing is dropped)", error, where, self._retry_max_s)

    # ------------------------------------------------------------------ the probe thread

    def _start_probe(self) -> None:
        if self._probe_thread is None:
            self._probe_thread = threading.Thread(target=self._probe_run, name="nt8bridge-storage-probe", daemon=True)
            self._probe_thread.start()
        self._probe_wake.set()

    def _stop_probe(self) -> None:
        thread = self._probe_thread
        if thread is not None:
            self._probe_exit = True
            self._probe_wake.set()
            thread.join(30)
        if self._probe_engine is not None:
            self._probe_engine.dispose()

    def _probe_run(self) -> None:
        """Try the database until it answers, then say so and wait to be asked again."""
        while True:
            self._probe_wake.wait()
            self._probe_wake.clear()
            delay = self._retry_initial_s
            while not self._probe_exit and not self._probe_ok.is_set():
                if self._probe_once():
                    self._probe_ok.set()
                    break
                if self._probe_wake.wait(delay):  # asked for a try now (a stop): from the start again
                    self._probe_wake.clear()
                    delay = self._retry_initial_s
                else:
                    delay = min(delay * 2, self._retry_max_s)
            if self._probe_exit:
                return

    def _probe_once(self) -> bool:
        """Whether the database would take a write now (SQLite: its write lock is free)."""
        try:
            if self._probe_engine is None:
                self._probe_engine = create_engine_for(self._url)
            raw = self._probe_engine.raw_connection()
            try:
                driver = raw.driver_connection
                assert driver is not None
                if self._probe_engine.dialect.name == "sqlite":
                    driver.execute("BEGIN IMMEDIATE")  # what a commit needs, and what a lock holder denies
                    driver.execute("ROLLBACK")
                else:
                    with driver.cursor() as cursor:
                        cursor.execute("SELECT 1")
                    driver.rollback()
            finally:
                raw.close()
            return True
        except Exception as exc:  # anything: the database is not usable yet; the writer thread has the details
            self._probe_failures += 1
            self._last_error = str(as_storage_error(self._url, exc, "trying the database"))
            if self._probe_engine is not None:
                self._probe_engine.dispose()
            log.debug("storage probe: %s", self._last_error)
            return False

    def _database_back(self) -> None:
        self._db_down = False
        down_for = time.monotonic() - self._down_monotonic
        self._delay = self._retry_initial_s
        spool = self._spool
        backlog = self._held_rows + (spool.pending_rows if spool is not None else 0)
        attempts = self._failures + self._probe_failures - self._probe_failures_before
        log.warning("database %s is available again after %.1fs (%d failed attempt(s)); storing the backlog of %d "
                    "rows first", safe_url(self._url), down_for, attempts, backlog)
        self._failures = 0
        self._update_state()

    def _update_state(self) -> None:
        if self._spool_full and (self._db_down or self._held):
            state = STATE_DISK_FULL
        elif self._db_down:
            state = STATE_DATABASE_DOWN
        elif self._in_backlog():
            state = STATE_CATCHING_UP
        else:
            state = STATE_OK
        if state != self._state:
            self._state, self._state_since = state, time.time()

    def _note_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = str(exc)

    # ------------------------------------------------------------------ writer thread: committing

    def _commit(self, entries: list[_Entry], *, replayed: bool) -> None:
        """Commit ``entries`` in one transaction, with their progress in ``storage_progress``.

        ``replayed``: they come from the backlog, and some may have been committed already (just
        before a crash, or by a COMMIT whose reply was lost): those are skipped."""
        assert self._engine is not None and self._inserter is not None
        if not self._schema_ready:
            upgrade(self._url)
            self._schema_ready = True
        if self._before_commit is not None:
            self._before_commit()
        written: dict[str, int] = {}
        rejects: list[dict[str, Any]] = []
        committed: list[tuple[_Entry, dict[str, list[Row]]]] | None = [] if self._on_committed else None
        updates = skipped = 0
        last: dict[str, int] = {}
        for e in entries:
            last[e.stream] = e.seq
        with self._engine.begin() as conn:
            done = self._progress_of(conn, list(last)) if replayed else {}
            for e in entries:
                if e.seq <= done.get(e.stream, 0):
                    skipped += e.rows
                    continue
                if isinstance(e.item, _Batch):
                    stored = self._apply_batch(conn, e.item, written, rejects)
                    if committed is not None:
                        committed.append((e, stored))
                elif self._apply_update(conn, e.item, rejects):
                    updates += 1
            now = time.time_ns()
            for stream, seq in last.items():
                conn.exec_driver_sql(self._progress_sql, (stream, seq, now))
            if rejects:
                conn.execute(storage_rejects.insert(), rejects)
        for table, n in written.items():
            self._rows_written[table] += n
        if committed:
            self._tell_committed(committed)
        self._batches_committed += len(entries)
        self._updates_applied += updates
        if replayed:
            self._rows_replayed += sum(e.rows for e in entries) - skipped
            self._rows_skipped += skipped
            if skipped:
                log.info("%d row(s) of the backlog were committed already (before a crash or a lost reply): "
                         "skipped, not stored twice", skipped)
        if self._stream in last:
            self._committed_seq = last[self._stream]
        if rejects:
            self._rows_rejected += len(rejects)
            self._last_error = str(rejects[0]["error"])
            log.warning("%d row(s) sent to storage_rejects; first: %s", len(rejects), rejects[0]["error"])

    def _tell_committed(self, committed: list[tuple[_Entry, dict[str, list[Row]]]]) -> None:
        callback = self._on_committed
        assert callback is not None
        for entry, tables in committed:
            for table, rows in tables.items():
                if not rows:
                    continue
                try:
                    callback(table, rows, entry.stream, entry.seq)
                except Exception:  # the rows are stored: whatever the listener does wrong is its own
                    self._callback_errors += 1
                    if self._callback_errors == 1 or self._callback_errors % 1000 == 0:
                        log.exception("on_committed failed (%d time(s)); storage goes on", self._callback_errors)

    def _progress_of(self, conn: Connection, streams: list[str]) -> dict[str, int]:
        c = storage_progress.c
        result = conn.execute(select(c.stream_id, c.last_seq).where(c.stream_id.in_(streams)))
        return {stream: int(seq) for stream, seq in result}

    def _apply_batch(self, conn: Connection, batch: _Batch, written: dict[str, int],
                     rejects: list[dict[str, Any]]) -> dict[str, list[Row]]:
        """Insert the batch's rows; returns, per table, the rows stored (all but the rejected)."""
        inserter = self._inserter
        assert inserter is not None
        stored: dict[str, list[Row]] = {}
        for table, rows in batch.rows.items():
            try:
                # A savepoint per table: a bad row costs only its own table's fast path.
                with conn.begin_nested():
                    inserter.insert_many(conn, table, rows)
                written[table] = written.get(table, 0) + len(rows)
                stored[table] = rows
                continue
            except Exception as exc:  # classified just below
                if is_transient(exc):
                    raise
                self._errors += 1
                log.warning("a %s batch of %d rows failed (%s); retrying row by row", table, len(rows), _first_line(exc))
            bad, good = self._rows_one_by_one(conn, table, rows)
            written[table] = written.get(table, 0) + len(good)
            rejects.extend(bad)
            stored[table] = good
        return stored

    def _rows_one_by_one(self, conn: Connection, table: str,
                         rows: Sequence[Row]) -> tuple[list[dict[str, Any]], list[Row]]:
        """Each row in its own savepoint: (the rejects, the rows stored)."""
        assert self._inserter is not None
        rejects: list[dict[str, Any]] = []
        good: list[Row] = []
        for row in rows:
            try:
                with conn.begin_nested():
                    self._inserter.insert_one(conn, table, row)
                good.append(row)
            except Exception as exc:  # anything wrong with this row rejects this row only
                if is_transient(exc):
                    raise  # the database went away mid-way: the whole batch is retried
                rejects.append(_reject(table, row, exc))
        return rejects, good

    def _apply_update(self, conn: Connection, upd: _Update, rejects: list[dict[str, Any]]) -> bool:
        """Apply one update; False when it went to ``rejects`` instead."""
        table = metadata.tables[upd.table]
        key_column = _UPDATABLE[upd.table]
        values = {k: (None if isinstance(v, float) and v != v else v) for k, v in upd.values.items()}
        try:
            with conn.begin_nested():
                result = conn.execute(table.update().where(key_column == upd.key).values(values))
                if result.rowcount == 0:
                    raise LookupError(f"no {upd.table} row with {key_column.name} = {upd.key!r}")
            return True
        except Exception as exc:  # classified just below
            if is_transient(exc):
                raise
            reject = _reject(upd.table, (), exc)
            reject["row_json"] = json.dumps({"update": {"key": upd.key, "values": values}}, default=repr)
            rejects.append(reject)
            log.warning("update of %s sent to storage_rejects: %s", upd.table, reject["error"])
            return False


def _progress_sql(engine: Engine) -> str:
    """Move a run's progress forward, never back (one statement, the same on SQLite and PostgreSQL)."""
    quote = engine.dialect.identifier_preparer.quote
    p = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    t = quote("storage_progress")
    return (f"INSERT INTO {t} (stream_id, last_seq, updated_ns) VALUES ({p}, {p}, {p}) "
            f"ON CONFLICT (stream_id) DO UPDATE SET last_seq = excluded.last_seq, updated_ns = excluded.updated_ns "
            f"WHERE {t}.last_seq < excluded.last_seq")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def _reject(table: str, row: Any, exc: BaseException) -> dict[str, Any]:
    return {
        "table_name": table,
        "error": f"{type(getattr(exc, 'orig', None) or exc).__name__}: {_first_line(exc)}",
        "row_json": _row_json(table, row),
        "ts_ns": time.time_ns(),
    }
