"""Leadership of a hot-standby pair: who leads each cluster, under which epoch, reachable where.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

One row per cluster name. The lock that makes one sidecar the leader is a PostgreSQL advisory lock,
not this row; the row tells standbys and operators who took it last, and numbers the leaders.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leadership",
        sa.Column("cluster", sa.String(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("since_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", name=op.f("pk_leadership")),
    )


def downgrade() -> None:
    op.drop_table("leadership")
