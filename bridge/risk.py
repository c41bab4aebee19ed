"""Pre-trade risk stage: every order is checked before it leaves; a missing limit blocks.

This is the foundation's basic set (quantity, position counting working orders, stale data, market
hours, bracket geometry). Every limit has a validated value (config.RiskConfig), so none can be
missing here; the fail-closed rule for per-instrument limits arrives with issue 6. The full risk engine of issue 6 (collars, rates, loss limits, trading
states, kill switch) replaces it behind ``check``. A denial is a result, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bridge.config import RiskConfig
from bridge.protocol.messages import EntryType, Side

_NS = 1_000_000_000


class RiskDenial(StrEnum):
    MAX_ORDER_QUANTITY = "RISK_MAX_ORDER_QUANTITY_EXCEEDED"
    MAX_POSITION = "RISK_MAX_POSITION_EXCEEDED"
    STALE_DATA = "RISK_STALE_DATA"
    MARKET_CLOSED = "RISK_MARKET_CLOSED"
    NO_REFERENCE_PRICE = "RISK_NO_REFERENCE_PRICE"
    BRACKET_GEOMETRY = "RISK_BRACKET_GEOMETRY_INVALID"


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """A sized order about to be checked."""

    instrument_id: int
    side: Side
    quantity: int
    entry_type: EntryType
    entry_price: float
    stop_price: float
    target_price: float


@dataclass(frozen=True, slots=True)
class RiskCheck:
    name: str
    passed: bool
    value: float
    limit: float


@dataclass(frozen=True, slots=True)
class RiskResult:
    approved: bool
    denial: RiskDenial | None
    checks: tuple[RiskCheck, ...]

    def describe(self) -> str:
        return "; ".join(f"{c.name} {c.value:g} vs {c.limit:g}: {'pass' if c.passed else 'FAIL'}"
                         for c in self.checks)


@dataclass(frozen=True, slots=True)
class RiskInputs:
    """What the check needs to know about the instrument right now."""

    position: int  # signed, from the sidecar's own ledger of executions
    working_entry_quantity: int  # signed quantity of entries sent and not yet filled or cancelled
    reference_price: float  # last trade, NaN if none yet
    last_tick_ns: int
    now_ns: int  # event time of the decision
    market_open: bool


class BasicRiskEngine:
    def __init__(self, config: RiskConfig) -> None:
        self.config = config

    def check(self, order: OrderIntent, inputs: RiskInputs) -> RiskResult:
        cfg = self.config
        checks: list[RiskCheck] = []

        def fail(denial: RiskDenial) -> RiskResult:
            return RiskResult(False, denial, tuple(checks))

        checks.append(RiskCheck("market_open", inputs.market_open, float(inputs.market_open), 1.0))
        if not inputs.market_open:
            return fail(RiskDenial.MARKET_CLOSED)
        age_s = (inputs.now_ns - inputs.last_tick_ns) / _NS
        checks.append(RiskCheck("data_age_s", age_s <= cfg.stale_data_s, age_s, cfg.stale_data_s))
        if age_s > cfg.stale_data_s:
            return fail(RiskDenial.STALE_DATA)
        ref = inputs.reference_price
        checks.append(RiskCheck("reference_price", ref == ref and ref > 0, ref, 0.0))
        if not (ref == ref and ref > 0):
            return fail(RiskDenial.NO_REFERENCE_PRICE)
        checks.append(RiskCheck("order_quantity", 0 < order.quantity <= cfg.max_order_quantity,
                                order.quantity, cfg.max_order_quantity))
        if not 0 < order.quantity <= cfg.max_order_quantity:
            return fail(RiskDenial.MAX_ORDER_QUANTITY)
        exposure = abs(inputs.position + inputs.working_entry_quantity + order.side.sign * order.quantity)
        checks.append(RiskCheck("position_with_working", exposure <= cfg.max_position, exposure,
                                cfg.max_position))
        if exposure > cfg.max_position:
            return fail(RiskDenial.MAX_POSITION)
        entry = ref if order.entry_type == EntryType.MARKET else order.entry_price
        sign = order.side.sign
        geometry_ok = sign * (entry - order.stop_price) > 0 and sign * (order.target_price - entry) > 0
        checks.append(RiskCheck("stop_below_entry_below_target", geometry_ok, float(geometry_ok), 1.0))
        if not geometry_ok:
            return fail(RiskDenial.BRACKET_GEOMETRY)
        return RiskResult(True, None, tuple(checks))
