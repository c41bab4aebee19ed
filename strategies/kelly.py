"""Fractional Kelly sizing: how many contracts a bracket with a known edge deserves.

The formulas (``../shared/reference/compliance.md``, Thorp 2006):

- a bracket is a discrete bet: win probability ``p``, payoff ``b`` = target distance / stop
  distance; the Kelly fraction of equity *at risk* is ``f* = p - (1 - p) / b``;
- continuous returns with mean ``mu`` and volatility ``sigma`` (per the same period, over the
  risk-free rate ``r``): ``f* = (mu - r) / sigma^2``, a leverage (notional / equity);
- a fraction ``c`` of Kelly (a quarter by default) keeps ``2c - c^2`` of the growth and makes a
  halving of the account far less likely; the edge is shrunk toward zero first, for estimation
  error; hard caps always win over the Kelly number.

Everything here is pure arithmetic (no state), so that each sizing can be explained and
recomputed from its ``KellySizing`` record. The portfolio (``strategies.portfolio``: per-strategy
caps, netting, the sizing of each plan) builds on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KellySizing:
    """One sizing, with every number that went into it (stored as the order's rationale)."""

    contracts: int
    kelly_fraction: float      # f* before shrinkage and the fractional multiplier
    shrunk_fraction: float     # after shrinking the edge toward zero
    applied_fraction: float    # times the Kelly multiplier: the fraction of equity at risk (or leverage)
    uncapped_contracts: int
    cap: int
    reason: str

    def explain(self) -> str:
        return (f"{self.contracts} contracts: Kelly f*={self.kelly_fraction:.4f}, shrunk {self.shrunk_fraction:.4f}, "
                f"applied {self.applied_fraction:.4f} -> {self.uncapped_contracts} before the cap of {self.cap}; "
                f"{self.reason}")


def whole_contracts(x: float) -> int:
    """``floor(x)``, forgiving floating-point error just below a whole number (absolute 1e-9 and relative
    1e-12, so that 0.03125 * 1e12 / 200 is 156,250,000 contracts, not 156,249,999)."""
    return int(math.floor(x + 1e-9 + 1e-12 * abs(x)))


def discrete_kelly(p: float, b: float) -> float:
    """``f* = p - q / b`` for win probability ``p`` and payoff ratio ``b`` (win / loss); 0 without an edge.

    Raises ValueError for p outside [0, 1] or a payoff that is not positive and finite.
    """
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"win probability {p} is not in [0, 1]")
    if not (b > 0 and math.isfinite(b)):
        raise ValueError(f"payoff ratio {b} must be positive and finite")
    return max(0.0, p - (1.0 - p) / b)


def continuous_kelly(mu: float, sigma: float, r: float = 0.0) -> float:
    """``f* = (mu - r) / sigma^2``: the leverage that maximises growth; 0 without an edge."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"volatility {sigma} must be positive and finite")
    if not (math.isfinite(mu) and math.isfinite(r)):
        raise ValueError("mean return and risk-free rate must be finite")
    return max(0.0, (mu - r) / sigma**2)


def shrink_probability(p: float, b: float, shrinkage: float) -> float:
    """Move ``p`` toward the break-even probability ``1 / (1 + b)`` by ``shrinkage`` (0: as is, 1: no edge).

    The break-even point, not 0.5, is where a bracket with payoff ``b`` has no edge; shrinking toward
    it scales the estimated edge down without ever turning a losing bet into a winning one.
    """
    if not (0.0 <= shrinkage <= 1.0):
        raise ValueError(f"shrinkage {shrinkage} is not in [0, 1]")
    breakeven = 1.0 / (1.0 + b)
    return breakeven + (p - breakeven) * (1.0 - shrinkage)


def bracket_contracts(*, p: float, entry: float, stop: float, target: float, point_value: float, equity: float,
                      fraction: float = 0.25, shrinkage: float = 0.5, cap: int,
                      cost_per_contract: float = 0.0) -> KellySizing:
    """Contracts for a bracket: the Kelly fraction of equity put at risk, one stop-loss per contract.

    The payoff ratio is taken after costs (commission and slippage per round trip, in currency): a
    win earns ``target distance * point value - cost``, a loss costs ``stop distance * point value +
    cost``. Contracts = floor(applied fraction * equity / loss per contract), then the hard ``cap``.
    """
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"Kelly multiplier {fraction} is not in (0, 1]")
    if cap < 0:
        raise ValueError("the cap cannot be negative")
    if not all(math.isfinite(x) for x in (entry, stop, target, point_value, equity, cost_per_contract)):
        raise ValueError("prices, point value, equity and costs must be finite")
    if point_value <= 0 or cost_per_contract < 0:
        raise ValueError("point value must be positive and costs not negative")
    risk = abs(entry - stop) * point_value + cost_per_contract
    reward = abs(target - entry) * point_value - cost_per_contract
    if abs(entry - stop) == 0 or risk <= 0:
        raise ValueError("the stop must differ from the entry")
    if reward <= 0 or equity <= 0:
        why = "no edge after costs" if reward <= 0 else "no equity"
        return KellySizing(0, 0.0, 0.0, 0.0, 0, cap, why)
    b = reward / risk
    f = discrete_kelly(p, b)
    f_shrunk = discrete_kelly(shrink_probability(p, b, shrinkage), b)
    applied = f_shrunk * fraction
    uncapped = whole_contracts(applied * equity / risk)
    contracts = min(uncapped, cap)
    if f == 0.0:
        reason = f"no edge: p={p:.3f} at payoff {b:.3f} is at or below break-even {1 / (1 + b):.3f}"
    elif uncapped == 0:
        reason = f"edge too small for one contract: {applied:.4f} of {equity:,.0f} < {risk:,.2f} risked per contract"
    elif contracts < uncapped:
        reason = f"capped at {cap}"
    else:
        reason = f"p={p:.3f}, payoff {b:.3f}, {fraction:g} Kelly, {shrinkage:g} shrinkage"
    return KellySizing(contracts, f, f_shrunk, applied, uncapped, cap, reason)


def leverage_contracts(*, mu: float, sigma: float, r: float = 0.0, price: float, point_value: float, equity: float,
                       fraction: float = 0.25, shrinkage: float = 0.5, cap: int) -> KellySizing:
    """Contracts for a continuous-return edge: floor(applied leverage * equity / (price * point value))."""
    if not (0.0 < fraction <= 1.0) or not (0.0 <= shrinkage <= 1.0):
        raise ValueError("Kelly multiplier must be in (0, 1] and shrinkage in [0, 1]")
    if not (price > 0 and point_value > 0 and math.isfinite(price * point_value)):
        raise ValueError("price and point value must be positive and finite")
    f = continuous_kelly(mu, sigma, r)
    f_shrunk = continuous_kelly(r + (mu - r) * (1.0 - shrinkage), sigma, r)
    applied = f_shrunk * fraction
    uncapped = whole_contracts(applied * max(equity, 0.0) / (price * point_value))
    contracts = min(uncapped, cap)
    reason = "no edge" if f == 0.0 else (f"capped at {cap}" if contracts < uncapped else
                                        f"mu={mu:g}, sigma={sigma:g}, {fraction:g} Kelly, {shrinkage:g} shrinkage")
    return KellySizing(contracts, f, f_shrunk, applied, uncapped, cap, reason)
