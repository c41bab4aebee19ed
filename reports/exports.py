"""Compliance exports for one UTC trading day (or a ``[from, to)`` range) from the recording database.

Working records for review, reconciliation with the broker and regulators' requests (see
``../shared/reference/compliance.md``): they are *not* filings. Everything is read from the tables
``bridge.audit.recorder`` writes, through any SQLAlchemy URL ``bridge.storage.database`` accepts, inside one
read transaction (one consistent snapshot on SQLite WAL and PostgreSQL REPEATABLE READ), and nothing
is ever written to the database.

Exports
-------
================================  ======================================  ==========================
function                          what                                    file (``export_day``)
================================  ======================================  ==========================
:func:`daily_blotter`             every execution with its order          ``blotter-YYYY-MM-DD.csv``
:func:`limit_breach_log`          risk denials + overrides, limit           ``breaches-...csv``
                                  changes, kill switch, enable, state
:func:`reconciliation_breaks`     ``reconciliation_break`` audit rows     ``reconciliation-...csv``
:func:`rts22_transactions`        RTS 22-style transactions               ``rts22-...csv`` / ``.xml``
:func:`position_alerts`           CFTC reportable-level alerts            ``positions-...csv``
:func:`compliance_summary_html`   one self-contained HTML page            ``compliance-...html``
================================  ======================================  ==========================

Periods and clocks
------------------
``day`` is a ``datetime.date``, ``"YYYY-MM-DD"`` or a datetime (its UTC calendar day); with ``end``
the period is ``[day, end)`` between the two instants (dates mean UTC midnight). Each table is
placed in the period by the clock that says when its event happened:

* executions and positions: ``ts_event_ns`` (NT8's execution / position time);
* orders: ``ts_created_ns``; decisions and audit rows: ``ts_sidecar_ns`` (when the sidecar decided
  or acted; denials and overrides share that clock, so the breach log is ordered on one clock).

All times are written as UTC ISO-8601 with microseconds and a ``Z`` (``2023-11-14T14:30:00.123456Z``),
truncated (not rounded) from the stored nanoseconds.

Blotter
-------
One row per execution. NT8 replays executions after a reconnect, and each session stores them once,
so the same execution id can appear in two sessions of one account: the first stored copy is kept.
Client and NT8 order ids are linked through ``order_updates`` when the execution lacks one of them
(``order_link``: ``reported`` as NT8 sent it, ``inferred`` when an id was filled in from
``order_updates``, ``unlinked`` for fills of orders placed outside the bridge). ``operator_id`` is
CME Tag 50 (a parameter: the person or team running the system); ``manual_order_indicator`` is CME
Tag 1028: ``"N"`` for an algorithm order (its order row has an ``algorithm_id``), ``"Y"`` otherwise,
including every execution without a client order id.

RTS 22
------
One row per blotter execution with the fields that apply to exchange-traded futures: trading
capacity ``DEAL``; venue MIC from the instrument's exchange (``CME`` -> ``XCME``, ``CBOT`` (YM, MYM) ->
``XCBT``; ``XCME`` when unknown); CFI ``FFICSX`` (financial future on an index, cash delivery,
standardised) for the CME equity-index roots, ``FXXXXX`` for other futures, empty for non-futures;
price multiplier = point value (instruments table, else the built-in instrument master); expiry =
the third Friday of the contract month of the NT8 name (``"ES 12-23"`` -> 2023-12-15).
Investment decision and execution within the firm are the algorithm id (``ALGO``); a manual
execution has no algorithm, so both carry the operator id as a ``PRSN`` placeholder, which a real
report would map to the person's national identifier. The XML uses ISO 20022 (auth.016)-flavoured
element names in a simple document of one ``<Tx>`` per row: it is RTS 22-*style*, not a validated
ISO 20022 filing. :func:`read_rts22_xml` reads it back into the same DataFrame.

CFTC reportable levels
----------------------
CFTC 15.03: S&P 500 index futures 1,000 contracts; other broad-based indexes 200 (NQ, YM, RTY).
Micro contracts count as 1/10 of their E-mini (MES -> ES, MNQ -> NQ, MYM -> YM, M2K -> RTY: 10
micros = 1 E-mini equivalent). A group's position is, conservatively, the *gross* sum over accounts
and contract months of the absolute position in E-mini equivalents (no netting of a long against a
short, so the alert can come early but never late). Status: ``ALERT`` at >= 80 % of the level,
``BREACH`` at >= 100 %, else ``OK`` (``NO_LEVEL`` for roots without a level). Both the end-of-period
position (the level applies at the close) and the intraday peak are judged; ``status`` is the worse.
Positions come from the ``positions`` table (the latest row per account and contract before the
period carries in); for an account and contract with no position row at all, the position is
rebuilt from executions, assuming flat before the first recorded execution.

Files are written atomically (a ``.partial`` file renamed into place); a period without activity
still yields every file, with headers and no rows.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, func, or_, select

from bridge.core.instruments import InstrumentMaster, parse_contract_name, third_friday
from bridge.storage.database import StorageError, as_storage_error, create_engine_for, parse_url
from bridge.storage.schema import (
    audit_chain,
    audit_log,
    decisions,
    executions,
    instruments,
    order_updates,
    orders,
    positions,
    sessions,
)

__all__ = [
    "ALERT_FRACTION",
    "BLOTTER_COLUMNS",
    "BREACH_COLUMNS",
    "CFTC_REPORTABLE_LEVELS",
    "LIMIT_EVENT_KINDS",
    "MICRO_EQUIVALENTS",
    "POSITION_COLUMNS",
    "RECONCILIATION_COLUMNS",
    "RTS22_COLUMNS",
    "Period",
    "compliance_summary_html",
    "contract_expiry",
    "daily_blotter",
    "export_day",
    "iso_utc",
    "limit_breach_log",
    "position_alerts",
    "read_rts22_xml",
    "reconciliation_breaks",
    "rts22_transactions",
    "write_blotter_csv",
    "write_compliance_html",
    "write_csv",
    "write_rts22_csv",
    "write_rts22_xml",
]

NS_PER_DAY = 86_400 * 1_000_000_000
_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)

LIMIT_EVENT_KINDS: tuple[str, ...] = ("override", "limit_change", "kill", "enable", "state_change")
"""``audit_log.kind`` values that go into the limit breach and override log."""

RECONCILIATION_KIND = "reconciliation_break"

CFTC_REPORTABLE_LEVELS: dict[str, int] = {"ES": 1000, "NQ": 200, "YM": 200, "RTY": 200}
"""CFTC 15.03 reportable levels in E-mini contracts, per index group (named by its E-mini root)."""

MICRO_EQUIVALENTS: dict[str, tuple[str, int]] = {"MES": ("ES", 10), "MNQ": ("NQ", 10), "MYM": ("YM", 10),
                                                  "M2K": ("RTY", 10)}
"""Micro root -> (E-mini group root, micros per E-mini): a micro counts as 1/10 of an E-mini."""

INDEX_NAMES: dict[str, str] = {"ES": "S&P 500", "NQ": "Nasdaq-100", "YM": "Dow Jones Industrial Average",
                               "RTY": "Russell 2000"}

ALERT_FRACTION = Fraction(4, 5)
"""Alert at >= 80 % of a reportable level; breach at >= 100 %."""

EQUITY_INDEX_FUTURE_CFI = "FFICSX"
"""ISO 10962: Future, Financial, on Indices, Cash delivery, Standardised, (n/a)."""

_MIC_BY_EXCHANGE = {"CME": "XCME", "GLOBEX": "XCME", "CBOT": "XCBT", "NYMEX": "XNYM", "COMEX": "XCEC"}
_DEFAULT_MIC = "XCME"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

RTS22_XML_NOTE = (
    "RTS 22-style transaction export (MiFIR Art 26 fields that apply to exchange-traded futures) with "
    "ISO 20022 (auth.016)-flavoured element names, written by nt8bridge. A working record for review and "
    "reconciliation: NOT a validated ISO 20022 filing and not submitted to any ARM or authority."
)

# --------------------------------------------------------------------------- columns

BLOTTER_COLUMNS: dict[str, str] = {
    "ts_utc": "object",
    "execution_id": "object",
    "session_id": "int64",
    "account": "object",
    "instrument": "object",
    "side": "object",
    "quantity": "int64",
    "price": "float64",
    "commission": "float64",
    "role": "object",
    "client_order_id": "object",
    "nt8_order_id": "object",
    "order_link": "object",
    "decision_id": "object",
    "algorithm_id": "object",
    "entry_type": "object",
    "time_in_force": "object",
    "order_quantity": "Int64",
    "order_ts_utc": "object",
    "operator_id": "object",
    "manual_order_indicator": "object",
}
"""Blotter columns and dtypes, in file order."""

BREACH_COLUMNS: dict[str, str] = {
    "ts_utc": "object",
    "source": "object",  # "decision" or "audit_log"
    "event": "object",  # "DENIED" or the audit kind
    "subject_id": "object",
    "session_id": "Int64",
    "instrument": "object",
    "algorithm_id": "object",
    "reason": "object",
    "failed_check": "object",
    "check_value": "float64",
    "check_limit": "float64",
    "checks": "object",  # JSON list of {check, value, limit, passed}
    "who": "object",
    "approved_by": "object",
    "expires_utc": "object",
    "scope": "object",
    "field": "object",
    "old": "object",
    "new": "object",
    "detail": "object",  # the decision's rationale, or the audit row's raw JSON payload
}

RECONCILIATION_COLUMNS: dict[str, str] = {
    "ts_utc": "object",
    "session_id": "Int64",
    "subject_id": "object",
    "break_kind": "object",
    "instrument": "object",
    "details": "object",
    "payload": "object",
}

RTS22_COLUMNS: dict[str, str] = {
    "transaction_ref": "object",
    "trading_datetime": "object",
    "trading_capacity": "object",
    "quantity": "int64",
    "price": "float64",
    "price_currency": "object",
    "venue": "object",
    "instrument": "object",
    "instrument_full_name": "object",
    "cfi_code": "object",
    "price_multiplier": "float64",
    "expiry_date": "object",
    "buy_sell": "object",  # BUYI / SELL
    "investment_decision_type": "object",  # ALGO / PRSN
    "investment_decision_within_firm": "object",
    "execution_type": "object",  # ALGO / PRSN
    "execution_within_firm": "object",
    "client_order_id": "object",
}

POSITION_COLUMNS: dict[str, str] = {
    "root": "object",
    "index": "object",
    "level": "float64",
    "alert_at": "float64",
    "eod_position": "float64",
    "peak_position": "float64",
    "peak_ts_utc": "object",
    "eod_pct_of_level": "float64",
    "peak_pct_of_level": "float64",
    "eod_status": "object",
    "peak_status": "object",
    "status": "object",
    "contracts": "object",
    "source": "object",
}

_STATUS_RANK = {"OK": 0, "NO_LEVEL": 0, "ALERT": 1, "BREACH": 2}


def _frame(records: list[dict[str, Any]], columns: Mapping[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly ``columns`` (name -> dtype); text columns keep ``None`` for missing."""
    data = {}
    for name, dtype in columns.items():
        values = [r.get(name) for r in records]
        if dtype == "float64":
            values = [math.nan if v is None else float(v) for v in values]
        data[name] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(columns))


# --------------------------------------------------------------------------- periods and times


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open UTC interval ``[start_ns, end_ns)`` in epoch nanoseconds."""

    start_ns: int
    end_ns: int

    @classmethod
    def of(cls, day: Any, end: Any = None) -> Period:
        """The UTC calendar day of ``day``, or ``[day, end)`` when ``end`` is given.

        Parameters
        ----------
        day
            ``datetime.date``, ``"YYYY-MM-DD"``, an ISO-8601 datetime string or a ``datetime``
            (naive means UTC).
        end
            Exclusive end, same forms; a date means that day's UTC midnight.

        Raises
        ------
        ValueError
            For unparsable values or an empty period.
        """
        start = _utc_datetime(day, "day")
        if end is None:
            start = dt.datetime(start.year, start.month, start.day, tzinfo=_UTC)
            start_ns = _dt_ns(start)
            return cls(start_ns, start_ns + NS_PER_DAY)
        stop = _utc_datetime(end, "end")
        if stop <= start:
            raise ValueError(f"empty period: end {stop.isoformat()} is not after start {start.isoformat()}")
        return cls(_dt_ns(start), _dt_ns(stop))

    @property
    def start(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.start_ns // 1000)

    @property
    def end(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.end_ns // 1000)

    @property
    def label(self) -> str:
        """``YYYY-MM-DD`` for one UTC day; ``YYYY-MM-DD_YYYY-MM-DD`` (end exclusive) for whole days;
        ``YYYYMMDDTHHMMSSZ_YYYYMMDDTHHMMSSZ`` otherwise. Safe in file names."""
        whole = self.start_ns % NS_PER_DAY == 0 and self.end_ns % NS_PER_DAY == 0
        if whole and self.end_ns - self.start_ns == NS_PER_DAY:
            return f"{self.start:%Y-%m-%d}"
        if whole:
            return f"{self.start:%Y-%m-%d}_{self.end:%Y-%m-%d}"
        return f"{self.start:%Y%m%dT%H%M%SZ}_{self.end:%Y%m%dT%H%M%SZ}"

    def __str__(self) -> str:
        return f"[{iso_utc(self.start_ns)}, {iso_utc(self.end_ns)})"


def _utc_datetime(value: Any, what: str) -> dt.datetime:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not YYYY-MM-DD or an ISO-8601 date and time") from None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=_UTC)
    raise TypeError(f"{what} must be a date, a datetime or an ISO-8601 string, got {type(value).__name__}")


def _dt_ns(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def iso_utc(ns: Any) -> str | None:
    """Epoch nanoseconds as UTC ISO-8601 with microseconds (``...T14:30:00.123456Z``); None stays None.

    The sub-microsecond digits are truncated, so the text never claims a later time than stored.
    """
    if ns is None or (isinstance(ns, float) and math.isnan(ns)) or ns is pd.NA:
        return None
    sec, rem = divmod(int(ns), 1_000_000_000)
    return f"{_EPOCH + dt.timedelta(seconds=sec):%Y-%m-%dT%H:%M:%S}.{rem // 1000:06d}Z"


# --------------------------------------------------------------------------- instruments


def contract_expiry(name: str) -> dt.date | None:
    """Expiry of an NT8 futures contract name: the third Friday of its month.

    ``"ES 12-23"`` -> 2023-12-15, ``"NQ 03-24"`` -> 2024-03-15; a bare root (``"SPY"``) -> None.

    Raises
    ------
    ValueError
        For a malformed name.
    """
    _, month, year = parse_contract_name(name)
    if month is None or year is None:
        return None
    return third_friday(year, month)


def _root_of(name: str) -> str:
    try:
        return parse_contract_name(name)[0]
    except ValueError:
        return (name.split() or [name])[0].upper()


@dataclass(frozen=True, slots=True)
class _InstrumentFacts:
    full_name: str
    cfi: str | None
    multiplier: float | None
    currency: str | None
    mic: str
    expiry: str | None


def _instrument_facts(conn: Connection, names: Iterable[str]) -> dict[str, _InstrumentFacts]:
    names = sorted(set(names))
    if not names:
        return {}
    stored = {r.name: r for r in conn.execute(select(instruments).where(instruments.c.name.in_(names)))}
    master = InstrumentMaster.default()
    out: dict[str, _InstrumentFacts] = {}
    for name in names:
        row = stored.get(name)
        try:
            root, month, year = parse_contract_name(name)
        except ValueError:
            root, month, year = _root_of(name), None, None
        if row is not None and row.root:
            root = row.root.upper()
        try:
            spec = master.resolve(root)
        except ValueError:
            spec = None
        description = spec.description if spec is not None else root
        is_future = month is not None
        if is_future and year is not None:
            full_name = f"{description} Future {_MONTHS[month - 1]} {year}"
        else:
            full_name = description
        if not is_future:
            cfi = None
        elif root in CFTC_REPORTABLE_LEVELS or root in MICRO_EQUIVALENTS:
            cfi = EQUITY_INDEX_FUTURE_CFI
        else:
            cfi = "FXXXXX"
        multiplier = row.point_value if row is not None else (spec.point_value if spec is not None else None)
        currency = (row.currency if row is not None and row.currency else None) or (
            spec.currency if spec is not None else None)
        exchange = (row.exchange if row is not None and row.exchange else None) or (
            spec.exchange if spec is not None else None)
        mic = _MIC_BY_EXCHANGE.get((exchange or "").upper(), _DEFAULT_MIC)
        expiry = third_friday(year, month).isoformat() if is_future and year is not None else None
        out[name] = _InstrumentFacts(full_name, cfi, multiplier, currency, mic, expiry)
    return out


# --------------------------------------------------------------------------- database access


def _run(url: str, work: Callable[[Connection], Any], doing: str) -> Any:
    """Run ``work`` in one read transaction (a consistent snapshot) and dispose of the engine."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        raise StorageError(f"{doing}: the SQLite file {parsed.database} does not exist (no recordings there)")
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            if parsed.get_backend_name() == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                return work(conn)
    except (StorageError, ValueError, TypeError):
        raise
    except Exception as exc:  # translated, with the original chained
        raise as_storage_error(url, exc, doing) from exc
    finally:
        engine.dispose()


def _load_json(text: Any) -> dict[str, Any]:
    """A JSON object from a payload column; {} for NULL or malformed text, {"value": x} for non-objects."""
    if text is None or text == "":
        return {}
    try:
        obj = json.loads(text)
    except (ValueError, TypeError):
        return {}
    return obj if isinstance(obj, dict) else {"value": obj}


def _first(payload: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = payload.get(key)
        if value is not None and value != "":
            return value
    return None


def _as_text(value: Any) -> str | None:
    """A payload value as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return str(value)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_ns(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _account_keys(conn: Connection) -> dict[int, str]:
    """session_id -> the account it traded (else its NinjaScript instance) for position keys."""
    return {r.session_id: (r.account or f"instance:{r.instance_id}")
            for r in conn.execute(select(sessions.c.session_id, sessions.c.account, sessions.c.instance_id))}


# --------------------------------------------------------------------------- blotter


def _blotter_records(conn: Connection, period: Period, operator_id: str | None) -> list[dict[str, Any]]:
    e, s, u, o = executions, sessions, order_updates, orders
    in_range = and_(e.c.ts_event_ns >= period.start_ns, e.c.ts_event_ns < period.end_ns)
    rows = conn.execute(
        select(e.c.execution_id, e.c.session_id, e.c.seq, e.c.id, e.c.client_order_id, e.c.role, e.c.nt8_order_id,
               e.c.instrument, e.c.side, e.c.price, e.c.quantity, e.c.commission, e.c.ts_event_ns,
               s.c.account, s.c.instance_id)
        .select_from(e.outerjoin(s, s.c.session_id == e.c.session_id))
        .where(in_range)
        .order_by(e.c.ts_event_ns, e.c.session_id, e.c.seq, e.c.id)
    ).all()
    if not rows:
        return []
    day_coids = select(e.c.client_order_id).where(in_range, e.c.client_order_id.is_not(None))
    day_nt8 = select(e.c.nt8_order_id).where(in_range, e.c.nt8_order_id.is_not(None))
    nt8_by_coid_role: dict[tuple[str, str], str] = {}
    coid_by_nt8: dict[str, tuple[str, str]] = {}
    for r in conn.execute(
        select(u.c.client_order_id, u.c.role, u.c.nt8_order_id)
        .where(u.c.nt8_order_id.is_not(None), or_(u.c.client_order_id.in_(day_coids), u.c.nt8_order_id.in_(day_nt8)))
        .order_by(u.c.ts_event_ns, u.c.id)
    ):
        nt8_by_coid_role[(r.client_order_id, r.role)] = r.nt8_order_id  # the latest wins
        coid_by_nt8[r.nt8_order_id] = (r.client_order_id, r.role)
    linked_coids = select(u.c.client_order_id).where(u.c.nt8_order_id.in_(day_nt8))
    order_by_coid = {r.client_order_id: r for r in conn.execute(
        select(o).where(or_(o.c.client_order_id.in_(day_coids), o.c.client_order_id.in_(linked_coids))))}

    records: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for r in rows:
        account = r.account or (f"instance:{r.instance_id}" if r.instance_id else f"session:{r.session_id}")
        if (account, r.execution_id) in seen:
            continue  # NT8's replay of an execution into a later session of the same account
        seen.add((account, r.execution_id))
        coid, nt8, role = r.client_order_id, r.nt8_order_id, r.role
        inferred = False
        if coid and not nt8 and (coid, role) in nt8_by_coid_role:
            nt8, inferred = nt8_by_coid_role[(coid, role)], True
        if not coid and nt8 and nt8 in coid_by_nt8:
            coid, linked_role = coid_by_nt8[nt8]
            role = role if role and role != "OTHER" else linked_role
            inferred = True
        order = order_by_coid.get(coid) if coid else None
        algorithm_id = order.algorithm_id if order is not None and order.algorithm_id else None
        records.append({
            "ts_utc": iso_utc(r.ts_event_ns),
            "execution_id": r.execution_id,
            "session_id": r.session_id,
            "account": r.account,
            "instrument": r.instrument,
            "side": r.side,
            "quantity": r.quantity,
            "price": r.price,
            "commission": r.commission,
            "role": role,
            "client_order_id": coid,
            "nt8_order_id": nt8,
            "order_link": "unlinked" if not coid else ("inferred" if inferred else "reported"),
            "decision_id": order.decision_id if order is not None else None,
            "algorithm_id": algorithm_id,
            "entry_type": order.entry_type if order is not None else None,
            "time_in_force": order.time_in_force if order is not None else None,
            "order_quantity": order.quantity if order is not None else None,
            "order_ts_utc": iso_utc(order.ts_created_ns) if order is not None else None,
            "operator_id": operator_id or None,
            "manual_order_indicator": "N" if algorithm_id else "Y",
        })
    return records


def daily_blotter(url: str, day: Any, *, end: Any = None, operator_id: str | None = None) -> pd.DataFrame:
    """Every execution of the period with its order: the daily blotter.

    Parameters
    ----------
    url
        Database URL.
    day, end
        The UTC day, or ``[day, end)`` (see :class:`Period`).
    operator_id
        CME Tag 50 (SenderSubID): the person or team running the system, copied to every row.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BLOTTER_COLUMNS`, ordered by execution time.
    """
    period = Period.of(day, end)
    records = _run(url, lambda conn: _blotter_records(conn, period, operator_id), "reading the blotter")
    return _frame(records, BLOTTER_COLUMNS)


# --------------------------------------------------------------------------- limit breaches and overrides


def _risk_checks(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = _first(inputs, "risk", "checks", "risk_checks")
    if not isinstance(raw, list):
        return []
    checks = []
    for c in raw:
        if isinstance(c, Mapping):
            check = {"check": _first(c, "check", "name"), "value": c.get("value"), "limit": c.get("limit"),
                     "passed": c.get("passed")}
            check.update({k: c[k] for k in ("scope", "note") if c.get(k) not in (None, "")})
            checks.append(check)
    return checks


@dataclass(frozen=True)
class _AuditRow:
    ts_sidecar_ns: int
    id: int  # audit_log id, or the chain's seq
    kind: str
    subject_id: str | None
    session_id: int | None
    payload: str | None


def _audit_rows(conn: Connection, kinds: Iterable[str], period: Period) -> list[_AuditRow]:
    """Audit records of these kinds in the period: the chained ones (audit_chain) and the older audit_log."""
    kinds = tuple(kinds)
    a, c = audit_log, audit_chain
    rows = [_AuditRow(r.ts_sidecar_ns, r.id, r.kind, r.subject_id, r.session_id, r.payload) for r in conn.execute(
        select(a).where(a.c.kind.in_(kinds), a.c.ts_sidecar_ns >= period.start_ns, a.c.ts_sidecar_ns < period.end_ns))]
    rows += [_AuditRow(r.ts_us * 1000, r.seq, r.kind, r.subject_id, r.session_id, r.payload) for r in conn.execute(
        select(c).where(c.c.kind.in_(kinds), c.c.ts_us >= period.start_ns // 1000, c.c.ts_us < period.end_ns // 1000))]
    rows.sort(key=lambda r: (r.ts_sidecar_ns, r.id))
    return rows


def _breach_records(conn: Connection, period: Period, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    d = decisions
    keyed: list[tuple[tuple[int, int, str], dict[str, Any]]] = []
    for r in conn.execute(
        select(d).where(d.c.outcome.startswith("DENIED:"), d.c.ts_sidecar_ns >= period.start_ns,
                        d.c.ts_sidecar_ns < period.end_ns)
    ):
        if not r.outcome.startswith("DENIED:"):  # LIKE ignores case on SQLite
            continue
        checks = _risk_checks(_load_json(r.inputs))
        failed = next((c for c in checks if c["passed"] is False), None)
        keyed.append(((r.ts_sidecar_ns, 0, r.decision_id), {
            "ts_utc": iso_utc(r.ts_sidecar_ns),
            "source": "decision",
            "event": "DENIED",
            "subject_id": r.decision_id,
            "session_id": r.session_id,
            "instrument": r.instrument,
            "algorithm_id": r.strategy,  # the recorder stores the algorithm id in the strategy column
            "reason": r.outcome[len("DENIED:"):],
            "failed_check": _as_text(failed["check"]) if failed else None,
            "check_value": _as_float(failed["value"]) if failed else None,
            "check_limit": _as_float(failed["limit"]) if failed else None,
            "checks": json.dumps(checks, sort_keys=True, separators=(",", ":")) if checks else None,
            "detail": r.rationale,
        }))
    if kinds:
        for r in _audit_rows(conn, kinds, period):
            p = _load_json(r.payload)
            keyed.append(((r.ts_sidecar_ns, 1, f"{r.id:020d}"), {
                "ts_utc": iso_utc(r.ts_sidecar_ns),
                "source": "audit_log",
                "event": r.kind,
                "subject_id": r.subject_id,
                "session_id": r.session_id,
                "instrument": _as_text(_first(p, "instrument")),
                "algorithm_id": _as_text(_first(p, "algorithm_id", "strategy")),
                "reason": _as_text(_first(p, "why", "reason")),
                "who": _as_text(_first(p, "who", "operator", "user")),
                "approved_by": _as_text(_first(p, "approved_by", "approver")),
                "expires_utc": iso_utc(_as_ns(p.get("expires_ns"))),
                "scope": _as_text(_first(p, "scope")),
                "field": _as_text(_first(p, "field", "limit")),
                # a limit change has old/new; an override the value it replaced (previous) and its value
                "old": _as_text(_first(p, "old", "previous", "from")),
                "new": _as_text(_first(p, "new", "value", "to", "restored")),
                "detail": r.payload,
            }))
    keyed.sort(key=lambda kr: kr[0])
    return [rec for _, rec in keyed]


def limit_breach_log(url: str, day: Any, *, end: Any = None,
                     kinds: Iterable[str] = LIMIT_EVENT_KINDS) -> pd.DataFrame:
    """Risk denials and limit events (overrides, limit changes, kill switch, enable, state changes).

    Denials are decisions whose outcome starts with ``"DENIED:"``: ``reason`` is the rest of the
    outcome, ``checks`` the decision's risk checks (JSON list of ``{check, value, limit, passed}``)
    and ``failed_check``/``check_value``/``check_limit`` the first check that failed (none when the
    order was denied because another leg of its group was). Audit rows of ``kinds`` take ``who``
    (or ``operator``), ``why`` (or ``reason``), ``approved_by``, ``expires_ns``, ``scope``,
    ``field``, ``old`` (or ``previous``) and ``new`` (or ``value``, as an override carries it) from
    their payload, any of which may be missing; ``detail`` keeps the raw payload. A check's name
    may be under ``check`` or ``name``; its ``scope`` and ``note`` are kept when present.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BREACH_COLUMNS`, ordered by sidecar time.
    """
    period = Period.of(day, end)
    kinds_t = tuple(kinds)
    records = _run(url, lambda conn: _breach_records(conn, period, kinds_t), "reading the limit breach log")
    return _frame(records, BREACH_COLUMNS)


# --------------------------------------------------------------------------- reconciliation breaks


def _reconciliation_records(conn: Connection, period: Period) -> list[dict[str, Any]]:
    records = []
    for r in _audit_rows(conn, (RECONCILIATION_KIND,), period):
        p = _load_json(r.payload)
        records.append({
            "ts_utc": iso_utc(r.ts_sidecar_ns),
            "session_id": r.session_id,
            "subject_id": r.subject_id,
            "break_kind": _as_text(_first(p, "kind", "break_kind", "type")),
            "instrument": _as_text(_first(p, "instrument")),
            "details": _as_text(_first(p, "details", "detail")),
            "payload": r.payload,
        })
    return records


def reconciliation_breaks(url: str, day: Any, *, end: Any = None) -> pd.DataFrame:
    """Audit rows of kind ``reconciliation_break`` (MISSING / EXTRA / DIFFERENT / POSITION_MISMATCH).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RECONCILIATION_COLUMNS`; ``details`` is the payload's ``details`` (JSON text
        when it is not a string), ``payload`` the raw JSON.
    """
    period = Period.of(day, end)
    return _frame(_run(url, lambda conn: _reconciliation_records(conn, period), "reading reconciliation breaks"),
                  RECONCILIATION_COLUMNS)


# --------------------------------------------------------------------------- RTS 22


def _rts22_records(conn: Connection, blotter: list[dict[str, Any]], operator_id: str | None) -> list[dict[str, Any]]:
    facts = _instrument_facts(conn, (b["instrument"] for b in blotter))
    records = []
    for b in blotter:
        f = facts[b["instrument"]]
        algo = b["algorithm_id"]
        maker_type, maker = ("ALGO", algo) if algo else ("PRSN", operator_id or None)
        records.append({
            "transaction_ref": b["execution_id"],
            "trading_datetime": b["ts_utc"],
            "trading_capacity": "DEAL",
            "quantity": b["quantity"],
            "price": b["price"],
            "price_currency": f.currency,
            "venue": f.mic,
            "instrument": b["instrument"],
            "instrument_full_name": f.full_name,
            "cfi_code": f.cfi,
            "price_multiplier": f.multiplier,
            "expiry_date": f.expiry,
            "buy_sell": {"BUY": "BUYI", "SELL": "SELL"}.get(str(b["side"]).upper(), b["side"]),
            "investment_decision_type": maker_type,
            "investment_decision_within_firm": maker,
            "execution_type": maker_type,
            "execution_within_firm": maker,
            "client_order_id": b["client_order_id"],
        })
    return records


def rts22_transactions(url: str, day: Any, *, end: Any = None, operator_id: str | None = None) -> pd.DataFrame:
    """RTS 22-style transaction rows: one per blotter execution (see the module docstring).

    Parameters
    ----------
    operator_id
        Used as the ``PRSN`` decision maker and executor of manual executions (no algorithm id).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RTS22_COLUMNS`.
    """
    period = Period.of(day, end)

    def work(conn: Connection) -> list[dict[str, Any]]:
        return _rts22_records(conn, _blotter_records(conn, period, operator_id), operator_id)

    return _frame(_run(url, work, "reading RTS 22 transactions"), RTS22_COLUMNS)


# (column, element path under <Tx>); the two decision-maker columns are handled by their type column.
_RTS22_XML_PATHS: tuple[tuple[str, str], ...] = (
    ("transaction_ref", "TxId"),
    ("trading_datetime", "TradDt"),
    ("trading_capacity", "TradgCpcty"),
    ("quantity", "Qty/Unit"),
    ("price", "Pric/MntryVal/Amt"),
    ("venue", "TradVn"),
    ("instrument", "FinInstrm/ShrtNm"),
    ("instrument_full_name", "FinInstrm/FullNm"),
    ("cfi_code", "FinInstrm/ClssfctnTp"),
    ("price_multiplier", "FinInstrm/PricMltplr"),
    ("expiry_date", "FinInstrm/XpryDt"),
    ("buy_sell", "BuySellInd"),
)
_RTS22_CLIENT_ORDER = ("client_order_id", "ClntOrdrId")  # not an RTS 22 field: the link to the blotter
_RTS22_MAKERS = (("investment_decision_type", "investment_decision_within_firm", "InvstmtDcsnPrsn"),
                 ("execution_type", "execution_within_firm", "ExctgPrsn"))
_MAKER_TAGS = {"ALGO": "Algo", "PRSN": "Prsn"}
_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return _XML_ILLEGAL.sub("", str(value))  # characters XML 1.0 cannot carry at all


def _sub_path(parent: ET.Element, path: str) -> ET.Element:
    node = parent
    for tag in path.split("/"):
        child = node.find(tag)
        node = child if child is not None else ET.SubElement(node, tag)
    return node


def rts22_xml(df: pd.DataFrame, period: Period | None = None) -> ET.ElementTree:
    """The RTS 22-style XML document for ``df`` (rows of :func:`rts22_transactions`)."""
    root = ET.Element("Document", {"generator": "nt8bridge", "standard": "RTS 22-style (not a validated filing)"})
    root.append(ET.Comment(" " + RTS22_XML_NOTE + " "))
    report = ET.SubElement(root, "FinInstrmRptgTxRpt")
    if period is not None:
        report.set("periodFrom", iso_utc(period.start_ns) or "")
        report.set("periodTo", iso_utc(period.end_ns) or "")
    for row in df.to_dict("records"):
        tx = ET.SubElement(report, "Tx")
        for column, path in _RTS22_XML_PATHS:
            text = _xml_text(row.get(column))
            if text is None:
                continue
            _sub_path(tx, path).text = text
            if column == "price" and (ccy := _xml_text(row.get("price_currency"))) is not None:
                _sub_path(tx, path).set("Ccy", ccy)
        for type_col, id_col, tag in _RTS22_MAKERS:
            kind = row.get(type_col)
            if kind in _MAKER_TAGS:
                ET.SubElement(ET.SubElement(tx, tag), _MAKER_TAGS[kind]).text = _xml_text(row.get(id_col))
        column, tag = _RTS22_CLIENT_ORDER
        if (text := _xml_text(row.get(column))) is not None:
            ET.SubElement(tx, tag).text = text
    ET.indent(root)
    return ET.ElementTree(root)


def read_rts22_xml(path: str | Path) -> pd.DataFrame:
    """Read a file of :func:`write_rts22_xml` back into a DataFrame equal to the one written."""
    root = ET.parse(path).getroot()
    records = []
    for tx in root.iter("Tx"):
        rec: dict[str, Any] = {}
        for column, path_ in _RTS22_XML_PATHS:
            node = tx.find(path_)
            text = node.text if node is not None else None
            if column == "quantity":
                rec[column] = int(text) if text is not None else None
            elif column in ("price", "price_multiplier"):
                rec[column] = float(text) if text is not None else None
            else:
                rec[column] = text
            if column == "price":
                rec["price_currency"] = node.get("Ccy") if node is not None else None
        for type_col, id_col, tag in _RTS22_MAKERS:
            holder = tx.find(tag)
            rec[type_col] = rec[id_col] = None
            if holder is not None:
                for kind, child_tag in _MAKER_TAGS.items():
                    child = holder.find(child_tag)
                    if child is not None:
                        rec[type_col], rec[id_col] = kind, child.text
        column, tag = _RTS22_CLIENT_ORDER
        rec[column] = tx.findtext(tag)
        records.append(rec)
    return _frame(records, RTS22_COLUMNS)


# --------------------------------------------------------------------------- CFTC position alerts


def _group_of(instrument: str) -> tuple[str, int]:
    root = _root_of(instrument)
    return MICRO_EQUIVALENTS.get(root, (root, 1))


def _signed_position(market_position: Any, quantity: int) -> int:
    mp = str(market_position).upper()
    if mp == "FLAT":
        return 0
    if mp == "SHORT":
        return -abs(quantity)
    return abs(quantity)  # LONG, or an unknown value read conservatively as a position


def _status(x: Fraction, level: Fraction | None) -> str:
    if level is None:
        return "NO_LEVEL"
    if x >= level:
        return "BREACH"
    if x >= level * ALERT_FRACTION:
        return "ALERT"
    return "OK"


def _position_records(conn: Connection, period: Period, levels: Mapping[str, float]) -> list[dict[str, Any]]:
    p, e = positions, executions
    account_of = _account_keys(conn)

    def key(session_id: int, instrument: str) -> tuple[str, str]:
        return account_of.get(session_id, f"session:{session_id}"), instrument

    # State carried in: the latest position row before the period, per account and contract.
    rn = func.row_number().over(partition_by=(p.c.session_id, p.c.instrument),
                                order_by=(p.c.ts_event_ns.desc(), p.c.id.desc())).label("rn")
    latest = select(p.c.session_id, p.c.instrument, p.c.market_position, p.c.quantity, p.c.ts_event_ns, p.c.id,
                    rn).where(p.c.ts_event_ns < period.start_ns).subquery()
    carried: dict[tuple[str, str], tuple[tuple[int, int], int]] = {}
    for r in conn.execute(select(latest).where(latest.c.rn == 1)):
        k, order = key(r.session_id, r.instrument), (r.ts_event_ns, r.id)
        if k not in carried or order > carried[k][0]:
            carried[k] = (order, _signed_position(r.market_position, r.quantity))
    state: dict[tuple[str, str], int] = {k: v for k, (_, v) in carried.items()}
    # events: (ts, tiebreak, key, absolute position or None, delta)
    events: list[tuple[int, int, tuple[str, str], int | None, int]] = []
    position_keys = set(carried)
    for r in conn.execute(select(p).where(p.c.ts_event_ns >= period.start_ns, p.c.ts_event_ns < period.end_ns)
                          .order_by(p.c.ts_event_ns, p.c.id)):
        k = key(r.session_id, r.instrument)
        position_keys.add(k)
        events.append((r.ts_event_ns, r.id, k, _signed_position(r.market_position, r.quantity), 0))
    source = {k: "positions" for k in position_keys}

    # Contracts with executions but no position row at all: rebuild the position from executions.
    exec_keys = {key(r.session_id, r.instrument) for r in conn.execute(
        select(e.c.session_id, e.c.instrument).where(e.c.ts_event_ns < period.end_ns).distinct())}
    fallback = exec_keys - position_keys
    if fallback:
        seen: set[tuple[str, str]] = set()
        for r in conn.execute(
            select(e.c.session_id, e.c.execution_id, e.c.instrument, e.c.side, e.c.quantity, e.c.ts_event_ns, e.c.id)
            .where(e.c.ts_event_ns < period.end_ns, e.c.instrument.in_(sorted({i for _, i in fallback})))
            .order_by(e.c.ts_event_ns, e.c.id)
        ):
            k = key(r.session_id, r.instrument)
            if k not in fallback or (k[0], r.execution_id) in seen:
                continue
            seen.add((k[0], r.execution_id))
            delta = abs(r.quantity) * (-1 if str(r.side).upper() == "SELL" else 1)
            source[k] = "executions"
            if r.ts_event_ns < period.start_ns:
                state[k] = state.get(k, 0) + delta
            else:
                events.append((r.ts_event_ns, r.id, k, None, delta))

    exposure: dict[str, Fraction] = {}
    peak: dict[str, tuple[Fraction, int | None]] = {}
    touched: set[str] = set()
    for k, q in state.items():
        group, per = _group_of(k[1])
        exposure[group] = exposure.get(group, Fraction(0)) + Fraction(abs(q), per)
    for group, x in exposure.items():
        peak[group] = (x, period.start_ns if x else None)
        if x:
            touched.add(group)
    events.sort(key=lambda ev: (ev[0], ev[1]))
    for ts, _, k, absolute, delta in events:
        old = state.get(k, 0)
        new = absolute if absolute is not None else old + delta
        state[k] = new
        group, per = _group_of(k[1])
        x = exposure.get(group, Fraction(0)) + Fraction(abs(new) - abs(old), per)
        exposure[group] = x
        touched.add(group)
        if group not in peak or x > peak[group][0]:
            peak[group] = (x, ts if x else None)

    records = []
    for group in sorted(touched):
        level_raw = levels.get(group)
        level = Fraction(level_raw) if level_raw is not None else None
        eod, (pk, pk_ts) = exposure.get(group, Fraction(0)), peak[group]
        eod_status, peak_status = _status(eod, level), _status(pk, level)
        by_contract: dict[str, int] = {}
        for (_, instrument), q in state.items():
            if _group_of(instrument)[0] == group and q:
                by_contract[instrument] = by_contract.get(instrument, 0) + q
        sources = sorted({source.get(k, "positions") for k in state if _group_of(k[1])[0] == group})
        records.append({
            "root": group,
            "index": INDEX_NAMES.get(group, group),
            "level": float(level) if level is not None else None,
            "alert_at": float(level * ALERT_FRACTION) if level is not None else None,
            "eod_position": float(eod),
            "peak_position": float(pk),
            "peak_ts_utc": iso_utc(pk_ts),
            "eod_pct_of_level": float(eod / level * 100) if level else None,
            "peak_pct_of_level": float(pk / level * 100) if level else None,
            "eod_status": eod_status,
            "peak_status": peak_status,
            "status": max(eod_status, peak_status, key=_STATUS_RANK.__getitem__),
            "contracts": " ".join(f"{i}:{q:+d}" for i, q in sorted(by_contract.items())) or None,
            "source": "+".join(sources),
        })
    return records


def position_alerts(url: str, day: Any, levels: Mapping[str, float] | None = None, *,
                    end: Any = None) -> pd.DataFrame:
    """End-of-period and intraday-peak positions per index group against CFTC reportable levels.

    Parameters
    ----------
    levels
        Reportable level per group root in E-mini contracts; None means
        :data:`CFTC_REPORTABLE_LEVELS`. A mapping replaces the defaults (roots left out get
        ``NO_LEVEL``). Micros always count 1/10 toward their E-mini group.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`POSITION_COLUMNS`, one row per group with a position or a position event in
        (or carried into) the period; positions in E-mini equivalents, gross over accounts and
        months; ``contracts`` lists the end-of-period net position per contract (``ES 12-23:+5``).
    """
    period = Period.of(day, end)
    lv = dict(CFTC_REPORTABLE_LEVELS if levels is None else levels)
    return _frame(_run(url, lambda conn: _position_records(conn, period, lv), "reading positions"), POSITION_COLUMNS)


# --------------------------------------------------------------------------- everything at once


@dataclass(frozen=True)
class _Bundle:
    period: Period
    blotter: pd.DataFrame
    breaches: pd.DataFrame
    reconciliation: pd.DataFrame
    rts22: pd.DataFrame
    positions: pd.DataFrame
    counts: dict[str, int]


def _count(conn: Connection, table: Any, column: Any, period: Period) -> int:
    return int(conn.execute(select(func.count()).select_from(table)
                            .where(column >= period.start_ns, column < period.end_ns)).scalar_one())


def _gather(url: str, period: Period, operator_id: str | None, levels: Mapping[str, float] | None) -> _Bundle:
    lv = dict(CFTC_REPORTABLE_LEVELS if levels is None else levels)

    def work(conn: Connection) -> _Bundle:
        blotter = _blotter_records(conn, period, operator_id)
        breaches = _breach_records(conn, period, LIMIT_EVENT_KINDS)
        counts = {
            "orders": _count(conn, orders, orders.c.ts_created_ns, period),
            "executions": len(blotter),
            "algorithm_executions": sum(1 for b in blotter if b["manual_order_indicator"] == "N"),
            "manual_executions": sum(1 for b in blotter if b["manual_order_indicator"] == "Y"),
            "contracts_traded": sum(int(b["quantity"]) for b in blotter),
            "decisions": _count(conn, decisions, decisions.c.ts_sidecar_ns, period),
            "denials": sum(1 for b in breaches if b["source"] == "decision"),
            "limit_events": sum(1 for b in breaches if b["source"] == "audit_log"),
        }
        return _Bundle(
            period,
            _frame(blotter, BLOTTER_COLUMNS),
            _frame(breaches, BREACH_COLUMNS),
            _frame(_reconciliation_records(conn, period), RECONCILIATION_COLUMNS),
            _frame(_rts22_records(conn, blotter, operator_id), RTS22_COLUMNS),
            _frame(_position_records(conn, period, lv), POSITION_COLUMNS),
            counts,
        )

    return _run(url, work, "reading the compliance exports")


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
line-height:1.4;padding:0 1em}
h1{font-size:1.5em;border-bottom:2px solid #333;padding-bottom:.3em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#06612e;font-weight:bold}.fail{color:#a40000;font-weight:bold}.muted{color:#666}
tr.ALERT td{background:#fff3cd}tr.BREACH td{background:#f8d7da}
.note{color:#555;font-size:.85em;border-top:1px solid #ccc;margin-top:2em;padding-top:.5em}
""".strip()


def _e(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        value = _xml_text(value)
    return html.escape(str(value), quote=True)


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, numeric: Iterable[int] = (),
           row_class: Callable[[list[Any]], str | None] | None = None) -> str:
    num = set(numeric)
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for row in rows:
        cells = list(row)
        cls = row_class(cells) if row_class else None
        out.append(f'<tr class="{_e(cls)}">' if cls else "<tr>")
        out.extend(f'<td class="num">{_e(c)}</td>' if i in num else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in mapping.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            items.extend(_flatten(v, name + "."))
        else:
            items.append((name, v if isinstance(v, (str, int, float)) or v is None else _as_text(v)))
    return items


def _render_html(bundle: _Bundle, verify_result: Any, limits: Mapping[str, Any] | None,
                 generated_at: dt.datetime) -> str:
    p = bundle.period
    parts: list[str] = []
    add = parts.append
    title = f"Compliance summary {p.label}"
    add("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    # No scripts, no external loads: the page works offline and cannot run injected content.
    add("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">")
    add(f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>{_e(title)}</h1>")
    add(f"<p>Period (UTC, end exclusive): <b>{_e(iso_utc(p.start_ns))}</b> to <b>{_e(iso_utc(p.end_ns))}</b>. "
        f"Generated {_e(generated_at.astimezone(_UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))}.</p>")

    c = bundle.counts
    add("<h2>Activity</h2>")
    add(_table(("measure", "count"), [
        ("orders sent", c["orders"]),
        ("executions", c["executions"]),
        ("algorithm executions (Tag 1028 = N)", c["algorithm_executions"]),
        ("manual executions (Tag 1028 = Y)", c["manual_executions"]),
        ("contracts traded", c["contracts_traded"]),
        ("decisions", c["decisions"]),
        ("risk denials", c["denials"]),
        ("kill switch, override, limit and state events", c["limit_events"]),
        ("reconciliation breaks", len(bundle.reconciliation)),
    ], numeric=(1,)))

    add("<h2>Audit log verification</h2>")
    if verify_result is not None and not isinstance(verify_result, Mapping) and is_dataclass(verify_result):
        verify_result = asdict(verify_result)  # e.g. bridge.audit.chain.VerifyResult
    if verify_result is None:
        add('<p class="muted">not run</p>')
    else:
        ok = bool(verify_result.get("ok"))
        add(f'<p>Result: <span class="{"ok" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span></p>')
        known = ("ok", "records", "first_bad_seq", "reason")
        rows = [(k, verify_result.get(k)) for k in known[1:]]
        rows += [(k, _as_text(v) if not isinstance(v, (str, int, float)) else v)
                 for k, v in verify_result.items() if k not in known]
        add(_table(("field", "value"), rows))

    add("<h2>Limits in force</h2>")
    add(_table(("limit", "value"), _flatten(limits)) if limits else '<p class="muted">none supplied</p>')

    add("<h2>Risk denials by reason</h2>")
    denials = bundle.breaches[bundle.breaches["source"] == "decision"]
    if len(denials):
        counts = denials["reason"].fillna("").value_counts()
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        add(_table(("reason", "denials"), ordered, numeric=(1,)))
    else:
        add('<p class="muted">no denials</p>')

    add("<h2>Kill switch, overrides, limit and state changes</h2>")
    events = bundle.breaches[bundle.breaches["source"] == "audit_log"]
    if len(events):
        cols = ("ts_utc", "event", "who", "reason", "approved_by", "expires_utc", "scope", "field", "old", "new")
        add(_table(("time (UTC)", "event", "who", "why", "approved by", "expires", "scope", "field", "old", "new"),
                   events[list(cols)].itertuples(index=False, name=None)))
    else:
        add('<p class="muted">none</p>')

    add("<h2>Reconciliation breaks</h2>")
    rec = bundle.reconciliation
    add(f"<p>Breaks: <b>{len(rec)}</b></p>")
    if len(rec):
        by_kind = sorted(rec["break_kind"].fillna("(unspecified)").value_counts().items(), key=lambda kv: kv[0])
        add(_table(("kind", "count"), by_kind, numeric=(1,)))
        add(_table(("time (UTC)", "kind", "instrument", "details"),
                   rec[["ts_utc", "break_kind", "instrument", "details"]].itertuples(index=False, name=None)))

    add("<h2>Position alerts (CFTC reportable levels)</h2>")
    pos = bundle.positions
    if len(pos):
        cols = ("root", "index", "level", "alert_at", "eod_position", "peak_position", "peak_ts_utc", "status",
                "contracts")
        add(_table(("group", "index", "level", "alert at", "end of period", "intraday peak", "peak at (UTC)",
                    "status", "contracts (end, net)"),
                   pos[list(cols)].itertuples(index=False, name=None), numeric=(2, 3, 4, 5),
                   row_class=lambda row: row[7] if row[7] in ("ALERT", "BREACH") else None))
    else:
        add('<p class="muted">no positions</p>')
    add('<p class="muted">Gross E-mini equivalents over accounts and contract months; micros count 1/10. '
        "ALERT at &ge; 80% of the level, BREACH at &ge; 100%.</p>")

    add('<p class="note">A working record produced by nt8bridge from its own recordings, for review and '
        "reconciliation with the broker; not a regulatory filing.</p>")
    add("</body></html>\n")
    return "".join(parts)


def compliance_summary_html(url: str, day: Any, verify_result: Mapping[str, Any] | None = None,
                            limits: Mapping[str, Any] | None = None, *, end: Any = None,
                            levels: Mapping[str, float] | None = None, operator_id: str | None = None,
                            generated_at: dt.datetime | None = None) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external assets) summarising the period.

    Parameters
    ----------
    verify_result
        The audit-chain verification result, a mapping or a dataclass with ``ok``, ``records``,
        ``first_bad_seq`` and ``reason`` (other fields are shown too); None shows "not run".
    limits
        The limits in force, shown as a table (nested mappings flattened to dotted names).
    levels
        CFTC levels as for :func:`position_alerts`.
    generated_at
        The time printed as "Generated"; now when None.

    Returns
    -------
    str
        The page; every value from the database or the arguments is HTML-escaped.
    """
    period = Period.of(day, end)
    bundle = _gather(url, period, operator_id, levels)
    return _render_html(bundle, verify_result, limits, generated_at or dt.datetime.now(_UTC))


# --------------------------------------------------------------------------- writers


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as UTF-8 CSV with a header (also when empty), ``\\n`` line ends, no index."""
    return _atomic_write(Path(path), lambda p: df.to_csv(p, index=False, lineterminator="\n", encoding="utf-8"))


def write_blotter_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a :func:`daily_blotter` frame as CSV (columns in :data:`BLOTTER_COLUMNS` order)."""
    return write_csv(df[list(BLOTTER_COLUMNS)], path)


def write_rts22_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a :func:`rts22_transactions` frame as CSV (columns in :data:`RTS22_COLUMNS` order)."""
    return write_csv(df[list(RTS22_COLUMNS)], path)


def write_rts22_xml(df: pd.DataFrame, path: str | Path, period: Period | None = None) -> Path:
    """Write a :func:`rts22_transactions` frame as the RTS 22-style XML document (UTF-8)."""
    tree = rts22_xml(df, period)
    return _atomic_write(Path(path), lambda p: tree.write(p, encoding="utf-8", xml_declaration=True))


def write_compliance_html(page: str, path: str | Path) -> Path:
    """Write a page from :func:`compliance_summary_html` (UTF-8)."""
    return _atomic_write(Path(path), lambda p: p.write_text(page, encoding="utf-8", newline="\n"))


def export_day(url: str, day: Any, out_dir: str | Path, operator_id: str, *, end: Any = None,
               verify_result: Mapping[str, Any] | None = None, limits: Mapping[str, Any] | None = None,
               levels: Mapping[str, float] | None = None, generated_at: dt.datetime | None = None) -> list[Path]:
    """Write every export of the period into ``out_dir`` from one consistent read of the database.

    Files (``LABEL`` is :attr:`Period.label`, ``YYYY-MM-DD`` for one day): ``blotter-LABEL.csv``,
    ``breaches-LABEL.csv``, ``reconciliation-LABEL.csv``, ``rts22-LABEL.csv``, ``rts22-LABEL.xml``,
    ``positions-LABEL.csv``, ``compliance-LABEL.html``. A period without activity still gets every
    file (headers only). Existing files of the same name are replaced.

    Parameters
    ----------
    operator_id
        CME Tag 50 of the person or team running the system (required, non-empty).

    Returns
    -------
    list[Path]
        The files written, in the order above.
    """
    if not isinstance(operator_id, str) or not operator_id.strip():
        raise ValueError("operator_id (CME Tag 50) is required: the person or team running the system")
    period = Period.of(day, end)
    bundle = _gather(url, period, operator_id, levels)
    out = Path(out_dir)
    label = period.label
    page = _render_html(bundle, verify_result, limits, generated_at or dt.datetime.now(_UTC))
    return [
        write_blotter_csv(bundle.blotter, out / f"blotter-{label}.csv"),
        write_csv(bundle.breaches, out / f"breaches-{label}.csv"),
        write_csv(bundle.reconciliation, out / f"reconciliation-{label}.csv"),
        write_rts22_csv(bundle.rts22, out / f"rts22-{label}.csv"),
        write_rts22_xml(bundle.rts22, out / f"rts22-{label}.xml", period),
        write_csv(bundle.positions, out / f"positions-{label}.csv"),
        write_compliance_html(page, out / f"compliance-{label}.html"),
    ]
