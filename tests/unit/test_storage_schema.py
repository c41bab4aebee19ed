"""The migrated schema is exactly bridge.storage.schema, on SQLite and PostgreSQL, and upgrades are idempotent."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bridge.storage import schema
from bridge.storage.database import create_engine_for, current_revision, upgrade


def _diff(url: str, metadata: sa.MetaData) -> list[object]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_matches_metadata(storage_url: str) -> None:
    assert current_revision(storage_url) is None
    first = upgrade(storage_url)
    assert first == "0006"
    assert upgrade(storage_url) == first  # second run: nothing to do, same revision
    assert current_revision(storage_url) == first
    assert _diff(storage_url, schema.metadata) == []


def test_comparison_would_notice_a_difference(storage_url: str) -> None:
    # Guards the test above against comparing nothing: a changed model must show up.
    upgrade(storage_url)
    changed = sa.MetaData()
    for table in schema.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["ticks"].append_column(sa.Column("venue", sa.String, nullable=True))
    diff = _diff(storage_url, changed)
    assert any(d[0] == "add_column" and d[3].name == "venue" for d in diff if isinstance(d, tuple))


def test_surrogate_ids_are_64_bit_where_it_matters(storage_url: str) -> None:
    upgrade(storage_url)
    engine = create_engine_for(storage_url)
    try:
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("ticks")}
    finally:
        engine.dispose()
    id_type = columns["id"]["type"]
    if engine.dialect.name == "sqlite":
        # INTEGER PRIMARY KEY aliases SQLite's rowid, which is already 64-bit.
        assert isinstance(id_type, sa.Integer) and not isinstance(id_type, sa.BigInteger)
    else:
        assert isinstance(id_type, sa.BigInteger)
    assert isinstance(columns["ts_exchange_ns"]["type"], sa.BigInteger)


def test_columns_are_the_row_order_without_autoincrement_ids() -> None:
    assert schema.COLUMNS["ticks"] == (
        "session_id", "seq", "instrument", "kind", "price", "size", "bid", "ask",
        "ts_exchange_ns", "ts_receive_ns", "ts_sidecar_ns",
    )
    assert schema.COLUMNS["sessions"][0] == "session_id"  # a caller-chosen key stays in the row
    assert schema.COLUMNS["instruments"][0] == "name"
    for name, columns in schema.COLUMNS.items():
        assert "id" not in columns, name
        assert columns == tuple(c.name for c in schema.metadata.tables[name].columns if c.name != "id")
    assert set(schema.COLUMNS) == set(schema.metadata.tables)


def test_times_are_bigint_nanoseconds_and_prices_doubles() -> None:
    for table in schema.metadata.tables.values():
        for column in table.columns:
            if column.name.endswith("_ns"):
                assert isinstance(column.type, sa.BigInteger), f"{table.name}.{column.name}"
    for name in ("price", "bid", "ask"):
        assert isinstance(schema.ticks.c[name].type, sa.Double)
