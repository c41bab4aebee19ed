"""Every lookup the sidecar, the console and the CLI run on the recording database reads an index, not a
whole table: the statements each real query function issues are captured as they run, then EXPLAINed
(SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN with sequential scans disabled, so a Seq Scan means
no usable index). At the schema before the lookup indexes the same check finds the whole-table reads,
so it can fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, insert

from bridge.console.history import History
from bridge.storage.database import create_engine_for, downgrade, upgrade
from bridge.storage.explain import Plan, explain, selects_sent
from bridge.storage.queries import (
    count_session,
    execution_ids,
    instance_history,
    read_instance_history,
    session_counts,
    sessions_of_instance,
)
from bridge.storage.schema import metadata

NS = 1_000_000_000
DAY = 86_400 * NS
T0 = 1_750_000_000 * NS
DAYS = 60
DECISIONS_PER_SESSION = 30
INSTANCES = (("es-trend", "Sim101"), ("es-revert", "Sim102"))
NOW = T0 + (DAYS - 1) * DAY + DAY // 2  # the console's clock: in the last day
# Read whole by design: the instrument list (a few rows, for point values).
WHOLE_BY_DESIGN = frozenset({"instruments"})
# Per lookup, the indexes it must read (the lookup indexes; the window's on sessions aside, see below).
EXPECTED = {
    "decision with its orders, fills and audit record": {"ix_orders_decision_id", "ix_executions_client_order_id",
                                                         "ix_audit_chain_kind_subject_id"},
    "newest orders with their last updates": {"ix_orders_session_id_ts_created_ns", "ix_order_updates_client_order_id"},
    "blotter: fills with their orders and decisions": set(),
    "current positions": {"ix_positions_session_id_instrument"},
    "P&L and the latest account values": {"ix_account_values_session_id_account"},
    "equity": {"ix_account_values_session_id_account"},
    "latest denied decisions and risk acts": {"ix_decisions_session_id_ts_sidecar_ns", "ix_audit_chain_kind_ts_us",
                                              "ix_audit_log_kind_ts_sidecar_ns"},
    "sessions of the window with counts": {"ix_decisions_session_id_ts_sidecar_ns",
                                           "ix_orders_session_id_ts_created_ns"},
    "recovery on HELLO": {"ix_orders_session_id_ts_created_ns", "ix_order_updates_client_order_id",
                          "ix_executions_client_order_id"},
    "one session's row counts": {"ix_bars_session_id", "ix_decisions_session_id_ts_sidecar_ns",
                                 "ix_orders_session_id_ts_created_ns", "ix_order_updates_session_id",
                                 "ix_audit_log_session_id"},
    "sessions of an instance": {"ix_sessions_instance_id_started_ns"},
    "execution ids of sessions": set(),
}
EXPECTED["recovery on HELLO, on a connection"] = EXPECTED["recovery on HELLO"]
EXPECTED["one session's row counts, on a connection"] = EXPECTED["one session's row counts"]
# One row per session (hundreds a year): PostgreSQL's planner may walk it whole for the window when that costs
# less than its indexes (it does at this size); SQLite's plans are held to the indexes for it too.
PG_MAY_READ_WHOLE = frozenset({"sessions"})
BEFORE_THE_INDEXES = "0005"
ALREADY_INDEXED = {"execution ids of sessions"}  # by the (session_id, execution_id) unique constraint
# Lookups whose only whole-table read before was of sessions, which PostgreSQL is allowed (above).
SESSIONS_ONLY = {"blotter: fills with their orders and decisions", "sessions of an instance"}


def _session_rows(rows: dict[str, list[dict[str, Any]]], day: int, k: int, instance: str, account: str,
                  audit_seq: int) -> int:
    """One session's rows: decisions (one in three sent an order, one in ten denied), orders with their
    updates and fills, positions, account values, a bar, a quality event, audit records. Returns the last seq."""
    sid, start = session_id(day, k), T0 + day * DAY
    rows["sessions"].append({"session_id": sid, "instance_id": instance, "account": account, "peer": None,
                             "protocol_version": 1, "started_ns": start,
                             "ended_ns": None if day == DAYS - 1 else start + DAY // 4, "end_reason": None,
                             "clock_offset_ns": None})
    rows["bars"].append({"session_id": sid, "instrument": "ES 03-25", "period_s": 60, "ts_open_ns": start,
                         "ts_close_ns": start + 60 * NS, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
                         "volume": 1, "tick_count": 1, "source": "ticks"})
    rows["quality_events"].append({"session_id": sid, "seq": None, "instrument": "ES 03-25", "reason": "SEQ_GAP",
                                   "detail": None, "ts_event_ns": start, "ts_sidecar_ns": start, "payload": None})
    for i in range(DECISIONS_PER_SESSION):
        did, ts = f"S{sid}-D{i}", start + i * NS
        outcome = "EMITTED" if i % 3 == 0 else "DENIED:RISK_MAX_POSITION (5 >= 5)" if i % 10 == 1 else "NO_SIGNAL"
        rows["decisions"].append({"decision_id": did, "session_id": sid, "instrument": "ES 03-25",
                                  "strategy": "trend", "ts_event_ns": ts, "ts_sidecar_ns": ts, "outcome": outcome,
                                  "rationale": None, "inputs": "{}"})
        rows["audit_log"].append({"session_id": sid, "ts_sidecar_ns": ts, "kind": "decision", "subject_id": did,
                                  "payload": "{}"})  # as sessions recorded before the audit chain have them
        audit_seq += 1
        rows["audit_chain"].append({"seq": audit_seq, "ts_us": ts // 1000, "kind": "decision", "subject_id": did,
                                    "session_id": sid, "payload": "{}", "prev_hash": "0" * 64,
                                    "hash": f"{audit_seq:064x}"})
        if outcome != "EMITTED":
            continue
        cid = f"S{sid}-O{i}"
        rows["orders"].append({"client_order_id": cid, "session_id": sid, "decision_id": did,
                               "instrument": "ES 03-25", "side": "BUY", "quantity": 1, "entry_type": "LIMIT",
                               "entry_price": 1.0, "stop_price": 0.5, "target_price": 2.0, "time_in_force": "DAY",
                               "algorithm_id": "trend", "ts_created_ns": ts})
        for j, state in enumerate(("ACCEPTED", "WORKING", "FILLED")):
            rows["order_updates"].append({"session_id": sid, "seq": i * 10 + j, "client_order_id": cid,
                                          "role": "ENTRY", "nt8_order_id": None, "state": state, "quantity": 1,
                                          "filled": int(state == "FILLED"), "limit_price": 1.0, "stop_price": None,
                                          "avg_fill_price": None, "ts_event_ns": ts + j, "error_code": None,
                                          "comment": None})
        for role, coid in (("ENTRY", cid), ("FLATTEN", None)):
            rows["executions"].append({"session_id": sid, "seq": i * 10 + 5, "execution_id": f"X{sid}-{i}-{role}",
                                       "client_order_id": coid, "role": role, "nt8_order_id": None,
                                       "instrument": "ES 03-25", "side": "BUY" if coid else "SELL", "price": 1.0,
                                       "quantity": 1, "commission": 2.0, "ts_event_ns": ts + 5})
            rows["positions"].append({"session_id": sid, "seq": i * 10 + 6, "instrument": "ES 03-25",
                                      "market_position": "LONG" if coid else "FLAT", "quantity": int(bool(coid)),
                                      "avg_price": 1.0 if coid else None, "ts_event_ns": ts + 6})
            rows["account_values"].append({"session_id": sid, "seq": i * 10 + 7, "account": account,
                                           "cash_value": 1.0, "realized_pnl": 0.0, "unrealized_pnl": 0.0,
                                           "buying_power": 1.0, "ts_event_ns": ts + 7})
    return audit_seq


def session_id(day: int, k: int) -> int:
    return 100 + day * len(INSTANCES) + k


def seed(url: str) -> None:
    """Two strategy instances over ``DAYS`` days, the last day's sessions still open: every table the lookups
    read, with rows enough that PostgreSQL's planner (ANALYZEd) weighs them as it would a real history."""
    t = metadata.tables
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in t}
    rows["instruments"].append({"name": "ES 03-25", "root": "ES", "tick_size": 0.25, "point_value": 50.0,
                                "currency": "USD", "exchange": "CME", "first_seen_ns": T0})
    seq = 0
    for day in range(DAYS):
        for k, (instance, account) in enumerate(INSTANCES):
            seq = _session_rows(rows, day, k, instance, account, seq)
    rows["audit_chain"].append({"seq": seq + 1, "ts_us": (NOW - DAY // 4) // 1000, "kind": "limit_change",
                                "subject_id": "account.max_position", "session_id": None, "payload": "{}",
                                "prev_hash": "0" * 64, "hash": f"{seq + 1:064x}"})
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            for name, table_rows in rows.items():
                if table_rows:
                    conn.execute(insert(t[name]), table_rows)
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def lookups(url: str) -> dict[str, Callable[[], object]]:
    """Each lookup by the function that runs it; the console's window is the last day."""
    history = History(url, history_days=1.0, clock=lambda: NOW)
    last, earlier = DAYS - 1, DAYS // 2

    def on_connection(fn: Callable[[Connection], object]) -> Callable[[], object]:
        def run() -> object:
            engine = create_engine_for(url)
            try:
                with engine.connect() as conn:
                    return fn(conn)
            finally:
                engine.dispose()
        return run

    return {
        "decision with its orders, fills and audit record": lambda: history.decision(f"S{session_id(earlier, 0)}-D0"),
        "newest orders with their last updates": lambda: history.orders(limit=50),
        "blotter: fills with their orders and decisions": lambda: history.blotter(limit=50),
        "current positions": lambda: history.positions(),
        "P&L and the latest account values": lambda: history.pnl(),
        "equity": lambda: history.equity(),
        "latest denied decisions and risk acts": lambda: history.risk(),
        "sessions of the window with counts": lambda: history.sessions(),
        "recovery on HELLO": lambda: instance_history(url, "es-trend", "Sim101", NOW - DAY),
        "recovery on HELLO, on a connection": on_connection(
            lambda conn: read_instance_history(conn, "es-revert", "Sim102", NOW - DAY)),
        "one session's row counts": lambda: session_counts(url, session_id(earlier, 1)),
        "one session's row counts, on a connection": on_connection(
            lambda conn: count_session(conn, session_id(last, 0))),
        "sessions of an instance": lambda: sessions_of_instance(url, "es-trend"),
        "execution ids of sessions": lambda: execution_ids(url, [session_id(earlier, 0), session_id(last, 1)]),
    }


def plans(url: str) -> dict[str, Plan]:
    """Per lookup, what its statements read."""
    out = {}
    ignore = WHOLE_BY_DESIGN | (PG_MAY_READ_WHOLE if url.startswith("postgresql") else frozenset())
    for name, run in lookups(url).items():
        with selects_sent() as statements:
            run()
        assert statements, f"{name}: no statement captured"
        engine = create_engine_for(url)
        try:
            with engine.connect() as conn:
                out[name] = explain(conn, statements, ignore)
        finally:
            engine.dispose()
    return out


@pytest.fixture
def seeded(storage_url: str) -> str:
    upgrade(storage_url)
    seed(storage_url)
    return storage_url


def test_every_lookup_reads_an_index(seeded: str) -> None:
    found = plans(seeded)
    reads = {name: plan.whole_reads for name, plan in found.items() if plan.whole_reads}
    assert reads == {}, "lookups that read a whole table:\n" + "\n".join(
        f"{name}:\n  " + "\n  ".join(lines) for name, lines in reads.items())
    assert set(found) == set(EXPECTED)
    missing = {name: sorted(EXPECTED[name] - plan.indexes) for name, plan in found.items()
               if EXPECTED[name] - plan.indexes}
    assert missing == {}, f"lookups that did not read their index (another, less selective one instead): {missing}"


def test_before_the_lookup_indexes_the_same_lookups_read_whole_tables(seeded: str) -> None:
    downgrade(seeded, BEFORE_THE_INDEXES)
    indexed_anyway = {name for name, plan in plans(seeded).items() if not plan.whole_reads}
    # else this test could not notice a lookup that lost its index
    assert indexed_anyway == ALREADY_INDEXED | (SESSIONS_ONLY if seeded.startswith("postgresql") else set())
