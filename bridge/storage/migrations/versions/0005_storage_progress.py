"""Writer progress: how far each run of the storage writer has committed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

One row per writer run, moved forward in the same transaction as the rows it commits: replaying the
writer's spool after a crash skips the items already committed, so no row is stored twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "storage_progress",
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_storage_progress")),
    )


def downgrade() -> None:
    op.drop_table("storage_progress")
