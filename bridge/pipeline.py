"""The decision pipeline of one NT8 session: one thread, explicit stages, each timed.

quality gate -> market state (quotes, bars from ticks) -> features -> strategy -> sizing -> risk
-> order emitter -> record (storage and audit rows, handed to the writer thread)

Entry points return the messages to send back to NT8 (ERROR for refused data, BRACKET for
orders); the server sends them. Nothing here blocks: storage is a list append on the writer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from bridge.config import Config
from bridge.features import FeatureEngine, FeatureSnapshot
from bridge.instruments import InstrumentSpec
from bridge.market import BarData, MarketState
from bridge.orders import BracketRecord, OrderTracker
from bridge.protocol.messages import (
    Account,
    Bar,
    EntryType,
    Error,
    ErrorCode,
    Execution,
    InstrumentDecl,
    Message,
    MsgType,
    OrderUpdate,
    Position,
    Side,
    Tick,
)
from bridge.quality import QualityGate, QualityReason, QualityVerdict
from bridge.recorder import Recorder, finite_or_none
from bridge.risk import BasicRiskEngine, OrderIntent, RiskInputs
from bridge.sizing import FixedQuantitySizer
from bridge.timing import StageTimings
from strategies.base import Signal, Strategy, safe_on_bar

log = logging.getLogger("nt8bridge.pipeline")

STAGES = ("quality", "market", "features", "strategy", "sizing", "risk", "emit", "record")
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
                 strategy: Strategy | None, timings: StageTimings, id_prefix: str) -> None:
        self.config = config
        self.recorder = recorder
        self.strategy = strategy
        self.timings = timings
        self.instruments = {i.instrument_id: i for i in instruments}
        self.gate = QualityGate(config.quality)
        self.market = MarketState(config.bars.period_s, config.bars.history)
        self.features = FeatureEngine(config.strategy.atr_bars, config.strategy.lookback_bars)
        self.sizer = FixedQuantitySizer(config.sizing)
        self.risk = BasicRiskEngine(config.risk)
        self.orders = OrderTracker(id_prefix)
        self._ticks_seen: set[int] = set()
        self.ticks_accepted = 0
        self.ticks_rejected = 0
        self.decisions = 0
        self.orders_sent = 0
        self.denials = 0
        for i in instruments:
            self.gate.add_instrument(i.instrument_id, i.spec, i.decl.tick_size)
            self.market.add_instrument(i.instrument_id, i.decl.name, i.decl.tick_size, i.decl.point_value)
        recorder.set_instruments({i.instrument_id: i.decl.name for i in instruments})

    # --- StrategyContext ------------------------------------------------------------------------

    def is_flat(self, instrument_id: int) -> bool:
        return self.orders.is_flat(instrument_id)

    def minutes_to_close(self, instrument_id: int, ts_ns: int) -> float:
        return self.gate.minutes_to_close(instrument_id, ts_ns)

    def tick_size(self, instrument_id: int) -> float:
        return self.instruments[instrument_id].decl.tick_size

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
        snapshot = self.features.on_bar(bar)
        t1 = perf()
        self.timings.record("features", t1 - t0)
        if snapshot is None or self.strategy is None:
            return []
        signal = safe_on_bar(self.strategy, bar, snapshot, self)
        t2 = perf()
        self.timings.record("strategy", t2 - t1)
        if signal is None:
            return []
        return self._decide(signal, snapshot, event_ns, now)

    def _decide(self, signal: Signal, snapshot: FeatureSnapshot, event_ns: int, now: int) -> list[Message]:
        perf = time.perf_counter_ns
        t0 = perf()
        sizing = self.sizer.size(signal)
        t1 = perf()
        self.timings.record("sizing", t1 - t0)
        iid = signal.instrument_id
        state = self.market.instruments[iid]
        intent = OrderIntent(iid, signal.side, sizing.quantity, signal.entry_type, signal.entry_price,
                             signal.stop_price, signal.target_price)
        inputs = RiskInputs(
            position=self.orders.position(iid), working_entry_quantity=self.orders.working_entry_quantity(iid),
            reference_price=state.last, last_tick_ns=state.last_ts_ns, now_ns=event_ns,
            market_open=self.gate.is_open(iid, event_ns),
        )
        result = self.risk.check(intent, inputs)
        t2 = perf()
        self.timings.record("risk", t2 - t1)
        decision_id, client_order_id = self.orders.next_ids()
        self.decisions += 1
        record_inputs: dict[str, Any] = {
            "features": snapshot.values, "signal": {"side": signal.side.name, "entry_type": signal.entry_type.name,
                                                    "entry_price": finite_or_none(signal.entry_price),
                                                    "stop": signal.stop_price,
                                                    "target": signal.target_price,
                                                    "confidence": signal.confidence},
            "sizing": {"quantity": sizing.quantity, "rationale": sizing.rationale},
            "risk": [{"check": c.name, "passed": c.passed, "value": c.value, "limit": c.limit}
                     for c in result.checks],
            "position": inputs.position, "working": inputs.working_entry_quantity,
        }
        algorithm_id = self.strategy.algorithm_id if self.strategy else ""
        if not result.approved:
            self.denials += 1
            self.recorder.decision(decision_id, iid, algorithm_id, event_ns, now, f"DENIED:{result.denial}",
                                   signal.rationale, record_inputs)
            self.timings.record("record", perf() - t2)
            log.info("decision %s denied: %s (%s)", decision_id, result.denial, result.describe())
            return []
        bracket = BracketRecord(client_order_id, decision_id, iid, signal.side, sizing.quantity, signal.entry_type,
                                signal.entry_price, signal.stop_price, signal.target_price, algorithm_id, event_ns)
        self.orders.add(bracket)
        message = bracket.to_message()
        t3 = perf()
        self.timings.record("emit", t3 - t2)
        # The decision and the order are recorded before the BRACKET is handed to the socket.
        self.recorder.decision(decision_id, iid, algorithm_id, event_ns, now, "EMITTED", signal.rationale,
                               record_inputs)
        self.recorder.order(bracket, now)
        self.orders_sent += 1
        self.timings.record("record", perf() - t3)
        return [message]

    # --- order events ---------------------------------------------------------------------------

    def on_order_update(self, seq: int, update: OrderUpdate) -> None:
        self.recorder.order_update(seq, update)
        self.orders.on_order_update(update)

    def on_execution(self, seq: int, execution: Execution) -> None:
        if self.orders.on_execution(execution):
            self.recorder.execution(seq, execution)
        else:
            self.recorder.audit("duplicate_execution", execution.execution_id, time.time_ns(), _fields(execution))

    def on_position(self, seq: int, position: Position) -> None:
        self.recorder.position(seq, position)

    def on_account(self, seq: int, account: Account) -> None:
        self.recorder.account(seq, account)


def _fields(msg: Any) -> dict[str, Any]:
    return {name: getattr(msg, name) for name in msg.__slots__}
