"""DDL for a ClickHouse cluster, for when one server is not enough (docs/storage.md, "A cluster").

Each table of schema.py becomes two: ``NAME_local``, a ``ReplicatedMergeTree`` on every node (replicas of a
shard copy each other through ClickHouse Keeper), and ``NAME``, a ``Distributed`` table over them that the
sidecar and the queries use unchanged. Rows are sharded by instrument (``cityHash64(instrument)``): one
instrument's ticks stay on one shard, so its bars, VWAP and profile are computed there and a session's
answer needs no data from other shards. The minute rollups are local to each shard, fed by views on the local
ticks table, and read through their own Distributed tables.

Deduplication: a replicated table keeps its insert tokens in Keeper (``replicated_deduplication_window``),
so a retried batch is dropped on whichever replica it reaches. Inserting through the Distributed table splits a
batch per shard; with ``insert_distributed_sync = 1`` each shard's part carries the batch's token.

The statements are generated, not run: apply them with ``clickhouse-client --multiquery`` on a cluster
defined in the servers' ``remote_servers`` and ``macros`` (``{shard}``, ``{replica}``). They are checked for
syntax by ClickHouse's own parser (``formatQuery``) in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.analytics.rollups import ROLLUP_TABLES, rollup_ddl
from bridge.analytics.schema import TABLES, create_table_sql

LOCAL = "_local"


def _replicated(kind: str, database: str) -> Callable[[str], str]:
    # the Keeper path names shard, database and local table; {shard} and {replica} are each server's macros
    return lambda table: f"Replicated{kind}('/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}')"


def _distributed(cluster: str, database: str, table: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{table}` ON CLUSTER `{cluster}` "
            f"AS `{database}`.`{table}{LOCAL}`\n"
            f"ENGINE = Distributed(`{cluster}`, `{database}`, `{table}{LOCAL}`, cityHash64(instrument))")


def cluster_ddl(database: str, cluster: str) -> list[str]:
    """Every statement that creates the store on ``cluster``, in order, each idempotent."""
    out = [f"CREATE DATABASE IF NOT EXISTS `{database}` ON CLUSTER `{cluster}`"]
    merge_tree = _replicated("MergeTree", database)
    for t in TABLES.values():
        out.append(create_table_sql(t, database, engine=merge_tree(t.name + LOCAL), suffix=LOCAL, cluster=cluster))
        out.append(_distributed(cluster, database, t.name))
    out += rollup_ddl(database, suffix=LOCAL, cluster=cluster, engine=_replicated("AggregatingMergeTree", database))
    out += [_distributed(cluster, database, name) for name in ROLLUP_TABLES]
    return out
