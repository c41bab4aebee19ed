"""The portfolio: from every strategy's signals to sized, capped, explained order plans.

At each closed bar:

1. the bar updates the instrument's regime detector and the rolling correlation of returns;
2. every strategy sees the bar and returns Signals and Exits;
3. each Signal's allocation weight comes from the regime policy (its style in the instrument's
   regime); a weight of 0 switches it off, and the reason is kept;
4. each Signal (or spread group) is sized by fractional Kelly: the win probability is the
   strategy's own estimate blended with its track record in this session (a Beta posterior:
   ``prior_strength`` trades' worth of the estimate), shrunk toward break-even; the payoff ratio
   comes from the bracket's target and stop distances after costs (commission and slippage); the
   Kelly multiplier is ``kelly_fraction`` times the regime weight;
5. hard caps win: per strategy and instrument, per instrument (counting the position and working
   entries), the risk engine's order and position limits, and the beta-weighted exposure limit;
6. signals on one instrument are netted: opposite directions cancel contract for contract, and
   what is left trades with the bracket of the largest contributor. A spread group is traded
   whole or not at all, and a single signal on one of its instruments in the same bar gives way;
7. where configured, a hedge order brings beta-weighted exposure back toward zero.

Every plan carries a ``sizing`` record with each number that went into it; the pipeline stores it
with the decision, so a sizing can be explained and recomputed.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bridge.core.config import Config, parse_utc
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import Exit, MarketView, Signal, Strategy, round_to_tick, safe_on_bar
from strategies.exposure import Holding, ReturnCorrelation, beta_weighted_exposure, es_equivalent_contracts, \
    hedge_order, max_contracts_within_limit
from strategies.kelly import bracket_contracts, discrete_kelly, shrink_probability, whole_contracts
from strategies.regime import RegimeDetector, RegimePolicy, RegimeState

log = logging.getLogger("nt8bridge.portfolio")

HEDGE_ALGORITHM = "hedge@0.2.0"


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """One bracket to send: the signal whose prices it uses, its size, and why."""

    signal: Signal
    quantity: int
    algorithm_id: str
    sizing: dict[str, Any]
    rationale: str


@dataclass(frozen=True, slots=True)
class ExitPlan:
    instrument_id: int
    algorithm_id: str
    rationale: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A signal that does not trade, and why (kept for the decision log)."""

    signal: Signal
    algorithm_id: str
    reason: str
    sizing: dict[str, Any]


@dataclass
class BarDecisions:
    plans: list[OrderPlan] = field(default_factory=list)
    exits: list[ExitPlan] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    regime_changes: list[tuple[int, RegimeState]] = field(default_factory=list)


@dataclass(slots=True)
class TrackRecord:
    """Wins and losses of one strategy's closed trades (a spread group counts once)."""

    wins: int = 0
    losses: int = 0

    def posterior(self, prior: float, strength: float) -> float:
        """Mean of Beta(prior * k + wins, (1 - prior) * k + losses): the estimate, corrected by results."""
        n = self.wins + self.losses
        if strength + n <= 0:
            return prior
        return (prior * strength + self.wins) / (strength + n)


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    name: str
    root: str
    tick_size: float
    point_value: float


class Portfolio:
    def __init__(self, config: Config, strategies: list[Strategy], instruments: dict[int, InstrumentInfo]) -> None:
        self.config = config
        self.strategies = strategies
        self.instruments = instruments
        self.by_root = {info.root: iid for iid, info in instruments.items()}
        pc = config.portfolio
        self.start_ns = parse_utc(pc.start_trading) if pc.start_trading else 0
        self.policy = RegimePolicy()
        self.regimes: dict[int, RegimeState | None] = {}
        self._detectors = {iid: RegimeDetector(vol_window=config.strategy.vol_bars,
                                               trend_window=config.strategy.er_bars,
                                               min_history=pc.regime_min_history,
                                               refit_every=pc.regime_refit_bars) for iid in instruments}
        self.correlation = ReturnCorrelation(window=pc.correlation_bars, min_periods=min(60, pc.correlation_bars))
        self.records: dict[str, TrackRecord] = defaultdict(TrackRecord)
        self._groups: dict[str, list[float | None]] = {}  # group -> P&L of each leg (None until closed)
        self._last_price: dict[int, float] = {}

    # --- inputs ---------------------------------------------------------------------------------

    def on_trade_closed(self, algorithm_id: str, group: str, leg: int, legs: int, pnl: float) -> None:
        """A bracket closed with ``pnl`` (currency, after commission): update the strategy's record."""
        if group:
            results = self._groups.setdefault(group, [None] * legs)
            results[leg] = pnl
            if any(r is None for r in results):
                return
            del self._groups[group]
            pnl = math.fsum(r for r in results if r is not None)
        rec = self.records[algorithm_id]
        if pnl > 0:
            rec.wins += 1
        else:
            rec.losses += 1

    # --- the decision ---------------------------------------------------------------------------

    def on_bar(self, bar: BarData, market: MarketView, equity: float, exposure: dict[int, int]) -> BarDecisions:
        """Decide on a closed bar. ``exposure``: signed contracts per instrument, position plus working entries."""
        out = BarDecisions()
        iid = bar.instrument_id
        self._last_price[iid] = bar.close
        info = self.instruments[iid]
        self.correlation.update(info.root, bar.ts_close_ns, bar.close)
        before = self.regimes.get(iid)
        state = self._detectors[iid].update(bar.ts_close_ns, bar.close)
        self.regimes[iid] = state
        if state is not None and (before is None or (before.volatility, before.trend) != (state.volatility, state.trend)):
            out.regime_changes.append((iid, state))
        signals: list[tuple[Strategy, Signal]] = []
        for strategy in self.strategies:
            for o in safe_on_bar(strategy, bar, market):
                if isinstance(o, Exit):
                    out.exits.append(ExitPlan(o.instrument_id, strategy.algorithm_id, o.rationale))
                else:
                    signals.append((strategy, o))
        if not signals:
            return out
        if bar.ts_close_ns < self.start_ns:
            for strategy, s in signals:
                out.dropped.append(Dropped(s, strategy.algorithm_id, "warm-up: before portfolio.start_trading", {}))
            return out
        self._plan(signals, market, equity, dict(exposure), out)
        return out

    def _weight(self, strategy: Strategy, instrument_id: int) -> tuple[float, str]:
        if not self.config.portfolio.regime_filter:
            return 1.0, "regime filter off"
        state = self.regimes.get(instrument_id)
        w = self.policy.weight(strategy.style, state)
        return w, self.policy.explain(state)

    def _costs(self, iid: int) -> float:
        """Expected round-trip cost of one contract: commission and slippage on both sides."""
        sc = self.config.sizing
        info = self.instruments[iid]
        return 2.0 * (sc.commission_per_contract + sc.slippage_ticks * info.tick_size * info.point_value)

    def _cap(self, strategy_id: str, iid: int, exposure: dict[int, int], market: MarketView) -> int:
        """Contracts a new entry may add on the instrument under every hard cap (the worst case: the
        entry adds to |position + working entries|)."""
        sc, rc = self.config.sizing, self.config.risk
        held = abs(market.position_of(iid, strategy_id))
        room_instrument = min(sc.max_contracts, rc.max_position) - abs(exposure.get(iid, 0))
        return max(0, min(sc.max_strategy_contracts - held, room_instrument, rc.max_order_quantity))

    def _probability(self, strategy: Strategy, s: Signal) -> tuple[float, dict[str, Any]]:
        rec = self.records[strategy.algorithm_id]
        k = self.config.sizing.prior_strength
        p = rec.posterior(s.win_probability, k)
        return p, {"stated_p": s.win_probability, "track_wins": rec.wins, "track_losses": rec.losses,
                   "prior_strength": k, "p": p}

    def _size_single(self, strategy: Strategy, s: Signal, market: MarketView, equity: float, weight: float,
                     cap: int) -> tuple[int, dict[str, Any]]:
        sc = self.config.sizing
        iid = s.instrument_id
        entry = s.entry_price if s.entry_type != EntryType.MARKET else self._last_price.get(iid, math.nan)
        if sc.mode == "fixed":
            q = min(sc.quantity, cap)
            return q, {"mode": "fixed", "quantity": sc.quantity, "cap": cap, "contracts": q,
                       "explain": f"fixed quantity {sc.quantity}, cap {cap}: {q} contracts"}
        p, record = self._probability(strategy, s)
        info = self.instruments[iid]
        cost = self._costs(iid)
        k = bracket_contracts(p=p, entry=entry, stop=s.stop_price, target=s.target_price,
                              point_value=info.point_value, equity=equity, fraction=sc.kelly_fraction * weight,
                              shrinkage=sc.shrinkage, cap=cap, cost_per_contract=cost)
        risk = abs(entry - s.stop_price) * info.point_value + cost
        reward = abs(s.target_price - entry) * info.point_value - cost
        return k.contracts, record | {
            "mode": "kelly", "entry_ref": entry, "risk_per_contract": risk, "reward_per_contract": reward,
            "payoff_ratio": reward / risk if risk > 0 else math.nan, "kelly_f": k.kelly_fraction,
            "shrinkage": sc.shrinkage, "shrunk_f": k.shrunk_fraction, "kelly_multiplier": sc.kelly_fraction,
            "regime_weight": weight, "applied_f": k.applied_fraction, "equity": equity,
            "uncapped_contracts": k.uncapped_contracts, "cap": cap, "contracts": k.contracts,
            "explain": k.explain()}

    def _size_group(self, strategy: Strategy, legs: list[Signal], equity: float, weight: float,
                    caps: list[int]) -> tuple[int, dict[str, Any]]:
        """Units of a spread group: Kelly on the payoff per unit, capped so every leg fits its cap."""
        sc = self.config.sizing
        cap_units = min(c // s.ratio for c, s in zip(caps, legs))
        if sc.mode == "fixed":
            u = min(sc.quantity, cap_units)
            return u, {"mode": "fixed", "units": u, "cap_units": cap_units,
                       "explain": f"fixed {sc.quantity} units, cap {cap_units}: {u} units"}
        first = legs[0]
        p, record = self._probability(strategy, first)
        cost = math.fsum(s.ratio * self._costs(s.instrument_id) for s in legs)
        win, loss = first.unit_win - cost, first.unit_loss + cost
        detail = record | {"mode": "kelly", "unit_win": first.unit_win, "unit_loss": first.unit_loss,
                           "unit_costs": cost, "shrinkage": sc.shrinkage, "kelly_multiplier": sc.kelly_fraction,
                           "regime_weight": weight, "equity": equity, "cap_units": cap_units}
        if not (win > 0 and loss > 0 and math.isfinite(win) and math.isfinite(loss)):
            return 0, detail | {"units": 0, "explain": "no edge after costs"}
        b = win / loss
        f = discrete_kelly(p, b)
        f_shrunk = discrete_kelly(shrink_probability(p, b, sc.shrinkage), b)
        applied = f_shrunk * sc.kelly_fraction * weight
        uncapped = whole_contracts(applied * equity / loss)
        units = min(uncapped, cap_units)
        explain = (f"{units} units: Kelly f*={f:.4f} at p={p:.3f}, payoff {b:.3f}, shrunk {f_shrunk:.4f}, applied "
                   f"{applied:.4f} -> {uncapped} before the cap of {cap_units}")
        return units, detail | {"payoff_ratio": b, "kelly_f": f, "shrunk_f": f_shrunk, "applied_f": applied,
                                "uncapped_units": uncapped, "units": units, "explain": explain}

    def _es_per_contract(self, iid: int) -> float:
        """Beta-weighted benchmark contracts per contract of ``iid`` (beta 1 until the window has data)."""
        bench = self.by_root.get(self.config.portfolio.benchmark)
        info = self.instruments[iid]
        price = self._last_price.get(iid, math.nan)
        if bench is None or not price > 0:
            return 1.0 if bench is None else math.nan
        bench_price = self._last_price.get(bench, math.nan)
        if not bench_price > 0:
            return math.nan
        beta = self.correlation.beta(info.root, self.config.portfolio.benchmark)
        if not math.isfinite(beta):
            beta = 1.0
        return es_equivalent_contracts(1, price, info.point_value, beta, bench_price,
                                       self.instruments[bench].point_value)

    def beta_exposure(self, exposure: dict[int, int]) -> float:
        """Beta-weighted net exposure in benchmark contracts (instruments without a price count 0)."""
        total = 0.0
        for iid, n in exposure.items():
            per = self._es_per_contract(iid)
            if n and math.isfinite(per):
                total += n * per
        return total

    def _plan(self, signals: list[tuple[Strategy, Signal]], market: MarketView, equity: float,
              exposure: dict[int, int], out: BarDecisions) -> None:
        limit = self.config.portfolio.max_beta_exposure
        groups: dict[str, list[tuple[Strategy, Signal]]] = defaultdict(list)
        singles: list[tuple[Strategy, Signal]] = []
        for strategy, s in signals:
            (groups[s.group] if s.group else singles).append((strategy, s))
        group_instruments: set[int] = set()
        for group, members in groups.items():
            strategy = members[0][0]
            legs = [s for _, s in members]
            weight, regime = min((self._weight(strategy, s.instrument_id) for s in legs), key=lambda t: t[0])
            caps = [self._cap(strategy.algorithm_id, s.instrument_id, exposure, market) for s in legs]
            units, sizing = self._size_group(strategy, legs, equity, weight, caps) if weight > 0 else \
                (0, {"regime_weight": 0.0, "explain": f"switched off by regime: {regime}"})
            sizing["regime"] = regime
            # the group's own net exposure (a spread is near beta-neutral) must fit the limit too
            per_unit = math.fsum(s.side.sign * s.ratio * self._es_per_contract(s.instrument_id) for s in legs)
            if units and math.isfinite(per_unit) and abs(per_unit) > 1e-12:
                now_es = self.beta_exposure(exposure)
                allowed = max_contracts_within_limit(now_es, abs(per_unit), 1 if per_unit > 0 else -1, units, limit)
                if allowed < units:
                    sizing["exposure_cut"] = f"{units} -> {allowed} units: beta-weighted exposure limit {limit:g}"
                    units = allowed
            if units <= 0:
                for s in legs:
                    out.dropped.append(Dropped(s, strategy.algorithm_id, "sized to zero: " + sizing.get("explain", ""),
                                               sizing))
                continue
            for leg, s in enumerate(legs):
                q = units * s.ratio
                exposure[s.instrument_id] = exposure.get(s.instrument_id, 0) + s.side.sign * q
                group_instruments.add(s.instrument_id)
                out.plans.append(OrderPlan(s, q, strategy.algorithm_id,
                                           sizing | {"group": group, "leg": leg, "legs": len(legs), "contracts": q},
                                           s.rationale))
        by_instrument: dict[int, list[tuple[Strategy, Signal, int, dict[str, Any]]]] = defaultdict(list)
        for strategy, s in singles:
            iid = s.instrument_id
            if iid in group_instruments:
                out.dropped.append(Dropped(s, strategy.algorithm_id, "a spread group trades this instrument now", {}))
                continue
            weight, regime = self._weight(strategy, iid)
            if weight <= 0:
                out.dropped.append(Dropped(s, strategy.algorithm_id, f"switched off by regime: {regime}",
                                           {"regime": regime, "regime_weight": weight}))
                continue
            cap = self._cap(strategy.algorithm_id, iid, exposure, market)
            q, sizing = self._size_single(strategy, s, market, equity, weight, cap)
            sizing["regime"] = regime
            by_instrument[iid].append((strategy, s, q, sizing))
        for iid, wants in by_instrument.items():
            self._net(iid, wants, exposure, limit, out)
        self._hedge(exposure, out)

    def _net(self, iid: int, wants: list[tuple[Strategy, Signal, int, dict[str, Any]]], exposure: dict[int, int],
             limit: float, out: BarDecisions) -> None:
        net = sum(s.side.sign * q for _, s, q, _ in wants)
        contributions = ", ".join(f"{st.name} {s.side.sign * q:+d}" for st, s, q, _ in wants)
        if net == 0:
            for st, s, q, sizing in wants:
                why = sizing.get("explain", "") if q == 0 else f"netted out ({contributions})"
                out.dropped.append(Dropped(s, st.algorithm_id, f"sized to zero: {why}" if q == 0 else why, sizing))
            return
        side = Side.BUY if net > 0 else Side.SELL
        same = [w for w in wants if w[1].side == side and w[2] > 0]
        strategy, lead, _, sizing = max(same, key=lambda w: w[2])
        q = abs(net)
        per = self._es_per_contract(iid)
        if math.isfinite(per) and per > 0:
            allowed = max_contracts_within_limit(self.beta_exposure(exposure), per, side.sign, q, limit)
            if allowed < q:
                sizing = sizing | {"exposure_cut": f"{q} -> {allowed}: beta-weighted exposure limit {limit:g}"}
                q = allowed
        for st, s, qq, sz in wants:
            if s is not lead:
                out.dropped.append(Dropped(s, st.algorithm_id, f"netted into {strategy.name} ({contributions})", sz))
        if q <= 0:
            out.dropped.append(Dropped(lead, strategy.algorithm_id, "cut to zero by the exposure limit", sizing))
            return
        exposure[iid] = exposure.get(iid, 0) + side.sign * q
        rationale = lead.rationale if len(wants) == 1 else f"{lead.rationale} [net of {contributions}]"
        out.plans.append(OrderPlan(lead, q, strategy.algorithm_id, sizing | {"netting": contributions,
                                                                            "contracts": q}, rationale))

    def _hedge(self, exposure: dict[int, int], out: BarDecisions) -> None:
        pc = self.config.portfolio
        hid = self.by_root.get(pc.hedge_root) if pc.hedge_root else None
        if hid is None or exposure.get(hid, 0):
            return  # no hedge configured, or the hedge instrument already carries a bracket
        info = self.instruments[hid]
        bench = self.by_root.get(pc.benchmark)
        price = self._last_price.get(hid, math.nan)
        bench_price = self._last_price.get(bench, math.nan) if bench is not None else math.nan
        if not (price > 0 and bench_price > 0):
            return
        beta = self.correlation.beta(info.root, pc.benchmark)
        now_es = self.beta_exposure(exposure)
        order = hedge_order(now_es, pc.hedge_threshold, 0.0,
                            Holding(info.root, 0, price, info.point_value, beta if math.isfinite(beta) else 1.0),
                            bench_price, self.instruments[bench].point_value, self.config.risk.max_order_quantity)
        if order is None or order.contracts == 0:
            return
        side = Side.BUY if order.contracts > 0 else Side.SELL
        snap_atr = max(abs(price) * 0.01, 4 * info.tick_size)  # protective: 1% away (the hedge is closed by hand)
        sig = Signal(hid, side, EntryType.MARKET, math.nan, round_to_tick(price - side.sign * snap_atr, info.tick_size),
                     round_to_tick(price + side.sign * snap_atr, info.tick_size), 0.5, order.reason)
        exposure[hid] = order.contracts
        out.plans.append(OrderPlan(sig, abs(order.contracts), HEDGE_ALGORITHM,
                                   {"mode": "hedge", "es_before": order.es_before, "es_after": order.es_after,
                                    "threshold": pc.hedge_threshold, "contracts": abs(order.contracts),
                                    "explain": order.reason}, order.reason))
