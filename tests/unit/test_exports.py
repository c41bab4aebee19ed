"""Compliance exports (reports/exports.py) over small SQLite recordings with known contents.

The databases are built with the real schema (``upgrade``) and filled with Core inserts shaped like
``bridge.audit.recorder``'s rows: outcome strings, enum names, canonical JSON payloads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bridge.storage.database import StorageError, create_engine_for, upgrade
from bridge.storage.schema import (
    audit_log,
    decisions,
    executions,
    instruments,
    order_updates,
    orders,
    positions,
    sessions,
)
from reports import exports
from reports.exports import (
    Period,
    compliance_summary_html,
    contract_expiry,
    daily_blotter,
    export_day,
    limit_breach_log,
    position_alerts,
    read_rts22_xml,
    reconciliation_breaks,
    rts22_transactions,
    write_rts22_csv,
    write_rts22_xml,
)

UTC = dt.timezone.utc
S = 1_000_000_000


def ns(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=UTC).timestamp()) * S


DAY = "2023-11-14"
T0 = ns(2023, 11, 14, 14, 30)  # 14:30:00Z
DAY_END = ns(2023, 11, 15)
OPERATOR = "DESK-7"
MALICIOUS = '<script>alert("x")</script>'


def _json(obj: Any) -> str:
    # the recorder's canonical form
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _fill(url: str, rows: dict[Any, list[dict[str, Any]]]) -> None:
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            for table, values in rows.items():
                if values:
                    conn.execute(table.insert(), values)
    finally:
        engine.dispose()


def _session(sid: int, account: str | None, instance: str, started: int) -> dict[str, Any]:
    return {"session_id": sid, "instance_id": instance, "account": account, "peer": "tcp://127.0.0.1:5555",
            "protocol_version": 1, "started_ns": started, "ended_ns": None, "end_reason": None,
            "clock_offset_ns": 0}


def _instrument(name: str, root: str, tick: float, pv: float, exchange: str = "CME") -> dict[str, Any]:
    return {"name": name, "root": root, "tick_size": tick, "point_value": pv, "currency": "USD",
            "exchange": exchange, "first_seen_ns": T0 - 3600 * S}


def _decision(did: str, instrument: str, algo: str, ts: int, outcome: str, checks: list[dict[str, Any]] | None,
              rationale: str = "signal") -> dict[str, Any]:
    inputs = {"features": {"ret_5": 0.001}, "signal": {"side": "BUY"}, "sizing": {"contracts": 2},
              "position": 0, "working": 0, "equity": 100000.0}
    if checks is not None:
        inputs["risk"] = checks
    return {"decision_id": did, "session_id": 1, "instrument": instrument, "strategy": algo, "ts_event_ns": ts - S,
            "ts_sidecar_ns": ts, "outcome": outcome, "rationale": rationale, "inputs": _json(inputs)}


def _check(name: str, passed: bool, value: float, limit: float) -> dict[str, Any]:
    return {"check": name, "passed": passed, "value": value, "limit": limit}


# bridge.risk.engine's form: "name" for "check", with a scope and a note
D3_CHECKS = [{"name": "market_open", "passed": True, "value": 1.0, "limit": 1.0, "scope": "*", "note": ""},
             {"name": "data_age_s", "passed": False, "value": 12.5, "limit": 5.0, "scope": "instrument:NQ",
              "note": "stale"}]
PASSING = [_check("market_open", True, 1.0, 1.0), _check("data_age_s", True, 0.4, 5.0),
           _check("order_quantity", True, 2.0, 3.0)]


def _order(coid: str, did: str | None, instrument: str, side: str, qty: int, entry_type: str, entry: float | None,
           algo: str | None, created: int) -> dict[str, Any]:
    return {"client_order_id": coid, "session_id": 1, "decision_id": did, "instrument": instrument, "side": side,
            "quantity": qty, "entry_type": entry_type, "entry_price": entry, "stop_price": 4490.0,
            "target_price": 4520.0, "time_in_force": "DAY", "algorithm_id": algo, "ts_created_ns": created}


def _update(seq: int, coid: str, role: str, nt8: str | None, state: str, ts: int) -> dict[str, Any]:
    return {"session_id": 1, "seq": seq, "client_order_id": coid, "role": role, "nt8_order_id": nt8,
            "state": state, "quantity": 2, "filled": 0, "limit_price": None, "stop_price": None,
            "avg_fill_price": None, "ts_event_ns": ts, "error_code": None, "comment": None}


def _exec(sid: int, seq: int, eid: str, coid: str | None, role: str | None, nt8: str | None, instrument: str,
          side: str, price: float, qty: int, commission: float | None, ts: int) -> dict[str, Any]:
    return {"session_id": sid, "seq": seq, "execution_id": eid, "client_order_id": coid, "role": role,
            "nt8_order_id": nt8, "instrument": instrument, "side": side, "price": price, "quantity": qty,
            "commission": commission, "ts_event_ns": ts}


def _audit(kind: str, ts: int, payload: Any, subject: str | None = None, sid: int | None = 1) -> dict[str, Any]:
    text = payload if isinstance(payload, str) or payload is None else _json(payload)
    return {"session_id": sid, "ts_sidecar_ns": ts, "kind": kind, "subject_id": subject, "payload": text}


def _position(sid: int, seq: int, instrument: str, mp: str, qty: int, ts: int) -> dict[str, Any]:
    return {"session_id": sid, "seq": seq, "instrument": instrument, "market_position": mp, "quantity": qty,
            "avg_price": None if mp == "FLAT" else 100.0, "ts_event_ns": ts}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One trading day (2023-11-14) of a desk: brackets, a flatten, a manual fill, denials, audit events."""
    url = f"sqlite:///{tmp_path_factory.mktemp('exports') / 'rec.sqlite'}"
    upgrade(url)
    _fill(url, desk_rows())
    return url


def desk_rows() -> dict[Any, list[dict[str, Any]]]:
    return {
        sessions: [_session(1, "Sim101", "inst-A", T0 - 3600 * S), _session(2, "Sim101", "inst-A", T0 + 95 * S)],
        instruments: [_instrument("ES 12-23", "ES", 0.25, 50.0), _instrument("NQ 12-23", "NQ", 0.25, 20.0)],
        decisions: [
            _decision("d1", "ES 12-23", "momentum-v1.2", T0, "EMITTED", PASSING),
            _decision("d2", "ES 12-23", "momentum-v1.2", T0 + 10 * S, "DENIED:RISK_MAX_POSITION_EXCEEDED",
                      [*PASSING, _check("position_with_working", False, 6.0, 5.0)]),
            _decision("d3", "NQ 12-23", "meanrev-v3", T0 + 20 * S, f"DENIED:{MALICIOUS}", D3_CHECKS),
            _decision("d4", "ES 12-23", "momentum-v1.2", T0 + 25 * S, "DENIED:RISK_MAX_POSITION_EXCEEDED",
                      [*PASSING, _check("position_with_working", False, 7.0, 5.0)]),
            _decision("d5", "ES 12-23", "spread-v2", T0 + 35 * S,
                      "DENIED:another leg of g1 was denied (RISK_STALE_DATA)", PASSING),
            _decision("d6", "NQ 12-23", "meanrev-v3", T0 + 119 * S, "EMITTED", PASSING),
            _decision("d7", "ES 12-23", "momentum-v1.2", T0 + 89 * S, "EXIT", None, "time limit reached"),
            _decision("d8", "ES 12-23", "momentum-v1.2", T0 + 70 * S, "NO_TRADE", None),
            _decision("d9", "ES 12-23", "momentum-v1.2", DAY_END, "DENIED:RISK_STALE_DATA", PASSING),  # next day
            _decision("d0", "ES 12-23", "momentum-v1.2", T0 - 15 * 3600 * S, "DENIED:RISK_MARKET_CLOSED", []),
        ],
        orders: [
            _order("c1", "d1", "ES 12-23", "BUY", 2, "LIMIT", 4500.25, "momentum-v1.2", T0 + 1_000_000),
            _order("c2", "d6", "NQ 12-23", "SELL", 1, "MARKET", None, "meanrev-v3", T0 + 120 * S),
            _order("c3", None, "ES 12-23", "BUY", 1, "MARKET", None, None, T0 + 105 * S),  # no algorithm
        ],
        order_updates: [
            _update(10, "c1", "ENTRY", "NT-100", "ACCEPTED", T0 + S),
            _update(11, "c1", "STOP", "NT-101", "ACCEPTED", T0 + S),
            _update(12, "c1", "TARGET", "NT-102", "ACCEPTED", T0 + S),
            _update(13, "c2", "ENTRY", None, "SUBMITTED", T0 + 120 * S),
            _update(14, "c2", "ENTRY", "NT-200", "ACCEPTED", T0 + 121 * S),
            _update(15, "c3", "ENTRY", "NT-300", "ACCEPTED", T0 + 106 * S),
        ],
        executions: [
            _exec(1, 20, "e1", "c1", "ENTRY", "NT-100", "ES 12-23", "BUY", 4500.25, 2, 4.3, T0 + 1_234_567_891),
            _exec(1, 21, "e2", "c1", "TARGET", None, "ES 12-23", "SELL", 4520.0, 1, 2.15, T0 + 60 * S),
            _exec(1, 22, "e3", "c1", "FLATTEN", "NT-103", "ES 12-23", "SELL", 4510.5, 1, 2.15, T0 + 90 * S),
            # NT8's replay of e1 into the next session of the same account
            _exec(2, 3, "e1", "c1", "ENTRY", "NT-100", "ES 12-23", "BUY", 4500.25, 2, 4.3, T0 + 1_234_567_891),
            _exec(2, 4, "e4", None, "OTHER", "NT-MAN-1", "ES 12-23", "BUY", 4505.0, 3, None, T0 + 100 * S),
            _exec(2, 5, "e8", "c3", "ENTRY", "NT-300", "ES 12-23", "BUY", 4506.0, 1, 2.15, T0 + 110 * S),
            _exec(2, 6, "e5", None, "ENTRY", "NT-200", "NQ 12-23", "SELL", 15800.75, 1, 2.15, T0 + 150 * S),
            _exec(2, 7, "e6", "c2", "STOP", "NT-201", "NQ 12-23", "BUY", 15810.0, 1, 2.15, DAY_END),  # next day
            _exec(1, 19, "e0", None, "OTHER", "NT-MAN-0", "ES 12-23", "BUY", 4490.0, 1, None, ns(2023, 11, 14) - 1),
        ],
        positions: [
            _position(1, 30, "ES 12-23", "LONG", 2, T0 + 1_234_567_891),
            _position(1, 31, "ES 12-23", "LONG", 1, T0 + 60 * S),
            _position(1, 32, "ES 12-23", "FLAT", 0, T0 + 90 * S),
            _position(2, 8, "ES 12-23", "LONG", 4, T0 + 110 * S),
            _position(2, 9, "NQ 12-23", "SHORT", 1, T0 + 150 * S),
        ],
        audit_log: [
            _audit("decision", T0, {"outcome": "EMITTED"}, "d1"),
            _audit("order_sent", T0 + 1_000_000, {"decision_id": "d1"}, "c1"),
            # bridge.risk.engine's Override: the limit it replaces is "previous", its own is "value"
            _audit("override", T0 + 5 * S, {"who": "alice", "why": "spread test", "approved_by": "bob",
                                             "ts_ns": T0 + 5 * S, "expires_ns": T0 + 3600 * S, "scope": "ES",
                                             "field": "max_position", "previous": 5, "value": 10}, "ov-1"),
            _audit("limit_change", T0 + 15 * S, {"operator": "carol", "reason": "vol regime",
                                                 "field": "max_order_quantity", "old": 3, "new": 2.5}),
            _audit("kill", T0 + 30 * S, {"who": "alice", "why": "<b>runaway</b>", "scope": "desk"}, sid=None),
            _audit("enable", T0 + 40 * S, None),
            _audit("override", T0 + 45 * S, "not json {"),
            _audit("state_change", T0 + 50 * S, {"who": "risk-engine", "old": "ACTIVE", "new": "REDUCING",
                                                 "scope": {"instrument": "ES 12-23"}}),
            _audit("reconciliation_break", T0 + 130 * S,
                   {"kind": "POSITION_MISMATCH", "instrument": "NQ 12-23", "details": {"nt8": 0, "sidecar": -1}}),
            _audit("reconciliation_break", T0 + 120 * S,
                   {"kind": "MISSING", "instrument": "ES 12-23", "details": "execution e9 at NT8, not recorded"}),
            _audit("reconciliation_break", DAY_END + S, {"kind": "EXTRA", "instrument": "ES 12-23"}),
            _audit("kill", DAY_END - S - 1, {"who": "late"}),  # 23:59:58.999999999: still this day
        ],
    }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with every missing value (None, NaN, NA) as None."""
    out = []
    for rec in df.astype(object).to_dict("records"):
        out.append({k: (None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v)
                    for k, v in rec.items()})
    return out


# --------------------------------------------------------------------------- periods and dates


def test_period_is_the_utc_day_or_a_half_open_range() -> None:
    p = Period.of(DAY)
    assert (p.start_ns, p.end_ns, p.label) == (ns(2023, 11, 14), DAY_END, "2023-11-14")
    assert Period.of(dt.date(2023, 11, 14)) == p
    assert Period.of(dt.datetime(2023, 11, 14, 23, 59, tzinfo=UTC)) == p
    assert Period.of("2023-11-14", "2023-11-16").label == "2023-11-14_2023-11-16"
    assert Period.of("2023-11-14T14:30:00Z", "2023-11-14T15:00:00+00:00").label == "20231114T143000Z_20231114T150000Z"
    with pytest.raises(ValueError, match="empty period"):
        Period.of("2023-11-14", "2023-11-14")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        Period.of("14/11/2023")


def test_iso_utc_keeps_microseconds_and_truncates() -> None:
    assert exports.iso_utc(T0 + 1_234_567_891) == "2023-11-14T14:30:01.234567Z"
    assert exports.iso_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert exports.iso_utc(None) is None


@pytest.mark.parametrize(("name", "expiry"), [
    ("ES 12-23", dt.date(2023, 12, 15)),
    ("NQ 03-24", dt.date(2024, 3, 15)),
    ("MES 06-18", dt.date(2018, 6, 15)),
    ("ES 06-24", dt.date(2024, 6, 21)),  # June 2024 starts on a Saturday
    ("RTY 09-25", dt.date(2025, 9, 19)),  # September 2025 starts on a Monday
])
def test_contract_expiry_is_the_third_friday(name: str, expiry: dt.date) -> None:
    assert contract_expiry(name) == expiry
    assert expiry.weekday() == 4 and 15 <= expiry.day <= 21


def test_contract_expiry_of_a_bare_root_is_none() -> None:
    assert contract_expiry("SPY") is None


# --------------------------------------------------------------------------- blotter

BLOTTER_HEADER = ["ts_utc", "execution_id", "session_id", "account", "instrument", "side", "quantity", "price",
                  "commission", "role", "client_order_id", "nt8_order_id", "order_link", "decision_id",
                  "algorithm_id", "entry_type", "time_in_force", "order_quantity", "order_ts_utc", "operator_id",
                  "manual_order_indicator"]


def _row(ts: str, eid: str, sid: int, side: str, qty: int, price: float, comm: float | None, role: str,
         coid: str | None, nt8: str | None, link: str, order: tuple | None, manual: str,
         instrument: str = "ES 12-23") -> dict[str, Any]:
    did, algo, etype, oqty, ots = order if order else (None, None, None, None, None)
    return {"ts_utc": ts, "execution_id": eid, "session_id": sid, "account": "Sim101", "instrument": instrument,
            "side": side, "quantity": qty, "price": price, "commission": comm, "role": role,
            "client_order_id": coid, "nt8_order_id": nt8, "order_link": link, "decision_id": did,
            "algorithm_id": algo, "entry_type": etype, "time_in_force": "DAY" if order else None,
            "order_quantity": oqty, "order_ts_utc": ots, "operator_id": OPERATOR, "manual_order_indicator": manual}


C1 = ("d1", "momentum-v1.2", "LIMIT", 2, "2023-11-14T14:30:00.001000Z")
C2 = ("d6", "meanrev-v3", "MARKET", 1, "2023-11-14T14:32:00.000000Z")
C3 = (None, None, "MARKET", 1, "2023-11-14T14:31:45.000000Z")
EXPECTED_BLOTTER = [
    _row("2023-11-14T14:30:01.234567Z", "e1", 1, "BUY", 2, 4500.25, 4.3, "ENTRY", "c1", "NT-100", "reported", C1, "N"),
    # the TARGET fill came without its NT8 id: filled in from order_updates
    _row("2023-11-14T14:31:00.000000Z", "e2", 1, "SELL", 1, 4520.0, 2.15, "TARGET", "c1", "NT-102", "inferred", C1,
         "N"),
    _row("2023-11-14T14:31:30.000000Z", "e3", 1, "SELL", 1, 4510.5, 2.15, "FLATTEN", "c1", "NT-103", "reported", C1,
         "N"),
    # a manual trade at NT8: no client order id, no order, Tag 1028 = Y
    _row("2023-11-14T14:31:40.000000Z", "e4", 2, "BUY", 3, 4505.0, None, "OTHER", None, "NT-MAN-1", "unlinked", None,
         "Y"),
    # a bridge order without an algorithm id is not an algorithm order either
    _row("2023-11-14T14:31:50.000000Z", "e8", 2, "BUY", 1, 4506.0, 2.15, "ENTRY", "c3", "NT-300", "reported", C3, "Y"),
    # the client order id is found from the NT8 order id
    _row("2023-11-14T14:32:30.000000Z", "e5", 2, "SELL", 1, 15800.75, 2.15, "ENTRY", "c2", "NT-200", "inferred", C2,
         "N", instrument="NQ 12-23"),
]


def test_blotter_rows_and_columns_are_exact(db: str) -> None:
    df = daily_blotter(db, DAY, operator_id=OPERATOR)
    assert list(df.columns) == BLOTTER_HEADER
    assert _records(df) == EXPECTED_BLOTTER
    assert df["quantity"].dtype == "int64" and df["price"].dtype == "float64"


def test_blotter_tag_1028_is_n_only_for_orders_with_an_algorithm(db: str) -> None:
    df = daily_blotter(db, DAY, operator_id=OPERATOR)
    by_id = dict(zip(df["execution_id"], df["manual_order_indicator"]))
    assert by_id == {"e1": "N", "e2": "N", "e3": "N", "e4": "Y", "e8": "Y", "e5": "N"}
    assert set(df["operator_id"]) == {OPERATOR}


def test_blotter_range_is_half_open(db: str) -> None:
    df = daily_blotter(db, "2023-11-14T14:30:01Z", end="2023-11-14T14:31:00Z")
    assert list(df["execution_id"]) == ["e1"]  # e2 at exactly 14:31:00 belongs to the next range
    assert df["operator_id"].isna().all()
    assert list(daily_blotter(db, "2023-11-15")["execution_id"]) == ["e6"]  # midnight belongs to the new day


def test_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite"
    with pytest.raises(StorageError, match="does not exist"):
        daily_blotter(f"sqlite:///{path}", DAY)
    assert not path.exists()


# --------------------------------------------------------------------------- limit breaches


def test_limit_breach_log_merges_denials_and_audit_events_in_time_order(db: str) -> None:
    df = limit_breach_log(db, DAY)
    assert list(df.columns) == ["ts_utc", "source", "event", "subject_id", "session_id", "instrument",
                                "algorithm_id", "reason", "failed_check", "check_value", "check_limit", "checks",
                                "who", "approved_by", "expires_utc", "scope", "field", "old", "new", "detail"]
    assert list(zip(df["event"], df["ts_utc"])) == [
        ("override", "2023-11-14T14:30:05.000000Z"),
        ("DENIED", "2023-11-14T14:30:10.000000Z"),
        ("limit_change", "2023-11-14T14:30:15.000000Z"),
        ("DENIED", "2023-11-14T14:30:20.000000Z"),
        ("DENIED", "2023-11-14T14:30:25.000000Z"),
        ("kill", "2023-11-14T14:30:30.000000Z"),
        ("DENIED", "2023-11-14T14:30:35.000000Z"),
        ("enable", "2023-11-14T14:30:40.000000Z"),
        ("override", "2023-11-14T14:30:45.000000Z"),
        ("state_change", "2023-11-14T14:30:50.000000Z"),
        ("kill", "2023-11-14T23:59:58.999999Z"),
    ]
    rows = _records(df)
    d2 = rows[1]
    assert {k: d2[k] for k in ("source", "subject_id", "session_id", "instrument", "algorithm_id", "reason",
                               "failed_check", "check_value", "check_limit", "who", "detail")} == {
        "source": "decision", "subject_id": "d2", "session_id": 1, "instrument": "ES 12-23",
        "algorithm_id": "momentum-v1.2", "reason": "RISK_MAX_POSITION_EXCEEDED",
        "failed_check": "position_with_working", "check_value": 6.0, "check_limit": 5.0, "who": None,
        "detail": "signal"}
    assert json.loads(d2["checks"]) == [*PASSING, _check("position_with_working", False, 6.0, 5.0)]
    assert (rows[3]["reason"], rows[3]["failed_check"], rows[3]["check_value"]) == (MALICIOUS, "data_age_s", 12.5)
    assert json.loads(rows[3]["checks"]) == [
        {"check": "market_open", "passed": True, "value": 1.0, "limit": 1.0, "scope": "*"},
        {"check": "data_age_s", "passed": False, "value": 12.5, "limit": 5.0, "scope": "instrument:NQ",
         "note": "stale"}]
    # denied because another leg was: every own check passed
    assert rows[6]["failed_check"] is None and rows[6]["check_value"] is None
    assert rows[6]["reason"] == "another leg of g1 was denied (RISK_STALE_DATA)"

    override = rows[0]
    assert {k: override[k] for k in ("source", "subject_id", "who", "reason", "approved_by", "expires_utc", "scope",
                                     "field", "old", "new", "failed_check")} == {
        "source": "audit_log", "subject_id": "ov-1", "who": "alice", "reason": "spread test", "approved_by": "bob",
        "expires_utc": "2023-11-14T15:30:00.000000Z", "scope": "ES", "field": "max_position", "old": "5",
        "new": "10", "failed_check": None}
    assert json.loads(override["detail"])["approved_by"] == "bob"
    change = rows[2]  # the alternative key names: operator, reason
    assert (change["who"], change["reason"], change["field"], change["old"], change["new"]) == (
        "carol", "vol regime", "max_order_quantity", "3", "2.5")
    assert rows[5]["session_id"] is None and rows[5]["reason"] == "<b>runaway</b>"
    for tolerant in (rows[7], rows[8]):  # NULL payload, malformed payload
        assert tolerant["who"] is None and tolerant["reason"] is None and tolerant["expires_utc"] is None
    assert rows[8]["detail"] == "not json {"
    state = rows[9]
    assert (state["old"], state["new"], state["scope"]) == ("ACTIVE", "REDUCING", '{"instrument":"ES 12-23"}')


def test_limit_breach_log_can_be_limited_to_some_kinds(db: str) -> None:
    df = limit_breach_log(db, DAY, kinds=("kill",))
    assert list(df["event"]) == ["DENIED", "DENIED", "DENIED", "kill", "DENIED", "kill"]


# --------------------------------------------------------------------------- reconciliation


def test_reconciliation_breaks_of_the_day(db: str) -> None:
    df = reconciliation_breaks(db, DAY)
    assert list(df.columns) == ["ts_utc", "session_id", "subject_id", "break_kind", "instrument", "details",
                                "payload"]
    rows = _records(df)
    assert [(r["ts_utc"], r["break_kind"], r["instrument"], r["details"]) for r in rows] == [
        ("2023-11-14T14:32:00.000000Z", "MISSING", "ES 12-23", "execution e9 at NT8, not recorded"),
        ("2023-11-14T14:32:10.000000Z", "POSITION_MISMATCH", "NQ 12-23", '{"nt8":0,"sidecar":-1}'),
    ]


# --------------------------------------------------------------------------- RTS 22

RTS22_HEADER = ["transaction_ref", "trading_datetime", "trading_capacity", "quantity", "price", "price_currency",
                "venue", "instrument", "instrument_full_name", "cfi_code", "price_multiplier", "expiry_date",
                "buy_sell", "investment_decision_type", "investment_decision_within_firm", "execution_type",
                "execution_within_firm", "client_order_id"]


def test_rts22_rows(db: str) -> None:
    df = rts22_transactions(db, DAY, operator_id=OPERATOR)
    assert list(df.columns) == RTS22_HEADER
    rows = _records(df)
    assert [r["transaction_ref"] for r in rows] == ["e1", "e2", "e3", "e4", "e8", "e5"]
    assert rows[0] == {
        "transaction_ref": "e1", "trading_datetime": "2023-11-14T14:30:01.234567Z", "trading_capacity": "DEAL",
        "quantity": 2, "price": 4500.25, "price_currency": "USD", "venue": "XCME", "instrument": "ES 12-23",
        "instrument_full_name": "E-mini S&P 500 Future Dec 2023", "cfi_code": "FFICSX", "price_multiplier": 50.0,
        "expiry_date": "2023-12-15", "buy_sell": "BUYI", "investment_decision_type": "ALGO",
        "investment_decision_within_firm": "momentum-v1.2", "execution_type": "ALGO",
        "execution_within_firm": "momentum-v1.2", "client_order_id": "c1"}
    manual = rows[3]
    assert (manual["investment_decision_type"], manual["investment_decision_within_firm"],
            manual["execution_within_firm"], manual["client_order_id"]) == ("PRSN", OPERATOR, OPERATOR, None)
    nq = rows[5]
    assert (nq["buy_sell"], nq["price_multiplier"], nq["instrument_full_name"], nq["expiry_date"]) == (
        "SELL", 20.0, "E-mini Nasdaq-100 Future Dec 2023", "2023-12-15")


def test_rts22_xml_is_well_formed_and_round_trips(db: str, tmp_path: Path) -> None:
    df = rts22_transactions(db, DAY, operator_id=OPERATOR)
    path = write_rts22_xml(df, tmp_path / "rts22.xml")
    root = ET.parse(path).getroot()  # well-formed, or this raises
    assert "not a validated" in path.read_text(encoding="utf-8")
    txs = root.findall("./FinInstrmRptgTxRpt/Tx")
    assert len(txs) == len(df) == 6
    # read with plain ElementTree, independently of read_rts22_xml
    for tx, row in zip(txs, _records(df)):
        assert tx.findtext("TxId") == row["transaction_ref"]
        assert tx.findtext("TradDt") == row["trading_datetime"]
        assert tx.findtext("TradgCpcty") == "DEAL"
        assert int(tx.findtext("Qty/Unit")) == row["quantity"]
        amount = tx.find("Pric/MntryVal/Amt")
        assert float(amount.text) == row["price"] and amount.get("Ccy") == "USD"
        assert tx.findtext("TradVn") == "XCME"
        assert tx.findtext("FinInstrm/ClssfctnTp") == "FFICSX"
        assert tx.findtext("FinInstrm/XpryDt") == "2023-12-15"
        assert float(tx.findtext("FinInstrm/PricMltplr")) == row["price_multiplier"]
        assert tx.findtext("BuySellInd") == row["buy_sell"]
        tag = "Algo" if row["investment_decision_type"] == "ALGO" else "Prsn"
        assert tx.findtext(f"InvstmtDcsnPrsn/{tag}") == row["investment_decision_within_firm"]
        assert tx.findtext(f"ExctgPrsn/{tag}") == row["execution_within_firm"]
        assert tx.findtext("ClntOrdrId") == row["client_order_id"]
    pd.testing.assert_frame_equal(read_rts22_xml(path), df)


def test_rts22_xml_escapes_markup_in_values(tmp_path: Path) -> None:
    df = exports._frame([{"transaction_ref": "x<&>\"'", "quantity": 1, "price": 1.5,
                          "instrument_full_name": MALICIOUS, "investment_decision_type": "ALGO",
                          "investment_decision_within_firm": "a&b", "execution_type": "PRSN"}],
                        exports.RTS22_COLUMNS)
    path = write_rts22_xml(df, tmp_path / "odd.xml")
    assert "<script>" not in path.read_text(encoding="utf-8")
    pd.testing.assert_frame_equal(read_rts22_xml(path), df)


def test_rts22_csv_has_the_columns_and_rows(db: str, tmp_path: Path) -> None:
    df = rts22_transactions(db, DAY, operator_id=OPERATOR)
    path = write_rts22_csv(df, tmp_path / "rts22.csv")
    back = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(back.columns) == RTS22_HEADER
    assert list(back["transaction_ref"]) == ["e1", "e2", "e3", "e4", "e8", "e5"]
    assert list(back["trading_datetime"])[0] == "2023-11-14T14:30:01.234567Z"
    assert list(back["client_order_id"]) == ["c1", "c1", "c1", "", "c3", "c2"]


# --------------------------------------------------------------------------- CFTC position alerts

PDAY = "2024-01-10"
P0 = ns(2024, 1, 10)
H = 3600 * S


@pytest.fixture(scope="module")
def pos_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Positions built to sit exactly on the CFTC thresholds, with micros and an executions-only contract."""
    url = f"sqlite:///{tmp_path_factory.mktemp('positions') / 'pos.sqlite'}"
    upgrade(url)
    _fill(url, position_rows())
    return url


def position_rows() -> dict[Any, list[dict[str, Any]]]:
    return {
        sessions: [_session(10, "A1", "i1", P0 - 48 * H), _session(11, "A2", "i2", P0 - 48 * H),
                   _session(12, "A1", "i1", P0 + 12 * H)],
        positions: [
            _position(10, 1, "ES 03-24", "LONG", 700, P0 - 10 * H),  # carried in
            _position(10, 2, "ES 03-24", "LONG", 900, P0 + 14 * H),
            _position(11, 1, "MES 03-24", "SHORT", 1000, P0 + 14 * H + 30 * 60 * S),  # 900 + 100 = 1000: breach
            _position(10, 3, "ES 03-24", "LONG", 700, P0 + 15 * H),  # 700 + 100 = 800: alert at exactly 80 %
            _position(10, 4, "NQ 03-24", "SHORT", 159, P0 + 14 * H + 10 * 60 * S),
            _position(11, 2, "MNQ 03-24", "LONG", 10, P0 + 14 * H + 20 * 60 * S),  # 159 + 1 = 160: alert
            _position(11, 3, "MNQ 03-24", "LONG", 9, P0 + 14 * H + 40 * 60 * S),  # 159.9: ok
            _position(11, 4, "M2K 03-24", "LONG", 2000, P0 + 16 * H),  # 200 RTY: breach
            _position(10, 5, "ES 03-24", "LONG", 50, P0 + 24 * H),  # next day: not in this one
        ],
        executions: [  # YM has no position rows: rebuilt from executions
            _exec(10, 9, "y1", None, "OTHER", "N1", "YM 03-24", "BUY", 37000.0, 100, None, P0 - 5 * H),
            _exec(10, 10, "y2", None, "OTHER", "N2", "YM 03-24", "BUY", 37010.0, 99, None, P0 + 13 * H),  # 199: alert
            _exec(12, 1, "y2", None, "OTHER", "N2", "YM 03-24", "BUY", 37010.0, 99, None, P0 + 13 * H),  # replay
            _exec(12, 2, "y3", None, "OTHER", "N3", "YM 03-24", "SELL", 37020.0, 50, None, P0 + 17 * H),  # 149
        ],
    }


def test_position_alerts_at_the_thresholds_with_micro_conversion(pos_db: str) -> None:
    df = position_alerts(pos_db, PDAY)
    assert list(df.columns) == ["root", "index", "level", "alert_at", "eod_position", "peak_position", "peak_ts_utc",
                                "eod_pct_of_level", "peak_pct_of_level", "eod_status", "peak_status", "status",
                                "contracts", "source"]
    got = {r["root"]: r for r in _records(df)}
    assert sorted(got) == ["ES", "NQ", "RTY", "YM"]
    es = got["ES"]
    assert (es["level"], es["alert_at"], es["eod_position"], es["peak_position"], es["peak_ts_utc"]) == (
        1000.0, 800.0, 800.0, 1000.0, "2024-01-10T14:30:00.000000Z")
    assert (es["eod_status"], es["peak_status"], es["status"]) == ("ALERT", "BREACH", "BREACH")
    assert (es["eod_pct_of_level"], es["peak_pct_of_level"]) == (80.0, 100.0)
    assert es["contracts"] == "ES 03-24:+700 MES 03-24:-1000"
    assert es["index"] == "S&P 500" and es["source"] == "positions"
    nq = got["NQ"]
    assert (nq["level"], nq["eod_position"], nq["peak_position"], nq["peak_ts_utc"]) == (
        200.0, 159.9, 160.0, "2024-01-10T14:20:00.000000Z")
    assert (nq["eod_status"], nq["peak_status"], nq["status"]) == ("OK", "ALERT", "ALERT")
    ym = got["YM"]  # the replayed execution counts once: 199, not 298
    assert (ym["eod_position"], ym["peak_position"], ym["peak_status"], ym["eod_status"], ym["source"]) == (
        149.0, 199.0, "ALERT", "OK", "executions")
    rty = got["RTY"]
    assert (rty["eod_position"], rty["status"], rty["contracts"]) == (200.0, "BREACH", "M2K 03-24:+2000")


def test_position_alerts_carry_in_and_custom_levels(pos_db: str) -> None:
    got = {r["root"]: r for r in _records(position_alerts(pos_db, PDAY, levels={"ES": 2000}))}
    assert (got["ES"]["status"], got["ES"]["peak_pct_of_level"]) == ("OK", 50.0)
    assert got["NQ"]["status"] == "NO_LEVEL" and got["NQ"]["level"] is None
    # the day before: only what was open then (ES 700 from 14:00; YM 100 from executions)
    before = {r["root"]: r for r in _records(position_alerts(pos_db, "2024-01-09"))}
    assert sorted(before) == ["ES", "YM"]
    assert (before["ES"]["eod_position"], before["ES"]["status"]) == (700.0, "OK")
    assert before["YM"]["eod_position"] == 100.0
    # the next day: everything carried in, ES reduced to 50 at midnight
    after = {r["root"]: r for r in _records(position_alerts(pos_db, "2024-01-11"))}
    assert (after["ES"]["peak_position"], after["ES"]["peak_ts_utc"], after["ES"]["eod_position"]) == (
        800.0, "2024-01-11T00:00:00.000000Z", 150.0)


def test_position_alerts_without_positions_is_empty(pos_db: str) -> None:
    df = position_alerts(pos_db, "2023-01-01")
    assert df.empty and len(df.columns) == 14


# --------------------------------------------------------------------------- HTML


def test_html_summary_escapes_and_counts(db: str) -> None:
    page = compliance_summary_html(
        db, DAY, verify_result={"ok": False, "records": 42, "first_bad_seq": 17, "reason": MALICIOUS},
        limits={"max_position": 5, "per_instrument": {"ES": {"max_order_quantity": 3}}, MALICIOUS: MALICIOUS},
        operator_id=OPERATOR)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;runaway&lt;/b&gt;" in page and "<b>runaway" not in page
    assert "src=" not in page and "href=" not in page and "http" not in page.replace("http-equiv", "")
    assert "<style>" in page
    assert '<tr><td>RISK_MAX_POSITION_EXCEEDED</td><td class="num">2</td></tr>' in page
    assert '<td>another leg of g1 was denied (RISK_STALE_DATA)</td><td class="num">1</td>' in page
    assert '<tr><td>executions</td><td class="num">6</td></tr>' in page
    assert '<tr><td>manual executions (Tag 1028 = Y)</td><td class="num">2</td></tr>' in page
    assert '<tr><td>orders sent</td><td class="num">3</td></tr>' in page
    assert '<tr><td>reconciliation breaks</td><td class="num">2</td></tr>' in page
    assert "<td>per_instrument.ES.max_order_quantity</td><td>3</td>" in page
    assert 'class="fail">FAIL' in page and "<td>first_bad_seq</td><td>17</td>" in page
    assert "<td>kill</td><td>alice</td>" in page


def test_html_summary_without_verification_says_not_run(db: str) -> None:
    page = compliance_summary_html(db, "2023-11-01")
    assert "not run" in page and "no denials" in page and "none supplied" in page and "no positions" in page
    page = compliance_summary_html(db, DAY, verify_result={"ok": True, "records": 9, "first_bad_seq": None,
                                                           "reason": None})
    assert 'class="ok">PASS' in page and "<td>records</td><td>9</td>" in page

    @dataclasses.dataclass
    class Verified:  # the shape of bridge.audit.chain.VerifyResult
        ok: bool
        records: int
        first_bad_seq: int | None
        reason: str
        checkpoints_verified: int

    page = compliance_summary_html(db, "2023-11-01", verify_result=Verified(False, 3, 4, "hash mismatch", 0))
    assert 'class="fail">FAIL' in page and "<td>reason</td><td>hash mismatch</td>" in page
    assert "<td>checkpoints_verified</td><td>0</td>" in page


# --------------------------------------------------------------------------- export_day

NAMES = ["blotter-{d}.csv", "breaches-{d}.csv", "reconciliation-{d}.csv", "rts22-{d}.csv", "rts22-{d}.xml",
         "positions-{d}.csv", "compliance-{d}.html"]


def test_export_day_writes_every_file(db: str, tmp_path: Path) -> None:
    paths = export_day(db, DAY, tmp_path / "out", OPERATOR)
    assert [p.name for p in paths] == [n.format(d=DAY) for n in NAMES]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no .partial
    blotter = pd.read_csv(paths[0], dtype=str, keep_default_na=False)
    assert list(blotter.columns) == BLOTTER_HEADER
    assert list(blotter["manual_order_indicator"]) == ["N", "N", "N", "Y", "Y", "N"]
    assert list(blotter["ts_utc"])[0] == "2023-11-14T14:30:01.234567Z"
    assert len(pd.read_csv(paths[1])) == 11 and len(pd.read_csv(paths[2])) == 2
    pd.testing.assert_frame_equal(read_rts22_xml(paths[4]), rts22_transactions(db, DAY, operator_id=OPERATOR))
    positions_csv = pd.read_csv(paths[5], dtype=str, keep_default_na=False)
    assert list(positions_csv["root"]) == ["ES", "NQ"] and list(positions_csv["status"]) == ["OK", "OK"]
    with pytest.raises(ValueError, match="Tag 50"):
        export_day(db, DAY, tmp_path / "out2", " ")


def test_export_of_a_day_without_activity_writes_headers_only(db: str, tmp_path: Path) -> None:
    paths = export_day(db, "2023-11-01", tmp_path, OPERATOR)
    assert [p.name for p in paths] == [n.format(d="2023-11-01") for n in NAMES]
    headers = {
        "blotter": BLOTTER_HEADER,
        "rts22": RTS22_HEADER,
        "reconciliation": ["ts_utc", "session_id", "subject_id", "break_kind", "instrument", "details", "payload"],
    }
    for path in paths:
        assert path.stat().st_size > 0
        if path.suffix == ".csv":
            text = path.read_text(encoding="utf-8")
            assert text.count("\n") == 1, path.name  # the header line only
            df = pd.read_csv(path)
            assert df.empty and len(df.columns) > 3
            kind = path.name.split("-")[0]
            if kind in headers:
                assert list(df.columns) == headers[kind]
    root = ET.parse(paths[4]).getroot()
    assert root.tag == "Document" and root.findall(".//Tx") == []
    assert read_rts22_xml(paths[4]).empty
    page = paths[6].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "2023-11-01" in page


def test_export_of_a_range_is_labelled_by_its_ends(db: str, tmp_path: Path) -> None:
    paths = export_day(db, "2023-11-14", tmp_path, OPERATOR, end="2023-11-16")
    assert paths[0].name == "blotter-2023-11-14_2023-11-16.csv"
    assert list(pd.read_csv(paths[0])["execution_id"]) == ["e1", "e2", "e3", "e4", "e8", "e5", "e6"]
