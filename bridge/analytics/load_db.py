"""``analytics load --db``: the project's own database (SQLite or PostgreSQL, the record) into the store.

Everything read is tagged with the database as its source (``db:URL``, the URL without password or options,
an SQLite path made absolute), the same source the live feed (feed.py) uses, so the two meet: per analytics
table and per session, the rows the store holds from that source are counted against the database's.
Equal: the session is skipped. None: it is loaded. Some (the feed dropped rows, or a load was cut short):
the store's rows of that session are deleted and it is loaded again. Running the load twice inserts nothing
the second time.

Each table is read in chunks of ``batch_rows`` in primary-key order (bounded memory; the joined columns come
from a :class:`~bridge.analytics.from_storage.Context` of sessions, decisions and orders, held whole), and each
chunk goes in with a token naming the table, its key range and the sessions it carries with the count each had
before: a chunk sent again after a failure inserts nothing, and a session re-loaded after a repair is not
mistaken for its first load.

Sessions with no end recorded are skipped unless ``include_open``: a running sidecar may be feeding them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, func, select, text

from bridge.analytics.from_storage import ANALYTICS_OF, CONTEXT_TABLES, Context, convert, storage_filter
from bridge.analytics.store import AnalyticsStore, quote
from bridge.storage.database import create_engine_for
from bridge.storage.schema import COLUMNS, metadata
from bridge.storage.writer import spool_identity

log = logging.getLogger(__name__)


def source_for(db_url: str) -> str:
    """The source tag of rows from this database: its identity without password or options."""
    return "db:" + spool_identity(db_url)


@dataclass(frozen=True)
class DbLoadResult:
    table: str            # analytics table
    storage_rows: int     # rows the database holds for it (sessions considered)
    sent: int             # rows sent now
    sessions_loaded: int  # sessions sent now (first time)
    sessions_repaired: int  # sessions the store held in part: deleted, then sent again
    sessions_skipped: int   # already complete
    sessions_open: int      # no end recorded: left alone (include_open loads them)


def _key(table: str) -> str:
    t = metadata.tables[table]
    return "id" if "id" in t.c else t.primary_key.columns.values()[0].name


def chunks(conn: Connection, table: str, size: int, lo: object = None, hi: object = None) -> Iterator[pd.DataFrame]:
    """The table's rows (storage column names, plus its key) in key order, ``size`` at a time, keys in
    ``(lo, hi]``."""
    t = metadata.tables[table]
    key = t.c[_key(table)]
    cols = [t.c[c] for c in COLUMNS[table]] + ([key] if key.name not in COLUMNS[table] else [])
    at = [c.name for c in cols].index(key.name)
    after = lo
    while True:
        q = select(*cols).order_by(key).limit(size)
        if after is not None:
            q = q.where(key > after)
        if hi is not None:
            q = q.where(key <= hi)
        rows = conn.execute(q).fetchall()
        if not rows:
            return
        df = pd.DataFrame.from_records(rows, columns=[c.name for c in cols])
        yield df
        if len(rows) < size:
            return
        after = rows[-1][at]  # the driver's value: a numpy integer would not bind


def read_context(conn: Connection, size: int) -> Context:
    ctx = Context()
    for table in CONTEXT_TABLES:
        for df in chunks(conn, table, size):
            ctx.learn(table, df)
    return ctx


def _storage_counts(conn: Connection, table: str, cond: str | None) -> dict[int, tuple[int, object, object]]:
    t = metadata.tables[table]
    key = t.c[_key(table)]
    q = select(t.c.session_id, func.count(), func.min(key), func.max(key)).group_by(t.c.session_id)
    if cond is not None:
        q = q.where(text(cond))
    return {int(s): (int(n), lo, hi) for s, n, lo, hi in conn.execute(q)}


def _store_counts(store: AnalyticsStore, table: str, source: str) -> dict[int, int]:
    df = store.query_df(f"SELECT session_id, count() AS n FROM `{store.database}`.`{table}` "
                        f"WHERE source = {quote(source)} GROUP BY session_id")
    return {int(s): int(n) for s, n in zip(df["session_id"], df["n"])}


def _open_sessions(conn: Connection) -> set[int]:
    s = metadata.tables["sessions"]
    return {int(x) for (x,) in conn.execute(select(s.c.session_id).where(s.c.ended_ns.is_(None)))}


def _part(table: str, df: pd.DataFrame, key: str, had: dict[int, int]) -> str:
    sessions = sorted({int(x) for x in df["session_id"]})
    digest = hashlib.sha256(repr([(s, had.get(s, 0)) for s in sessions]).encode()).hexdigest()[:16]
    return f"{table} {key} {df[key].iloc[0]}..{df[key].iloc[-1]} {digest}"


def load_database(store: AnalyticsStore, db_url: str, *, include_open: bool = False) -> list[DbLoadResult]:
    """Bring the store level with the database, table by table and session by session (module docstring)."""
    source = source_for(db_url)
    size = store.batch_rows
    engine = create_engine_for(db_url)
    results = []
    try:
        with engine.connect() as conn:
            ctx = read_context(conn, size)
            open_ = set() if include_open else _open_sessions(conn)
            for table, targets in ANALYTICS_OF.items():
                results.extend(_load_table(store, conn, table, targets, ctx, source, open_, size))
    finally:
        engine.dispose()
    return results


def _load_table(store: AnalyticsStore, conn: Connection, table: str, targets: tuple[str, ...], ctx: Context,
                source: str, open_: set[int], size: int) -> list[DbLoadResult]:
    key = _key(table)
    plans = {}
    for target in targets:
        db = _storage_counts(conn, table, storage_filter(target)[1])
        have = _store_counts(store, target, source)
        todo = {s for s, (n, _lo, _hi) in db.items() if have.get(s, 0) != n and s not in open_}
        repair = {s for s in todo if have.get(s, 0)}
        for s in sorted(repair):
            log.warning("analytics %s: session %d holds %d of %d rows from %s: replaced", target, s, have[s],
                        db[s][0], source)
            store.delete(target, f"source = {quote(source)} AND session_id = {s}")
        plans[target] = (db, have, todo, repair)
    sent = dict.fromkeys(targets, 0)
    need = set().union(*(p[2] for p in plans.values()))
    if need:
        ranges = [plans[t][0][s] for t in targets for s in plans[t][2]]
        lo, hi = min(r[1] for r in ranges), max(r[2] for r in ranges)
        for df in chunks(conn, table, size, _before(lo), hi):
            df = df[df["session_id"].isin(need)]
            for target, frame in convert(table, df, ctx):
                _db, have, todo, _repair = plans[target]
                frame = frame[frame["session_id"].isin(todo)]
                if len(frame):
                    part = _part(table, df[df["session_id"].isin(todo)], key, have)
                    sent[target] += store.insert(target, frame, source=source, part=part)
    out = []
    for target in targets:
        db, have, todo, repair = plans[target]
        out.append(DbLoadResult(target, sum(n for s, (n, _a, _b) in db.items() if s not in open_), sent[target],
                                len(todo - repair), len(repair), sum(1 for s in db if s not in todo and s not in open_),
                                sum(1 for s in db if s in open_)))
    return out


def _before(lo: object) -> object:
    """A key just below ``lo`` for an exclusive lower bound: ids step by one; a text key has none, so None
    (from the start: the session filter drops the rest)."""
    return lo - 1 if isinstance(lo, int) else None
