"""The sidecar's state in one JSON-ready dict: what the event stream publishes as ``snapshot`` (and the
trading metrics read), built from the server's sessions and their decision pipelines.

Built on the server's own thread, between bursts, every ``SNAPSHOT_INTERVAL_S`` while somebody reads it
(the event stream, the metrics): its cost grows with what is open (sessions, instruments, working
brackets, limits), never with a session's history, so it cannot grow into a pause of the hot path.

Money is in the instrument's currency, P&L in dollars:

- a position row is one strategy's contracts on one instrument in one session: ``quantity`` signed,
  ``avg_price`` the average entry price of the contracts still open, ``unrealized`` those contracts
  marked at the last trade price (``(last - avg) * quantity * point value``), ``realized`` what its
  closed brackets booked (net of commission, as the pipeline books them) plus the exits already filled
  of the brackets still open. Contracts no bracket of this sidecar accounts for (a manual trade, another
  program on the account) are a row with ``strategy`` null and their entry, so their P&L, unknown.
- ``pnl`` per session: the sums of its rows; ``equity`` is ``sizing.equity`` plus both.
- the limits listed are those in force (every session has the same: the config, then each accepted
  ``set_limit`` and ``override``); with no session, those a session would start with. A limit's
  ``use`` is measured the way the risk engine counts it: position limits in contracts of one
  instrument, working entries included (the largest over the instruments); loss limits from the
  scope's day P&L the engine holds. Each session's engine enforces its own limits, so with several
  sessions ``use`` is the highest of them: the session nearest to a denial. Limits that apply to one
  order (quantity, notional, collar) or to a rate have no standing use: null.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from typing import Any

from bridge import __version__
from bridge.core.limits import Scope, strategy_key
from bridge.core.timing import RecentWindow
from bridge.engine.orders import BracketStatus
from bridge.risk.engine import RiskEngine, TradingState

# The server imports this module, so its types are named here, not imported (no import cycle).
SidecarServer = Any  # bridge.transport.server.SidecarServer
Session = Any  # bridge.transport.server.Session

__all__ = ["REPORTED_LIMITS", "StateBuilder"]

# the limits a snapshot lists, in this order (``sessions``, ``blackouts`` and the switches are not amounts)
REPORTED_LIMITS = ("max_long", "max_short", "max_net", "max_order_quantity", "max_order_notional", "collar_ticks",
                   "collar_pct", "max_daily_loss", "max_drawdown", "max_orders_per_s", "max_changes_per_s",
                   "max_cancels_per_s", "max_executions_per_window", "stale_data_s")
_WORKING = (BracketStatus.SENT, BracketStatus.WORKING)
_STANDING = frozenset({"max_long", "max_short", "max_net", "max_daily_loss", "max_drawdown"})  # limits with a use


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class StateBuilder:
    """Builds ``SidecarServer.snapshot()``; keeps the desk's limits engine for when no session is open."""

    def __init__(self, server: SidecarServer) -> None:
        self.server = server
        self._desk_engine: tuple[int, RiskEngine] | None = None  # (commands applied, engine)
        self._exposures: dict[int, dict[tuple[str, str, str], list[int]]] = {}  # per session, within one build
        self._recent = RecentWindow()

    def build(self) -> dict[str, Any]:
        server = self.server
        sessions = list(server.sessions.values())
        now = time.monotonic()
        positions: list[dict[str, Any]] = []
        pnl: list[dict[str, Any]] = []
        for s in sessions:
            rows, realized, unrealized = self._positions(s)
            positions.extend(rows)
            pnl.append({"session_id": s.session_id, "account": s.hello.account, "realized": realized,
                        "unrealized": unrealized,
                        "equity": server.config.sizing.equity + realized + unrealized})
        return {"sidecar": self._sidecar(now),
                "sessions": [self._session(s, now) for s in sessions],
                "positions": positions,
                "orders": [o for s in sessions for o in self._orders(s)],
                "pnl": pnl,
                "risk": self._risk(sessions),
                "latency": self._latency(),
                "events": self._events(),
                # the feeds beside NT8 and the reference per root (bridge/transport/feeds.py); None: NT8 only
                "feeds": server.feeds.report() if server.feeds is not None else None}

    # --- the sidecar and its sessions ---------------------------------------------------------------

    def _sidecar(self, now: float) -> dict[str, Any]:
        server = self.server
        switch = server.switch
        kill = next((e for e in reversed(switch.events) if e.kind == "kill"), None) if switch.halted else None
        return {"pid": os.getpid(), "version": __version__, "role": server.role, "endpoint": server.endpoint,
                "control_endpoint": server.control_endpoint, "events_endpoint": server.events_endpoint,
                "uptime_s": round(now - server.started_monotonic, 3), "trading_state": str(switch.state),
                "halted_by": kill.operator if kill else None, "halted_reason": kill.reason if kill else None,
                "halted_at_ns": kill.ts_ns if kill else None, "storage": server.storage_health.report()}

    def _session(self, s: Session, now: float) -> dict[str, Any]:
        p = s.pipeline
        instruments = []
        for iid, si in sorted(p.instruments.items()):
            heard = s.last_tick_wall.get(iid)
            # "stale" is the watchdog's verdict (no tick for quality.stale_after_s while the market is open),
            # so a closed market is not a stale feed and a playback's clock (its data) is never one
            feed = "none" if heard is None else "stale" if iid in s.stale_flagged else "ok"
            instruments.append({"instrument": si.decl.name, "root": si.spec.root,
                                "last_price": _num(p.market.instruments[iid].last),
                                "last_tick_age_s": None if heard is None else round(now - heard, 3), "feed": feed})
        return {"session_id": s.session_id, "instance_id": s.hello.instance_id, "account": s.hello.account,
                "peer": s.peer, "lockstep": bool(s.hello.lockstep), "started_ns": s.started_ns,
                "clock_offset_ms": None if s.clock_offset_ns is None else s.clock_offset_ns / 1e6,
                "ticks_accepted": p.ticks_accepted, "ticks_rejected": p.ticks_rejected, "orders_sent": p.orders_sent,
                "instruments": instruments}

    # --- positions, P&L and working orders ----------------------------------------------------------

    def _positions(self, s: Session) -> tuple[list[dict[str, Any]], float, float]:
        """The session's position rows, its realized P&L and the unrealized P&L it can mark."""
        p = s.pipeline
        acc: dict[tuple[int, str | None], list] = {}  # (iid, algorithm) -> [quantity, cost, realized, unrealized]
        attributed: Counter[int] = Counter()
        for b in p.orders.active():
            if not b.entry_filled:
                continue
            iid = b.instrument_id
            pv = p.instruments[iid].decl.point_value
            avg = b.entry_value / b.entry_filled
            q = b.open_quantity
            last = p.market.instruments[iid].last
            row = acc.setdefault((iid, b.algorithm_id), [0, 0.0, 0.0, 0.0])
            row[0] += q
            row[1] += avg * abs(q)
            row[2] += b.side.sign * (b.exit_value - avg * b.exit_filled) * pv
            if q:  # unknown (null) until the instrument has traded
                row[3] = row[3] + (last - avg) * q * pv if row[3] is not None and math.isfinite(last) else None
            attributed[iid] += q
        for (iid, algo), booked in p.realized_by.items():
            acc.setdefault((iid, algo), [0, 0.0, 0.0, 0.0])[2] += booked
        for iid, held in p.orders.positions.items():
            if held != attributed[iid]:
                acc[(iid, None)] = [held - attributed[iid], None, None, None]
        rows = []
        realized = unrealized = 0.0
        for (iid, algo), (q, cost, booked, marked) in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            last = _num(p.market.instruments[iid].last)
            rows.append({"session_id": s.session_id, "account": s.hello.account,
                         "instrument": p.instruments[iid].decl.name, "strategy": algo, "quantity": q,
                         "avg_price": cost / abs(q) if q and cost is not None else None, "last_price": last,
                         "unrealized": marked, "realized": booked})
            realized += booked or 0.0
            unrealized += marked or 0.0
        return rows, realized, unrealized

    def _orders(self, s: Session) -> list[dict[str, Any]]:
        p = s.pipeline
        return [{"session_id": s.session_id, "account": s.hello.account, "client_order_id": b.client_order_id,
                 "decision_id": b.decision_id or None, "instrument": p.instruments[b.instrument_id].decl.name,
                 "strategy": b.algorithm_id, "side": b.side.name, "quantity": b.quantity,
                 "entry_type": b.entry_type.name, "entry_price": _num(b.entry_price), "stop_price": _num(b.stop_price),
                 "target_price": _num(b.target_price), "state": str(b.status), "filled": b.entry_filled}
                for b in sorted(p.orders.active(), key=lambda b: b.ts_created_ns)]

    # --- risk -----------------------------------------------------------------------------------------

    def _risk(self, sessions: list[Session]) -> dict[str, Any]:
        server = self.server
        switch = server.switch
        hold = switch.hold_in_force
        state = (TradingState.HALTED if switch.halted or (hold and hold.state == "HALTED")
                 else TradingState.REDUCING if hold else TradingState.ACTIVE)
        denials = Counter(server.denial_counts)
        holds = [f"{h.source}: {h.state} ({h.reason})" for h in switch.holds.values()]
        for s in sessions:
            denials.update(s.pipeline.denials_by_reason)
            for scope, (st, why) in sorted(s.pipeline.risk.states().items()):
                if st != TradingState.ACTIVE:
                    holds.append(f"session {s.session_id} {scope}: {st} ({why})")
        now_wall = time.time_ns()
        overrides = [{**c.to_dict(), "remaining_s": round(c.remaining_s(now_wall), 3)}
                     for c in server.limit_commands.accepted if c.kind == "override" and c.remaining_s(now_wall) > 0]
        return {"trading_state": str(state), "limits": self._limits(sessions), "denials": dict(sorted(denials.items())),
                "holds": holds, "overrides": overrides}

    def _limits(self, sessions: list[Session]) -> list[dict[str, Any]]:
        # the limits in force are the same in every session (the config, then every accepted command applied to
        # all): read once, from the first session's engine; the use is each session's own
        engine = sessions[0].pipeline.risk if sessions else self._desk_limits()
        out = []
        for scope_text in engine.limits_in_force():
            scope = Scope.parse(scope_text)
            lim = engine.limits(scope)
            for name in REPORTED_LIMITS:
                value = getattr(lim, name)
                if value is None:
                    continue
                use = None
                if name in _STANDING:
                    for s in sessions:
                        used = _use(s.pipeline.risk, scope, name, self._exposure(s))
                        if used is not None and (use is None or used > use):
                            use = used
                out.append({"scope": scope_text, "limit": name, "value": value, "use": use,
                            "utilization": use / value if use is not None and value else None})
        self._exposures.clear()
        return out

    def _exposure(self, s: Session) -> dict[tuple[str, str, str], list[int]]:
        got = self._exposures.get(s.session_id)
        if got is None:
            got = self._exposures[s.session_id] = _exposure(s)
        return got

    def _desk_limits(self) -> RiskEngine:
        """The limits a session would start with now: the config's, with the limit changes accepted so far."""
        commands = self.server.limit_commands
        if self._desk_engine is None or self._desk_engine[0] != len(commands.accepted):
            engine = commands.scratch_engine()
            now = time.time_ns()
            for cmd in commands.accepted:
                if cmd.kind == "set_limit":
                    try:
                        engine.set_limit(cmd.scope, cmd.field, cmd.value, cmd.operator, cmd.reason, now_ns=now)
                    except (ValueError, TypeError):
                        pass  # refused when it was submitted too: it never took effect
            self._desk_engine = (len(commands.accepted), engine)
        return self._desk_engine[1]

    # --- latency and the stream itself --------------------------------------------------------------

    def _latency(self) -> dict[str, Any]:
        # folded histograms only: folding is the hot path's business (its timers), and a snapshot may be
        # built on a scrape's thread
        # "stages" and "tick_to_bracket" are the last minute's (what an operator watches); "since_start" the whole run's
        histograms = self.server.timings.histograms
        recent = {name: {k: _num(v) for k, v in f.items()}
                  for name, f in self._recent.figures(histograms, time.monotonic()).items()}
        none = {"p50_us": None, "p99_us": None, "count": 0}
        return {"window_s": self._recent.window_s,
                "stages": {name: f for name, f in recent.items() if f["count"] and name != "tick_to_bracket"},
                "tick_to_bracket": recent.get("tick_to_bracket", none),
                "since_start": {name: _figures(h) for name, h in histograms.items() if h.count}}

    def _events(self) -> dict[str, Any]:
        publisher = self.server.events
        if publisher is None:
            return {"published": None, "failed": None, "ticks_conflated": None}
        st = publisher.stats
        return {"published": st.published, "failed": st.failed, "ticks_conflated": st.ticks_conflated}


def _figures(h: Any) -> dict[str, Any]:
    return {"p50_us": _num(h.percentile_us(50)), "p99_us": _num(h.percentile_us(99)), "count": h.count}


def _exposure(s: Session) -> dict[tuple[str, str, str], list[int]]:
    """(account, algorithm id, root) -> [filled, working buy entries, working sell entries], as the risk
    engine counts them for the session (``DecisionPipeline._positions`` and ``_working``)."""
    p = s.pipeline
    out: dict[tuple[str, str, str], list[int]] = {}
    for b in p.orders.active():
        key = (p.account, b.algorithm_id, p.instruments[b.instrument_id].spec.root)
        row = out.setdefault(key, [0, 0, 0])
        row[0] += b.open_quantity
        left = b.quantity - b.entry_filled
        if left > 0 and not b.entry_done and b.status in _WORKING:
            row[1 if b.side.sign > 0 else 2] += left
    return out


def _use(engine: RiskEngine, scope: Scope, name: str, exposure: dict[tuple[str, str, str], list[int]]
         ) -> float | None:
    if name in ("max_long", "max_short", "max_net"):
        per_root: dict[str, list[int]] = {}
        for (account, algo, root), (filled, buy, sell) in exposure.items():
            if ((scope.kind == "instrument" and root != scope.name)
                    or (scope.kind == "account" and account != scope.name)
                    or (scope.kind == "strategy" and strategy_key(algo) != scope.name)):
                continue
            agg = per_root.setdefault(root, [0, 0, 0])
            agg[0] += filled
            agg[1] += buy
            agg[2] += sell
        if name == "max_net":
            return max((abs(f + b - s) for f, b, s in per_root.values()), default=0)
        if name == "max_long":
            return max((max(f + b, 0) for f, b, s in per_root.values()), default=0)
        return max((max(s - f, 0) for f, b, s in per_root.values()), default=0)
    if name in ("max_daily_loss", "max_drawdown"):
        day = engine.day_pnl(scope)
        if day is None:
            return None
        return max(0.0, -day[0]) if name == "max_daily_loss" else day[1]
    return None
