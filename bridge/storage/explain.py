"""Which indexes the recording database reads for a lookup: the SELECTs code sends, captured as it runs,
and their plans (SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN). What the lookup-index test checks
and the lookups benchmark times, so that both look at the statements the real query functions issue,
not at copies of them written by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, event

from bridge.storage.schema import metadata

Statement = tuple[str, Any]  # as handed to the driver: its SQL and its parameters


@contextmanager
def selects_sent() -> Iterator[list[Statement]]:
    """The SELECTs any engine hands its driver meanwhile, with their parameters (Alembic's and the
    catalogue reads SQLAlchemy makes for itself left out)."""
    seen: list[Statement] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not any(
                name in statement for name in ("sqlite_master", "pg_catalog", "alembic_version")):
            seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@dataclass
class Plan:
    """What some statements read."""

    whole_reads: list[str] = field(default_factory=list)  # each scan of a whole table, with its statement
    indexes: set[str] = field(default_factory=set)  # the indexes read


def explain(conn: Connection, statements: list[Statement], ignore: frozenset[str] = frozenset()) -> Plan:
    """The plans of ``statements`` on ``conn``; a whole read of a table in ``ignore`` is not reported.

    On PostgreSQL the planner is told to avoid sequential scans, hash and merge joins for the connection:
    on small tables those are simply cheaper, so they would hide whether an index could serve; with them
    off it takes an index wherever one exists, as it does on a year of rows. A Seq Scan, or an index walked
    end to end (no Index Cond), is then a table no index serves."""
    plan = Plan()
    one = _sqlite if conn.dialect.name == "sqlite" else _postgres
    if conn.dialect.name != "sqlite":
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            conn.exec_driver_sql(f"SET {setting} = off")
    for statement, parameters in statements:
        one(conn, statement, parameters, plan, ignore)
    return plan


def _shown(statement: str) -> str:
    return " ".join(statement.split())[:300]


def _sqlite(conn: Connection, statement: str, parameters: Any, plan: Plan, ignore: frozenset[str]) -> None:
    for line in (row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)):
        plan.indexes.update(re.findall(r"USING (?:COVERING )?INDEX (\w+)", line))
        # "SCAN t" reads the whole table, "SCAN t USING [COVERING] INDEX i" the whole of an index: both grow
        # with it. A SCAN of a name that is no table is of a subquery's rows.
        if (m := re.match(r"SCAN (\w+)", line)) and m.group(1) in metadata.tables and m.group(1) not in ignore:
            plan.whole_reads.append(f"{line}: {_shown(statement)}")


def _postgres(conn: Connection, statement: str, parameters: Any, plan: Plan, ignore: frozenset[str]) -> None:
    raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar_one()
    tree = raw if isinstance(raw, list) else json.loads(raw)

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            plan.indexes.add(node["Index Name"])
        table, kind = node.get("Relation Name"), node["Node Type"]
        if table and table not in ignore and (
                kind == "Seq Scan" or (kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node)):
            plan.whole_reads.append(f"{kind} on {table}: {_shown(statement)}")
        for child in node.get("Plans", []):
            walk(child)

    walk(tree[0]["Plan"])
