"""Risk limits as configured: scopes (desk, instrument, strategy, account) and the limits of one scope.

This is configuration schema, so it lives on the ground floor: ``bridge.core.config`` validates
``[[risk_limits]]`` tables with it at load time, and the risk engine (``bridge.risk.engine``) enforces
what it describes. Nothing here reads a clock, a file or a socket.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Union

_NEVER = 1 << 62

# --------------------------------------------------------------------------------------------
# Scopes
# --------------------------------------------------------------------------------------------


def strategy_key(algorithm_id: str) -> str:
    """The strategy scope name of an algorithm id: the id without its ``@version``."""
    return algorithm_id.split("@", 1)[0]


_SKEY: dict[str, str] = {}  # algorithm id -> strategy key, for the hot path (a desk has a handful)


class Scope(NamedTuple):
    """Where limits, a trading state and P&L live: ``kind`` is desk, instrument, strategy or account."""

    kind: str
    name: str

    def __str__(self) -> str:
        return "*" if self.kind == "desk" else f"{self.kind}:{self.name}"

    @classmethod
    def desk(cls) -> Scope:
        return DESK

    @classmethod
    def instrument(cls, root: str) -> Scope:
        return cls("instrument", root)

    @classmethod
    def strategy(cls, algorithm_id: str) -> Scope:
        return cls("strategy", strategy_key(algorithm_id))

    @classmethod
    def account(cls, account: str) -> Scope:
        return cls("account", account)

    @classmethod
    def parse(cls, scope: Scope | str) -> Scope:
        """A :class:`Scope` from ``"*"``, ``"instrument:ES"``, ``"strategy:momentum@1.0"``, ``"account:X"``."""
        if isinstance(scope, Scope):
            if scope.kind == "strategy" and "@" in scope.name:
                return cls.strategy(scope.name)
            if scope.kind not in _KINDS:
                raise ValueError(f"unknown scope kind {scope.kind!r}; one of {sorted(_KINDS)}")
            return scope
        if not isinstance(scope, str):
            raise ValueError(f"a scope is a Scope or a string like 'instrument:ES', got {scope!r}")
        text = scope.strip()
        if text in ("*", "desk", "desk:*"):
            return DESK
        kind, sep, name = text.partition(":")
        if not sep or not name or kind not in ("instrument", "strategy", "account"):
            raise ValueError(f"scope {scope!r}: write '*', 'instrument:<root>', 'strategy:<algorithm>' "
                             f"or 'account:<name>'")
        return cls.strategy(name) if kind == "strategy" else cls(kind, name)


DESK = Scope("desk", "*")
_KINDS = frozenset({"desk", "instrument", "strategy", "account"})


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------

Windows = tuple[tuple[int, int], ...]
WindowSpec = Union[Windows, Callable[[int], bool], None]

_INT_FIELDS = frozenset({"max_order_quantity", "max_long", "max_short", "max_net", "max_orders_per_s",
                         "max_changes_per_s", "max_cancels_per_s", "max_executions_per_window"})
_FLOAT_FIELDS = frozenset({"collar_ticks", "collar_pct", "max_order_notional", "execution_window_s",
                           "max_daily_loss", "max_drawdown", "stale_data_s"})
NUMERIC_FIELDS = _INT_FIELDS | _FLOAT_FIELDS


def _norm_windows(name: str, spec: Any) -> WindowSpec:
    """Sorted, merged half-open ``[start_ns, end_ns)`` windows, or the callable as given."""
    if spec is None or callable(spec):
        return spec
    try:
        pairs = sorted((int(a), int(b)) for a, b in spec)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: a list of (start_ns, end_ns) pairs or a callable, got {spec!r}") from None
    merged: list[tuple[int, int]] = []
    for a, b in pairs:
        if b <= a:
            raise ValueError(f"{name}: window ({a}, {b}) ends before it starts")
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def in_windows(spec: WindowSpec, now: int) -> bool:
    if callable(spec):
        return bool(spec(now))
    i = bisect_right(spec, (now, _NEVER))  # type: ignore[arg-type]
    return i > 0 and now < spec[i - 1][1]  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one scope; ``None`` = not set here.

    Units: ``collar_ticks`` in ticks of the instrument, ``collar_pct`` in percent of the reference
    price (0.5 = 0.5 %), notional and losses in the instrument's currency, times in seconds except
    the windows, which are ``(start_ns, end_ns)`` pairs (half-open) or a callable of ``ts_ns``:
    ``sessions`` answers "is the market open", ``blackouts`` "is this a blackout".
    """

    collar_ticks: float | None = None
    collar_pct: float | None = None
    max_order_quantity: int | None = None
    max_order_notional: float | None = None
    max_long: int | None = None
    max_short: int | None = None
    max_net: int | None = None
    max_orders_per_s: int | None = None
    max_changes_per_s: int | None = None
    max_cancels_per_s: int | None = None
    max_executions_per_window: int | None = None
    execution_window_s: float | None = None
    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    stale_data_s: float | None = None
    sessions: WindowSpec = None
    blackouts: WindowSpec = None
    self_trade_prevention: bool | None = None

    def __post_init__(self) -> None:
        for name in NUMERIC_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: a finite number >= 0 or None, got {v!r}")
            if name in _INT_FIELDS:
                if v != int(v):
                    raise ValueError(f"{name}: a whole number, got {v!r}")
                object.__setattr__(self, name, int(v))
            else:
                object.__setattr__(self, name, float(v))
        if self.max_executions_per_window is not None and self.execution_window_s is None:
            raise ValueError("max_executions_per_window needs execution_window_s (set the window first)")
        if self.execution_window_s is not None and self.execution_window_s <= 0:
            raise ValueError("execution_window_s must be > 0")
        if self.max_executions_per_window is not None and self.max_executions_per_window < 1:
            raise ValueError("max_executions_per_window must be >= 1")
        object.__setattr__(self, "sessions", _norm_windows("sessions", self.sessions))
        object.__setattr__(self, "blackouts", _norm_windows("blackouts", self.blackouts))
        if self.self_trade_prevention is not None and not isinstance(self.self_trade_prevention, bool):
            raise ValueError(f"self_trade_prevention: True, False or None, got {self.self_trade_prevention!r}")

    def configured(self) -> dict[str, Any]:
        """The fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Limits))
