"""The storage writer: the hot path hands rows over, a background thread commits them in batches.

Design
------
* ``write`` only appends a tuple to a per-table list owned by the hot path: no lock, no I/O.
  A full list (``batch_rows``) goes to a bounded queue; ``flush`` hands over partial lists.
* The queue is the only thing shared with the writer thread. When it is full, the hot path
  blocks until there is room ("nothing lost"), and the wait is counted in the stats.
* The writer thread commits each queue item in one transaction, with one executemany (SQLite)
  or one COPY (PostgreSQL) per table. Queue items are processed strictly in order, so an
  ``update`` is applied after every row handed over before it.
* A batch rejected for its data is retried row by row in savepoints; rows that still fail go to
  ``storage_rejects`` with the error. A database that is unreachable (server down, file locked,
  disk full) keeps the batch at the head of the queue and is retried with backoff, forever:
  nothing is dropped, and the hot path feels it only once the queue is full.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Table
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
from bridge.storage.schema import COLUMNS, IGNORE_DUPLICATES, metadata, storage_rejects

log = logging.getLogger("nt8bridge.storage")

Row = tuple[Any, ...]


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


_STOP = object()

# Tables the hot path may update: those whose key it knows (not database-assigned ids).
_UPDATABLE = {
    name: table.primary_key.columns.values()[0]
    for name, table in metadata.tables.items()
    if len(table.primary_key.columns) == 1 and name in COLUMNS and table.primary_key.columns.values()[0].name in COLUMNS[name]
}


def _double_positions(table: Table) -> tuple[int, ...]:
    names = COLUMNS[table.name]
    return tuple(i for i, name in enumerate(names) if table.c[name].type.python_type is float)


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

        # Hot-path state: touched only by the thread that calls write/flush.
        self._buffers: dict[str, list[Row]] = {name: [] for name in COLUMNS}
        self._last_flush = time.monotonic()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_batches)

        # Counters. Each is written by one thread only, so plain attributes are enough.
        self._rows_written: dict[str, int] = {name: 0 for name in COLUMNS}  # keys fixed: safe to copy
        self._batches_committed = 0
        self._bp_waits = 0
        self._bp_seconds = 0.0
        self._errors = 0
        self._rows_rejected = 0
        self._updates_applied = 0
        self._last_error: str | None = None

        self._engine: Engine | None = None
        self._inserter: _Inserter | None = None
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._stop_sent = False
        self._closed = False
        # Test hook: called in the writer thread before each queue item is committed.
        self._before_commit: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bring the schema up to date, then start the writer thread.

        A database that is unreachable now (server down, file locked) does not stop the start:
        it is logged, rows are queued, and the thread keeps retrying the upgrade. Errors that
        retrying cannot fix (bad URL, damaged file, wrong password) raise.

        Raises
        ------
        StorageError
            For errors that are not transient, or if the writer is closed.
        """
        if self._closed or self._stop_sent:
            raise StorageError("this StorageWriter is closed; create a new one")
        if self._thread is not None:
            return
        try:
            upgrade(self._url)
            self._schema_ready = True
        except StorageError as exc:
            if not exc.transient:
                raise
            self._note_error(exc)
            log.warning("database unavailable at start; rows will be queued and retried: %s", exc)
        self._engine = create_engine_for(self._url)
        self._inserter = _make_inserter(self._engine, self._ignore)
        self._thread = threading.Thread(target=self._run, name="nt8bridge-storage", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Hand over everything, wait until it is committed, stop the thread. Idempotent.

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
                f"storage writer for {safe_url(self._url)} still has {self._queue.qsize()} batch(es) to commit "
                f"after {timeout}s; last error: {self._last_error}",
                transient=True,
            )
        self._closed = True
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
            bad row is found by the database and lands in ``storage_rejects``.

        Raises
        ------
        StorageError
            For an unknown table, or when the writer was never started or is closed.
        """
        try:
            buf = self._buffers[table]
        except KeyError:
            raise StorageError(f"unknown table {table!r}; tables: {', '.join(COLUMNS)}") from None
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
        """Flush and wait until every row handed over so far is committed.

        Parameters
        ----------
        timeout
            Seconds to wait at most; None waits as long as the database needs.

        Raises
        ------
        StorageError
            If the time ran out (the rows stay queued and will still be committed).
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
                    f"({self._queue.qsize()} batch(es) queued); last error: {self._last_error}",
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
                            "hot path blocked %.0fs waiting for the database (%s); last error: %s",
                            waited, safe_url(self._url), self._last_error,
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
    def stats(self) -> WriterStats:
        """A consistent-enough snapshot of the counters (each value is read atomically)."""
        return WriterStats(
            rows_written=dict(self._rows_written),
            batches_committed=self._batches_committed,
            backpressure_waits=self._bp_waits,
            backpressure_seconds=self._bp_seconds,
            errors=self._errors,
            queue_depth=self._queue.qsize(),
            rows_rejected=self._rows_rejected,
            updates_applied=self._updates_applied,
            last_error=self._last_error,
        )

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Marker):
                item.done.set()
                continue
            self._commit_with_retry(item)

    def _commit_with_retry(self, item: _Batch | _Update) -> None:
        delay = self._retry_initial_s
        failures = 0
        while True:
            try:
                if not self._schema_ready:
                    upgrade(self._url)
                    self._schema_ready = True
                if self._before_commit is not None:
                    self._before_commit()
                if isinstance(item, _Batch):
                    self._commit_batch(item)
                else:
                    self._commit_update(item)
                if failures:
                    log.warning("database %s is available again after %d failed attempt(s)", safe_url(self._url), failures)
                return
            except Exception as exc:  # the thread must survive anything; nothing is dropped
                failures += 1
                error = as_storage_error(self._url, exc, "writing")
                self._note_error(error)
                if error.transient:
                    # The database may come back as a new, empty file or database: check the schema again.
                    self._schema_ready = False
                    # Say it loudly once, then now and then, not on every attempt.
                    level = logging.WARNING if failures == 1 or failures % 20 == 0 else logging.DEBUG
                    log.log(level, "%s; retrying in %.2fs (attempt %d), nothing is dropped", error, delay, failures)
                    assert self._engine is not None
                    self._engine.dispose()  # connections to a restarted server are dead
                else:
                    log.exception("unexpected storage failure, retrying in %.2fs: %s", delay, error)
                time.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    def _commit_batch(self, batch: _Batch) -> None:
        assert self._engine is not None and self._inserter is not None
        inserter = self._inserter
        written: dict[str, int] = {}
        rejects: list[dict[str, Any]] = []
        with self._engine.begin() as conn:
            for table, rows in batch.rows.items():
                try:
                    # A savepoint per table: a bad row costs only its own table's fast path.
                    with conn.begin_nested():
                        inserter.insert_many(conn, table, rows)
                    written[table] = len(rows)
                    continue
                except Exception as exc:  # classified just below
                    if is_transient(exc):
                        raise
                    self._errors += 1
                    log.warning("a %s batch of %d rows failed (%s); retrying row by row", table, len(rows), _first_line(exc))
                bad = self._rows_one_by_one(conn, table, rows)
                written[table] = len(rows) - len(bad)
                rejects.extend(bad)
            if rejects:
                conn.execute(storage_rejects.insert(), rejects)
        for table, n in written.items():
            self._rows_written[table] += n
        self._batches_committed += 1
        if rejects:
            self._rows_rejected += len(rejects)
            self._last_error = str(rejects[0]["error"])
            log.warning("%d row(s) sent to storage_rejects; first: %s", len(rejects), rejects[0]["error"])

    def _rows_one_by_one(self, conn: Connection, table: str, rows: Sequence[Row]) -> list[dict[str, Any]]:
        assert self._inserter is not None
        rejects: list[dict[str, Any]] = []
        for row in rows:
            try:
                with conn.begin_nested():
                    self._inserter.insert_one(conn, table, row)
            except Exception as exc:  # anything wrong with this row rejects this row only
                if is_transient(exc):
                    raise  # the database went away mid-way: the whole batch is retried
                rejects.append(_reject(table, row, exc))
        return rejects

    def _commit_update(self, upd: _Update) -> None:
        assert self._engine is not None and self._inserter is not None
        table = metadata.tables[upd.table]
        key_column = _UPDATABLE[upd.table]
        values = {k: (None if isinstance(v, float) and v != v else v) for k, v in upd.values.items()}
        with self._engine.begin() as conn:
            try:
                with conn.begin_nested():
                    result = conn.execute(table.update().where(key_column == upd.key).values(values))
                    if result.rowcount == 0:
                        raise LookupError(f"no {upd.table} row with {key_column.name} = {upd.key!r}")
                self._updates_applied += 1
            except Exception as exc:  # classified just below
                if is_transient(exc):
                    raise
                reject = _reject(upd.table, (), exc)
                reject["row_json"] = json.dumps({"update": {"key": upd.key, "values": values}}, default=repr)
                conn.execute(storage_rejects.insert(), [reject])
                self._rows_rejected += 1
                self._last_error = reject["error"]
                log.warning("update of %s sent to storage_rejects: %s", upd.table, reject["error"])
        self._batches_committed += 1

    def _note_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = str(exc)


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
