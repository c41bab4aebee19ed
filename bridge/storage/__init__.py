"""Storage: the schema (SQLAlchemy Core tables, Alembic migrations), engines for SQLite and
PostgreSQL, the batching writer thread the hot path hands rows to, the audit chain's table, and
read-back queries. See docs/storage.md.

May import: ``bridge.core`` and ``bridge.protocol``. Domain packages above (``ml``, ``reports``,
``bridge.audit``) store through it.
"""
