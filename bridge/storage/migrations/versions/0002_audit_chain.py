"""The tamper-evident audit chain: an append-only table whose rows UPDATE and DELETE cannot touch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Each row is one record of bridge/audit/chain.py's hash chain (seq, time, kind, subject, session, canonical
JSON payload, previous hash, hash). Triggers reject UPDATE and DELETE (and TRUNCATE on PostgreSQL);
the chain and its signed checkpoints outside the database are what prove integrity, the triggers
stop accidents and the application itself. audit_log stays for sessions recorded before this.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# written out here (not imported) so that this revision keeps meaning the same thing
_TRIGGERS = {
    "postgresql": [
        """CREATE OR REPLACE FUNCTION audit_chain_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain is append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$""",
        """CREATE TRIGGER audit_chain_no_update_delete BEFORE UPDATE OR DELETE ON audit_chain
FOR EACH ROW EXECUTE FUNCTION audit_chain_reject_change()""",
        """CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_reject_change()""",
    ],
    "sqlite": [
        """CREATE TRIGGER audit_chain_no_update BEFORE UPDATE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only: UPDATE rejected'); END""",
        """CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only: DELETE rejected'); END""",
    ],
}


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("subject_id", sa.String(), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_chain")),
    )
    op.create_index("ix_audit_chain_session_id", "audit_chain", ["session_id"])
    for statement in _TRIGGERS.get(op.get_bind().dialect.name, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_chain_no_update_delete ON audit_chain")
        op.execute("DROP TRIGGER IF EXISTS audit_chain_no_truncate ON audit_chain")
        op.execute("DROP FUNCTION IF EXISTS audit_chain_reject_change()")
    op.drop_index("ix_audit_chain_session_id", table_name="audit_chain")
    op.drop_table("audit_chain")
