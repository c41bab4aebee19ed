"""The portfolio: Kelly sizing wired to signals, hard caps, netting, spread groups, exposure, hedge.

Expected numbers are computed here from the formulas (compliance.md), not by the code under test.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.config import Config
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import Exit, Signal, Strategy
from strategies.portfolio import InstrumentInfo, Portfolio

ES, NQ, MES = 0, 1, 2
INFO = {ES: InstrumentInfo("ES 12-23", "ES", 0.25, 50.0), NQ: InstrumentInfo("NQ 12-23", "NQ", 0.25, 20.0),
        MES: InstrumentInfo("MES 12-23", "MES", 0.25, 5.0)}
T0 = 1_700_000_000 * 10**9


class View:
    """Our MarketView protocol, with positions the test sets."""

    def __init__(self) -> None:
        self.held: dict[tuple[int, str], int] = {}

    def features(self, iid):
        return None

    def instrument_id(self, root):
        return {i.root: k for k, i in INFO.items()}.get(root)

    def root(self, iid):
        return INFO[iid].root

    def is_flat(self, iid):
        return True

    def position_of(self, iid, strategy):
        return self.held.get((iid, strategy), 0)

    def minutes_to_close(self, iid, ts):
        return 600.0

    def tick_size(self, iid):
        return INFO[iid].tick_size

    def point_value(self, iid):
        return INFO[iid].point_value


class Scripted(Strategy):
    """Returns what the test put in ``outputs`` for the next bar of ``on_instrument``."""

    style = "trend"

    def __init__(self, name: str, on_instrument: int = ES) -> None:
        self.name = name  # type: ignore[misc]
        self.on_instrument = on_instrument
        self.outputs: list = []

    def on_bar(self, bar, market):
        if bar.instrument_id != self.on_instrument:
            return None
        out, self.outputs = self.outputs, []
        return out


def config(**sizing) -> Config:
    c = Config()
    big = 1000
    sz = dict(max_contracts=big, max_strategy_contracts=big) | sizing
    return replace(c, sizing=replace(c.sizing, **sz), risk=replace(c.risk, max_order_quantity=big, max_position=big),
                   portfolio=replace(c.portfolio, regime_filter=False, max_beta_exposure=1e6))


def bar(iid: int, close: float, k: int = 0) -> BarData:
    ts = T0 + k * 60 * 10**9
    return BarData(iid, 60, ts - 60 * 10**9, ts, close, close, close, close, 100, 1)


def long_es(p: float = 0.6, stop: float = 4490.0, target: float = 4520.0, **kw) -> Signal:
    return Signal(ES, Side.BUY, EntryType.MARKET, math.nan, stop, target, p, "test", **kw)


def expected_kelly(p, entry, stop, target, pv, equity, cost, fraction=0.25, shrinkage=0.5) -> int:
    risk = abs(entry - stop) * pv + cost
    reward = abs(target - entry) * pv - cost
    b = reward / risk
    breakeven = 1 / (1 + b)
    p_shrunk = breakeven + (p - breakeven) * (1 - shrinkage)
    f = max(0.0, p_shrunk - (1 - p_shrunk) / b)
    return int(math.floor(f * fraction * equity / risk + 1e-9))


def es_cost(c: Config) -> float:
    return 2 * (c.sizing.commission_per_contract + c.sizing.slippage_ticks * 0.25 * 50)


def decide(portfolio: Portfolio, strategies_outputs: dict[Scripted, list], b: BarData, view=None, equity=1e6,
           exposure=None):
    for s, out in strategies_outputs.items():
        s.outputs = out
    return portfolio.on_bar(b, view or View(), equity, exposure or {})


def test_kelly_contracts_match_the_formula_with_costs():
    c = config()
    s = Scripted("a")
    pf = Portfolio(c, [s], INFO)
    d = decide(pf, {s: [long_es()]}, bar(ES, 4500.0))
    want = expected_kelly(0.6, 4500.0, 4490.0, 4520.0, 50.0, 1e6, es_cost(c))
    assert want > 0
    assert [p.quantity for p in d.plans] == [want]
    sizing = d.plans[0].sizing
    assert sizing["mode"] == "kelly" and sizing["contracts"] == want and sizing["p"] == 0.6
    assert math.isclose(sizing["risk_per_contract"], 10 * 50 + es_cost(c))
    for key in ("payoff_ratio", "kelly_f", "shrunk_f", "applied_f", "shrinkage", "cap", "explain"):
        assert key in sizing  # the rationale stored with the order


def test_a_huge_account_is_held_by_the_cap_and_a_small_one_sizes_down():
    c = config(max_contracts=7)
    s = Scripted("a")
    pf = Portfolio(c, [s], INFO)
    big = decide(pf, {s: [long_es()]}, bar(ES, 4500.0), equity=10e6)
    assert big.plans[0].quantity == 7 and big.plans[0].sizing["uncapped_contracts"] > 7
    small = decide(pf, {s: [long_es()]}, bar(ES, 4500.0, 1), equity=25_000)
    want = expected_kelly(0.6, 4500.0, 4490.0, 4520.0, 50.0, 25_000, es_cost(c))
    assert 0 < want < 7 and small.plans[0].quantity == want
    # the same edge with a 40-point stop risks more than a quarter Kelly of $25k allows for one contract
    tiny = decide(pf, {s: [long_es(0.6, 4460.0, 4580.0)]}, bar(ES, 4500.0, 2), equity=25_000)
    assert not tiny.plans and "edge too small for one contract" in tiny.dropped[0].reason


def test_the_risk_engine_limits_cap_kelly_so_its_orders_are_not_denied():
    c = config()
    c = replace(c, risk=replace(c.risk, max_order_quantity=3, max_position=2))
    s = Scripted("a")
    d = decide(Portfolio(c, [s], INFO), {s: [long_es()]}, bar(ES, 4500.0), equity=10e6)
    assert d.plans[0].quantity == 2


@settings(max_examples=150, deadline=None)
@given(p=st.floats(0.0, 1.0), stop_pts=st.floats(0.25, 200.0), target_pts=st.floats(0.25, 400.0),
       equity=st.floats(1_000.0, 1e9), cap=st.integers(0, 50))
def test_never_above_the_cap_and_never_without_an_edge(p, stop_pts, target_pts, equity, cap):
    c = config(max_contracts=cap)
    s = Scripted("a")
    pf = Portfolio(c, [s], INFO)
    d = decide(pf, {s: [long_es(p, 4500.0 - stop_pts, 4500.0 + target_pts)]}, bar(ES, 4500.0), equity=equity)
    q = sum(pl.quantity for pl in d.plans)
    assert 0 <= q <= cap
    reward = target_pts * 50 - es_cost(c)
    risk = stop_pts * 50 + es_cost(c)
    if reward <= 0 or p <= 1 / (1 + reward / risk):
        assert q == 0  # non-positive edge after costs: no trade


def test_the_track_record_moves_the_probability():
    c = config(prior_strength=10.0)
    s = Scripted("a")
    pf = Portfolio(c, [s], INFO)
    before = decide(pf, {s: [long_es()]}, bar(ES, 4500.0)).plans[0].quantity
    for _ in range(5):
        pf.on_trade_closed(s.algorithm_id, "", 0, 1, -100.0)
    after = decide(pf, {s: [long_es()]}, bar(ES, 4500.0, 1))
    p = (0.6 * 10 + 0) / (10 + 5)
    assert after.dropped or after.plans[0].sizing["p"] == p
    assert (after.plans[0].quantity if after.plans else 0) < before


def test_opposite_signals_on_one_instrument_net():
    c = config(max_contracts=6)
    a, b = Scripted("a"), Scripted("b")
    pf = Portfolio(c, [a, b], INFO)
    short = Signal(ES, Side.SELL, EntryType.MARKET, math.nan, 4505.0, 4490.0, 0.6, "short")
    d = decide(pf, {a: [long_es(0.7, 4490, 4530)], b: [short]}, bar(ES, 4500.0), equity=10e6)
    # both are capped at 6: they cancel exactly
    assert not d.plans and {x.algorithm_id for x in d.dropped} == {a.algorithm_id, b.algorithm_id}
    assert all("netted out" in x.reason for x in d.dropped)
    c2 = config(max_contracts=1000)
    pf2 = Portfolio(c2, [a, b], INFO)
    d2 = decide(pf2, {a: [long_es(0.7, 4490, 4530)], b: [short]}, bar(ES, 4500.0), equity=1e6)
    qa = expected_kelly(0.7, 4500, 4490, 4530, 50, 1e6, es_cost(c2))
    qb = expected_kelly(0.6, 4500, 4505, 4490, 50, 1e6, es_cost(c2))
    assert qa != qb
    (plan,) = d2.plans
    assert plan.quantity == abs(qa - qb)
    assert plan.signal.side == (Side.BUY if qa > qb else Side.SELL)
    assert "net of" in plan.rationale


def spread_legs(ratio_a=2, ratio_b=1, win=900.0, loss=800.0, group="g1"):
    a = Signal(ES, Side.SELL, EntryType.MARKET, math.nan, 4530, 4470, 0.6, "spread", group=group, ratio=ratio_a,
               unit_win=win, unit_loss=loss)
    b = Signal(NQ, Side.BUY, EntryType.MARKET, math.nan, 14900, 15100, 0.6, "spread", group=group, ratio=ratio_b,
               unit_win=win, unit_loss=loss)
    return [a, b]


def test_a_spread_group_is_sized_as_one_bet_in_contract_ratio():
    c = config()
    s = Scripted("spread")
    pf = Portfolio(c, [s], INFO)
    pf.on_bar(bar(NQ, 15000.0), View(), 1e6, {})
    d = decide(pf, {s: spread_legs()}, bar(ES, 4500.0))
    cost = 2 * es_cost(c) + 1 * 2 * (c.sizing.commission_per_contract + 0.25 * 20)
    win, loss = 900.0 - cost, 800.0 + cost
    b = win / loss
    be = 1 / (1 + b)
    p = be + (0.6 - be) * 0.5
    units = int(math.floor((p - (1 - p) / b) * 0.25 * 1e6 / loss + 1e-9))
    assert units > 0
    assert sorted((pl.signal.instrument_id, pl.quantity) for pl in d.plans) == [(ES, 2 * units), (NQ, units)]
    assert {pl.sizing["group"] for pl in d.plans} == {"g1"}


def test_a_spread_group_trades_whole_or_not_at_all():
    c = config()
    c = replace(c, sizing=replace(c.sizing, max_strategy_contracts=1))  # ES leg needs 2 per unit: no unit fits
    s = Scripted("spread")
    pf = Portfolio(c, [s], INFO)
    pf.on_bar(bar(NQ, 15000.0), View(), 1e6, {})
    d = decide(pf, {s: spread_legs()}, bar(ES, 4500.0))
    assert not d.plans and len(d.dropped) == 2


def test_a_single_signal_gives_way_to_a_spread_on_its_instrument():
    c = config()
    sp, mo = Scripted("spread"), Scripted("mom")
    pf = Portfolio(c, [sp, mo], INFO)
    pf.on_bar(bar(NQ, 15000.0), View(), 1e6, {})
    d = decide(pf, {sp: spread_legs(), mo: [long_es()]}, bar(ES, 4500.0))
    assert {pl.algorithm_id for pl in d.plans} == {sp.algorithm_id}
    assert any(x.algorithm_id == mo.algorithm_id and "spread group" in x.reason for x in d.dropped)


def test_beta_weighted_exposure_limit_cuts_increasing_entries_only():
    c = config()
    c = replace(c, portfolio=replace(c.portfolio, max_beta_exposure=4.0))
    s = Scripted("a", on_instrument=ES)
    pf = Portfolio(c, [s], INFO)
    pf.on_bar(bar(ES, 4500.0), View(), 1e6, {})
    pf.on_bar(bar(NQ, 15000.0), View(), 1e6, {})
    # 3 NQ long at beta 1 (no correlation history yet): 3 * 15000 * 20 / (4500 * 50) = 4.0 ES-equivalent
    exposure = {NQ: 3}
    assert math.isclose(pf.beta_exposure(exposure), 4.0)
    d = decide(pf, {s: [long_es()]}, bar(ES, 4500.0, 1), exposure=exposure)
    assert not d.plans and "exposure limit" in d.dropped[-1].reason
    short = Signal(ES, Side.SELL, EntryType.MARKET, math.nan, 4510.0, 4480.0, 0.6, "short")
    d2 = decide(pf, {s: [short]}, bar(ES, 4500.0, 2), exposure=exposure)
    assert d2.plans and d2.plans[0].signal.side == Side.SELL
    # a short may take exposure from +4 through 0 to -4 at most: 8 ES
    assert d2.plans[0].quantity <= 8


def test_a_configured_hedge_offsets_beta_weighted_exposure():
    c = config()
    c = replace(c, portfolio=replace(c.portfolio, hedge_root="MES", hedge_threshold=0.5, max_beta_exposure=100.0))
    s = Scripted("a", on_instrument=NQ)
    pf = Portfolio(c, [s], INFO)
    pf.on_bar(bar(ES, 4500.0), View(), 1e6, {})
    pf.on_bar(bar(MES, 4500.0), View(), 1e6, {})
    nq_long = Signal(NQ, Side.BUY, EntryType.MARKET, math.nan, 14990.0, 15020.0, 0.6, "nq")
    d = decide(pf, {s: [nq_long]}, bar(NQ, 15000.0))
    nq = [p for p in d.plans if p.signal.instrument_id == NQ][0].quantity
    hedge = [p for p in d.plans if p.signal.instrument_id == MES]
    assert len(hedge) == 1 and hedge[0].signal.side == Side.SELL
    es_eq = nq * 15000 * 20 / (4500 * 50)  # beta 1 until the correlation window fills
    mes_each = 4500 * 5 / (4500 * 50)
    # whole MES contracts that bring the exposure nearest zero (cap: risk.max_order_quantity)
    want = min(round(es_eq / mes_each), c.risk.max_order_quantity)
    assert hedge[0].quantity == want
    assert abs(es_eq - want * mes_each) < abs(es_eq)


def test_regime_filter_switches_styles_off_until_warm():
    c = config()
    c = replace(c, portfolio=replace(c.portfolio, regime_filter=True))
    s = Scripted("a")
    d = decide(Portfolio(c, [s], INFO), {s: [long_es()]}, bar(ES, 4500.0))
    assert not d.plans and "switched off by regime" in d.dropped[0].reason


def test_entries_before_start_trading_only_warm_up_but_exits_pass():
    c = config()
    c = replace(c, portfolio=replace(c.portfolio, start_trading="2030-01-01"))
    s = Scripted("a")
    d = decide(Portfolio(c, [s], INFO), {s: [long_es(), Exit(ES, "done")]}, bar(ES, 4500.0))
    assert not d.plans and d.dropped[0].reason.startswith("warm-up")
    assert [e.rationale for e in d.exits] == ["done"]


def test_a_spread_group_counts_once_in_the_track_record():
    pf = Portfolio(config(), [], INFO)
    pf.on_trade_closed("spread@x", "g", 0, 2, 300.0)
    assert pf.records["spread@x"].wins == 0 and pf.records["spread@x"].losses == 0  # the other leg is open
    pf.on_trade_closed("spread@x", "g", 1, 2, -500.0)
    assert (pf.records["spread@x"].wins, pf.records["spread@x"].losses) == (0, 1)


def test_netting_uses_each_instruments_point_value_and_costs():
    # NQ ($20 a point, tick 0.25) and MES ($5 a point): two strategies' opposite signals net contract for
    # contract, each sized from its own instrument's point value and round-trip costs (computed here).
    for iid, price, pv in ((NQ, 15000.0, 20.0), (MES, 4500.0, 5.0)):
        c = config()
        a, b = Scripted("a", on_instrument=iid), Scripted("b", on_instrument=iid)
        pf = Portfolio(c, [a, b], INFO)
        long_ = Signal(iid, Side.BUY, EntryType.MARKET, math.nan, price - 20, price + 60, 0.7, "long")
        short = Signal(iid, Side.SELL, EntryType.MARKET, math.nan, price + 10, price - 30, 0.6, "short")
        d = decide(pf, {a: [long_], b: [short]}, bar(iid, price), equity=2e5)
        cost = 2 * (c.sizing.commission_per_contract + c.sizing.slippage_ticks * 0.25 * pv)
        qa = expected_kelly(0.7, price, price - 20, price + 60, pv, 2e5, cost)
        qb = expected_kelly(0.6, price, price + 10, price - 30, pv, 2e5, cost)
        assert qa > 0 and qb > 0 and qa != qb, (iid, qa, qb)
        (plan,) = d.plans
        assert plan.signal.instrument_id == iid and plan.quantity == abs(qa - qb)
        assert plan.signal.side == (Side.BUY if qa > qb else Side.SELL)
        assert plan.sizing["netting"] == f"a {qa:+d}, b {-qb:+d}"
        lead = [x for x in (("a", qa), ("b", qb)) if x[1] == max(qa, qb)][0][0]
        assert any(x.reason.startswith(f"netted into {lead}") for x in d.dropped)
        assert math.isclose(plan.sizing["risk_per_contract"],
                            (20 if lead == "a" else 10) * pv + cost)
