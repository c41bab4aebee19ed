"""Read-side queries over stored sessions (what playback and reports show)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

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
    try:
        with engine.connect() as conn:
            return count_session(conn, session_id)
    finally:
        engine.dispose()


def count_session(conn: Connection, session_id: int) -> SessionCounts:
    """``session_counts`` on an open connection (each count reads the table's session index)."""
    t = metadata.tables

    def count(name: str) -> int:
        table = t[name]
        return conn.execute(select(func.count()).select_from(table).where(table.c.session_id == session_id)).scalar_one()

    q = t["quality_events"]
    by_reason = dict(conn.execute(select(q.c.reason, func.count()).where(q.c.session_id == session_id)
                                  .group_by(q.c.reason)).all())
    s = t["sessions"]
    end_reason = conn.execute(select(s.c.end_reason).where(s.c.session_id == session_id)).scalar_one_or_none()
    return SessionCounts(count("ticks"), dict(sorted(by_reason.items())), count("bars"), count("decisions"),
                         count("orders"), count("order_updates"), count("executions"),
                         count("audit_log") + count("audit_chain"), end_reason)


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


@dataclass(frozen=True)
class StoredBracket:
    """A bracket as storage knows it, and the last word on its entry."""

    client_order_id: str
    session_id: int
    decision_id: str | None
    instrument: str
    side: str  # BUY / SELL
    quantity: int
    entry_type: str  # MARKET / LIMIT / STOP
    entry_price: float | None
    stop_price: float | None
    target_price: float | None
    algorithm_id: str | None
    entry_state: str | None  # the entry's last ORDER_UPDATE state (FILLED, CANCELLED, WORKING...), None if none


@dataclass(frozen=True)
class InstanceHistory:
    """What a new session of a strategy instance resumes from after a reconnect, a restart or a failover:
    the brackets sent to it, and every fill of theirs and of its FLATTEN orders, once each, in the order
    they happened."""

    brackets: tuple[StoredBracket, ...]
    fills: tuple[dict, ...]  # executions rows


def instance_history(url: str, instance_id: str, account: str, since_ns: int) -> InstanceHistory:
    """The brackets and fills of ``instance_id`` (on ``account``) from its sessions started at ``since_ns`` or
    later; a fill is found under whichever session stored it."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return read_instance_history(conn, instance_id, account, since_ns)
    finally:
        engine.dispose()


def read_instance_history(conn: Connection, instance_id: str, account: str, since_ns: int) -> InstanceHistory:
    """``instance_history`` on an open connection."""
    t = metadata.tables
    s, o, e, u = t["sessions"], t["orders"], t["executions"], t["order_updates"]
    sessions = list(conn.execute(select(s.c.session_id).where(
        s.c.instance_id == instance_id, s.c.account == account, s.c.started_ns >= since_ns)).scalars())
    if not sessions:
        return InstanceHistory((), ())
    orders = conn.execute(select(o).where(o.c.session_id.in_(sessions))
                          .order_by(o.c.ts_created_ns, o.c.client_order_id)).mappings().all()
    ids = [r["client_order_id"] for r in orders]
    states: dict[str, str] = {}
    for cid, state in conn.execute(select(u.c.client_order_id, u.c.state)
                                   .where(u.c.client_order_id.in_(ids), u.c.role == "ENTRY")
                                   .order_by(u.c.id)):
        states[cid] = state  # the last one wins
    fills = conn.execute(select(e).where(e.c.client_order_id.in_(ids)
                                         | (e.c.session_id.in_(sessions) & (e.c.role == "FLATTEN")))
                         .order_by(e.c.ts_event_ns, e.c.id)).mappings().all()
    brackets = tuple(StoredBracket(r["client_order_id"], r["session_id"], r["decision_id"], r["instrument"],
                                   r["side"], r["quantity"], r["entry_type"], r["entry_price"], r["stop_price"],
                                   r["target_price"], r["algorithm_id"], states.get(r["client_order_id"]))
                     for r in orders)
    seen: set[str] = set()  # sessions store NT8's replays of a fill each under their own session: once each
    unique = []
    for row in fills:
        if row["execution_id"] not in seen:
            seen.add(row["execution_id"])
            unique.append(dict(row))
    return InstanceHistory(brackets, tuple(unique))
