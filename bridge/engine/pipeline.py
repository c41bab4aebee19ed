"""The decision pipeline of one NT8 session: one thread, explicit stages, each timed.

quality gate -> market state (quotes, bars from ticks) -> features -> strategies -> portfolio
(regimes, netting, Kelly sizing, caps, exposure) -> risk -> order emitter -> record (storage and
audit rows, handed to the writer thread)

Exits are the pipeline's too: a bracket past its time limit, a strategy's Exit, and leg risk (one
leg of a spread filled, the other rejected, cancelled or stuck) each close the position at market
with a FLATTEN of the instrument, recorded with the reason.

Entry points return the messages to send back to NT8 (ERROR for refused data, BRACKET for
orders); the server sends them. Nothing here blocks: storage is a list append on the writer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from bridge.core.config import Config
from bridge.risk.switch import TradingSwitch
from strategies.features import FeatureEngine, FeatureSnapshot, FeatureWindows
from bridge.core.instruments import InstrumentSpec
from bridge.core.market import BarData, MarketState
from bridge.engine.orders import BracketRecord, OrderTracker
from bridge.protocol.messages import (
    Account,
    Bar,
    Error,
    ErrorCode,
    EntryType,
    Execution,
    Flatten,
    CancelOrder,
    InstrumentDecl,
    MarketPosition,
    Message,
    MsgType,
    OrderRole,
    OrderState,
    OrderType,
    OrderUpdate,
    Position,
    Side,
    Tick,
)
from bridge.engine.quality import QualityGate, QualityReason, QualityVerdict
from bridge.feeds.base import NT8_FEED
from bridge.feeds.reference import Reference
from bridge.audit.recorder import Recorder, finite_or_none
from bridge.audit.reconcile import Break, Reconciler
from bridge.risk.engine import Limits, OrderRequest, RiskContext, RiskEngine, Scope, WorkingOrder
from bridge.core.timing import StageTimings
from strategies.base import Strategy
from strategies.portfolio import BarDecisions, InstrumentInfo, OrderPlan, Portfolio

log = logging.getLogger("nt8bridge.pipeline")

STAGES = ("quality", "market", "features", "strategy", "risk", "emit", "record")
_NO_REPLY: tuple[Message, ...] = ()
_QUOTE_FLAGS = (QualityReason.CROSSED_QUOTE, QualityReason.LOCKED_QUOTE)
# a refusal's ERROR code has the reason's name (STALE_FEED is only ever a flag, so it has none)
_REJECT_CODES = {r: int(ErrorCode[r.value]) for r in QualityReason if r.value in ErrorCode.__members__}


@dataclass(frozen=True, slots=True)
class SessionInstrument:
    instrument_id: int
    decl: InstrumentDecl  # what NT8 declared (its tick size and point value win)
    spec: InstrumentSpec  # what the instrument master knows (hours, limits)


class DecisionPipeline:
    def __init__(self, *, config: Config, instruments: list[SessionInstrument], recorder: Recorder,
                 strategies: list[Strategy], timings: StageTimings, id_prefix: str,
                 switch: TradingSwitch | None = None, account: str = "",
                 references: Callable[[str], Reference | None] | None = None) -> None:
        self.config = config
        # which feed the sidecar believes per root (bridge/transport/feeds.py): the collar's reference price,
        # and no new entry while it is delayed; None: NT8's own last trade, as without other feeds
        self.references = references
        self.recorder = recorder
        self.strategies = strategies
        self.timings = timings
        self.switch = switch or TradingSwitch()  # the server's, shared by every session
        self.instruments = {i.instrument_id: i for i in instruments}
        self.gate = QualityGate(config.quality)
        self.market = MarketState(config.bars.period_s, config.bars.history)
        sc = config.strategy
        self.feature_engine = FeatureEngine(FeatureWindows(sc.atr_bars, sc.lookback_bars, sc.band_bars, sc.er_bars,
                                                     sc.vol_bars))
        self.portfolio = Portfolio(config, strategies, {
            i.instrument_id: InstrumentInfo(i.decl.name, i.spec.root, i.decl.tick_size, i.decl.point_value)
            for i in instruments})
        self._by_root = {i.spec.root: i.instrument_id for i in instruments}
        self.account = account
        self.risk = risk_engine_for(config, instruments, self.gate.is_open)
        self.orders = OrderTracker(id_prefix)
        self.reconciler = Reconciler(config.portfolio.reconcile_grace_s)
        self._ticks_seen: set[int] = set()
        self._last_event_ns = 0
        self.realized = 0.0  # net P&L of the brackets closed this session (currency)
        # the same per (instrument id, algorithm id), and what was denied and broken, by reason: what the
        # operator console and the trading metrics show (bounded by the instruments, strategies and reasons)
        self.realized_by: Counter[tuple[int, str]] = Counter()
        self.denials_by_reason: Counter[str] = Counter()
        self.breaks_by_kind: Counter[str] = Counter()
        self.ticks_accepted = 0
        self.ticks_rejected = 0
        self.decisions = 0
        self.orders_sent = 0
        self.denials = 0
        self.exits_sent = 0
        self.fills_replayed = 0  # fills NT8 reported again after a reconnect that storage already had
        for i in instruments:
            self.gate.add_instrument(i.instrument_id, i.spec, i.decl.tick_size)
            self.market.add_instrument(i.instrument_id, i.decl.name, i.decl.tick_size, i.decl.point_value)
        recorder.set_instruments({i.instrument_id: i.decl.name for i in instruments})
        for s in strategies:
            if s.status != "ready":
                log.warning("strategy %s: %s", s.algorithm_id, s.status)
                recorder.audit("strategy_status", s.algorithm_id, time.time_ns(), {"status": s.status})

    # --- MarketView (what strategies may ask) ---------------------------------------------------

    def features(self, instrument_id: int) -> FeatureSnapshot | None:
        return self.feature_engine.latest.get(instrument_id)

    def instrument_id(self, root: str) -> int | None:
        return self._by_root.get(root)

    def root(self, instrument_id: int) -> str:
        return self.instruments[instrument_id].spec.root

    def is_flat(self, instrument_id: int) -> bool:
        return self.orders.is_flat(instrument_id)

    def position_of(self, instrument_id: int, strategy: str) -> int:
        return self.orders.position_of(instrument_id, strategy)

    def minutes_to_close(self, instrument_id: int, ts_ns: int) -> float:
        return self.gate.minutes_to_close(instrument_id, ts_ns)

    def tick_size(self, instrument_id: int) -> float:
        return self.instruments[instrument_id].decl.tick_size

    def point_value(self, instrument_id: int) -> float:
        return self.instruments[instrument_id].decl.point_value

    def _positions(self) -> dict[tuple[str, str, str], int]:
        """Filled contracts per (account, algorithm, root), as the risk engine counts them."""
        out: dict[tuple[str, str, str], int] = {}
        for b in self.orders.active():
            if b.open_quantity:
                key = (self.account, b.algorithm_id, self.root(b.instrument_id))
                out[key] = out.get(key, 0) + b.open_quantity
        return out

    def _working(self) -> list[WorkingOrder]:
        """Working entries (what is left of them) and the exit legs protecting filled contracts."""
        out: list[WorkingOrder] = []
        for b in self.orders.active():
            root = self.root(b.instrument_id)
            left = b.quantity - b.entry_filled
            if left > 0 and not b.entry_done and b.status.name in ("SENT", "WORKING"):
                out.append(WorkingOrder(b.client_order_id + ":E", self.account, b.algorithm_id, root, b.side, left,
                                        b.entry_type, b.entry_price, True))
            held = abs(b.open_quantity)
            if held:
                exit_side = Side.SELL if b.side == Side.BUY else Side.BUY
                out.append(WorkingOrder(b.client_order_id + ":S", self.account, b.algorithm_id, root, exit_side, held,
                                        EntryType.STOP, b.stop_price, False))
                out.append(WorkingOrder(b.client_order_id + ":T", self.account, b.algorithm_id, root, exit_side, held,
                                        EntryType.LIMIT, b.target_price, False))
        return out

    @property
    def equity(self) -> float:
        return self.config.sizing.equity + self.realized

    # --- market data ----------------------------------------------------------------------------

    def on_tick(self, seq: int, tick: Tick) -> tuple[Message, ...] | list[Message]:
        perf = time.perf_counter_ns
        t0 = perf()
        verdict = self.gate.check_tick(tick)
        t1 = perf()
        self.timings.record("quality", t1 - t0)
        now = time.time_ns()
        if verdict is not None:
            self._record_quality(seq, tick, verdict, now)
            if verdict.reject:
                self.ticks_rejected += 1
                return (Error(_REJECT_CODES[verdict.reason], seq, int(MsgType.TICK), verdict.detail),)
        self.ticks_accepted += 1
        self._ticks_seen.add(tick.instrument_id)
        self.recorder.tick(seq, tick, now)
        t2 = perf()
        closed = self.market.on_tick(tick, verdict is None or verdict.reason not in _QUOTE_FLAGS)
        self.timings.record("market", perf() - t2)
        if closed is None:
            return _NO_REPLY
        self.recorder.bar(closed.instrument_id, closed, "ticks")
        return self._on_closed_bar(closed, tick.ts_exchange_ns, now)

    def on_bar(self, seq: int, bar: Bar) -> tuple[Message, ...] | list[Message]:
        """NT8's own bar; it drives the strategy only for instruments that send no ticks."""
        now = time.time_ns()
        verdict = self.gate.check_bar(bar)
        if verdict is not None:
            self.recorder.quality_event(seq, bar.instrument_id, verdict.reason, verdict.detail,
                                        bar.ts_close_ns, now, _fields(bar))
            return (Error(_REJECT_CODES[verdict.reason], seq, int(MsgType.BAR), verdict.detail),)
        data = BarData(bar.instrument_id, bar.period_s, bar.ts_close_ns - bar.period_s * 1_000_000_000,
                       bar.ts_close_ns, bar.open, bar.high, bar.low, bar.close, bar.volume, 0)
        self.recorder.bar(bar.instrument_id, data, "nt8")
        if bar.instrument_id in self._ticks_seen:
            return _NO_REPLY
        self.market.on_bar(data)
        return self._on_closed_bar(data, bar.ts_close_ns, now)

    def _record_quality(self, seq: int, tick: Tick, verdict: QualityVerdict, now: int) -> None:
        self.recorder.quality_event(seq, tick.instrument_id, verdict.reason, verdict.detail,
                                    tick.ts_exchange_ns, now, _fields(tick) | {"rejected": verdict.reject})

    # --- decisions ------------------------------------------------------------------------------

    def _on_closed_bar(self, bar: BarData, event_ns: int, now: int) -> list[Message]:
        perf = time.perf_counter_ns
        t0 = perf()
        self.feature_engine.on_bar(bar)
        t1 = perf()
        self.timings.record("features", t1 - t0)
        self._last_event_ns = max(self._last_event_ns, event_ns)
        self._reconcile(event_ns)
        replies = self._due_exits(event_ns, now)
        if not self.strategies:
            return replies
        exposure = {iid: self.orders.position(iid) + self.orders.working_entry_quantity(iid)
                    for iid in self.instruments}
        decided = self.portfolio.on_bar(bar, self, self.equity, exposure)
        t2 = perf()
        self.timings.record("strategy", t2 - t1)
        for iid, state in decided.regime_changes:
            self.recorder.audit("regime", self.instruments[iid].decl.name, now,
                                {"ts_event_ns": state.ts_ns, "volatility": str(state.volatility),
                                 "trend": str(state.trend), "method": state.method, "evidence": state.evidence,
                                 "describe": state.describe()})
        replies.extend(self._exits(decided, event_ns, now))
        replies.extend(self._entries(decided, event_ns, now))
        return replies

    def _decision_id(self) -> tuple[str, str]:
        self.decisions += 1
        return self.orders.next_ids()

    def flatten(self, iid: int, reason: str, algorithm_id: str, event_ns: int, now: int,
                 inputs: dict[str, Any]) -> Flatten:
        decision_id, _ = self._decision_id()
        for b in self.orders.active(iid):
            b.exit_requested = True
        self.exits_sent += 1
        self.recorder.decision(decision_id, iid, algorithm_id, event_ns, now, "EXIT", reason, inputs)
        return Flatten(iid, reason[:200])

    def _due_exits(self, event_ns: int, now: int) -> list[Message]:
        """Time limits and stuck spread legs, checked on event time at every closed bar."""
        out: list[Message] = []
        flattened: set[int] = set()
        leg_timeout_ns = int(self.config.portfolio.leg_timeout_s * 1e9)
        for b in self.orders.active():
            iid = b.instrument_id
            if b.exit_requested or iid in flattened:
                continue
            if b.deadline_ns and event_ns >= b.deadline_ns and (b.entry_filled or b.status.name != "SENT"):
                flattened.add(iid)
                out.append(self.flatten(iid, f"time limit of {b.client_order_id} reached", b.algorithm_id,
                                         event_ns, now, {"bracket": b.client_order_id, "deadline_ns": b.deadline_ns}))
            elif b.group and b.entry_filled and event_ns - b.ts_entry_ns >= leg_timeout_ns:
                out.extend(self._leg_risk(b, event_ns, now, flattened))
        return out

    def _leg_risk(self, filled: BracketRecord, event_ns: int, now: int, flattened: set[int]) -> list[Message]:
        """A spread leg holds a position while a partner leg has not filled: close the group."""
        partners = [b for b in self.orders.brackets.values() if b.group == filled.group and b is not filled]
        stuck = [b for b in partners if not b.entry_filled and not b.exit_requested]
        if not stuck:
            return []
        out: list[Message] = []
        for b in stuck:
            b.exit_requested = True
            out.append(CancelOrder(b.client_order_id, "leg risk: partner filled, this leg did not"))
        for b in [filled, *partners]:
            if b.entry_filled and b.instrument_id not in flattened and not b.exit_requested:
                flattened.add(b.instrument_id)
                out.append(self.flatten(b.instrument_id, f"leg risk: {b.client_order_id} filled, "
                                         f"{', '.join(s.client_order_id for s in stuck)} did not", b.algorithm_id,
                                         event_ns, now, {"group": filled.group}))
        log.warning("leg risk in %s: closed the filled legs", filled.group)
        return out

    def _exits(self, decided: BarDecisions, event_ns: int, now: int) -> list[Message]:
        out: list[Message] = []
        for e in decided.exits:
            held = self.orders.position_of(e.instrument_id, e.algorithm_id)
            if not held or any(b.exit_requested for b in self.orders.active(e.instrument_id)):
                continue
            out.append(self.flatten(e.instrument_id, e.rationale, e.algorithm_id, event_ns, now,
                                     {"position": held}))
        return out

    def _entries(self, decided: BarDecisions, event_ns: int, now: int) -> list[Message]:
        for d in decided.dropped:
            if d.reason.startswith("warm-up"):
                continue
            decision_id, _ = self._decision_id()
            self.recorder.decision(decision_id, d.signal.instrument_id, d.algorithm_id, event_ns, now,
                                   "NO_TRADE", f"{d.reason}; signal: {d.signal.rationale}",
                                   {"signal": _signal_fields(d.signal), "sizing": d.sizing})
        # a group is sent whole or not at all: every leg passes risk first
        plans_by_group: dict[str, list[OrderPlan]] = {}
        for plan in decided.plans:
            plans_by_group.setdefault(plan.signal.group or f"#{id(plan)}", []).append(plan)
        out: list[Message] = []
        for plans in plans_by_group.values():
            out.extend(self._decide(plans, event_ns, now))
        return out

    def _decide(self, plans: list[OrderPlan], event_ns: int, now: int) -> list[Message]:
        perf = time.perf_counter_ns
        t1 = perf()
        checked = []
        positions, working = self._positions(), self._working()  # the same for every leg: nothing is sent yet
        feed_denied: str | None = None
        references: dict[int, dict[str, Any]] = {}
        for plan in plans:
            s = plan.signal
            iid = s.instrument_id
            state = self.market.instruments[iid]
            decl = self.instruments[iid].decl
            root = self.root(iid)
            request = OrderRequest(root, plan.algorithm_id, self.account, s.side, plan.quantity, s.entry_type,
                                   s.entry_price, s.stop_price, s.target_price, decl.point_value, decl.tick_size)
            reference = state.last
            if self.references is not None and (ref := self.references(root)) is not None:
                if ref.feed != NT8_FEED and ref.price == ref.price:
                    reference = ref.price  # the collar is measured from the feed the sidecar believes
                feed_denied = feed_denied or ref.entry_denial()
                references[iid] = {"feed": ref.feed, "price": _finite(reference), "freshness": str(ref.freshness),
                                   "healthy": ref.healthy}
            context = RiskContext(event_ns, reference, state.last_ts_ns or None, positions, working,
                                  {"*": (self.realized, 0.0)})
            inputs = (self.orders.position(iid), self.orders.working_entry_quantity(iid))
            checked.append((plan, inputs, self.risk.check_new(request, context)))
        t2 = perf()
        self.timings.record("risk", t2 - t1)
        denied: list[Any] = [str(r.reason) for _, _, r in checked if not r.approved]
        for _, _, r in checked:
            for event in r.events:  # state changes and expired overrides the checks caused
                self.recorder.audit("risk_event", type(event).__name__, now, event.to_dict())
        if self.switch.halted:  # the kill switch: nothing new leaves until a named operator enables trading
            last = self.switch.events[-1]
            denied.insert(0, f"RISK_KILL_SWITCH (by {last.operator}: {last.reason})")
        held = self._held_by_switch(checked)
        if held:
            denied.insert(0, held)
        if feed_denied:  # no new entry on delayed data: the most specific reason, after a kill
            denied.insert(1 if self.switch.halted else 0, feed_denied)
        messages: list[Message] = []
        for plan, inputs, result in checked:
            s = plan.signal
            decision_id, client_order_id = self._decision_id()
            record_inputs: dict[str, Any] = {
                "features": (f.values if (f := self.features(s.instrument_id)) else {}),
                "signal": _signal_fields(s),
                "sizing": plan.sizing,
                "risk": [{"check": c.name, "passed": c.passed, "value": _finite(c.value), "limit": _finite(c.limit),
                          "scope": c.scope} for c in result.checks],
                "position": inputs[0], "working": inputs[1],
                "equity": self.equity,
            }
            if s.instrument_id in references:
                record_inputs["reference"] = references[s.instrument_id]
            if denied:
                self.denials += 1
                first = self.switch.halted or held or feed_denied
                why = (denied[0] if first else str(result.reason) if not result.approved
                       else f"another leg of {s.group} was denied ({denied[0]})")
                self.denials_by_reason[why.split(" ", 1)[0] if why.startswith("RISK_") else "GROUP_LEG_DENIED"] += 1
                self.recorder.decision(decision_id, s.instrument_id, plan.algorithm_id, event_ns, now,
                                       f"DENIED:{why}", plan.rationale, record_inputs)
                log.info("decision %s denied: %s (%s)", decision_id, why, result.describe())
                continue
            deadline = event_ns + int(s.time_limit_s * 1e9) if s.time_limit_s > 0 else 0
            bracket = BracketRecord(client_order_id, decision_id, s.instrument_id, s.side, plan.quantity,
                                    s.entry_type, s.entry_price, s.stop_price, s.target_price, plan.algorithm_id,
                                    event_ns, group=s.group, leg=plan.sizing.get("leg", 0),
                                    legs=plan.sizing.get("legs", 1), deadline_ns=deadline)
            self.orders.add(bracket)
            messages.append(bracket.to_message())
            # The decision and the order are recorded before the BRACKET is handed to the socket.
            self.recorder.decision(decision_id, s.instrument_id, plan.algorithm_id, event_ns, now, "EMITTED",
                                   plan.rationale, record_inputs)
            self.recorder.order(bracket, now)
            self.orders_sent += 1
        self.timings.record("emit", perf() - t2)
        return messages

    def _held_by_switch(self, checked: list[Any]) -> str | None:
        """Why a hold the sidecar put on the switch (the database away, the audit journal's disk full)
        denies these plans, or None: HALTED denies them all, REDUCING a group with any leg that would
        not shrink its instrument's position (held plus working entries)."""
        hold = self.switch.hold_in_force
        if hold is None or self.switch.halted:
            return None
        for plan, (position, working), _result in checked:
            if not hold.allows(position, working, plan.signal.side.sign, plan.quantity):
                return hold.denial
        return None

    # --- order events ---------------------------------------------------------------------------

    def on_order_update(self, seq: int, update: OrderUpdate) -> list[Message]:
        self.recorder.order_update(seq, update)
        if update.client_order_id not in self.orders.brackets:
            self._adopt(update)
        self.reconciler.on_order_update(update.nt8_order_id, update.instrument_id, update.filled, update.ts_event_ns)
        b = self.orders.on_order_update(update)
        if (b is None or not b.group or update.role != OrderRole.ENTRY or b.entry_filled
                or update.state not in (OrderState.REJECTED, OrderState.CANCELLED) or b.exit_requested):
            return []
        # a spread leg that will never fill: its partners must not stay on their own
        b.exit_requested = True
        now = time.time_ns()
        out: list[Message] = []
        flattened: set[int] = set()
        for partner in [p for p in self.orders.active() if p.group == b.group and p is not b]:
            if partner.exit_requested or partner.instrument_id in flattened:
                continue
            if partner.entry_filled:
                flattened.add(partner.instrument_id)
                out.append(self.flatten(partner.instrument_id, f"leg risk: partner leg {b.client_order_id} was "
                                         f"{OrderState(update.state).name.lower()}", partner.algorithm_id,
                                         self._last_event_ns, now, {"group": b.group}))
            else:
                partner.exit_requested = True
                out.append(CancelOrder(partner.client_order_id, f"leg risk: partner leg {b.client_order_id} "
                                       f"was {OrderState(update.state).name.lower()}"))
        if out:
            log.warning("leg risk in %s: %s %s; partners closed", b.group, b.client_order_id,
                        OrderState(update.state).name)
        return out

    def on_execution(self, seq: int, execution: Execution) -> list[Message]:
        unknown_before = self.orders.unknown_order_events
        if self.orders.on_execution(execution):
            self.recorder.execution(seq, execution)
            self.reconciler.on_execution(execution.nt8_order_id, execution.quantity, execution.ts_event_ns)
            b = self.orders.brackets.get(execution.client_order_id)
            if b is not None:  # an automated fill: the repeated-execution throttle counts it
                for event in self.risk.on_execution(self.root(b.instrument_id), b.algorithm_id, self.account,
                                                    execution.ts_event_ns):
                    self.recorder.audit("risk_event", type(event).__name__, time.time_ns(), event.to_dict())
            if self.orders.unknown_order_events > unknown_before:
                self._break(self.reconciler.fill_break(
                    "EXTRA", execution.instrument_id, f"fill {execution.execution_id} of order "
                    f"{execution.client_order_id or execution.nt8_order_id!r}, which the sidecar never sent",
                    execution.ts_event_ns))
        elif execution.execution_id in self.orders.resumed_executions and not self.orders.last_duplicate_differs:
            self.fills_replayed += 1  # NT8 replays its fills after a reconnect: storage had this one already
        else:
            self.recorder.audit("duplicate_execution", execution.execution_id, time.time_ns(), _fields(execution))
            if self.orders.last_duplicate_differs:
                self._break(self.reconciler.fill_break(
                    "DIFFERENT", execution.instrument_id, f"execution {execution.execution_id} reported again with "
                    f"price {execution.price} quantity {execution.quantity}", execution.ts_event_ns))
        self._reconcile(execution.ts_event_ns)
        self._book_closed()
        return []

    def _book_closed(self) -> None:
        for b in self.orders.closed:
            pv = self.instruments[b.instrument_id].decl.point_value
            pnl = b.side.sign * (b.exit_value - b.entry_value) * pv - b.commission
            self.realized += pnl
            self.realized_by[(b.instrument_id, b.algorithm_id)] += pnl
            self.portfolio.on_trade_closed(b.algorithm_id, b.group, b.leg, b.legs, pnl)
        self.orders.closed.clear()

    # --- resuming after a reconnect, a restart or a failover ----------------------------------------

    def resume(self, history: Any) -> dict[str, Any]:
        """Rebuild the ledger of this strategy instance from storage (``bridge.storage.queries.InstanceHistory``):
        its brackets, their fills and its FLATTEN fills replayed in order (the execution throttle counting
        them, the realized P&L booked), then each entry's last state. The
        brackets keep their client order ids, so NT8's reports about them (and its replay of them after
        WELCOME) land on them, and nothing is sent again. Returns what was resumed, for the audit trail."""
        by_name = {i.decl.name: iid for iid, i in self.instruments.items()}
        elsewhere: list[str] = []
        for sb in history.brackets:
            iid = by_name.get(sb.instrument)
            if iid is None:  # this session no longer streams that instrument: NT8 still manages its legs
                elsewhere.append(sb.client_order_id)
                continue
            self.orders.add(BracketRecord(sb.client_order_id, sb.decision_id or "", iid, Side[sb.side], sb.quantity,
                                          EntryType[sb.entry_type], _nan(sb.entry_price), _nan(sb.stop_price),
                                          _nan(sb.target_price), sb.algorithm_id or "", 0))
        for f in history.fills:
            iid = by_name.get(f["instrument"])
            if iid is None:
                continue
            self.orders.on_execution(Execution(f["execution_id"], f["client_order_id"] or "",
                                               int(OrderRole[f["role"]]) if f["role"] else 0, f["nt8_order_id"] or "",
                                               iid, int(Side[f["side"]]), f["price"], f["quantity"],
                                               f["commission"] or 0.0, f["ts_event_ns"]))
            self.orders.resumed_executions.add(f["execution_id"])
            b = self.orders.brackets.get(f["client_order_id"] or "")
            if b is not None and b.algorithm_id:  # the execution throttle counts the fills before the restart too
                for event in self.risk.on_execution(self.root(iid), b.algorithm_id, self.account, f["ts_event_ns"]):
                    self.recorder.audit("risk_event", type(event).__name__, time.time_ns(), event.to_dict())
        for sb in history.brackets:
            b = self.orders.brackets.get(sb.client_order_id)
            if b is not None and sb.entry_state in OrderState.__members__:
                self.orders.on_order_update(OrderUpdate(b.client_order_id, int(OrderRole.ENTRY), "", b.instrument_id,
                                                        int(OrderState[sb.entry_state]), 0, int(b.side), b.quantity,
                                                        b.entry_filled, math.nan, math.nan, math.nan, 0, 0, ""))
        closed = len(self.orders.closed)
        self._book_closed()
        active = self.orders.active()
        return {"brackets": len(history.brackets), "fills": len(history.fills), "closed": closed,
                "active": sorted(b.client_order_id for b in active),
                "positions": {self.instruments[i].decl.name: q for i, q in sorted(self.orders.positions.items()) if q},
                "realized": self.realized, "instruments_not_streamed": elsewhere}

    def _adopt(self, update: OrderUpdate) -> None:
        """A report about an entry of ours that this ledger never saw (storage lost it: a crash between
        sending the BRACKET and committing it) becomes a bracket again from what NT8 says of it, so its
        fills count and its position is managed; the stop and target prices follow from their legs' reports."""
        if (update.role != OrderRole.ENTRY or update.instrument_id not in self.instruments
                or not _OUR_CLIENT_ID.fullmatch(update.client_order_id)):
            return
        entry_type = {int(OrderType.LIMIT): EntryType.LIMIT, int(OrderType.STOP_MARKET): EntryType.STOP}.get(
            update.order_type, EntryType.MARKET)
        price = (update.limit_price if entry_type is EntryType.LIMIT else update.stop_price
                 if entry_type is EntryType.STOP else math.nan)
        b = BracketRecord(update.client_order_id, "", update.instrument_id, Side(update.side), update.quantity,
                          entry_type, price, math.nan, math.nan, "adopted", 0)
        self.orders.add(b)
        now = time.time_ns()
        self.recorder.adopted_order(b, now)
        self.recorder.audit("bracket_adopted", b.client_order_id, now,
                            {"instrument": self.instruments[b.instrument_id].decl.name, "side": b.side.name,
                             "quantity": b.quantity, "entry_type": entry_type.name, "entry_price": finite_or_none(price),
                             "nt8_order_id": update.nt8_order_id, "state": OrderState(update.state).name,
                             "why": "NT8 reported an entry of ours that storage did not have"})
        log.warning("adopted bracket %s from NT8's report: storage did not have it", b.client_order_id)

    def on_position(self, seq: int, position: Position) -> None:
        self.recorder.position(seq, position)
        sign = {int(MarketPosition.LONG): 1, int(MarketPosition.SHORT): -1}.get(position.market_position, 0)
        self.reconciler.on_position(position.instrument_id, sign * position.quantity, position.ts_event_ns)
        self._reconcile(position.ts_event_ns)

    def _reconcile(self, ts_ns: int) -> None:
        for b in self.reconciler.check(self.orders.positions, ts_ns):
            self._break(b)

    def _break(self, b: Break) -> None:
        name = self.instruments[b.instrument_id].decl.name if b.instrument_id in self.instruments else str(b.instrument_id)
        self.breaks_by_kind[b.kind] += 1
        log.warning("RECONCILIATION BREAK %s on %s: %s", b.kind, name, b.details)
        self.recorder.audit("reconciliation_break", name, time.time_ns(),
                            {"kind": b.kind, "instrument": name, "details": b.details, "ts_event_ns": b.ts_ns})

    def on_account(self, seq: int, account: Account) -> None:
        self.recorder.account(seq, account)


def risk_engine_for(config: Config, instruments: list[SessionInstrument],
                    is_open: Callable[[int, int], bool]) -> RiskEngine:
    """The session's risk engine: desk-wide limits from ``[risk]``, ``[[risk_limits]]`` per scope, and
    each instrument's trading hours from the instrument master (unless session hours are off)."""
    rc = config.risk
    throttle = rc.max_executions_per_window or None
    limits: dict[Scope | str, Limits] = {"*": Limits(
        collar_ticks=rc.collar_ticks, max_order_quantity=rc.max_order_quantity,
        max_order_notional=rc.max_order_notional, max_net=rc.max_position, stale_data_s=rc.stale_data_s,
        max_orders_per_s=rc.max_orders_per_s, max_changes_per_s=rc.max_changes_per_s,
        max_cancels_per_s=rc.max_cancels_per_s, max_executions_per_window=throttle,
        execution_window_s=rc.execution_window_s if throttle else None, max_daily_loss=rc.max_daily_loss or None,
        self_trade_prevention=rc.self_trade_prevention)}
    for entry in config.risk_limits:
        fields = {k: v for k, v in entry.items() if k != "scope"}
        limits[Scope.parse(entry["scope"])] = Limits(**fields)
    if config.quality.check_session_hours:
        for i in instruments:
            scope = Scope.parse(f"instrument:{i.spec.root}")
            base = limits.get(scope, Limits())
            limits[scope] = dataclasses.replace(base, sessions=lambda ts, iid=i.instrument_id: is_open(iid, ts))
    return RiskEngine(limits)


# client order ids this sidecar gives: S<session id>-B<n> (OrderTracker.next_ids)
_OUR_CLIENT_ID = re.compile(r"S\d+-B\d+")


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _signal_fields(s: Any) -> dict[str, Any]:
    return {"side": s.side.name, "entry_type": s.entry_type.name, "entry_price": finite_or_none(s.entry_price),
            "stop": s.stop_price, "target": s.target_price, "win_probability": s.win_probability,
            "time_limit_s": s.time_limit_s, "group": s.group, "ratio": s.ratio}


def _fields(msg: Any) -> dict[str, Any]:
    return {name: getattr(msg, name) for name in msg.__slots__}
