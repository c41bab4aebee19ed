"""Initial recording schema: instruments, sessions, market data, decisions, orders, account, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Written out table by table rather than from bridge.storage.schema, so that this revision keeps
meaning the same thing after the schema module moves on; later revisions stack on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    # INTEGER on SQLite so the key aliases the rowid and autoincrements; BIGSERIAL on PostgreSQL.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "instruments",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("root", sa.String(), nullable=False),
        sa.Column("tick_size", sa.Double(), nullable=False),
        sa.Column("point_value", sa.Double(), nullable=False),
        sa.Column("currency", sa.String(), nullable=True),
        sa.Column("exchange", sa.String(), nullable=True),
        sa.Column("first_seen_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_instruments")),
    )
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("instance_id", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=True),
        sa.Column("peer", sa.String(), nullable=True),
        sa.Column("protocol_version", sa.Integer(), nullable=False),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("ended_ns", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.String(), nullable=True),
        sa.Column("clock_offset_ns", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_sessions")),
    )
    op.create_table(
        "ticks",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bid", sa.Double(), nullable=True),
        sa.Column("ask", sa.Double(), nullable=True),
        sa.Column("ts_exchange_ns", sa.BigInteger(), nullable=False),
        sa.Column("ts_receive_ns", sa.BigInteger(), nullable=False),
        sa.Column("ts_sidecar_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ticks")),
    )
    op.create_index(
        "ix_ticks_session_id_instrument_ts_exchange_ns",
        "ticks",
        ["session_id", "instrument", "ts_exchange_ns"],
    )
    op.create_table(
        "bars",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("period_s", sa.Integer(), nullable=False),
        sa.Column("ts_open_ns", sa.BigInteger(), nullable=False),
        sa.Column("ts_close_ns", sa.BigInteger(), nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("tick_count", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bars")),
    )
    op.create_table(
        "quality_events",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("instrument", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("ts_event_ns", sa.BigInteger(), nullable=False),
        sa.Column("ts_sidecar_ns", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quality_events")),
    )
    op.create_index("ix_quality_events_session_id_reason", "quality_events", ["session_id", "reason"])
    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("strategy", sa.String(), nullable=False),
        sa.Column("ts_event_ns", sa.BigInteger(), nullable=False),
        sa.Column("ts_sidecar_ns", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("inputs", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("decision_id", name=op.f("pk_decisions")),
    )
    op.create_table(
        "orders",
        sa.Column("client_order_id", sa.String(), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("decision_id", sa.String(), nullable=True),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("side", sa.String(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("entry_type", sa.String(), nullable=False),
        sa.Column("entry_price", sa.Double(), nullable=True),
        sa.Column("stop_price", sa.Double(), nullable=True),
        sa.Column("target_price", sa.Double(), nullable=True),
        sa.Column("time_in_force", sa.String(), nullable=False),
        sa.Column("algorithm_id", sa.String(), nullable=True),
        sa.Column("ts_created_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("client_order_id", name=op.f("pk_orders")),
    )
    op.create_table(
        "order_updates",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("client_order_id", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("nt8_order_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("filled", sa.Integer(), nullable=False),
        sa.Column("limit_price", sa.Double(), nullable=True),
        sa.Column("stop_price", sa.Double(), nullable=True),
        sa.Column("avg_fill_price", sa.Double(), nullable=True),
        sa.Column("ts_event_ns", sa.BigInteger(), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_updates")),
    )
    op.create_table(
        "executions",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("execution_id", sa.String(), nullable=False),
        sa.Column("client_order_id", sa.String(), nullable=True),
        sa.Column("role", sa.String(), nullable=True),
        sa.Column("nt8_order_id", sa.String(), nullable=True),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("side", sa.String(), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("commission", sa.Double(), nullable=True),
        sa.Column("ts_event_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
        sa.UniqueConstraint("session_id", "execution_id", name=op.f("uq_executions_session_id_execution_id")),
    )
    op.create_table(
        "positions",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("instrument", sa.String(), nullable=False),
        sa.Column("market_position", sa.String(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("avg_price", sa.Double(), nullable=True),
        sa.Column("ts_event_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_positions")),
    )
    op.create_table(
        "account_values",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("cash_value", sa.Double(), nullable=True),
        sa.Column("realized_pnl", sa.Double(), nullable=True),
        sa.Column("unrealized_pnl", sa.Double(), nullable=True),
        sa.Column("buying_power", sa.Double(), nullable=True),
        sa.Column("ts_event_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_values")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("ts_sidecar_ns", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("subject_id", sa.String(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "storage_rejects",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("table_name", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("row_json", sa.Text(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_rejects")),
    )


def downgrade() -> None:
    op.drop_table("storage_rejects")
    op.drop_table("audit_log")
    op.drop_table("account_values")
    op.drop_table("positions")
    op.drop_table("executions")
    op.drop_table("order_updates")
    op.drop_table("orders")
    op.drop_table("decisions")
    op.drop_index("ix_quality_events_session_id_reason", table_name="quality_events")
    op.drop_table("quality_events")
    op.drop_table("bars")
    op.drop_index("ix_ticks_session_id_instrument_ts_exchange_ns", table_name="ticks")
    op.drop_table("ticks")
    op.drop_table("sessions")
    op.drop_table("instruments")
