"""ML model registry: models, their lifecycle events, and drift alerts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

One row per registered model (metadata columns plus the whole model.json), one row per register,
promote, retire, rollback or expire event with the operator and the reason, and one row per drift
alert raised by ml/drift.py. The model directories on disk stay the source of truth for artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    # INTEGER on SQLite so the key aliases the rowid and autoincrements; BIGSERIAL on PostgreSQL.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("feature_set_version", sa.String(), nullable=False),
        sa.Column("feature_names", sa.Text(), nullable=False),
        sa.Column("label_config", sa.Text(), nullable=False),
        sa.Column("train_start_ns", sa.BigInteger(), nullable=False),
        sa.Column("train_end_ns", sa.BigInteger(), nullable=False),
        sa.Column("data_sha256", sa.String(), nullable=False),
        sa.Column("code_version", sa.String(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("expires_ns", sa.BigInteger(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_models")),
    )
    op.create_table(
        "model_events",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("operator", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("previous_champion", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_events")),
    )
    op.create_index("ix_model_events_model_id", "model_events", ["model_id"])
    op.create_table(
        "drift_alerts",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(), nullable=False),
        sa.Column("feature", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("window_start_ns", sa.BigInteger(), nullable=False),
        sa.Column("window_end_ns", sa.BigInteger(), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_alerts")),
    )
    op.create_index("ix_drift_alerts_model_id_ts_ns", "drift_alerts", ["model_id", "ts_ns"])


def downgrade() -> None:
    op.drop_index("ix_drift_alerts_model_id_ts_ns", table_name="drift_alerts")
    op.drop_table("drift_alerts")
    op.drop_index("ix_model_events_model_id", table_name="model_events")
    op.drop_table("model_events")
    op.drop_table("models")
