"""Indexes for the sidecar's and the console's lookups: an order's updates and fills, a decision's orders and
audit record, the latest positions, recent decisions, a strategy instance's sessions, per-session counts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Without them each of those lookups read its whole table, so its time grew with the history kept: a year of
sessions made the console's pages and the recovery on HELLO take milliseconds instead of microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, columns), written out rather than read from bridge.storage.schema so that this revision
# keeps meaning the same thing after the schema module moves on.
INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ix_sessions_instance_id_started_ns", "sessions", ("instance_id", "started_ns")),
    ("ix_sessions_started_ns", "sessions", ("started_ns",)),
    ("ix_sessions_ended_ns", "sessions", ("ended_ns",)),
    ("ix_bars_session_id", "bars", ("session_id",)),
    ("ix_decisions_session_id_ts_sidecar_ns", "decisions", ("session_id", "ts_sidecar_ns")),
    ("ix_orders_session_id_ts_created_ns", "orders", ("session_id", "ts_created_ns")),
    ("ix_orders_decision_id", "orders", ("decision_id",)),
    ("ix_order_updates_client_order_id", "order_updates", ("client_order_id",)),
    ("ix_order_updates_session_id", "order_updates", ("session_id",)),
    ("ix_executions_client_order_id", "executions", ("client_order_id",)),
    ("ix_positions_session_id_instrument", "positions", ("session_id", "instrument")),
    ("ix_account_values_session_id_account", "account_values", ("session_id", "account")),
    ("ix_audit_log_session_id", "audit_log", ("session_id",)),
    ("ix_audit_log_kind_ts_sidecar_ns", "audit_log", ("kind", "ts_sidecar_ns")),
    ("ix_audit_chain_kind_subject_id", "audit_chain", ("kind", "subject_id")),
    ("ix_audit_chain_kind_ts_us", "audit_chain", ("kind", "ts_us")),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, list(columns))


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
