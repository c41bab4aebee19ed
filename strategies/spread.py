"""Spread arbitrage between index futures: ES/NQ (and ES/YM, ES/RTY), two legs in contract ratio.

For each configured pair (base A, other B) present in the session, on every minute where both have
a closed bar:

- **hedge ratio** ``h`` = cov(dA, dB) / var(dB) over the last ``spread_window`` bars, where dA and
  dB are the bars' price changes in currency per contract (price change x point value): the B
  contracts per A contract that minimise the variance of the pair's P&L. It is approximated by a
  small integer ratio ``nA : nB`` (``nA`` at most ``spread_max_ratio``);
- **spread** ``S = A * pvA - h * B * pvB`` over the same window, and its z-score now;
- **entry** at ``|z| >= spread_entry_z``: sell the rich leg and buy the cheap one (z > 0: sell A,
  buy B), both at market, as one group sized by Kelly from the win probability and the payoff
  per unit: reversion to ``spread_exit_z`` wins ``(|z| - exit) * sd``, the stop
  ``spread_stop_z`` beyond the entry's |z| loses ``spread_stop_z * sd`` (per ``nA`` units of S). The
  stop is relative to the entry so that the payoff ratio, like the win probability, does not
  depend on how far the entry happened to be stretched;
- **exit** of both legs when ``|z|`` falls to ``spread_exit_z``, rises ``spread_stop_z`` past the
  entry's, or the time limit ends; each leg also carries a protective bracket ``spread_leg_stop_atr`` ATRs away
  in case the sidecar is lost.

Leg risk (one leg filled, the other rejected, cancelled or stuck) is the pipeline's job: it
closes the filled leg at market (see ``bridge/engine/pipeline.py``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from collections.abc import Sequence

import numpy as np

from bridge.core.config import StrategyConfig
from bridge.core.market import BarData
from bridge.protocol.messages import EntryType, Side
from strategies.base import Exit, MarketView, Signal, Strategy, StrategyOutput, round_to_tick


def hedge_ratio(da: Sequence[float] | np.ndarray, db: Sequence[float] | np.ndarray) -> float:
    """cov(dA, dB) / var(dB) (ddof cancels); NaN when B does not move."""
    x, y = np.asarray(da, dtype=float), np.asarray(db, dtype=float)
    n = len(x)
    if n < 2 or n != len(y):
        return math.nan
    yc = y - y.mean()
    var = float(yc @ yc)
    return float((x - x.mean()) @ yc) / var if var > 0 else math.nan


def contract_ratio(h: float, max_ratio: int) -> tuple[int, int]:
    """Small integers (nA, nB) with nB / nA closest to ``h`` and nA <= max_ratio; (0, 0) if h is not positive.

    Every denominator up to ``max_ratio`` with its nearest numerator (a handful of candidates: cheaper
    than ``Fraction.limit_denominator`` on every bar); ties go to the smaller nA."""
    if not (h > 0 and math.isfinite(h)):
        return 0, 0
    best = (math.inf, 0, 0)
    for n_a in range(1, max_ratio + 1):
        n_b = round(h * n_a)
        err = abs(n_b / n_a - h)
        if err < best[0]:
            best = (err, n_a, n_b)
    _, n_a, n_b = best
    return (0, 0) if n_b == 0 else (n_a, n_b)


@dataclass
class _Pair:
    a_root: str
    b_root: str
    a: deque = field(default_factory=deque)  # A's closes of the minutes both legs traded
    b: deque = field(default_factory=deque)
    entry_z: float = math.nan  # |z| when the held trade was opened
    active: bool = False  # this pair opened the strategy's trade on its legs (pairs may share a leg)
    filled: set = field(default_factory=set)  # legs of the held trade seen with a position
    last: dict[int, tuple[int, float]] = field(default_factory=dict)  # iid -> (ts, close)


@dataclass(frozen=True, slots=True)
class SpreadState:
    h: float
    n_a: int
    n_b: int
    spread: float
    mean: float
    sd: float
    z: float


class SpreadArbitrage(Strategy):
    name = "spread"
    style = "spread"

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config
        self.pairs = [_Pair(*p.strip().upper().split("/")) for p in config.spread_pairs.split(",") if p.strip()]
        for p in self.pairs:
            p.a = deque(maxlen=config.spread_window + 1)
            p.b = deque(maxlen=config.spread_window + 1)

    def state(self, pair: _Pair, pv_a: float, pv_b: float) -> SpreadState | None:
        """Hedge ratio, integer ratio and z-score from the pair's window (None until it is full)."""
        cfg = self.config
        n = len(pair.a)
        if n <= cfg.spread_window:
            return None
        a = np.fromiter(pair.a, float, n)
        b = np.fromiter(pair.b, float, n)
        h = hedge_ratio(np.diff(a) * pv_a, np.diff(b) * pv_b)
        n_a, n_b = contract_ratio(h, cfg.spread_max_ratio)
        if n_a == 0:
            return None
        s = a[1:] * pv_a - h * b[1:] * pv_b
        mean = float(s.mean())
        sd = float(s.std(ddof=1))
        if not sd > 0:
            return None
        last = float(s[-1])
        return SpreadState(h, n_a, n_b, last, mean, sd, (last - mean) / sd)

    def on_bar(self, bar: BarData, market: MarketView) -> list[StrategyOutput] | None:
        out: list[StrategyOutput] = []
        for pair in self.pairs:
            ia, ib = market.instrument_id(pair.a_root), market.instrument_id(pair.b_root)
            if ia is None or ib is None or bar.instrument_id not in (ia, ib):
                continue
            pair.last[bar.instrument_id] = (bar.ts_close_ns, bar.close)
            la, lb = pair.last.get(ia), pair.last.get(ib)
            if la is None or lb is None or la[0] != lb[0]:
                continue  # wait for the other leg's bar of the same minute
            pair.a.append(la[1])
            pair.b.append(lb[1])
            out.extend(self._decide(pair, ia, ib, bar, market))
        return out

    def _decide(self, pair: _Pair, ia: int, ib: int, bar: BarData, market: MarketView) -> list[StrategyOutput]:
        cfg = self.config
        st = self.state(pair, market.point_value(ia), market.point_value(ib))
        name = f"{pair.a_root}/{pair.b_root}"
        # positions are the strategy's, not the pair's: ES/NQ and ES/YM share ES, so a pair only
        # manages the trade it opened
        held = pair.active and bool(market.position_of(ia, self.algorithm_id)
                                    or market.position_of(ib, self.algorithm_id))
        if pair.active and not held and market.is_flat(ia) and market.is_flat(ib):
            pair.active = False  # closed (or never filled): the pair may trade again
            pair.filled.clear()
        if held:
            pos = {i: market.position_of(i, self.algorithm_id) for i in (ia, ib)}
            pair.filled.update(i for i, q in pos.items() if q)
            gone = [i for i in (ia, ib) if i in pair.filled and not pos[i]]
            if gone:  # a leg closed on its own (its protective stop or target): what is left is unhedged
                lost = market.root(gone[0])
                text = (f"{name} spread lost its {lost} leg (closed by its protective order): closing the unhedged "
                        f"leg")
                return [Exit(i, text) for i in (ia, ib) if pos[i]]
        if st is None:
            if held:  # the hedge ratio is no longer defined: the spread cannot be measured, close it
                text = f"{name} spread can no longer be measured (hedge ratio undefined): closing"
                return [Exit(i, text) for i in (ia, ib) if market.position_of(i, self.algorithm_id)]
            return []
        if held:
            stop = (pair.entry_z if math.isfinite(pair.entry_z) else cfg.spread_entry_z) + cfg.spread_stop_z
            if abs(st.z) <= cfg.spread_exit_z or abs(st.z) >= stop:
                why = "reverted" if abs(st.z) <= cfg.spread_exit_z else "stopped"
                text = f"{name} spread {why}: z {st.z:+.2f} (exit {cfg.spread_exit_z:g}, stop {stop:.2f})"
                return [Exit(i, text) for i in (ia, ib) if market.position_of(i, self.algorithm_id)]
            return []
        if pair.active or abs(st.z) < cfg.spread_entry_z:
            return []
        if not (market.is_flat(ia) and market.is_flat(ib)):
            return []
        if market.minutes_to_close(ia, bar.ts_close_ns) < cfg.no_entry_before_close_min:
            return []
        fa, fb = market.features(ia), market.features(ib)
        if fa is None or fb is None:
            return []
        side_a = Side.SELL if st.z > 0 else Side.BUY
        side_b = Side.BUY if st.z > 0 else Side.SELL
        unit_sd = st.sd * st.n_a  # one unit is n_a contracts of A against n_b of B, about n_a spreads
        unit_win = (abs(st.z) - cfg.spread_exit_z) * unit_sd
        unit_loss = cfg.spread_stop_z * unit_sd
        group = f"{self.name}:{name}:{bar.ts_close_ns}"
        why = (f"{name} spread z {st.z:+.2f} over {cfg.spread_window} bars (S {st.spread:,.0f}, mean {st.mean:,.0f}, "
               f"sd {st.sd:,.0f}); hedge ratio {st.h:.3f} -> {st.n_a}:{st.n_b}; "
               f"{side_a.name.lower()} {pair.a_root}, {side_b.name.lower()} {pair.b_root}; "
               f"per unit win {unit_win:,.0f} at |z| {cfg.spread_exit_z:g}, loss {unit_loss:,.0f} at |z| "
               f"{abs(st.z) + cfg.spread_stop_z:.2f}")
        pair.entry_z = abs(st.z)
        pair.active = True
        pair.filled = set()
        legs = []
        for iid, side, n, snap in ((ia, side_a, st.n_a, fa), (ib, side_b, st.n_b, fb)):
            close = snap.values["close"]
            atr = snap.values["atr"]
            tick = market.tick_size(iid)
            width = max(cfg.spread_leg_stop_atr * atr, 4 * tick)
            legs.append(Signal(
                instrument_id=iid, side=side, entry_type=EntryType.MARKET, entry_price=math.nan,
                stop_price=round_to_tick(close - side.sign * width, tick),
                target_price=round_to_tick(close + side.sign * width, tick),
                win_probability=cfg.spread_win_prior, rationale=why,
                time_limit_s=cfg.spread_time_limit_min * 60.0, group=group, ratio=n,
                unit_win=unit_win, unit_loss=unit_loss))
        return legs
