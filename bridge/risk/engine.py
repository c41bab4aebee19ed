"""The pre-trade risk engine: limits per scope, trading states, overrides, fail closed.

Pure and deterministic: every call takes its event time (``now_ns``, nanoseconds since the Unix
epoch, UTC); nothing here reads a clock, a file or a socket. A denial is a result, never an
exception; an invalid *operator command* (no operator name, an override approved by its own
requester) raises ``ValueError``.

Scopes
------
An order is checked against every scope that applies to it, each with its own :class:`Limits`:

==============  =====================  ==============================================================
scope           written                keyed by
==============  =====================  ==============================================================
desk            ``"*"``                everything; its limits are also the defaults of the fail-closed
                                       rule below
instrument      ``"instrument:ES"``    the instrument root (``"ES"``, not ``"ES 06-18"``)
strategy        ``"strategy:momentum"``the algorithm id *without* its version: ``"momentum@0.2.0"``
                                       and ``"momentum@0.3.0"`` share the scope ``strategy:momentum``,
                                       so a strategy's limits, state and P&L survive a code release
                                       (the full, versioned id is still what the records carry).
                                       ``Scope.strategy("momentum@0.2.0")`` drops the version itself.
account         ``"account:Sim101"``   the NT8 account name
==============  =====================  ==============================================================

Position limits (``max_long``/``max_short``/``max_net``) count contracts *of the order's
instrument* held within the scope: for ``strategy:momentum`` that is momentum's ES position (all
accounts), for ``account:Sim101`` the account's ES position (all strategies), for the desk and the
instrument scope the desk's whole ES position. Contracts of different instruments are never added
(an ES and a MES contract are not the same size); cross-instrument exposure is the portfolio's
beta-weighted limit (strategies/exposure.py).

Exposure counting working orders, for the scope's filled position ``P``, the remaining quantity of
its working *entry* orders on the buy side ``WB`` and the sell side ``WS`` (exit legs only reduce,
so they are not counted), and the new order's signed quantity ``s*q``:

* long  = P + WB (+ q for a buy): a buy must leave it <= ``max_long``; a sell does not change it.
* short = WS - P (+ q for a sell): a sell must leave it <= ``max_short``; a buy does not change it.
* net   = P + WB - WS + s*q: ``|net| <= max_net``, or ``|net|`` strictly smaller than before the
  order (so a reducing order still passes when an outside fill left the scope over its limit).

Fail closed
-----------
For each category of :data:`MANDATORY` (price collar, order quantity, order notional, position,
stale data), the instrument scope of the order or the desk scope must set at least one of its
fields (position: ``max_net``, or both ``max_long`` and ``max_short``); otherwise the order (and a
change) is denied with ``RISK_NO_LIMIT`` and a check naming the category and the fields that would
satisfy it. Limits of a strategy or an account scope are checked as well, but never stand in for
a missing instrument/desk limit. A scope whose loss limit is set but whose P&L was never reported
(:meth:`RiskEngine.on_pnl`) blocks orders that do not reduce the position: ``RISK_DAILY_LOSS``
with a check saying so.

Trading states
--------------
Each scope is ACTIVE, REDUCING or HALTED; an order sees the most restrictive state of its scopes.

* ACTIVE: every check applies.
* REDUCING: a new order passes the state check only if it reduces ``|position|`` of its
  instrument within that scope: its side is opposite to the filled position and its quantity plus
  the scope's working entries on the same side is at most ``|position|`` (so several reducing
  orders together cannot flip the position). Changes: exit legs (stop/target) may be changed; an
  entry may only have its quantity lowered. All other checks still apply.
* HALTED: no new order and no change; only cancels.

Cancels are allowed in every state and are never denied: refusing a cancel keeps an order working
that somebody wants gone, the worse failure. They are counted: when a scope sends more than
``max_cancels_per_s`` cancels within one second (a cancel/replace loop gone wild), the cancel
still goes through, its check is recorded as failed, and the scope goes HALTED (cause
``RISK_CANCEL_RATE``) until an operator re-enables it.

Automatic transitions (they never loosen a state, and say why in a :class:`StateChange` whose
``operator`` is ``"risk-engine"``):

* repeated executions: the N-th automated execution within ``execution_window_s`` -> HALTED
  (``RISK_EXECUTION_THROTTLE``);
* the cancel rate, as above -> HALTED (``RISK_CANCEL_RATE``);
* daily loss or drawdown beyond its limit -> REDUCING (``RISK_DAILY_LOSS`` / ``RISK_DRAWDOWN``),
  not HALTED: after a loss the desk must still be able to close what it holds, which HALTED (only
  cancels) would forbid.

Orders denied because of an automatic state carry its cause as their reason
(``RISK_EXECUTION_THROTTLE``, ``RISK_CANCEL_RATE``, ``RISK_DAILY_LOSS``, ``RISK_DRAWDOWN``); orders
denied because of an operator's :meth:`RiskEngine.halt` / :meth:`RiskEngine.reduce_only` carry
``RISK_STATE_HALTED`` / ``RISK_STATE_REDUCING``. Every state is sticky until a named operator calls
:meth:`RiskEngine.enable` (which also clears the scope's execution and cancel counts); a loss limit
still breached moves the scope back to REDUCING at the next check or P&L report.

Daily loss and drawdown
-----------------------
:meth:`RiskEngine.on_pnl` takes a scope's *cumulative* realized and unrealized P&L (since an origin
where both were 0, e.g. the sidecar session start). The day's P&L is ``realized + unrealized`` minus
the last figure reported before the trading day began (0 if none); the drawdown is the day's peak of
that P&L (at least 0) minus its current value. Trading days start at ``day_start_s`` seconds after
00:00 UTC (default 0: the UTC day), or wherever a ``trading_day(ts_ns) -> int`` callable says.

Rates
-----
Sliding one-second windows in event time: an order passes if the scope's approved orders within
``(now - 1 s, now]``, itself included, are at most ``max_orders_per_s`` (same for changes). A check
that approves an order records it in the windows (the check is the commitment to send it). Event
time never goes backwards here: a time earlier than the latest seen is taken as the latest seen.

Overrides
---------
:meth:`RiskEngine.override` replaces a numeric limit of one scope until ``expires_ns`` (the override
is in force while ``now < expires_ns``), at most ``max_override_s`` ahead; it needs who asked, why,
and a different person who approved. Expiry happens by itself at the first call at or after that
time and is reported as an :class:`OverrideExpired` event in that call's result. A check that used
an overridden value says so in its ``note``. :meth:`RiskEngine.set_limit` is the only other way to
change limits after construction; every change is returned as an event for the audit log.

Changes
-------
:meth:`RiskEngine.check_change` applies to a change of one working order: trading state, stale data
and reference price, the collar on the new price, quantity and notional of the new quantity,
position limits when an entry grows, self-trade prevention when a price moves, and the change rate.
Sessions and blackouts are not checked (moving a protective stop must stay possible); the
fail-closed rule is.

Self-trade prevention
---------------------
With ``self_trade_prevention`` set in any scope of the order, a new order (or a changed price) is
denied with ``RISK_SELF_TRADE`` when it could trade against a working order of *another algorithm*
(a different full algorithm id, so two versions of one strategy are kept apart too) on the same
account and instrument, on the opposite side. Two orders can meet when at least one of them rests
as a LIMIT and their prices cross (buy price >= sell price), where a MARKET order crosses every
price and a STOP order counts at its stop price (the price at which it turns into a market order);
two non-resting orders (market or stop) never meet each other. Exit legs of working brackets are
orders like any other here; the exit legs of the *new* bracket are not checked (they do not work
until its entry fills).

Categories and check names
--------------------------
Each limit check is named after the :class:`Limits` field it applies (``max_order_quantity``,
``collar_ticks``, ...), with the value found, the limit in force and the scope; :data:`CATEGORY_OF`
maps a name to its :class:`Category`. Other checks: ``order_valid``, ``limit_configured``,
``trading_state``, ``reference_price``, ``bracket_geometry``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from functools import partial
from typing import Any, NamedTuple, Union

from bridge.core.limits import (
    _SKEY,
    DESK,
    LIMIT_FIELDS,
    NUMERIC_FIELDS,
    Limits,
    Scope,
    in_windows,
    strategy_key,
)
from bridge.protocol.messages import EntryType, OrderRole, Side

_NS = 1_000_000_000
DAY_NS = 86_400 * _NS
_NEVER = 1 << 62
_INF = math.inf
_TOL = 1e-9  # prices are floats on a tick grid: a distance of exactly N ticks is within N ticks
AUTO_OPERATOR = "risk-engine"
_BUY = Side.BUY
_MARKET = EntryType.MARKET
_LIMIT = EntryType.LIMIT


# --------------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------------


class RiskReason(StrEnum):
    """Why an order, a change or a cancel was denied."""

    RISK_PRICE_COLLAR = "RISK_PRICE_COLLAR"
    RISK_MAX_ORDER_QUANTITY = "RISK_MAX_ORDER_QUANTITY"
    RISK_MAX_ORDER_NOTIONAL = "RISK_MAX_ORDER_NOTIONAL"
    RISK_MAX_LONG = "RISK_MAX_LONG"
    RISK_MAX_SHORT = "RISK_MAX_SHORT"
    RISK_MAX_NET = "RISK_MAX_NET"
    RISK_ORDER_RATE = "RISK_ORDER_RATE"
    RISK_CHANGE_RATE = "RISK_CHANGE_RATE"
    RISK_CANCEL_RATE = "RISK_CANCEL_RATE"
    RISK_EXECUTION_THROTTLE = "RISK_EXECUTION_THROTTLE"
    RISK_DAILY_LOSS = "RISK_DAILY_LOSS"
    RISK_DRAWDOWN = "RISK_DRAWDOWN"
    RISK_STALE_DATA = "RISK_STALE_DATA"
    RISK_MARKET_CLOSED = "RISK_MARKET_CLOSED"
    RISK_BLACKOUT = "RISK_BLACKOUT"
    RISK_SELF_TRADE = "RISK_SELF_TRADE"
    RISK_STATE_HALTED = "RISK_STATE_HALTED"
    RISK_STATE_REDUCING = "RISK_STATE_REDUCING"
    RISK_NO_LIMIT = "RISK_NO_LIMIT"
    RISK_NO_REFERENCE_PRICE = "RISK_NO_REFERENCE_PRICE"
    # the order's own shape: stop and target on their sides of the entry (the reference price for a
    # market entry), and valid fields
    RISK_BRACKET_GEOMETRY = "RISK_BRACKET_GEOMETRY"
    RISK_INVALID_ORDER = "RISK_INVALID_ORDER"  # quantity <= 0, a non-finite price, no tick size...


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"  # only orders that reduce |position| of their instrument in the scope
    HALTED = "HALTED"  # only cancels


_RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class Category(StrEnum):
    COLLAR = "collar"
    ORDER_QUANTITY = "order_quantity"
    ORDER_NOTIONAL = "order_notional"
    POSITION = "position"
    ORDER_RATE = "order_rate"
    CHANGE_RATE = "change_rate"
    CANCEL_RATE = "cancel_rate"
    EXECUTION_THROTTLE = "execution_throttle"
    DAILY_LOSS = "daily_loss"
    DRAWDOWN = "drawdown"
    STALE_DATA = "stale_data"
    SESSION = "session"
    BLACKOUT = "blackout"
    SELF_TRADE = "self_trade"


CATEGORY_FIELDS: dict[Category, tuple[str, ...]] = {
    Category.COLLAR: ("collar_ticks", "collar_pct"),
    Category.ORDER_QUANTITY: ("max_order_quantity",),
    Category.ORDER_NOTIONAL: ("max_order_notional",),
    Category.POSITION: ("max_long", "max_short", "max_net"),
    Category.ORDER_RATE: ("max_orders_per_s",),
    Category.CHANGE_RATE: ("max_changes_per_s",),
    Category.CANCEL_RATE: ("max_cancels_per_s",),
    Category.EXECUTION_THROTTLE: ("max_executions_per_window", "execution_window_s"),
    Category.DAILY_LOSS: ("max_daily_loss",),
    Category.DRAWDOWN: ("max_drawdown",),
    Category.STALE_DATA: ("stale_data_s",),
    Category.SESSION: ("sessions",),
    Category.BLACKOUT: ("blackouts",),
    Category.SELF_TRADE: ("self_trade_prevention",),
}
CATEGORY_OF: dict[str, Category] = {f: c for c, fs in CATEGORY_FIELDS.items() for f in fs}
# the check names each category's fields are reported under (the throttle's window is not a check)
CHECK_NAMES: dict[Category, tuple[str, ...]] = {
    c: tuple(f for f in fs if f != "execution_window_s") for c, fs in CATEGORY_FIELDS.items()
}
MANDATORY: frozenset[Category] = frozenset(
    {Category.COLLAR, Category.ORDER_QUANTITY, Category.ORDER_NOTIONAL, Category.POSITION, Category.STALE_DATA}
)
# categories a new order is checked against (change and cancel rates apply to changes and cancels)
NEW_ORDER_CATEGORIES: frozenset[Category] = frozenset(Category) - {Category.CHANGE_RATE, Category.CANCEL_RATE}


_EMPTY = Limits()


def _describe_value(v: Any) -> Any:
    if callable(v):
        return f"<callable {getattr(v, '__qualname__', type(v).__name__)}>"
    if isinstance(v, tuple):
        return [_describe_value(w) for w in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------------------------
# Orders and context
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A new bracket to check: entry, protective stop and profit target.

    ``entry_price`` is NaN for a MARKET entry; ``algorithm_id`` is the full, versioned id.
    """

    root: str
    algorithm_id: str
    account: str
    side: Side
    quantity: int
    entry_type: EntryType
    entry_price: float
    stop_price: float
    target_price: float
    point_value: float
    tick_size: float
    order_id: str = ""


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """An order sent and not yet done (filled, cancelled or rejected): ``quantity`` is what remains.

    ``order_type`` says how it trades (a bracket's stop leg is STOP, its target LIMIT); ``price`` is
    its limit or stop price, NaN for MARKET. ``is_entry`` is False for exit legs, which are not
    counted as exposure but can self-trade like any order.
    """

    order_id: str
    account: str
    algorithm_id: str
    root: str
    side: Side
    quantity: int
    order_type: EntryType
    price: float
    is_entry: bool = True


@dataclass(slots=True)
class RiskContext:
    """What a check needs to know right now.

    ``positions``: signed filled contracts per ``(account, algorithm_id, root)``; entries of other
    instruments are ignored, so the whole book may be passed. ``working``: working orders (any
    instrument). ``pnl``: optional cumulative ``(realized, unrealized)`` per scope, applied as
    :meth:`RiskEngine.on_pnl` before the check.
    """

    now_ns: int
    reference_price: float
    last_tick_ns: int | None
    positions: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    working: Sequence[WorkingOrder] = ()
    pnl: Mapping[Scope | str, tuple[float, float]] | None = None


@dataclass(frozen=True, slots=True)
class OrderChange:
    """A change of one working order (one leg of a bracket).

    ``role``: ENTRY, STOP or TARGET. ``side`` and ``order_type`` are the leg's own (a long
    bracket's stop leg is a SELL STOP). ``quantity``/``price``: what the order has now;
    ``new_quantity`` 0 and ``new_price`` NaN leave them unchanged.
    """

    order_id: str
    root: str
    algorithm_id: str
    account: str
    role: OrderRole
    side: Side
    order_type: EntryType
    quantity: int
    price: float
    new_quantity: int
    new_price: float
    point_value: float
    tick_size: float


@dataclass(frozen=True, slots=True)
class CancelRequest:
    order_id: str
    root: str
    algorithm_id: str
    account: str


# --------------------------------------------------------------------------------------------
# Events (for the audit log)
# --------------------------------------------------------------------------------------------


def _json(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, StrEnum):
        return str(v)
    if isinstance(v, Scope):
        return str(v)
    return _describe_value(v)


def _event_dict(ev: Any) -> dict[str, Any]:
    d = {"event": type(ev).__name__}
    for f in fields(ev):
        d[f.name] = _json(getattr(ev, f.name))
    return d


@dataclass(frozen=True, slots=True)
class StateChange:
    scope: Scope
    old: TradingState
    new: TradingState
    reason: str
    operator: str  # AUTO_OPERATOR for a transition the engine made by itself
    ts_ns: int
    cause: RiskReason | None = None  # the limit that moved the scope, for automatic transitions
    automatic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)


@dataclass(frozen=True, slots=True)
class Override:
    scope: Scope
    field: str
    value: float
    previous: Any  # the value in force before (the base limit, or an earlier override)
    who: str
    why: str
    approved_by: str
    ts_ns: int
    expires_ns: int

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)


@dataclass(frozen=True, slots=True)
class OverrideExpired:
    scope: Scope
    field: str
    value: float  # the override's value
    restored: Any  # the base limit in force again
    ts_ns: int  # the event time at which the expiry was processed (>= expires_ns)
    expires_ns: int

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)


@dataclass(frozen=True, slots=True)
class LimitChange:
    scope: Scope
    field: str
    old: Any
    new: Any
    operator: str
    reason: str
    ts_ns: int

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)


Event = Union[StateChange, Override, OverrideExpired, LimitChange]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class RiskCheck(NamedTuple):
    """One check: its name (a Limits field, or order_valid, trading_state, ...), what was found,
    the limit in force and the scope (``"*"``, ``"instrument:ES"``, ...) it belongs to."""

    name: str
    passed: bool
    value: Any
    limit: Any
    scope: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": _json(self.value),
                "limit": _json(self.limit), "scope": self.scope, "note": self.note}


# RiskCheck((name, passed, value, limit, scope, note)) without NamedTuple.__new__'s Python frame: a
# check builds 15-25 of them, and this saves about 0.2 us each
_chk = partial(tuple.__new__, RiskCheck)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass(slots=True)
class RiskResult:
    """The outcome of one check; ``reason`` is None when approved."""

    kind: str  # "new", "change" or "cancel"
    approved: bool
    reason: RiskReason | None
    checks: tuple[RiskCheck, ...]
    detail: str = ""
    events: tuple[Event, ...] = ()
    order_id: str = ""
    ts_ns: int = 0

    @property
    def denial(self) -> RiskReason | None:
        return self.reason

    def failed(self) -> list[RiskCheck]:
        return [c for c in self.checks if not c.passed]

    def describe(self) -> str:
        head = f"{'APPROVED' if self.approved else 'DENIED'} {self.kind}"
        if self.order_id:
            head += f" {self.order_id}"
        if self.approved:
            text = f"{head}: {len(self.checks)} checks"
            bad = self.failed()
            if bad:
                text += "; " + ", ".join(f"{c.name} {_fmt(c.value)} > {_fmt(c.limit)} at {c.scope}" for c in bad)
        else:
            bad = self.failed()
            text = f"{head}: {self.reason}"
            if bad:
                c = bad[-1]
                text += f" ({c.name} {_fmt(c.value)} vs limit {_fmt(c.limit)} at {c.scope})"
        if self.detail:
            text += f" - {self.detail}"
        if self.events:
            text += " [" + "; ".join(_event_line(e) for e in self.events) + "]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "approved": self.approved,
                "reason": None if self.reason is None else str(self.reason), "detail": self.detail,
                "order_id": self.order_id, "ts_ns": self.ts_ns,
                "checks": [c.to_dict() for c in self.checks], "events": [e.to_dict() for e in self.events]}


def _event_line(e: Event) -> str:
    if isinstance(e, StateChange):
        return f"{e.scope} {e.old}->{e.new} by {e.operator}: {e.reason}"
    if isinstance(e, OverrideExpired):
        return f"override of {e.field} at {e.scope} expired ({_fmt(e.value)} -> {_fmt(e.restored)})"
    if isinstance(e, Override):
        return f"override {e.field}={_fmt(e.value)} at {e.scope} by {e.who} approved by {e.approved_by}"
    return f"limit {e.field} at {e.scope} {_fmt(e.old)} -> {_fmt(e.new)} by {e.operator}"


# --------------------------------------------------------------------------------------------
# Engine internals
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    state: TradingState
    cause: RiskReason | None
    reason: str


@dataclass(slots=True)
class _Pnl:
    day: int
    baseline: float  # cumulative equity at the start of the day
    equity: float  # last cumulative realized + unrealized
    peak: float  # highest day P&L so far today (>= 0)


class _Route:
    """What one (root, algorithm id, account) combination resolves to, limit by limit, so that a check
    only visits the limits that are set. Rebuilt whenever limits or overrides change."""

    __slots__ = ("scopes", "skey", "missing", "stp", "instr_s", "has_overrides", "windows", "stale", "collar_ticks",
                 "collar_pct", "quantity", "notional", "position", "loss", "throttle", "rates")

    def __init__(self, scopes: tuple, skey: str, limited: tuple, missing: tuple, has_overrides: bool) -> None:
        self.scopes = scopes  # ((scope, scope string, view), ...) instrument, strategy, account, desk
        self.skey = skey
        self.missing = missing  # ((category, fields text), ...) mandatory categories not set
        self.instr_s = scopes[0][1]
        self.has_overrides = has_overrides
        # limited: ((scope, scope string, view, effective Limits), ...) for the scopes that have limits

        def pick(name: str) -> tuple:
            return tuple((s_str, getattr(lim, name)) for _, s_str, _, lim in limited if getattr(lim, name) is not None)

        self.stp = any(lim.self_trade_prevention for *_, lim in limited)
        self.windows = tuple((s_str, lim.sessions, lim.blackouts) for _, s_str, _, lim in limited
                             if lim.sessions is not None or lim.blackouts is not None)
        self.stale = pick("stale_data_s")
        self.collar_ticks = pick("collar_ticks")
        self.collar_pct = pick("collar_pct")
        self.quantity = pick("max_order_quantity")
        self.notional = pick("max_order_notional")
        self.position = tuple((s_str, view, lim.max_long, lim.max_short, lim.max_net) for _, s_str, view, lim in limited
                              if lim.max_long is not None or lim.max_short is not None or lim.max_net is not None)
        self.loss = tuple((s, s_str, view, lim) for s, s_str, view, lim in limited
                          if lim.max_daily_loss is not None or lim.max_drawdown is not None)
        self.throttle = tuple((s, s_str, lim.max_executions_per_window, lim.execution_window_s)
                              for s, s_str, _, lim in limited if lim.max_executions_per_window is not None)
        self.rates = {name: tuple((s, s_str, getattr(lim, name)) for s, s_str, _, lim in limited
                                  if getattr(lim, name) is not None)
                      for name in ("max_orders_per_s", "max_changes_per_s", "max_cancels_per_s")}


_VIEW = {"instrument": 0, "desk": 0, "strategy": 1, "account": 2}


def _require(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} is required (a non-empty name)")
    return text.strip()


def _bad_price(p: float) -> bool:
    return not (p == p and p > 0 and p != _INF)


def _can_trade(buy_type: EntryType, buy_price: float, sell_type: EntryType, sell_price: float) -> bool:
    """Could a buy and a sell order meet? One must rest as a LIMIT; then their prices must cross."""
    if buy_type != _LIMIT and sell_type != _LIMIT:
        return False
    if buy_type == _MARKET or sell_type == _MARKET:
        return True
    return buy_price >= sell_price


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class RiskEngine:
    """Pre-trade checks of new orders, changes and cancels against limits per scope.

    Parameters
    ----------
    limits
        Limits per scope (a :class:`Scope` or its string form, ``"*"`` for the desk).
    mandatory
        Categories the instrument scope or the desk must set (fail closed); :data:`MANDATORY`.
    day_start_s
        Trading days start this many seconds after 00:00 UTC (0: the UTC day).
    trading_day
        Instead of ``day_start_s``: a function from ``ts_ns`` to a day number.
    max_override_s
        The longest an override may last.
    """

    def __init__(self, limits: Mapping[Scope | str, Limits] | None = None, *,
                 mandatory: Iterable[Category] = MANDATORY, day_start_s: int = 0,
                 trading_day: Callable[[int], int] | None = None, max_override_s: float = 86_400.0) -> None:
        self.mandatory = frozenset(Category(c) for c in mandatory)
        self._day_offset = int(day_start_s) * _NS
        self._trading_day = trading_day
        self.max_override_s = float(max_override_s)
        self._base: dict[Scope, Limits] = {}
        for scope, lim in (limits or {}).items():
            if not isinstance(lim, Limits):
                raise ValueError(f"limits of {scope}: a Limits, got {type(lim).__name__}")
            self._base[Scope.parse(scope)] = lim
        self._ovr: dict[Scope, dict[str, Override]] = {}
        self._eff: dict[Scope, Limits] = dict(self._base)
        self._routes: dict[tuple[str, str, str], _Route] = {}
        self._states: dict[Scope, _State] = {}
        self._orders: dict[Scope, deque[int]] = {}
        self._changes: dict[Scope, deque[int]] = {}
        self._cancels: dict[Scope, deque[int]] = {}
        self._execs: dict[Scope, deque[int]] = {}
        self._pnl: dict[Scope, _Pnl] = {}
        self._now = -_NEVER
        self._next_expiry = _NEVER
        self._deferred: list[Callable[[int], Any]] = []  # operator commands waiting for a first event time
        self._pending: list[Event] = []

    # ---------------------------------------------------------------- queries

    @property
    def now_ns(self) -> int:
        """The latest event time seen."""
        return self._now

    def state(self, scope: Scope | str) -> TradingState:
        st = self._states.get(Scope.parse(scope))
        return TradingState.ACTIVE if st is None else st.state

    def states(self) -> dict[str, tuple[TradingState, str]]:
        """Scopes that are not ACTIVE, with why."""
        return {str(s): (st.state, st.reason) for s, st in self._states.items()}

    def limits(self, scope: Scope | str) -> Limits:
        """The limits in force for a scope (base limits with active overrides)."""
        return self._eff.get(Scope.parse(scope), _EMPTY)

    def overrides(self) -> list[Override]:
        return [o for per in self._ovr.values() for o in per.values()]

    def at_first_event(self, command: Callable[[int], Any]) -> None:
        """Run an operator command (``command(now_ns)`` returning its event) at the engine's first event
        time, or now if it has one: an engine that has seen no event has no clock to stamp the command
        with or to count an override's duration from. The command's event comes out with the results
        of the call that ran it, like every other event."""
        if self._now == -_NEVER:
            self._deferred.append(command)
        else:
            self._pending.append(command(self._now))

    def _run_deferred(self, now: int) -> None:
        commands, self._deferred = self._deferred, []
        for command in commands:
            self._pending.append(command(now))

    @property
    def event_time_ns(self) -> int | None:
        """The latest event time the engine has seen (None before the first)."""
        return None if self._now == -_NEVER else self._now

    def limits_in_force(self) -> dict[str, dict[str, Any]]:
        """Every scope's configured limits in force, JSON-friendly (for the limits report)."""
        out: dict[str, dict[str, Any]] = {}
        for scope, lim in sorted(self._eff.items(), key=lambda kv: str(kv[0])):
            out[str(scope)] = {k: _describe_value(v) for k, v in lim.configured().items()}
        return out

    def trading_day(self, ts_ns: int) -> int:
        if self._trading_day is not None:
            return int(self._trading_day(ts_ns))
        return (ts_ns - self._day_offset) // DAY_NS

    def day_pnl(self, scope: Scope | str, now_ns: int | None = None) -> tuple[float, float] | None:
        """(day P&L, drawdown) of a scope, or None if its P&L was never reported."""
        st = self._pnl_at(Scope.parse(scope), self._now if now_ns is None else now_ns)
        if st is None:
            return None
        pnl = st.equity - st.baseline
        return pnl, st.peak - pnl

    # ---------------------------------------------------------------- time, overrides, routes

    def _advance(self, now: int) -> int:
        if now < self._now:
            now = self._now
        else:
            self._now = now
            if self._deferred:
                self._run_deferred(now)
        if now >= self._next_expiry:
            self._expire(now)
        return now

    def _expire(self, now: int) -> None:
        nxt = _NEVER
        for scope in list(self._ovr):
            per = self._ovr[scope]
            for name in list(per):
                o = per[name]
                if now >= o.expires_ns:
                    del per[name]
                    self._pending.append(OverrideExpired(scope, name, o.value,
                                                         getattr(self._base.get(scope, _EMPTY), name),
                                                         now, o.expires_ns))
                else:
                    nxt = min(nxt, o.expires_ns)
            if not per:
                del self._ovr[scope]
            self._rebuild(scope)
        self._next_expiry = nxt

    def _rebuild(self, scope: Scope) -> None:
        lim = self._base.get(scope, _EMPTY)
        per = self._ovr.get(scope)
        if per:
            lim = replace(lim, **{name: o.value for name, o in per.items()})
        if lim == _EMPTY and scope not in self._base:
            self._eff.pop(scope, None)
        else:
            self._eff[scope] = lim
        self._routes.clear()

    def _route(self, root: str, algorithm_id: str, account: str) -> _Route:
        key = (root, algorithm_id, account)
        r = self._routes.get(key)
        if r is None:
            r = self._routes[key] = self._build_route(root, algorithm_id, account)
        return r

    def _build_route(self, root: str, algorithm_id: str, account: str) -> _Route:
        skey = strategy_key(algorithm_id)
        scopes = (Scope("instrument", root), Scope("strategy", skey), Scope("account", account), DESK)
        with_str = tuple((s, str(s), _VIEW[s.kind]) for s in scopes)
        limited = tuple((s, s_str, view, self._eff[s]) for s, s_str, view in with_str if s in self._eff)
        inst = self._eff.get(scopes[0], _EMPTY)
        desk = self._eff.get(DESK, _EMPTY)

        def has(name: str) -> bool:
            return getattr(inst, name) is not None or getattr(desk, name) is not None

        missing = []
        for cat in sorted(self.mandatory):
            if cat is Category.POSITION:
                ok = has("max_net") or (has("max_long") and has("max_short"))
                need = "max_net, or max_long and max_short"
            else:
                names = CATEGORY_FIELDS[cat]
                ok = any(has(n) for n in names)
                need = " or ".join(names)
            if not ok:
                missing.append((str(cat), need))
        has_ovr = any(s in self._ovr for s in scopes)
        return _Route(with_str, skey, limited, tuple(missing), has_ovr)

    def _annotate(self, r: _Route, checks: list[RiskCheck]) -> list[RiskCheck]:
        """Say in the note of every check that used an overridden limit who overrode it."""
        notes: dict[tuple[str, str], str] = {}
        for s, s_str, _ in r.scopes:
            for name, o in self._ovr.get(s, {}).items():
                notes[(s_str, name)] = (f"override by {o.who} approved by {o.approved_by} until {o.expires_ns} "
                                        f"({o.why}); base {_fmt(o.previous)}")
        return [c._replace(note=(c.note + "; " if c.note else "") + notes[(c.scope, c.name)])
                if (c.scope, c.name) in notes else c for c in checks]

    def _take_events(self) -> tuple[Event, ...]:
        if not self._pending:
            return ()
        out = tuple(self._pending)
        self._pending.clear()
        return out

    def _command_time(self, now_ns: int | None) -> int:
        """The event time of an operator command: as given, else the latest event time seen."""
        if now_ns is None:
            if self._now == -_NEVER:
                raise ValueError("now_ns is required before the engine has seen any event time")
            now_ns = self._now
        return self._advance(now_ns)

    def _result(self, kind: str, approved: bool, reason: RiskReason | None, r: _Route | None,
                checks: list[RiskCheck], detail: str, order_id: str, now: int) -> RiskResult:
        if r is not None and r.has_overrides:
            checks = self._annotate(r, checks)
        return RiskResult(kind, approved, reason, tuple(checks), detail, self._take_events(), order_id, now)

    # ---------------------------------------------------------------- states

    def _set_state(self, scope: Scope, new: TradingState, cause: RiskReason | None, reason: str,
                   operator: str, now: int, automatic: bool) -> StateChange | None:
        st = self._states.get(scope)
        old = TradingState.ACTIVE if st is None else st.state
        if automatic and _RANK[new] <= _RANK[old]:
            return None  # the engine never loosens a state, nor replaces an operator's reason
        if new is TradingState.ACTIVE:
            self._states.pop(scope, None)
        else:
            self._states[scope] = _State(new, cause, reason)
        ev = StateChange(scope, old, new, reason, operator, now, cause, automatic)
        if automatic:
            self._pending.append(ev)
        return ev

    def halt(self, scope: Scope | str, reason: str, operator: str, now_ns: int | None = None) -> StateChange:
        """Only cancels from now on in this scope."""
        return self._manual(scope, TradingState.HALTED, reason, operator, now_ns)

    def reduce_only(self, scope: Scope | str, reason: str, operator: str, now_ns: int | None = None) -> StateChange:
        """Only orders that reduce |position| from now on in this scope."""
        return self._manual(scope, TradingState.REDUCING, reason, operator, now_ns)

    def enable(self, scope: Scope | str, operator: str, reason: str, now_ns: int | None = None) -> StateChange:
        """Back to ACTIVE; clears the scope's execution and cancel counts (a fresh start)."""
        s = Scope.parse(scope)
        ev = self._manual(s, TradingState.ACTIVE, reason, operator, now_ns)
        self._execs.pop(s, None)
        self._cancels.pop(s, None)
        return ev

    def _manual(self, scope: Scope | str, new: TradingState, reason: str, operator: str,
                now_ns: int | None) -> StateChange:
        operator = _require(operator, "operator")
        reason = _require(reason, "reason")
        s = Scope.parse(scope)
        now = self._command_time(now_ns)
        ev = self._set_state(s, new, None, reason, operator, now, automatic=False)
        assert ev is not None
        return ev

    # ---------------------------------------------------------------- limit changes

    def set_limit(self, scope: Scope | str, field_name: str, value: Any, operator: str, reason: str,
                  now_ns: int | None = None) -> LimitChange:
        """Change one limit of one scope (None removes it). The only way to change limits at run time.

        The throttle's two fields go in order: ``execution_window_s`` before ``max_executions_per_window``
        (a count without a window is refused), and the count before the window when removing them."""
        operator = _require(operator, "operator")
        reason = _require(reason, "reason")
        s = Scope.parse(scope)
        if field_name not in LIMIT_FIELDS:
            raise ValueError(f"unknown limit {field_name!r}; one of {', '.join(LIMIT_FIELDS)}")
        now = self._command_time(now_ns)
        base = self._base.get(s, _EMPTY)
        new = replace(base, **{field_name: value})  # validates
        old = getattr(base, field_name)
        self._base[s] = new
        self._rebuild(s)
        return LimitChange(s, field_name, old, getattr(new, field_name), operator, reason, now)

    def override(self, scope: Scope | str, field_name: str, value: float, who: str, why: str,
                 approved_by: str, expires_ns: int, now_ns: int | None = None) -> Override:
        """A temporary value for one numeric limit of one scope, in force while ``now < expires_ns``."""
        who = _require(who, "who (the person asking for the override)")
        why = _require(why, "why (the reason for the override)")
        approved_by = _require(approved_by, "approved_by (the person approving the override)")
        if who.casefold() == approved_by.casefold():
            raise ValueError(f"an override needs a second person: {who!r} cannot approve their own request")
        s = Scope.parse(scope)
        if field_name not in NUMERIC_FIELDS:
            raise ValueError(f"only numeric limits can be overridden ({', '.join(sorted(NUMERIC_FIELDS))}), "
                             f"not {field_name!r}")
        if value is None:
            raise ValueError("an override cannot remove a limit; give a value")
        now = self._command_time(now_ns)
        if not isinstance(expires_ns, int) or expires_ns <= now:
            raise ValueError(f"expires_ns {expires_ns!r} must be an event time after now ({now})")
        if expires_ns - now > self.max_override_s * _NS:
            raise ValueError(f"an override may last at most {self.max_override_s:g} s")
        eff = self._eff.get(s, _EMPTY)
        previous = getattr(eff, field_name)
        checked = getattr(replace(eff, **{field_name: value}), field_name)  # validated and normalised
        o = Override(s, field_name, checked, previous, who, why, approved_by, now, expires_ns)
        self._ovr.setdefault(s, {})[field_name] = o
        self._next_expiry = min(self._next_expiry, expires_ns)
        self._rebuild(s)
        return o

    def expire(self, now_ns: int) -> list[Event]:
        """Process override expiries up to ``now_ns`` and return any pending events."""
        self._advance(now_ns)
        return list(self._take_events())

    # ---------------------------------------------------------------- executions and P&L

    def on_execution(self, root: str, algorithm_id: str, account: str, now_ns: int, *,
                     automated: bool = True) -> list[Event]:
        """Count an execution (fill) for the throttle; manual executions are not counted."""
        now = self._advance(now_ns)
        if automated:
            r = self._route(root, algorithm_id, account)
            for s, s_str, _ in r.scopes:
                dq = self._execs.get(s)
                if dq is None:
                    dq = self._execs[s] = deque(maxlen=100_000)
                dq.append(now)
                lim = self._eff.get(s)
                if lim is not None and lim.max_executions_per_window is not None:
                    n = self._count(dq, now, lim.execution_window_s)  # type: ignore[arg-type]
                    if n >= lim.max_executions_per_window:
                        self._set_state(s, TradingState.HALTED, RiskReason.RISK_EXECUTION_THROTTLE,
                                        f"{n} automated executions within {lim.execution_window_s:g} s "
                                        f"(limit {lim.max_executions_per_window})", AUTO_OPERATOR, now, True)
        return list(self._take_events())

    def on_pnl(self, scope: Scope | str, realized: float, unrealized: float, now_ns: int) -> list[Event]:
        """Report a scope's cumulative P&L; may move the scope to REDUCING (daily loss, drawdown)."""
        now = self._advance(now_ns)
        self._record_pnl(Scope.parse(scope), realized, unrealized, now)
        return list(self._take_events())

    def _record_pnl(self, s: Scope, realized: float, unrealized: float, now: int) -> None:
        eq = float(realized) + float(unrealized)
        if not math.isfinite(eq):
            raise ValueError(f"P&L of {s}: finite numbers, got {realized!r}, {unrealized!r}")
        st = self._pnl_at(s, now)
        if st is None:
            st = self._pnl[s] = _Pnl(self.trading_day(now), 0.0, 0.0, 0.0)
        st.equity = eq
        pnl = eq - st.baseline
        if pnl > st.peak:
            st.peak = pnl
        lim = self._eff.get(s)
        if lim is not None:
            self._loss_breach(s, lim, st, now)

    def _pnl_at(self, s: Scope, now: int) -> _Pnl | None:
        st = self._pnl.get(s)
        if st is not None:
            day = self.trading_day(now)
            if day != st.day:  # a new trading day: its P&L starts from the last figure of the old one
                st.day, st.baseline, st.peak = day, st.equity, 0.0
        return st

    def _loss_breach(self, s: Scope, lim: Limits, st: _Pnl, now: int) -> tuple[RiskReason, str] | None:
        pnl = st.equity - st.baseline
        if lim.max_daily_loss is not None and -pnl > lim.max_daily_loss:
            why = (RiskReason.RISK_DAILY_LOSS, f"day loss {-pnl:g} over the limit {lim.max_daily_loss:g}")
        elif lim.max_drawdown is not None and st.peak - pnl > lim.max_drawdown:
            why = (RiskReason.RISK_DRAWDOWN,
                   f"drawdown {st.peak - pnl:g} from the day's peak {st.peak:g} over the limit {lim.max_drawdown:g}")
        else:
            return None
        self._set_state(s, TradingState.REDUCING, why[0], why[1], AUTO_OPERATOR, now, True)
        return why

    @staticmethod
    def _count(dq: deque[int], now: int, window_s: float) -> int:
        edge = now - int(window_s * _NS)
        while dq and dq[0] <= edge:
            dq.popleft()
        return len(dq)

    # ---------------------------------------------------------------- position arithmetic

    @staticmethod
    def _aggregate(root: str, account: str, skey: str, ctx: RiskContext
                   ) -> tuple[list[int], list[int], list[int]]:
        """[P, WB, WS] for the views instrument/desk (0), strategy (1), account (2)."""
        P = [0, 0, 0]
        WB = [0, 0, 0]
        WS = [0, 0, 0]
        keys = _SKEY
        for (acct, algo, rt), q in ctx.positions.items():
            if rt != root or not q:
                continue
            P[0] += q
            k = keys.get(algo)
            if k is None:
                k = keys[algo] = strategy_key(algo)
            if k == skey:
                P[1] += q
            if acct == account:
                P[2] += q
        for w in ctx.working:
            if w.root != root or not w.is_entry:
                continue
            q = w.quantity
            side = WB if w.side == _BUY else WS
            side[0] += q
            algo = w.algorithm_id
            k = keys.get(algo)
            if k is None:
                k = keys[algo] = strategy_key(algo)
            if k == skey:
                side[1] += q
            if w.account == account:
                side[2] += q
        return P, WB, WS

    @staticmethod
    def _self_trade(order_type: EntryType, price: float, buy: bool, account: str, root: str,
                    algorithm_id: str, ctx: RiskContext, exclude: str = "") -> WorkingOrder | None:
        for w in ctx.working:
            if (w.root != root or w.account != account or w.algorithm_id == algorithm_id
                    or (w.side == _BUY) == buy or w.order_id == exclude and exclude):
                continue
            if buy:
                if _can_trade(order_type, price, w.order_type, w.price):
                    return w
            elif _can_trade(w.order_type, w.price, order_type, price):
                return w
        return None

    # ---------------------------------------------------------------- common check blocks

    def _check_state(self, r: _Route, add, buy: bool, q: int, P, WB, WS, allow_reducing_only: bool | None
                     ) -> tuple[RiskReason, str] | None:
        """The trading-state check. ``allow_reducing_only``: for changes, whether the change is allowed
        under REDUCING (None: decide by whether the order reduces the position)."""
        if not self._states:
            add(_chk(("trading_state", True, "ACTIVE", "ACTIVE", "*", "")))
            return None
        worst: list[tuple[str, _State, int]] = []
        for s, s_str, view in r.scopes:
            st = self._states.get(s)
            if st is not None:
                if st.state is TradingState.HALTED:
                    add(_chk(("trading_state", False, "HALTED", "ACTIVE", s_str, st.reason)))
                    return (st.cause or RiskReason.RISK_STATE_HALTED), f"{s_str} is HALTED: {st.reason}"
                worst.append((s_str, st, view))
        if not worst:
            add(_chk(("trading_state", True, "ACTIVE", "ACTIVE", "*", "")))
            return None
        for s_str, st, view in worst:
            if allow_reducing_only is None:
                ok = self._reduces(buy, q, P[view], WB[view], WS[view])
            else:
                ok = allow_reducing_only
            add(_chk(("trading_state", ok, "REDUCING", "reducing orders only", s_str, st.reason)))
            if not ok:
                return (st.cause or RiskReason.RISK_STATE_REDUCING), f"{s_str} is REDUCING: {st.reason}"
        return None

    @staticmethod
    def _reduces(buy: bool, q: int, p: int, wb: int, ws: int) -> bool:
        if buy:
            return p < 0 and q + wb <= -p
        return p > 0 and q + ws <= p

    def _check_prices(self, r: _Route, add, prices: Sequence[float], ref: float, tick: float, last_tick: int | None,
                      now: int) -> tuple[RiskReason, str] | None:
        """Stale data, reference price and collar (shared by new orders and changes)."""
        age = _INF if last_tick is None else (now - last_tick) / _NS
        for s_str, limit in r.stale:
            ok = age <= limit
            add(_chk(("stale_data_s", ok, age, limit, s_str, "")))
            if not ok:
                return RiskReason.RISK_STALE_DATA, f"last tick {age:g} s old"
        if not (ref == ref and 0 < ref < _INF):
            add(_chk(("reference_price", False, ref, "> 0", r.instr_s, "")))
            return RiskReason.RISK_NO_REFERENCE_PRICE, "no reference price"
        add(_chk(("reference_price", True, ref, "> 0", r.instr_s, "")))
        dist = 0.0
        for p in prices:
            d = p - ref if p > ref else ref - p
            if d > dist:
                dist = d
        if r.collar_ticks:
            v = dist / tick
            for s_str, limit in r.collar_ticks:
                ok = v <= limit + _TOL
                add(_chk(("collar_ticks", ok, v, limit, s_str, "")))
                if not ok:
                    return RiskReason.RISK_PRICE_COLLAR, f"a price {v:g} ticks from the reference {ref:g}"
        if r.collar_pct:
            v = dist / ref * 100.0
            for s_str, limit in r.collar_pct:
                ok = v <= limit + _TOL
                add(_chk(("collar_pct", ok, v, limit, s_str, "")))
                if not ok:
                    return RiskReason.RISK_PRICE_COLLAR, f"a price {v:g} % from the reference {ref:g}"
        return None

    @staticmethod
    def _check_size(r: _Route, add, q: int, notional: float) -> tuple[RiskReason, str] | None:
        for s_str, limit in r.quantity:
            ok = q <= limit
            add(_chk(("max_order_quantity", ok, q, limit, s_str, "")))
            if not ok:
                return RiskReason.RISK_MAX_ORDER_QUANTITY, ""
        for s_str, limit in r.notional:
            ok = notional <= limit
            add(_chk(("max_order_notional", ok, notional, limit, s_str, "")))
            if not ok:
                return RiskReason.RISK_MAX_ORDER_NOTIONAL, ""
        return None

    @staticmethod
    def _check_position(r: _Route, add, buy: bool, q: int, P, WB, WS) -> tuple[RiskReason, str] | None:
        for s_str, view, max_long, max_short, max_net in r.position:
            p, wb, ws = P[view], WB[view], WS[view]
            if max_long is not None:
                long_after = p + wb + (q if buy else 0)
                ok = not buy or long_after <= max_long
                add(_chk(("max_long", ok, long_after, max_long, s_str, "" if buy else "a sell adds no long")))
                if not ok:
                    return RiskReason.RISK_MAX_LONG, ""
            if max_short is not None:
                short_after = ws - p + (0 if buy else q)
                ok = buy or short_after <= max_short
                add(_chk(("max_short", ok, short_after, max_short, s_str, "a buy adds no short" if buy else "")))
                if not ok:
                    return RiskReason.RISK_MAX_SHORT, ""
            if max_net is not None:
                before = p + wb - ws
                after = before + (q if buy else -q)
                after_abs = after if after >= 0 else -after
                ok = after_abs <= max_net or after_abs < abs(before)
                add(_chk(("max_net", ok, after, max_net, s_str,
                          "" if after_abs <= max_net or not ok else "reduces |net|")))
                if not ok:
                    return RiskReason.RISK_MAX_NET, ""
        return None

    def _check_rate(self, r: _Route, add, windows: dict[Scope, deque[int]], field_name: str, now: int,
                    reason: RiskReason) -> tuple[RiskReason, str] | None:
        for s, s_str, limit in r.rates[field_name]:
            dq = windows.get(s)
            n = 1 + (self._count(dq, now, 1.0) if dq else 0)
            ok = n <= limit
            add(_chk((field_name, ok, n, limit, s_str, "in the last second, this one included")))
            if not ok:
                return reason, f"{n} in one second at {s_str}"
        return None

    @staticmethod
    def _record(r: _Route, windows: dict[Scope, deque[int]], now: int) -> None:
        edge = now - _NS
        for s, _, _ in r.scopes:
            dq = windows.get(s)
            if dq is None:
                dq = windows[s] = deque()
            while dq and dq[0] <= edge:
                dq.popleft()
            dq.append(now)

    def _check_loss(self, r: _Route, add, buy: bool, q: int, P, WB, WS, now: int
                    ) -> tuple[RiskReason, str] | None:
        for s, s_str, view, lim in r.loss:
            reducing = self._reduces(buy, q, P[view], WB[view], WS[view])
            st = self._pnl_at(s, now)
            if st is None:
                for name in ("max_daily_loss", "max_drawdown"):
                    limit = getattr(lim, name)
                    if limit is not None:
                        add(_chk((name, reducing, None, limit, s_str,
                                      "no P&L reported for this scope" + ("; a reducing order" if reducing else ""))))
                if not reducing:
                    return RiskReason.RISK_DAILY_LOSS, f"no P&L reported for {s_str}, which has a loss limit"
                continue
            pnl = st.equity - st.baseline
            breach = self._loss_breach(s, lim, st, now)
            if lim.max_daily_loss is not None:
                hit = -pnl > lim.max_daily_loss
                add(_chk(("max_daily_loss", not hit or reducing, -pnl, lim.max_daily_loss, s_str,
                              "over the limit; a reducing order" if hit and reducing else "")))
            if lim.max_drawdown is not None:
                dd = st.peak - pnl
                hit = dd > lim.max_drawdown
                add(_chk(("max_drawdown", not hit or reducing, dd, lim.max_drawdown, s_str,
                              "over the limit; a reducing order" if hit and reducing else "")))
            if breach is not None and not reducing:
                return breach
        return None

    def _check_throttle(self, r: _Route, add, now: int) -> tuple[RiskReason, str] | None:
        for s, s_str, limit, window_s in r.throttle:
            dq = self._execs.get(s)
            n = self._count(dq, now, window_s) if dq else 0
            ok = n < limit
            add(_chk(("max_executions_per_window", ok, n, limit, s_str, "automated executions in the window")))
            if not ok:  # a limit lowered since the executions: halt now
                why = f"{n} automated executions within {window_s:g} s (limit {limit})"
                self._set_state(s, TradingState.HALTED, RiskReason.RISK_EXECUTION_THROTTLE, why, AUTO_OPERATOR,
                                now, True)
                return RiskReason.RISK_EXECUTION_THROTTLE, why
        return None

    # ---------------------------------------------------------------- checks

    def check_new(self, order: OrderRequest, ctx: RiskContext) -> RiskResult:
        """Check a new bracket; when approved, it is counted in the order-rate windows."""
        now = self._advance(ctx.now_ns)
        if ctx.pnl:
            for scope, (realized, unrealized) in ctx.pnl.items():
                self._record_pnl(Scope.parse(scope), realized, unrealized, now)
        r = self._route(order.root, order.algorithm_id, order.account)
        checks: list[RiskCheck] = []
        add = checks.append
        oid = order.order_id

        def deny(reason: RiskReason, detail: str = "") -> RiskResult:
            return self._result("new", False, reason, r, checks, detail, oid, now)

        # the order itself
        q = order.quantity
        et = order.entry_type
        tick = order.tick_size
        problem = ""
        if not isinstance(q, int) or q <= 0:
            problem = f"quantity {q!r} is not a positive whole number"
        elif et != _MARKET and _bad_price(order.entry_price):
            problem = f"entry price {order.entry_price!r} of a {et.name} entry"
        elif _bad_price(order.stop_price) or _bad_price(order.target_price):
            problem = f"stop {order.stop_price!r} / target {order.target_price!r} must be positive prices"
        elif _bad_price(tick) or _bad_price(order.point_value):
            problem = f"tick size {tick!r} / point value {order.point_value!r} must be positive"
        add(_chk(("order_valid", not problem, problem or "ok", "valid", r.instr_s, "")))
        if problem:
            return deny(RiskReason.RISK_INVALID_ORDER, problem)

        # fail closed
        if r.missing:
            for cat, need in r.missing:
                add(_chk(("limit_configured", False, cat, need, r.instr_s,
                              f"no {cat} limit at {r.instr_s} or *")))
            return deny(RiskReason.RISK_NO_LIMIT, "missing: " + "; ".join(f"{c} ({n}) for {r.instr_s} or *"
                                                                         for c, n in r.missing))

        buy = order.side == _BUY
        P, WB, WS = self._aggregate(order.root, order.account, r.skey, ctx)

        fail = self._check_state(r, add, buy, q, P, WB, WS, None)
        if fail:
            return deny(*fail)

        # sessions and blackouts
        for s_str, sessions, blackouts in r.windows:
            if sessions is not None:
                ok = in_windows(sessions, now)
                add(_chk(("sessions", ok, "open" if ok else "closed", "open", s_str, "")))
                if not ok:
                    return deny(RiskReason.RISK_MARKET_CLOSED)
            if blackouts is not None:
                bad = in_windows(blackouts, now)
                add(_chk(("blackouts", not bad, "blackout" if bad else "clear", "clear", s_str, "")))
                if bad:
                    return deny(RiskReason.RISK_BLACKOUT)

        ref = ctx.reference_price
        stop, target = order.stop_price, order.target_price
        prices = (stop, target) if et == _MARKET else (order.entry_price, stop, target)
        fail = self._check_prices(r, add, prices, ref, tick, ctx.last_tick_ns, now)
        if fail:
            return deny(*fail)

        entry = ref if et == _MARKET else order.entry_price
        geometry = (stop < entry < target) if buy else (target < entry < stop)
        add(_chk(("bracket_geometry", geometry, (stop, entry, target),
                      "stop < entry < target" if buy else "target < entry < stop", r.instr_s, "")))
        if not geometry:
            return deny(RiskReason.RISK_BRACKET_GEOMETRY)

        fail = self._check_size(r, add, q, q * entry * order.point_value)
        if fail:
            return deny(*fail)
        fail = self._check_position(r, add, buy, q, P, WB, WS)
        if fail:
            return deny(*fail)
        fail = self._check_loss(r, add, buy, q, P, WB, WS, now)
        if fail:
            return deny(*fail)
        fail = self._check_throttle(r, add, now)
        if fail:
            return deny(*fail)

        if r.stp:
            w = self._self_trade(et, entry, buy, order.account, order.root, order.algorithm_id, ctx)
            add(_chk(("self_trade_prevention", w is None, w.order_id if w else "none", "no crossing order",
                          r.instr_s, "" if w is None else
                          f"{w.algorithm_id} {w.side.name} {w.order_type.name} {w.price:g} on {w.account}")))
            if w is not None:
                return deny(RiskReason.RISK_SELF_TRADE, f"could trade against {w.order_id} of {w.algorithm_id}")

        fail = self._check_rate(r, add, self._orders, "max_orders_per_s", now, RiskReason.RISK_ORDER_RATE)
        if fail:
            return deny(*fail)
        self._record(r, self._orders, now)
        return self._result("new", True, None, r, checks, "", oid, now)

    def check_change(self, change: OrderChange, ctx: RiskContext) -> RiskResult:
        """Check a change of one working order: state, collar of the new price, quantity, notional,
        position (a larger entry), self-trade and the change rate; counted when approved."""
        now = self._advance(ctx.now_ns)
        if ctx.pnl:
            for scope, (realized, unrealized) in ctx.pnl.items():
                self._record_pnl(Scope.parse(scope), realized, unrealized, now)
        r = self._route(change.root, change.algorithm_id, change.account)
        checks: list[RiskCheck] = []
        add = checks.append
        oid = change.order_id

        def deny(reason: RiskReason, detail: str = "") -> RiskResult:
            return self._result("change", False, reason, r, checks, detail, oid, now)

        new_q = change.new_quantity or change.quantity
        new_p = change.new_price if change.new_price == change.new_price else change.price
        price_moved = change.new_price == change.new_price and change.new_price != change.price
        ot = change.order_type
        problem = ""
        if not isinstance(new_q, int) or new_q <= 0 or change.new_quantity < 0:
            problem = f"quantity {change.new_quantity!r} is not a positive whole number"
        elif ot != _MARKET and _bad_price(new_p):
            problem = f"price {new_p!r} of a {ot.name} order"
        elif _bad_price(change.tick_size) or _bad_price(change.point_value):
            problem = "tick size / point value must be positive"
        add(_chk(("order_valid", not problem, problem or "ok", "valid", r.instr_s, "")))
        if problem:
            return deny(RiskReason.RISK_INVALID_ORDER, problem)
        if r.missing:
            for cat, need in r.missing:
                add(_chk(("limit_configured", False, cat, need, r.instr_s, f"no {cat} limit at {r.instr_s} or *")))
            return deny(RiskReason.RISK_NO_LIMIT, "missing: " + "; ".join(f"{c} ({n})" for c, n in r.missing))

        buy = change.side == _BUY
        is_entry = change.role == OrderRole.ENTRY
        grow = new_q - change.quantity if is_entry and new_q > change.quantity else 0
        P, WB, WS = self._aggregate(change.root, change.account, r.skey, ctx)
        # under REDUCING: exit legs may move; an entry may only shrink
        allowed = (not is_entry) or (grow == 0 and not price_moved)
        fail = self._check_state(r, add, buy, grow, P, WB, WS, allowed)
        if fail:
            return deny(*fail)

        ref = ctx.reference_price
        prices = (new_p,) if (ot != _MARKET and price_moved) else ()
        fail = self._check_prices(r, add, prices, ref, change.tick_size, ctx.last_tick_ns, now)
        if fail:
            return deny(*fail)
        fail = self._check_size(r, add, new_q, new_q * (ref if ot == _MARKET else new_p) * change.point_value)
        if fail:
            return deny(*fail)
        if grow:
            fail = self._check_position(r, add, buy, grow, P, WB, WS)
            if fail:
                return deny(*fail)
        if r.stp and price_moved:
            w = self._self_trade(ot, new_p, buy, change.account, change.root, change.algorithm_id, ctx, oid)
            add(_chk(("self_trade_prevention", w is None, w.order_id if w else "none", "no crossing order",
                          r.instr_s, "")))
            if w is not None:
                return deny(RiskReason.RISK_SELF_TRADE, f"could trade against {w.order_id} of {w.algorithm_id}")
        fail = self._check_rate(r, add, self._changes, "max_changes_per_s", now, RiskReason.RISK_CHANGE_RATE)
        if fail:
            return deny(*fail)
        self._record(r, self._changes, now)
        return self._result("change", True, None, r, checks, "", oid, now)

    def check_cancel(self, cancel: CancelRequest, now_ns: int) -> RiskResult:
        """Always approved, in every state; counted. Over ``max_cancels_per_s`` the check is recorded as
        failed and the scope goes HALTED (cause RISK_CANCEL_RATE); the cancel itself still goes."""
        now = self._advance(now_ns)
        r = self._route(cancel.root, cancel.algorithm_id, cancel.account)
        checks: list[RiskCheck] = []
        add = checks.append
        add(_chk(("trading_state", True, "any", "cancels allowed in every state", "*", "")))
        self._record(r, self._cancels, now)
        detail = ""
        for s, s_str, limit in r.rates["max_cancels_per_s"]:
            n = len(self._cancels[s])  # pruned to the last second by _record
            ok = n <= limit
            add(_chk(("max_cancels_per_s", ok, n, limit, s_str, "" if ok else "cancel sent anyway; scope halted")))
            if not ok:
                why = f"{n} cancels within one second (limit {limit})"
                self._set_state(s, TradingState.HALTED, RiskReason.RISK_CANCEL_RATE, why, AUTO_OPERATOR, now, True)
                detail = f"{s_str}: {why}; the cancel goes, the scope is halted"
        return self._result("cancel", True, None, r, checks, detail, cancel.order_id, now)
