"""Read-side queries over stored sessions (what playback and reports show)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from bridge.storage.database import create_engine_for
from bridge.storage.schema import metadata


@dataclass(frozen=True)
class SessionCounts:
    ticks: int
    quality_events_by_reason: dict[str, int]
    bars: int
    decisions: int
    orders: int
    order_updates: int
    executions: int
    audit_records: int
    end_reason: str | None


def session_counts(url: str, session_id: int) -> SessionCounts:
    """Row counts of one session, read back from storage."""
    engine = create_engine_for(url)
    t = metadata.tables

    def count(name: str) -> int:
        table = t[name]
        return conn.execute(select(func.count()).select_from(table).where(table.c.session_id == session_id)).scalar_one()

    try:
        with engine.connect() as conn:
            q = t["quality_events"]
            by_reason = dict(conn.execute(select(q.c.reason, func.count()).where(q.c.session_id == session_id)
                                          .group_by(q.c.reason)).all())
            s = t["sessions"]
            end_reason = conn.execute(select(s.c.end_reason).where(s.c.session_id == session_id)).scalar_one_or_none()
            return SessionCounts(count("ticks"), dict(sorted(by_reason.items())), count("bars"), count("decisions"),
                                 count("orders"), count("order_updates"), count("executions"),
                                 count("audit_log") + count("audit_chain"),
                                 end_reason)
    finally:
        engine.dispose()


def sessions_of_instance(url: str, instance_id: str) -> list[int]:
    """The session ids a NinjaScript instance opened, oldest first (one per (re)connection)."""
    engine = create_engine_for(url)
    s = metadata.tables["sessions"]
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(s.c.session_id).where(s.c.instance_id == instance_id)
                                     .order_by(s.c.started_ns)).scalars())
    finally:
        engine.dispose()


def execution_ids(url: str, session_ids: list[int]) -> list[str]:
    """NT8 execution ids stored for these sessions (one row per EXECUTION message)."""
    if not session_ids:
        return []
    engine = create_engine_for(url)
    e = metadata.tables["executions"]
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(e.c.execution_id).where(e.c.session_id.in_(session_ids))).scalars())
    finally:
        engine.dispose()
