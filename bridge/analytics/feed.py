"""The live feed: rows the storage writer has committed, into the analytics store, off the hot path.

The writer thread calls :meth:`AnalyticsFeed.on_committed` after each commit (bridge/storage/writer.py); it
only puts the rows on a bounded queue (never waits: a full queue drops them). The feed's own thread converts
them (from_storage.py) and inserts them per analytics table once ``batch_rows`` have gathered or every
``flush_s``. Each insert's token names the committed queue items it carries (writer run and item seq), so
an insert retried after a ClickHouse error inserts nothing twice.

The database is the record, this store a copy: rows that cannot go in (the queue full, the store unreachable
or refusing them after ``attempts`` tries) are dropped, counted and logged once per session, and their
session is listed under ``to_backfill``; ``nt8bridge analytics load --db`` backfills exactly those (it counts
each session's rows against the database's). Rows NT8 re-sends that the database skipped as duplicates
(orders, executions: ``IGNORE_DUPLICATES``) are recognised by their key and not sent twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bridge.analytics.from_storage import ANALYTICS_OF, CONTEXT_TABLES, Context, convert
from bridge.analytics.store import AnalyticsStore
from bridge.storage.schema import COLUMNS

log = logging.getLogger("nt8bridge.analytics")

Row = tuple[Any, ...]
_STOP = object()
# the key of a row NT8 may send again (the database keeps the first): not fed twice
_KEYS: dict[str, tuple[str, ...]] = {"orders": ("client_order_id",), "executions": ("session_id", "execution_id")}
_SEEN_MAX = 200_000


@dataclass
class FeedStats:
    rows_sent: int = 0
    batches: int = 0
    rows_dropped: int = 0
    errors: int = 0
    state: str = "starting"  # starting, ok, unavailable, closed
    to_backfill: list[tuple[str, int]] = field(default_factory=list)  # (storage table, session id)


@dataclass
class _Pending:
    frames: list[pd.DataFrame] = field(default_factory=list)
    items: list[tuple[str, int]] = field(default_factory=list)  # (stream, seq) of each committed item in it
    rows: int = 0
    since: float = 0.0


class AnalyticsFeed:
    """Committed storage rows into the analytics store on a thread of its own (module docstring)."""

    def __init__(self, open_store: Callable[[], AnalyticsStore], source: str, *, batch_rows: int = 50_000,
                 flush_s: float = 2.0, queue_items: int = 1024, attempts: int = 3, retry_s: float = 1.0,
                 reopen_s: float = 30.0) -> None:
        self._open_store = open_store
        self.source = source
        self._batch_rows = batch_rows
        self._flush_s = flush_s
        self._attempts = attempts
        self._retry_s = retry_s
        self._reopen_s = reopen_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_items)
        self._context_rows: queue.SimpleQueue[tuple[str, list[Row]]] = queue.SimpleQueue()
        self._ctx = Context()
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, dict[Any, None]] = {t: {} for t in _KEYS}
        self._store: AnalyticsStore | None = None
        self._next_open = 0.0
        self._thread: threading.Thread | None = None
        self._backfill: dict[tuple[str, int], None] = {}
        self._logged_drop: set[tuple[str, int]] = set()
        self.stats = FeedStats()

    # ------------------------------------------------------------------ the writer's thread

    def on_committed(self, table: str, rows: list[Row], stream: str, seq: int) -> None:
        """Called by the storage writer's thread after a commit: hands the rows over, never waits."""
        if table in CONTEXT_TABLES:
            self._context_rows.put((table, rows))  # a few rows per order: what later fills are joined with
        if table not in ANALYTICS_OF:
            return
        try:
            self._queue.put_nowait((table, rows, stream, seq))
        except queue.Full:
            self._drop(table, rows, "the feed's queue is full (the analytics store is slower than the market)")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nt8bridge-analytics", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued and pending (after the writer has closed: nothing comes after), then stop."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("analytics feed: its queue stays full; stopping without what it holds")
        self._thread.join(timeout)
        self._thread = None

    def report(self) -> dict[str, Any]:
        """The counters, for ``status`` and the metrics."""
        s = self.stats
        return {"state": s.state, "rows_sent": s.rows_sent, "batches": s.batches, "rows_dropped": s.rows_dropped,
                "errors": s.errors, "queue_depth": self._queue.qsize(),
                "sessions_to_backfill": sorted({sid for _t, sid in self._backfill})}

    # ------------------------------------------------------------------ the feed's thread

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self._wait())
                except queue.Empty:
                    item = None
                self._learn_context()
                if item is _STOP:
                    self._flush(force=True)
                    return
                if item is not None:
                    self._take(*item)
                self._flush(force=False)
        except Exception:  # a bug here must be seen; storage is not affected
            log.exception("the analytics feed stopped; storage goes on (nt8bridge analytics load --db backfills)")
            self.stats.errors += 1
        finally:
            self.stats.state = "closed"
            if self._store is not None:
                self._store.close()

    def _wait(self) -> float:
        if not self._pending:
            return self._flush_s
        oldest = min(p.since for p in self._pending.values())
        return max(0.01, oldest + self._flush_s - time.monotonic())

    def _learn_context(self) -> None:
        while True:
            try:
                table, rows = self._context_rows.get_nowait()
            except queue.Empty:
                return
            self._ctx.learn(table, pd.DataFrame.from_records(rows, columns=COLUMNS[table]))

    def _take(self, table: str, rows: list[Row], stream: str, seq: int) -> None:
        if self._store_or_none() is None:
            self._drop(table, rows, "the analytics store is unreachable")
            return
        df = pd.DataFrame.from_records(self._unseen(table, rows), columns=COLUMNS[table])
        try:
            frames = convert(table, df, self._ctx)
        except Exception as exc:  # rows the conversion cannot take: those only, said, counted
            self.stats.errors += 1
            self._drop(table, rows, f"they could not be converted: {exc!r}")
            return
        for target, frame in frames:
            p = self._pending.setdefault(target, _Pending(since=time.monotonic()))
            p.frames.append(frame)
            p.items.append((stream, seq))
            p.rows += len(frame)

    def _unseen(self, table: str, rows: list[Row]) -> list[Row]:
        keys = _KEYS.get(table)
        if keys is None:
            return rows
        seen = self._seen[table]
        at = [COLUMNS[table].index(k) for k in keys]
        out = []
        for r in rows:
            k = tuple(r[i] for i in at)
            if k not in seen:
                seen[k] = None
                out.append(r)
        while len(seen) > _SEEN_MAX:
            del seen[next(iter(seen))]
        return out

    def _flush(self, *, force: bool) -> None:
        now = time.monotonic()
        for target in list(self._pending):
            p = self._pending[target]
            if force or p.rows >= self._batch_rows or now - p.since >= self._flush_s:
                del self._pending[target]
                self._send(target, p)

    def _send(self, target: str, p: _Pending) -> None:
        df = pd.concat(p.frames, ignore_index=True) if len(p.frames) > 1 else p.frames[0]
        part = "live " + _ranges(p.items)
        for attempt in range(1, self._attempts + 1):
            store = self._store_or_none()
            if store is None:
                break
            try:
                # the same part on every attempt: a batch ClickHouse took before the error inserts nothing now
                store.insert(target, df, source=self.source, part=part)
                self.stats.rows_sent += len(df)
                self.stats.batches += 1
                self.stats.state = "ok"
                return
            except Exception as exc:  # the store's or the driver's: the rows stay in the database
                self.stats.errors += 1
                log.warning("analytics: inserting %d %s rows failed (attempt %d of %d): %s", len(df), target,
                            attempt, self._attempts, exc)
                if attempt < self._attempts:
                    time.sleep(self._retry_s * attempt)
        self._lost(target, df, "the analytics store refused them or is unreachable")

    def _store_or_none(self) -> AnalyticsStore | None:
        if self._store is not None:
            return self._store
        if time.monotonic() < self._next_open:
            return None
        try:
            self._store = self._open_store()
            self.stats.state = "ok"
            log.info("analytics feed: sending committed rows to %s", self._store.url)
        except Exception as exc:  # unreachable or misconfigured: said once per attempt, tried again later
            self.stats.errors += 1
            self.stats.state = "unavailable"
            self._next_open = time.monotonic() + self._reopen_s
            log.warning("analytics feed: the store cannot be opened (%s); rows are dropped until it can, retrying "
                        "in %.0fs (nt8bridge analytics load --db backfills them)", exc, self._reopen_s)
        return self._store

    # ------------------------------------------------------------------ dropping

    def _drop(self, table: str, rows: list[Row], why: str) -> None:
        at = COLUMNS[table].index("session_id")
        self._mark(table, {int(r[at]) for r in rows}, len(rows), why)

    def _lost(self, target: str, df: pd.DataFrame, why: str) -> None:
        table = "ticks" if target == "quotes" else target
        self._mark(table, {int(s) for s in df["session_id"]}, len(df), why)

    def _mark(self, table: str, sessions: set[int], n: int, why: str) -> None:
        self.stats.rows_dropped += n
        for sid in sessions:
            self._backfill[(table, sid)] = None
            if (table, sid) not in self._logged_drop:  # once per table and session, not per batch
                self._logged_drop.add((table, sid))
                log.warning("analytics: %s rows of session %d dropped (%s); they are in the database: "
                            "`nt8bridge analytics load --db` backfills them", table, sid, why)
        self.stats.to_backfill = list(self._backfill)


def _ranges(items: list[tuple[str, int]]) -> str:
    """``stream:first-last`` per writer run, in order: the committed items a batch carries."""
    out: list[list[Any]] = []
    for stream, seq in items:
        if out and out[-1][0] == stream and seq >= out[-1][2]:
            out[-1][2] = seq
        else:
            out.append([stream, seq, seq])
    return ",".join(f"{s}:{a}-{b}" for s, a, b in out)
