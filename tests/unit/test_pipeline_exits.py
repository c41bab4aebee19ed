"""The pipeline's exits: time limits, strategy exits, spread leg risk, flatten fills, whole groups."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timezone

from bridge.core.config import Config
from bridge.core.instruments import InstrumentMaster
from bridge.engine.pipeline import STAGES, DecisionPipeline, SessionInstrument
from bridge.protocol.messages import (
    Bar,
    CancelOrder,
    EntryType,
    Execution,
    Flatten,
    InstrumentDecl,
    OrderRole,
    OrderState,
    OrderUpdate,
    Side,
    SubmitBracket,
)
from bridge.audit.recorder import Recorder
from bridge.core.timing import StageTimings
from strategies.base import Exit, Signal, Strategy

ES, NQ = 0, 1
T0 = int(datetime(2023, 11, 8, 15, 0, tzinfo=timezone.utc).timestamp()) * 10**9  # a Wednesday, CME open
MIN = 60 * 10**9


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, tuple]] = []

    def write(self, table: str, row: tuple) -> None:
        self.rows.append((table, row))

    def update(self, table, key, values) -> None:
        pass

    def decisions(self) -> list[tuple]:
        return [r for t, r in self.rows if t == "decisions"]


class Scripted(Strategy):
    name = "scripted"
    style = "trend"

    def __init__(self) -> None:
        self.next: list = []
        self.on_instrument = ES

    def on_bar(self, bar, market):
        if bar.instrument_id != self.on_instrument:
            return None
        out, self.next = self.next, []
        return out


def make(**portfolio) -> tuple[DecisionPipeline, Scripted, Rows]:
    c = Config()
    c = replace(c, sizing=replace(c.sizing, mode="fixed", quantity=1),
                portfolio=replace(c.portfolio, regime_filter=False, **portfolio))
    master = InstrumentMaster.default()
    insts = [SessionInstrument(i, InstrumentDecl(n, 0.25, pv), master.resolve(n))
             for i, (n, pv) in enumerate((("ES 12-23", 50.0), ("NQ 12-23", 20.0)))]
    rows = Rows()
    s = Scripted()
    p = DecisionPipeline(config=c, instruments=insts, recorder=Recorder(rows, 1), strategies=[s],
                         timings=StageTimings(STAGES), id_prefix="T")
    return p, s, rows


def feed(p: DecisionPipeline, iid: int, k: int, close: float) -> list:
    return list(p.on_bar(k, Bar(iid, 60, close, close + 1, close - 1, close, 100, T0 + k * MIN)))


def fill(p: DecisionPipeline, cid: str, iid: int, side: Side, price: float, k: int, role=OrderRole.ENTRY,
         xid: str | None = None) -> list:
    x = Execution(xid or f"x-{cid}-{role}", cid, int(role), "n1", iid, int(side), price, 1, 2.09, T0 + k * MIN)
    return p.on_execution(k, x)


def update(p, cid, iid, state, role=OrderRole.ENTRY) -> list:
    return p.on_order_update(0, OrderUpdate(cid, int(role), "n1", iid, int(state), 0, 1, 1, 0, math.nan, math.nan,
                                            math.nan, T0, 0, ""))


def long_es(**kw) -> Signal:
    return Signal(ES, Side.BUY, EntryType.MARKET, math.nan, 4490.0, 4520.0, 0.6, "go long", **kw)


def test_a_position_past_its_time_limit_is_flattened_and_its_flatten_fill_closes_the_bracket():
    p, s, rows = make()
    feed(p, NQ, 0, 15000.0)
    s.next = [long_es(time_limit_s=120)]
    (bracket,) = feed(p, ES, 0, 4500.0)
    assert isinstance(bracket, SubmitBracket)
    fill(p, bracket.client_order_id, ES, Side.BUY, 4500.25, 1)
    assert feed(p, ES, 1, 4501.0) == []  # 1 minute in: within the limit
    out = feed(p, ES, 2, 4502.0)  # 2 minutes: the limit
    assert [type(m) for m in out] == [Flatten] and out[0].instrument_id == ES
    assert "time limit" in out[0].reason
    assert rows.decisions()[-1][6] == "EXIT"
    assert feed(p, ES, 3, 4502.0) == []  # asked once, not every bar
    assert not p.is_flat(ES)
    # NT8 reports the flatten order under its own id: it still closes our bracket
    fill(p, "flatten1", ES, Side.SELL, 4502.0, 3, role=OrderRole.FLATTEN)
    assert p.is_flat(ES)
    assert math.isclose(p.realized, (4502.0 - 4500.25) * 50 - 2 * 2.09)
    assert p.portfolio.records[s.algorithm_id].wins == 1


def test_a_strategy_exit_flattens_only_what_the_strategy_holds():
    p, s, _ = make()
    s.next = [Exit(ES, "nothing held")]
    assert feed(p, ES, 0, 4500.0) == []
    s.next = [long_es()]
    (bracket,) = feed(p, ES, 1, 4500.0)
    fill(p, bracket.client_order_id, ES, Side.BUY, 4500.25, 2)
    s.next = [Exit(ES, "signal gone")]
    out = feed(p, ES, 2, 4500.0)
    assert [(type(m), m.reason) for m in out] == [(Flatten, "signal gone")]


def spread_group() -> list[Signal]:
    return [Signal(ES, Side.SELL, EntryType.MARKET, math.nan, 4530, 4470, 0.6, "pair", group="g", ratio=1,
                   unit_win=900.0, unit_loss=800.0),
            Signal(NQ, Side.BUY, EntryType.MARKET, math.nan, 14900, 15100, 0.6, "pair", group="g", ratio=1,
                   unit_win=900.0, unit_loss=800.0)]


def test_a_rejected_leg_closes_its_filled_partner():
    p, s, rows = make()
    feed(p, NQ, 0, 15000.0)
    s.next = spread_group()
    es_leg, nq_leg = feed(p, ES, 0, 4500.0)
    fill(p, es_leg.client_order_id, ES, Side.SELL, 4500.0, 1)
    out = update(p, nq_leg.client_order_id, NQ, OrderState.REJECTED)
    assert [(type(m), m.instrument_id) for m in out] == [(Flatten, ES)]
    assert "leg risk" in out[0].reason


def test_a_rejected_leg_cancels_its_unfilled_partner():
    p, s, _ = make()
    feed(p, NQ, 0, 15000.0)
    s.next = spread_group()
    es_leg, nq_leg = feed(p, ES, 0, 4500.0)
    out = update(p, nq_leg.client_order_id, NQ, OrderState.CANCELLED)
    assert [(type(m), m.client_order_id) for m in out] == [(CancelOrder, es_leg.client_order_id)]


def test_a_leg_stuck_past_the_timeout_is_cancelled_and_its_partner_closed():
    p, s, _ = make(leg_timeout_s=90.0)
    feed(p, NQ, 0, 15000.0)
    s.next = spread_group()
    es_leg, nq_leg = feed(p, ES, 0, 4500.0)
    fill(p, es_leg.client_order_id, ES, Side.SELL, 4500.0, 0)
    update(p, nq_leg.client_order_id, NQ, OrderState.WORKING)
    assert feed(p, ES, 1, 4500.0) == []
    out = feed(p, ES, 2, 4500.0)
    assert sorted((type(m).__name__, getattr(m, "client_order_id", getattr(m, "instrument_id", None))) for m in out) \
        == [("CancelOrder", nq_leg.client_order_id), ("Flatten", ES)]


def test_a_group_is_not_sent_when_one_leg_fails_risk():
    p, s, rows = make()
    feed(p, NQ, 0, 15000.0)  # NQ's last price is an hour old when ES decides: stale for the risk engine
    s.next = spread_group()
    assert feed(p, ES, 60, 4500.0) == []
    outcomes = [d[6] for d in rows.decisions()]
    assert len(outcomes) == 2 and all(o.startswith("DENIED:") for o in outcomes)
    assert any("another leg" in o for o in outcomes) and any("STALE" in o for o in outcomes)
