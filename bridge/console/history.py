"""What the sidecar stored, as the console shows it: read-only queries on its database.

The database is the sidecar's own (``storage.url`` of the same configuration, else the default SQLite
file, ``bridge.storage.database.default_db_url``). Nothing here writes: only SELECTs, on connections
of their own, so the sidecar's writer is never held up (SQLite's WAL lets readers and the writer pass).

The history window (``console.history_days``) is a window of *sessions*: those that started, ended or
are still open within it. Every table is read through its session, because market events carry the
data's own time (a playback of 2018 data stores 2018 event times) while sessions carry the wall clock.
Rows come back as plain dicts of JSON types; times stay int64 nanoseconds (microseconds for the audit
chain's ``ts_us``), as stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, inspect, or_, select
from sqlalchemy import exc as sa_exc

from bridge.core.instruments import InstrumentMaster
from bridge.storage.database import StorageError, create_engine_for, default_db_url, parse_url, safe_url
from bridge.storage.schema import metadata

__all__ = ["History", "HistoryUnavailable", "NotFound", "storage_url"]

log = logging.getLogger("nt8bridge.console.history")

NS_PER_DAY = 86_400 * 1_000_000_000
MAX_ROWS = 5000
DECISION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_DENIAL_CODE = re.compile(r"^DENIED:\s*([A-Z][A-Z0-9_]*)")
RISK_AUDIT_KINDS = ("kill", "enable", "limit_change", "override", "trading_hold", "trading_hold_released",
                    "risk_event")


def storage_url(configured: str) -> str:
    """The database the sidecar records into: ``storage.url``, else the default SQLite file (the sidecar's
    own rule, bridge/cli/common.py ``db_url``)."""
    return configured or default_db_url()


class HistoryUnavailable(RuntimeError):
    """Storage cannot be read now; the message says why and what to do."""


class NotFound(LookupError):
    """No such row (a decision id that was never stored)."""


def _json_or_none(text: Any) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return {"unparsed": str(text)}


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _row(r: Any) -> dict[str, Any]:
    return {k: _finite(v) for k, v in r._mapping.items()}


def _signed(market_position: str | None, quantity: int) -> int:
    mp = (market_position or "").upper()
    return 0 if mp == "FLAT" else -abs(quantity) if mp == "SHORT" else abs(quantity)


def denial_code(outcome: str) -> str:
    """``DENIED:RISK_MAX_POSITION (...)`` -> ``RISK_MAX_POSITION``; a denial without a code is ``OTHER``."""
    m = _DENIAL_CODE.match(outcome or "")
    return m.group(1) if m else "OTHER"


# --------------------------------------------------------------------------- realized P&L


@dataclass
class _Book:
    """One strategy instance's position in one instrument, at average cost (as NT8 reports it)."""

    position: int = 0
    avg: float = 0.0
    realized: float = 0.0
    commission: float = 0.0
    fills: int = 0


@dataclass
class Fills:
    """Executions of the window, each once, with what each one realized."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # in event time order, each with "realized"
    by_session: dict[tuple[int, str], _Book] = field(default_factory=dict)  # (session, instrument) -> totals


def realize(rows: list[dict[str, Any]], point_value: Callable[[str], float]) -> Fills:
    """Average-cost realized P&L of ``rows`` (executions with ``instance_id`` and ``account``, in event order).

    A strategy instance's position carries across its sessions (a reconnect or a restart resumes it), so
    books are kept per (instance, account, instrument); what a fill realizes is credited to its session.
    NT8 replays fills into later sessions: a fill is counted once, by (instance, account, execution id)."""
    books: dict[tuple[Any, Any, str], _Book] = {}
    out = Fills()
    seen: set[tuple[Any, Any, str]] = set()
    for r in rows:
        key = (r.get("instance_id"), r.get("account"), r["execution_id"])
        if key in seen:
            continue
        seen.add(key)
        book = books.setdefault((r.get("instance_id"), r.get("account"), r["instrument"]), _Book())
        per_session = out.by_session.setdefault((r["session_id"], r["instrument"]), _Book())
        q = int(r["quantity"])
        signed = q if r["side"] == "BUY" else -q
        price = float(r["price"])
        realized = 0.0
        if book.position == 0 or (book.position > 0) == (signed > 0):
            total = abs(book.position) + q
            book.avg = (book.avg * abs(book.position) + price * q) / total if total else 0.0
        else:
            closed = min(abs(book.position), q)
            direction = 1 if book.position > 0 else -1
            realized = (price - book.avg) * direction * closed * point_value(r["instrument"])
            if q > closed:  # through zero: the rest opens the other way at this price
                book.avg = price
        book.position += signed
        if book.position == 0:
            book.avg = 0.0
        commission = float(r.get("commission") or 0.0)
        for b in (book, per_session):
            b.realized += realized
            b.commission += commission
            b.fills += 1
        per_session.position = book.position
        out.rows.append({**r, "realized": round(realized, 2)})
    return out


# --------------------------------------------------------------------------- the reader


class History:
    """Read-only queries on the sidecar's database, bounded by ``history_days``."""

    def __init__(self, url: str, history_days: float = 1.0, clock: Callable[[], int] = time.time_ns,
                 master: InstrumentMaster | None = None) -> None:
        self.url = url
        self.history_days = history_days
        self._clock = clock
        self._engine: Engine | None = None
        self._tables: set[str] | None = None
        self._master = master or InstrumentMaster.default()
        self._sqlite_path: Path | None = None
        parsed = parse_url(url)  # StorageError for an unusable URL: the console refuses to start with it
        if parsed.get_backend_name() == "sqlite":
            self._sqlite_path = Path(parsed.database or "")

    @property
    def where(self) -> str:
        return safe_url(self.url)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        if self._sqlite_path is not None and not self._sqlite_path.exists():
            # connecting would create an empty file where the sidecar has never recorded
            raise HistoryUnavailable(f"no recordings yet: {self._sqlite_path} does not exist (the sidecar creates "
                                     "it at its first start; check storage.url if it records elsewhere)")
        if self._engine is None:
            self._engine = create_engine_for(self.url)
        try:
            with self._engine.connect() as conn:
                if self._tables is None or "sessions" not in self._tables:
                    self._tables = set(inspect(conn).get_table_names())
                yield conn
        except sa_exc.SQLAlchemyError as exc:
            raise HistoryUnavailable(f"cannot read storage at {self.where}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:300]}") from None
        except StorageError as exc:
            raise HistoryUnavailable(str(exc)) from None

    def _has(self, *tables: str) -> bool:
        return self._tables is not None and all(t in self._tables for t in tables)

    @property
    def cutoff_ns(self) -> int:
        return self._clock() - int(self.history_days * NS_PER_DAY)

    def _window(self) -> Any:
        """The ids of the sessions within the history window (a subquery)."""
        s = metadata.tables["sessions"]
        cutoff = self.cutoff_ns
        return select(s.c.session_id).where(or_(s.c.started_ns >= cutoff, s.c.ended_ns >= cutoff,
                                                s.c.ended_ns.is_(None)))

    def _point_value(self, conn: Connection) -> Callable[[str], float]:
        stored = {r.name: r.point_value for r in conn.execute(select(metadata.tables["instruments"]))} \
            if self._has("instruments") else {}
        cache: dict[str, float] = {}

        def value(name: str) -> float:
            if name not in cache:
                pv = stored.get(name)
                if pv is None:
                    try:
                        pv = self._master.resolve(name).point_value
                    except ValueError:
                        log.warning("no point value for %s (not stored, not in the instrument master): P&L in points",
                                    name)
                        pv = 1.0
                cache[name] = pv
            return cache[name]
        return value

    # --- sessions ---

    def sessions(self, limit: int = 500) -> dict[str, Any]:
        with self._conn() as conn:
            if not self._has("sessions"):
                return self._empty("sessions")
            s, t = metadata.tables["sessions"], metadata.tables
            rows = [_row(r) for r in conn.execute(select(s).where(s.c.session_id.in_(self._window()))
                                                   .order_by(s.c.started_ns.desc()).limit(limit))]
            ids = [r["session_id"] for r in rows]
            counts: dict[str, dict[int, int]] = {}
            for name in ("decisions", "orders", "executions"):
                if self._has(name) and ids:
                    table = t[name]
                    counts[name] = dict(conn.execute(select(table.c.session_id, func.count())
                                                     .where(table.c.session_id.in_(ids))
                                                     .group_by(table.c.session_id)).all())
        for r in rows:
            r["open"] = r["ended_ns"] is None
            for name in ("decisions", "orders", "executions"):
                r[name] = counts.get(name, {}).get(r["session_id"], 0)
        return {"source": "stored", "history_days": self.history_days, "sessions": rows}

    def _empty(self, key: str) -> dict[str, Any]:
        return {"source": "stored", "history_days": self.history_days, key: [],
                "note": f"{self.where} has no nt8bridge schema yet (the sidecar creates it at start)"}

    # --- fills, positions, P&L ---

    def _fills(self, conn: Connection) -> Fills:
        e, s = metadata.tables["executions"], metadata.tables["sessions"]
        rows = [_row(r) for r in conn.execute(
            select(e, s.c.account, s.c.instance_id).select_from(e.outerjoin(s, s.c.session_id == e.c.session_id))
            .where(e.c.session_id.in_(self._window())).order_by(e.c.ts_event_ns, e.c.id))]
        return realize(rows, self._point_value(conn))

    def positions(self) -> dict[str, Any]:
        """The latest ``positions`` row of each session and instrument in the window (what NT8 last
        reported), with the realized P&L of that session's fills in it."""
        with self._conn() as conn:
            if not self._has("positions", "sessions"):
                return self._empty("positions")
            p, s = metadata.tables["positions"], metadata.tables["sessions"]
            last = (select(func.max(p.c.id).label("id")).where(p.c.session_id.in_(self._window()))
                    .group_by(p.c.session_id, p.c.instrument).subquery())
            rows = conn.execute(select(p, s.c.account, s.c.instance_id)
                                .select_from(p.join(last, last.c.id == p.c.id)
                                             .outerjoin(s, s.c.session_id == p.c.session_id))
                                .order_by(p.c.session_id, p.c.instrument)).all()
            fills = self._fills(conn) if self._has("executions") else Fills()
        out = []
        for r in rows:
            d = _row(r)
            book = fills.by_session.get((d["session_id"], d["instrument"]), _Book())
            d["quantity_signed"] = _signed(d["market_position"], d["quantity"])
            d["realized"] = round(book.realized, 2)
            d["commission"] = round(book.commission, 2)
            out.append(d)
        return {"source": "stored", "history_days": self.history_days, "positions": out}

    def pnl(self) -> dict[str, Any]:
        """Realized P&L per session and instrument from the stored fills, and NT8's last account values."""
        with self._conn() as conn:
            if not self._has("executions", "sessions"):
                return self._empty("pnl")
            fills = self._fills(conn)
            accounts = []
            if self._has("account_values"):
                a, s = metadata.tables["account_values"], metadata.tables["sessions"]
                last = (select(func.max(a.c.id).label("id")).where(a.c.session_id.in_(self._window()))
                        .group_by(a.c.session_id, a.c.account).subquery())
                accounts = [_row(r) for r in conn.execute(select(a).join(last, last.c.id == a.c.id)
                                                          .order_by(a.c.session_id, a.c.account))]
            sessions = {r.session_id: r for r in conn.execute(
                select(metadata.tables["sessions"]).where(metadata.tables["sessions"].c.session_id.in_(self._window())))}
        rows = []
        for (sid, instrument), book in sorted(fills.by_session.items()):
            srow = sessions.get(sid)
            rows.append({"session_id": sid, "account": srow.account if srow else None, "instrument": instrument,
                         "realized": round(book.realized, 2), "commission": round(book.commission, 2),
                         "net": round(book.realized - book.commission, 2), "fills": book.fills,
                         "position": book.position})
        realized = sum(r["realized"] for r in rows)
        commission = sum(r["commission"] for r in rows)
        return {"source": "stored", "history_days": self.history_days, "pnl": rows, "account_values": accounts,
                "total": {"realized": round(realized, 2), "commission": round(commission, 2),
                          "net": round(realized - commission, 2)}}

    def equity(self, max_points: int = 2000) -> dict[str, Any]:
        """Equity over time: NT8's account values when it reported them, else the cumulative realized P&L
        after commissions of the stored fills (event time)."""
        with self._conn() as conn:
            if not self._has("executions", "sessions"):
                return {"source": "none", "series": {}, "history_days": self.history_days}
            series: dict[str, list[list[float]]] = defaultdict(list)
            source = "account_values"
            if self._has("account_values"):
                a = metadata.tables["account_values"]
                for r in conn.execute(select(a.c.account, a.c.ts_event_ns, a.c.cash_value, a.c.realized_pnl,
                                             a.c.unrealized_pnl).where(a.c.session_id.in_(self._window()))
                                      .order_by(a.c.ts_event_ns, a.c.id)):
                    value = r.cash_value if r.cash_value is not None and math.isfinite(r.cash_value) else \
                        (r.realized_pnl or 0.0) + (r.unrealized_pnl or 0.0)
                    series[r.account].append([r.ts_event_ns, value])
            if not series:
                source = "executions"
                fills = self._fills(conn)
                totals: dict[str, float] = defaultdict(float)
                for f in fills.rows:
                    account = f.get("account") or f"session:{f['session_id']}"
                    totals[account] += f["realized"] - float(f.get("commission") or 0.0)
                    series[account].append([f["ts_event_ns"], round(totals[account], 2)])
        return {"source": source, "history_days": self.history_days,
                "series": {k: _thin(v, max_points) for k, v in series.items()}}

    # --- orders and the blotter ---

    def orders(self, limit: int = 500) -> dict[str, Any]:
        """The window's orders, newest first, each with the last state NT8 reported for its entry, stop and
        target."""
        limit = max(1, min(limit, MAX_ROWS))
        with self._conn() as conn:
            if not self._has("orders", "sessions"):
                return self._empty("orders")
            o, u, s = metadata.tables["orders"], metadata.tables["order_updates"], metadata.tables["sessions"]
            rows = [_row(r) for r in conn.execute(
                select(o, s.c.account).select_from(o.outerjoin(s, s.c.session_id == o.c.session_id))
                .where(o.c.session_id.in_(self._window())).order_by(o.c.ts_created_ns.desc()).limit(limit))]
            ids = [r["client_order_id"] for r in rows]
            last: dict[tuple[str, str], Any] = {}
            for chunk in _chunks(ids, 500):
                for r in conn.execute(select(u.c.client_order_id, u.c.role, u.c.state, u.c.filled, u.c.avg_fill_price,
                                             u.c.ts_event_ns, u.c.comment)
                                      .where(u.c.client_order_id.in_(chunk)).order_by(u.c.id)):
                    last[(r.client_order_id, r.role)] = r  # the last one wins (made a dict below: only it)
        for r in rows:
            found = last.get((r["client_order_id"], "ENTRY"))
            entry = _row(found) if found is not None else {}
            r["state"] = entry.get("state")
            r["filled"] = entry.get("filled", 0)
            r["avg_fill_price"] = entry.get("avg_fill_price")
            r["updated_ns"] = entry.get("ts_event_ns")
            r["stop_state"] = getattr(last.get((r["client_order_id"], "STOP")), "state", None)
            r["target_state"] = getattr(last.get((r["client_order_id"], "TARGET")), "state", None)
        return {"source": "stored", "history_days": self.history_days, "orders": rows}

    def blotter(self, limit: int = 500) -> dict[str, Any]:
        """The window's fills, newest first, each with its order and the decision that sent it."""
        limit = max(1, min(limit, MAX_ROWS))
        with self._conn() as conn:
            if not self._has("executions", "orders", "decisions", "sessions"):
                return self._empty("blotter")
            fills = self._fills(conn).rows[::-1][:limit]
            o, d = metadata.tables["orders"], metadata.tables["decisions"]
            coids = sorted({f["client_order_id"] for f in fills if f.get("client_order_id")})
            orders: dict[str, Any] = {}
            for chunk in _chunks(coids, 500):
                orders.update({r.client_order_id: r for r in conn.execute(select(o).where(o.c.client_order_id.in_(chunk)))})
            dids = sorted({r.decision_id for r in orders.values() if r.decision_id})
            decisions: dict[str, Any] = {}
            for chunk in _chunks(dids, 500):
                decisions.update({r.decision_id: r for r in conn.execute(
                    select(d.c.decision_id, d.c.strategy, d.c.outcome, d.c.rationale).where(d.c.decision_id.in_(chunk)))})
        out = []
        for f in fills:
            order = orders.get(f.get("client_order_id") or "")
            decision = decisions.get(order.decision_id) if order is not None and order.decision_id else None
            out.append({"execution_id": f["execution_id"], "session_id": f["session_id"], "account": f.get("account"),
                        "instrument": f["instrument"], "side": f["side"], "quantity": f["quantity"],
                        "price": f["price"], "commission": f.get("commission"), "role": f.get("role"),
                        "ts_event_ns": f["ts_event_ns"], "realized": f["realized"],
                        "client_order_id": f.get("client_order_id"),
                        "decision_id": order.decision_id if order is not None else None,
                        "strategy": decision.strategy if decision is not None else
                        (order.algorithm_id if order is not None else None),
                        "entry_type": order.entry_type if order is not None else None,
                        "outcome": decision.outcome if decision is not None else None,
                        "rationale": decision.rationale if decision is not None else None})
        return {"source": "stored", "history_days": self.history_days, "blotter": out}

    # --- one decision ---

    def decision(self, decision_id: str) -> dict[str, Any]:
        """One decision with everything that went into it (not bounded by the window: a link must work)."""
        if not DECISION_ID.match(decision_id):
            raise ValueError(f"{decision_id!r} is not a decision id (e.g. S1712345678-D42)")
        with self._conn() as conn:
            if not self._has("decisions"):
                raise NotFound(f"no decision {decision_id}: storage has no decisions table yet")
            d = metadata.tables["decisions"]
            row = conn.execute(select(d).where(d.c.decision_id == decision_id)).first()
            if row is None:
                raise NotFound(f"no decision {decision_id} in {self.where}")
            out = _row(row)
            o, e = metadata.tables["orders"], metadata.tables["executions"]
            orders = [_row(r) for r in conn.execute(select(o).where(o.c.decision_id == decision_id))]
            coids = [r["client_order_id"] for r in orders]
            executions = [_row(r) for r in conn.execute(select(e).where(e.c.client_order_id.in_(coids))
                                                       .order_by(e.c.ts_event_ns, e.c.id))] if coids else []
            audit = None
            if self._has("audit_chain"):
                c = metadata.tables["audit_chain"]
                rec = conn.execute(select(c.c.seq, c.c.ts_us, c.c.hash, c.c.payload)
                                   .where(c.c.kind == "decision", c.c.subject_id == decision_id)
                                   .order_by(c.c.seq).limit(1)).first()
                if rec is not None:
                    payload = _json_or_none(rec.payload) or {}
                    stored = hashlib.sha256((out["inputs"] or "").encode()).hexdigest()
                    audit = {"seq": rec.seq, "ts_us": rec.ts_us, "hash": rec.hash,
                             "inputs_sha256": payload.get("inputs_sha256"),
                             "inputs_match": payload.get("inputs_sha256") == stored}
        inputs = _json_or_none(out.pop("inputs"))
        out.update(explain(inputs if isinstance(inputs, dict) else {}))
        out.update({"inputs": inputs, "orders": orders, "executions": executions, "audit": audit})
        return out

    # --- risk ---

    def risk(self, recent: int = 50) -> dict[str, Any]:
        """Denials by reason in the window (and the latest ones), and the operators' acts on risk: kills,
        enables, limit changes, overrides, holds."""
        with self._conn() as conn:
            if not self._has("decisions", "sessions"):
                return {"source": "stored", "denials_by_reason": {}, "recent_denials": [], "actions": []}
            d = metadata.tables["decisions"]
            denied = and_(d.c.session_id.in_(self._window()), d.c.outcome.like("DENIED:%"))
            by_reason: dict[str, int] = defaultdict(int)
            for outcome, n in conn.execute(select(d.c.outcome, func.count()).where(denied).group_by(d.c.outcome)):
                by_reason[denial_code(outcome)] += n
            latest = [_row(r) for r in conn.execute(
                select(d.c.decision_id, d.c.session_id, d.c.instrument, d.c.strategy, d.c.ts_event_ns,
                       d.c.ts_sidecar_ns, d.c.outcome).where(denied).order_by(d.c.ts_sidecar_ns.desc()).limit(recent))]
            for r in latest:
                r["reason"] = denial_code(r["outcome"])
            actions = self._audit_kinds(conn, RISK_AUDIT_KINDS, exclude_risk_events=True)
        return {"source": "stored", "history_days": self.history_days,
                "denials_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
                "recent_denials": latest, "actions": actions}

    def _audit_kinds(self, conn: Connection, kinds: tuple[str, ...], limit: int = 200,
                     exclude_risk_events: bool = False) -> list[dict[str, Any]]:
        """Audit records of these kinds within the window, newest first, from the chain and the older audit_log."""
        kinds = tuple(k for k in kinds if not (exclude_risk_events and k == "risk_event"))
        out: list[dict[str, Any]] = []
        cutoff = self.cutoff_ns
        if self._has("audit_chain"):
            c = metadata.tables["audit_chain"]
            for r in conn.execute(select(c.c.seq, c.c.ts_us, c.c.kind, c.c.subject_id, c.c.session_id, c.c.payload)
                                  .where(c.c.kind.in_(kinds), c.c.ts_us >= cutoff // 1000)
                                  .order_by(c.c.seq.desc()).limit(limit)):
                out.append({"seq": r.seq, "ts_ns": r.ts_us * 1000, "kind": r.kind, "subject_id": r.subject_id,
                            "session_id": r.session_id, "payload": _json_or_none(r.payload)})
        if self._has("audit_log"):
            a = metadata.tables["audit_log"]
            for r in conn.execute(select(a).where(a.c.kind.in_(kinds), a.c.ts_sidecar_ns >= cutoff)
                                  .order_by(a.c.id.desc()).limit(limit)):
                out.append({"seq": None, "ts_ns": r.ts_sidecar_ns, "kind": r.kind, "subject_id": r.subject_id,
                            "session_id": r.session_id, "payload": _json_or_none(r.payload)})
        out.sort(key=lambda r: r["ts_ns"], reverse=True)
        return out[:limit]

    # --- models ---

    def models(self, registry: Path | None = None) -> dict[str, Any]:
        """The registered models (champion and challengers), their recent events, and the drift alerts of
        the window. The registry folder, when there is one, is the truth for status (ml/registry.py)."""
        models: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        drift: list[dict[str, Any]] = []
        with self._conn() as conn:
            if self._has("models"):
                m = metadata.tables["models"]
                for r in conn.execute(select(m.c.model_id, m.c.created_ns, m.c.status, m.c.feature_set_version,
                                             m.c.train_start_ns, m.c.train_end_ns, m.c.metrics, m.c.expires_ns,
                                             m.c.code_version).order_by(m.c.created_ns.desc())):
                    d = _row(r)
                    d["metrics"] = _json_or_none(d["metrics"])
                    d["on_disk"] = None
                    models.append(d)
            if self._has("model_events"):
                me = metadata.tables["model_events"]
                events = [_row(r) for r in conn.execute(select(me).order_by(me.c.ts_ns.desc()).limit(100))]
            if self._has("drift_alerts"):
                da = metadata.tables["drift_alerts"]
                drift = [_row(r) for r in conn.execute(select(da).where(da.c.ts_ns >= self.cutoff_ns)
                                                       .order_by(da.c.ts_ns.desc()).limit(500))]
        champion = None
        if registry is not None and registry.is_dir():
            champion = _registry_status(registry, models)
        else:
            champion = next((m["model_id"] for m in models if m["status"] == "champion"), None)
        return {"source": "stored", "registry": str(registry) if registry else None, "champion": champion,
                "models": models, "events": events, "drift_alerts": drift}

    # --- audit ---

    def audit_head(self, recent: int = 50) -> dict[str, Any]:
        """The chain's last record and the latest records."""
        with self._conn() as conn:
            if not self._has("audit_chain"):
                return {"head": None, "recent": [], "records": 0}
            c = metadata.tables["audit_chain"]
            rows = [_row(r) for r in conn.execute(select(c.c.seq, c.c.ts_us, c.c.kind, c.c.subject_id,
                                                         c.c.session_id, c.c.hash)
                                                  .order_by(c.c.seq.desc()).limit(recent))]
        return {"head": rows[0] if rows else None, "recent": rows, "records": rows[0]["seq"] if rows else 0}


def explain(inputs: dict[str, Any]) -> dict[str, Any]:
    """The parts of a decision's stored inputs an operator asks about, by name (bridge/engine/pipeline.py
    writes them): features, the signal and its win probability, the sizing and its Kelly fraction, the
    risk checks with their limits."""
    signal = inputs.get("signal") if isinstance(inputs.get("signal"), dict) else {}
    sizing = inputs.get("sizing") if isinstance(inputs.get("sizing"), dict) else {}
    checks = inputs.get("risk") if isinstance(inputs.get("risk"), list) else []
    kelly = {k: sizing.get(k) for k in ("mode", "kelly_f", "shrunk_f", "applied_f", "kelly_multiplier", "shrinkage",
                                        "payoff_ratio", "regime", "exposure_cut") if k in sizing}
    return {"features": inputs.get("features") if isinstance(inputs.get("features"), dict) else {},
            "signal": signal, "probability": signal.get("win_probability"), "sizing": sizing, "kelly": kelly,
            "risk_checks": [c for c in checks if isinstance(c, dict)],
            "limits": [{"check": c.get("check"), "scope": c.get("scope"), "limit": c.get("limit"),
                        "value": c.get("value"), "passed": c.get("passed")}
                       for c in checks if isinstance(c, dict) and c.get("limit") is not None],
            "position_before": inputs.get("position"), "working_before": inputs.get("working"),
            "equity": inputs.get("equity")}


def _registry_status(root: Path, models: list[dict[str, Any]]) -> str | None:
    """Status from the registry's files (the truth), merged into the database rows; returns the champion."""
    from ml.registry import Registry, RegistryError

    try:
        registry = Registry(root)  # no database: the files alone, nothing written
        records = registry.list()
        champion = registry.champion()
    except (RegistryError, OSError, ValueError) as exc:
        log.warning("model registry %s not readable: %s", root, exc)
        return next((m["model_id"] for m in models if m["status"] == "champion"), None)
    by_id = {m["model_id"]: m for m in models}
    for r in records:
        m = by_id.get(r.model_id)
        if m is None:
            m = {"model_id": r.model_id, "created_ns": r.created_ns, "feature_set_version": r.feature_set_version,
                 "train_start_ns": r.train_start_ns, "train_end_ns": r.train_end_ns, "metrics": r.metrics,
                 "expires_ns": r.expires_ns, "code_version": r.code_version}
            models.append(m)
        m["status"] = r.status
        m["on_disk"] = True
    models.sort(key=lambda m: m.get("created_ns") or 0, reverse=True)
    return champion.model_id if champion is not None else None


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _thin(points: list[list[float]], max_points: int) -> list[list[float]]:
    """At most ``max_points`` of a series, evenly spaced, the last always kept (a chart needs no more)."""
    if len(points) <= max_points:
        return points
    step = len(points) / max_points
    out = [points[int(i * step)] for i in range(max_points - 1)]
    out.append(points[-1])
    return out
