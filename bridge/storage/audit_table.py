"""The ``audit_chain`` table: where the audit chain's records are stored, and the triggers that make
it append-only. The chain itself (hashing, journal, checkpoints) is ``bridge.audit.chain``; storage
owns the table so that the schema, migrations and the writer need nothing above this floor."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text

def audit_chain_table(metadata: MetaData) -> Table:
    """The ``audit_chain`` table (one row per record, payload as canonical JSON text)."""
    return Table(
        "audit_chain",
        metadata,
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("ts_us", BigInteger, nullable=False),
        Column("kind", String, nullable=False),
        Column("subject_id", String, nullable=False),
        Column("session_id", BigInteger, nullable=True),
        Column("payload", Text, nullable=False),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )


AUDIT_CHAIN_COLUMNS = ("seq", "ts_us", "kind", "subject_id", "session_id", "payload", "prev_hash", "hash")

# Statements that make audit_chain reject UPDATE and DELETE (and TRUNCATE on PostgreSQL). They stop
# the application and casual edits; the table owner or a superuser can still drop or disable a
# trigger, which is why the hash chain and the off-host signed checkpoints are the actual evidence.
# On PostgreSQL also run the application as a role that does not own the table and
# ``REVOKE UPDATE, DELETE, TRUNCATE ON audit_chain FROM <that role>``.
AUDIT_TABLE_DDL_TRIGGERS: dict[str, list[str]] = {
    "postgresql": [
        """CREATE OR REPLACE FUNCTION audit_chain_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain is append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$""",
        "DROP TRIGGER IF EXISTS audit_chain_no_update_delete ON audit_chain",
        """CREATE TRIGGER audit_chain_no_update_delete BEFORE UPDATE OR DELETE ON audit_chain
FOR EACH ROW EXECUTE FUNCTION audit_chain_reject_change()""",
        "DROP TRIGGER IF EXISTS audit_chain_no_truncate ON audit_chain",
        """CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_reject_change()""",
    ],
    "sqlite": [
        """CREATE TRIGGER IF NOT EXISTS audit_chain_no_update BEFORE UPDATE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only: UPDATE rejected'); END""",
        """CREATE TRIGGER IF NOT EXISTS audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN SELECT RAISE(ABORT, 'audit_chain is append-only: DELETE rejected'); END""",
    ],
}


def apply_audit_triggers(connection: Any) -> None:
    """Run the trigger statements for the connection's dialect (a SQLAlchemy Connection)."""
    from sqlalchemy import text

    for statement in AUDIT_TABLE_DDL_TRIGGERS[connection.dialect.name]:
        connection.execute(text(statement))
