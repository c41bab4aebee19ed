"""The analytics schema: one ClickHouse table per stream the sidecar records (docs/storage.md).

Choices, and why:

- ``ts DateTime64(9, 'UTC')`` with ``CODEC(DoubleDelta, ZSTD)``: stamps within one instrument rise almost
  evenly, so their second difference is near zero and compresses to a few bits a row.
- prices ``Float64 CODEC(Gorilla, ZSTD)``: consecutive prices share most of their bits (Gorilla XORs them).
- sizes and counters ``CODEC(T64, ZSTD)``: small integers in wide columns.
- strings repeated across millions of rows (instrument, strategy, side, kind) are ``LowCardinality``.
- ``ORDER BY (instrument, ts)`` (the sort key a quant's WHERE names first) and monthly partitions
  (``toYYYYMM(ts)``): a month can be dropped or re-loaded alone.

Idempotency: plain ``MergeTree`` with **insert deduplication**, not ``ReplacingMergeTree``. A retried batch
carries the same ``insert_deduplication_token`` (derived from what the batch is: its source and its place in
it, store.py) and ClickHouse drops it at insert time, so a count right after the retry is already exact.
ReplacingMergeTree only collapses duplicates in background merges (queries would need ``FINAL``, slow on
months of ticks) and it needs a unique sort key: two trades at the same nanosecond at the same price and size
are two real trades, which it would fold into one. ``non_replicated_deduplication_window`` keeps the last N
insert tokens per table on the embedded engine and a single server (a replicated table keeps them in Keeper,
``replicated_deduplication_window``); N covers far more batches than one load or one writer outage makes.

``seq`` (the row's place in its source) breaks ties between ticks with the same stamp, so the first and last
trade of a bar are the file's first and last, as ``ticks_to_minute_bars`` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

DEDUP_WINDOW = 100_000  # insert tokens remembered per table: 10M ticks / 50k-row batches is 200

TS = "DateTime64(9, 'UTC') CODEC(DoubleDelta, ZSTD(3))"
PRICE = "Float64 CODEC(Gorilla, ZSTD(3))"
NPRICE = "Nullable(Float64) CODEC(Gorilla, ZSTD(3))"  # prices an order or a fill need not have
COUNT = "UInt64 CODEC(T64, ZSTD(3))"
NCOUNT = "Nullable(UInt64) CODEC(T64, ZSTD(3))"  # a size not sent
QTY = "Int64 CODEC(T64, ZSTD(3))"
LC = "LowCardinality(String)"
TEXT = "String CODEC(ZSTD(3))"


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, ClickHouse type with codec)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)


def _t(name: str, *cols: tuple[str, str]) -> TableDef:
    # every table leads with the sort key and ends with where the row came from
    return TableDef(name, (("instrument", LC), ("ts", TS), *cols, ("source", LC)))


TABLES: dict[str, TableDef] = {t.name: t for t in (
    # session_id: the sidecar's session the row was recorded in (0 for rows loaded from NT8 exports)
    _t("ticks", ("session_id", "UInt64"), ("seq", COUNT), ("price", PRICE), ("volume", COUNT)),
    # one row per bid or ask update; the side not updated is the best price known then (NULL: not known), its
    # size NULL (NT8 sends the size of the side that moved only; its replay export carries none)
    _t("quotes", ("session_id", "UInt64"), ("seq", COUNT), ("bid", NPRICE), ("ask", NPRICE),
       ("bid_size", NCOUNT), ("ask_size", NCOUNT)),
    _t("bars", ("session_id", "UInt64"), ("period_s", "UInt32"), ("open", PRICE), ("high", PRICE),
       ("low", PRICE), ("close", PRICE), ("volume", COUNT), ("tick_count", "Nullable(UInt32)"),
       ("built_by", LC)),  # ticks (built by the sidecar) or nt8 (received, or loaded from an export)
    _t("quality_events", ("session_id", "UInt64"), ("seq", "Nullable(Int64)"), ("reason", LC), ("detail", TEXT),
       ("payload", TEXT)),
    _t("decisions", ("session_id", "UInt64"), ("decision_id", "String"), ("strategy", LC), ("outcome", LC),
       ("decided_ns", "Int64"),  # the sidecar's clock when it decided (ts is the triggering event's stamp)
       ("reference_price", NPRICE),  # the price the risk checks took as reference (from inputs)
       ("inputs", TEXT), ("rationale", TEXT)),  # inputs: JSON object of features, signal, risk checks
    _t("orders", ("session_id", "UInt64"), ("client_order_id", "String"), ("decision_id", "String"),
       ("strategy", LC), ("account", LC), ("side", LC), ("entry_type", LC), ("quantity", QTY),
       ("entry_price", NPRICE), ("stop_price", NPRICE), ("target_price", NPRICE), ("time_in_force", LC),
       ("algorithm_id", LC)),
    _t("order_updates", ("session_id", "UInt64"), ("seq", "Int64"), ("client_order_id", "String"), ("role", LC),
       ("nt8_order_id", "String"), ("state", LC), ("quantity", QTY), ("filled", QTY), ("limit_price", NPRICE),
       ("stop_price", NPRICE), ("avg_fill_price", NPRICE), ("error_code", "Nullable(Int32)"), ("comment", TEXT)),
    _t("executions", ("session_id", "UInt64"), ("seq", "Int64"), ("execution_id", "String"),
       ("client_order_id", "String"), ("decision_id", "String"), ("strategy", LC), ("account", LC), ("role", LC),
       ("side", LC), ("quantity", QTY), ("price", PRICE), ("commission", NPRICE),
       ("expected_price", NPRICE),  # what the fill should have been (from_storage.py): slippage = price - it
       ("latency_ns", "Nullable(Int64)")),  # the entry decision's event stamp to the fill's (NT8's clock both)
    _t("positions", ("session_id", "UInt64"), ("seq", "Int64"), ("account", LC), ("market_position", LC),
       ("quantity", QTY), ("avg_price", NPRICE)),
)}


def create_table_sql(table: TableDef, database: str, *, engine: str = "MergeTree", suffix: str = "",
                     cluster: str | None = None) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one table: on a single node (embedded or one server) by default; the
    local table of a cluster (cluster.py) with ``suffix``, ``cluster`` and a replicated ``engine``."""
    cols = ",\n    ".join(f"`{c}` {t}" for c, t in table.columns)
    on = f" ON CLUSTER `{cluster}`" if cluster else ""
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{table.name}{suffix}`{on} (\n    {cols}\n)\n"
            f"ENGINE = {engine}\nPARTITION BY toYYYYMM(ts)\nORDER BY (instrument, ts)\n"
            f"SETTINGS {dedup_setting(cluster)} = {DEDUP_WINDOW}")


def dedup_setting(cluster: str | None) -> str:
    """The table setting that bounds the insert tokens kept: in the table's own files on one node, in Keeper
    for a replicated table."""
    return "replicated_deduplication_window" if cluster else "non_replicated_deduplication_window"


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS `{database}`"


def all_ddl(database: str) -> list[str]:
    """Every statement that brings an empty store to the current schema, in order (each idempotent)."""
    return [create_database_sql(database)] + [create_table_sql(t, database) for t in TABLES.values()]
