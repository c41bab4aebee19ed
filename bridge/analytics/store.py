"""One analytics store, two engines: the embedded ClickHouse ``chdb`` on disk, or a ClickHouse server.

``analytics.url`` picks the engine: ``chdb:///PATH`` (a folder; created at first use) or
``clickhouse://[USER[:PASSWORD]@]HOST[:PORT]/DB`` (HTTP port, 8123 by default). chdb has no Windows build:
on a Windows desk analytics point at a server or stay off (``open_store`` says so).

Inserts are batched (``analytics.batch_rows``, 50k by default: ClickHouse stalls on many small parts) and
each batch carries an ``insert_deduplication_token`` built from what the batch *is* (its table, its source,
the row range it covers), so a batch sent again after a crash or a timeout inserts nothing (schema.py says
why this rather than ReplacingMergeTree).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from bridge.analytics.rollups import ROLLUP_TABLES, backfill_sql, rollup_ddl
from bridge.analytics.schema import TABLES, TableDef, all_ddl, create_database_sql

log = logging.getLogger(__name__)

DEFAULT_DB = "nt8bridge"
# the token also deduplicates what the materialized views write into the rollups (rollups.py): without it a
# retried ticks batch is dropped from ticks but counted again in the minute rollups
_VIEW_DEDUP = "deduplicate_blocks_in_dependent_materialized_views"


class AnalyticsError(RuntimeError):
    """A store that cannot be opened or a batch it refused; the message says which and why."""


def quote(value: str) -> str:
    """A ClickHouse string literal (backslash and quote escaped): for the few values put into SQL text."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class InsertStats:
    batches: int = 0
    rows: int = 0
    rejected: int = 0  # rows refused by a check before sending (counted, logged)


class _Engine(Protocol):
    def command(self, sql: str) -> None: ...
    def query_df(self, sql: str) -> pd.DataFrame: ...
    def insert_df(self, database: str, table: TableDef, df: pd.DataFrame, token: str) -> None: ...
    def close(self) -> None: ...


class _ChdbEngine:
    """The embedded engine: a chdb session on a folder. chdb runs one embedded server per process: one folder
    open at a time in a process (close it before opening another), and one process at a time on a folder."""

    def __init__(self, path: Path) -> None:
        if sys.platform == "win32":
            raise AnalyticsError("analytics.url is chdb:///..., but chdb has no Windows build: point analytics.url at a "
                                 "ClickHouse server (clickhouse://HOST:PORT/DB) or leave it empty (analytics off)")
        try:
            from chdb import session
        except ImportError as exc:
            raise AnalyticsError("chdb is not installed: pip install 'nt8bridge[analytics]'") from exc
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._session = session.Session(str(path))
        except RuntimeError as exc:
            # chdb runs one embedded server per process, on one folder: a second store elsewhere must wait
            # until the first is closed (a long-lived process keeps one store open)
            raise AnalyticsError(f"cannot open the embedded store at {path}: {exc}") from None

    def command(self, sql: str) -> None:
        self._session.query(sql)

    def query_df(self, sql: str) -> pd.DataFrame:
        return self._session.query(sql, "DataFrame")

    def insert_df(self, database: str, table: TableDef, df: pd.DataFrame, token: str) -> None:
        batch = df  # noqa: F841 - chdb's Python() table function finds the frame by this local name
        cols = ", ".join(f"`{c}`" for c in table.column_names)
        select = ", ".join("fromUnixTimestamp64Nano(`ts`, 'UTC')" if c == "ts" else f"`{c}`" for c in table.column_names)
        self._session.query(f"INSERT INTO `{database}`.`{table.name}` ({cols}) "
                            f"SETTINGS insert_deduplication_token = {quote(token)}, {_VIEW_DEDUP} = 1 "
                            f"SELECT {select} FROM Python(batch)")

    def close(self) -> None:
        self._session.close()


class _ServerEngine:
    """A ClickHouse server over HTTP through clickhouse-connect."""

    def __init__(self, host: str, port: int, user: str, password: str, secure: bool) -> None:
        try:
            import clickhouse_connect
        except ImportError as exc:
            raise AnalyticsError("clickhouse-connect is not installed: pip install 'nt8bridge[analytics]'") from exc
        try:
            self._client = clickhouse_connect.get_client(host=host, port=port, username=user, password=password,
                                                         secure=secure)
        except Exception as exc:  # noqa: BLE001 - the driver raises several kinds; one clear line for the user
            raise AnalyticsError(f"cannot reach the ClickHouse server at {host}:{port}: {exc}") from exc

    def command(self, sql: str) -> None:
        self._client.command(sql)

    def query_df(self, sql: str) -> pd.DataFrame:
        return self._client.query_df(sql)

    def insert_df(self, database: str, table: TableDef, df: pd.DataFrame, token: str) -> None:
        df = df.assign(ts=pd.to_datetime(df["ts"].to_numpy(dtype=np.int64), utc=True))
        self._client.insert_df(table.name, df[list(table.column_names)], database=database,
                               settings={"insert_deduplication_token": token, _VIEW_DEDUP: 1})

    def close(self) -> None:
        self._client.close()


@dataclass
class AnalyticsStore:
    """The store: schema, batched idempotent inserts, SQL queries into DataFrames."""

    url: str
    engine: _Engine
    database: str = DEFAULT_DB
    batch_rows: int = 50_000
    stats: InsertStats = field(default_factory=InsertStats)

    def ensure_schema(self) -> None:
        """Create what is missing (every statement idempotent); rollups created beside ticks already stored are
        filled from them once, as the views see only later inserts."""
        self.engine.command(create_database_sql(self.database))
        existed = set(self.query_df(f"SELECT name FROM system.tables WHERE database = {quote(self.database)}")["name"])
        for sql in all_ddl(self.database) + rollup_ddl(self.database):
            self.engine.command(sql)
        if "ticks" in existed and not existed.issuperset(ROLLUP_TABLES) and self.count("ticks"):
            log.info("analytics: building the minute rollups from the %s ticks already stored", self.count("ticks"))
            for sql in backfill_sql(self.database):
                self.engine.command(sql)

    def query_df(self, sql: str) -> pd.DataFrame:
        return self.engine.query_df(sql)

    def count(self, table: str, where: str = "1") -> int:
        df = self.query_df(f"SELECT count() AS n FROM `{self.database}`.`{table}` WHERE {where}")
        return int(df["n"].iloc[0])

    def insert(self, table: str, df: pd.DataFrame, *, source: str, part: str = "") -> int:
        """Insert ``df`` (``ts`` as int64 UTC nanoseconds, one column per schema column but ``source``) in
        batches of ``batch_rows``; returns the rows sent. Batch i covers rows [i*b, (i+1)*b) of ``df``: sending
        the same frame from the same ``source`` again (with the same batch size) inserts nothing. ``part``
        names which piece of the source ``df`` is, when a source arrives in several frames (a database read in
        chunks, a live feed): it goes into the tokens, so two pieces are never taken for one."""
        tdef = TABLES.get(table)
        if tdef is None:
            raise AnalyticsError(f"unknown analytics table {table!r}; tables: {', '.join(TABLES)}")
        df = df.assign(source=source)
        missing = [c for c in tdef.column_names if c not in df.columns]
        if missing:
            raise AnalyticsError(f"{table}: the rows lack column(s) {', '.join(missing)}")
        df = df[list(tdef.column_names)]
        sent = 0
        for i in range(math.ceil(len(df) / self.batch_rows)):
            lo, hi = i * self.batch_rows, min(len(df), (i + 1) * self.batch_rows)
            # what the batch is, not when it was sent: the same rows from the same source give the same token
            token = f"{table}|{source}|{part}|{lo}-{hi}" if part else f"{table}|{source}|{lo}-{hi}"
            self.engine.insert_df(self.database, tdef, df.iloc[lo:hi].reset_index(drop=True), token)
            self.stats.batches += 1
            sent += hi - lo
        self.stats.rows += sent
        return sent

    def delete(self, table: str, where: str) -> None:
        """Delete rows (a mutation, waited for): for replacing a piece that arrived only in part."""
        self.engine.command(f"ALTER TABLE `{self.database}`.`{table}` DELETE WHERE {where} "
                            "SETTINGS mutations_sync = 2")

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> AnalyticsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_store(url: str, *, batch_rows: int = 50_000, create: bool = True) -> AnalyticsStore:
    """The store ``url`` names (``chdb:///PATH`` or ``clickhouse://HOST:PORT/DB``), its schema ensured."""
    if not url:
        raise AnalyticsError("analytics are off: set analytics.url (chdb:///PATH or clickhouse://HOST:PORT/DB) "
                             "or pass --url")
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        # chdb:///abs/path -> /abs/path; chdb://rel/path (a host part) -> rel/path
        raw = unquote((parts.netloc or "") + parts.path)
        if not raw:
            raise AnalyticsError(f"analytics.url {url!r}: chdb:///PATH needs a folder")
        engine: _Engine = _ChdbEngine(Path(raw).expanduser())
        database = DEFAULT_DB
    elif parts.scheme in ("clickhouse", "clickhouses"):
        if not parts.hostname:
            raise AnalyticsError(f"analytics.url {url!r}: clickhouse://HOST:PORT/DB needs a host")
        secure = parts.scheme == "clickhouses"
        engine = _ServerEngine(parts.hostname, parts.port or (8443 if secure else 8123),
                               unquote(parts.username or "default"), unquote(parts.password or ""), secure)
        database = parts.path.strip("/") or DEFAULT_DB
    else:
        raise AnalyticsError(f"analytics.url {url!r}: the scheme must be chdb:///PATH or clickhouse://HOST:PORT/DB")
    store = AnalyticsStore(url, engine, database, batch_rows)
    if create:
        store.ensure_schema()
    return store
