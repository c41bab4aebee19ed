"""Storage rows (bridge/storage/schema.py, the record) into analytics frames (schema.py ``TABLES``).

Both ways in use it: ``analytics load --db`` (frames read from the database in chunks) and the live feed
(the row tuples the storage writer has just committed, feed.py). Choices:

- ``ts``: the event's stamp on the market's / NT8's clock, never the sidecar's: ``ts_exchange_ns`` of a
  tick, ``ts_close_ns`` of a bar (NT8 stamps bars at their end), ``ts_event_ns`` of a quality event, a
  decision, an order update, a fill, a position; an order has only the sidecar's ``ts_created_ns``.
- ticks: ``kind`` 0 (a trade) goes to ``ticks``; 1 and 2 (the best bid or ask moved) to ``quotes``, one row
  per update, with the other side as the tick carried it (NaN when NT8 had none).
- columns the storage keeps in another table are joined through a :class:`Context`: an order's and a fill's
  ``strategy`` (its decision's), ``account`` (its session's), a fill's ``decision_id``, an order update's
  ``instrument`` (its order's); '' when the other row is unknown.
- a fill's ``expected_price``: an entry's limit or stop price, or for a market entry the price its decision's
  risk checks took as reference (``inputs``: the ``reference_price`` check, else the signal's entry price, else
  the ``close`` feature); a stop's stop price; a target's target price; NULL for fills of orders the bridge
  did not place (or whose order row is unknown). ``latency_ns``: an entry fill's stamp minus its decision's
  (the decision's ``ts_event_ns`` is the triggering tick's: both on NT8's clock); NULL otherwise.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# storage table -> the analytics tables its rows become
ANALYTICS_OF: dict[str, tuple[str, ...]] = {
    "ticks": ("ticks", "quotes"), "bars": ("bars",), "quality_events": ("quality_events",),
    "decisions": ("decisions",), "orders": ("orders",), "order_updates": ("order_updates",),
    "executions": ("executions",), "positions": ("positions",),
}
# storage tables whose rows other tables' rows are joined with
CONTEXT_TABLES = ("sessions", "decisions", "orders")


def storage_filter(analytics_table: str) -> tuple[str, str | None]:
    """The storage table an analytics table comes from, and the condition on its rows (SQL), if any."""
    if analytics_table == "ticks":
        return "ticks", "kind = 0"
    if analytics_table == "quotes":
        return "ticks", "kind <> 0"
    return analytics_table, None


@dataclass(frozen=True, slots=True)
class DecisionRef:
    strategy: str
    ts_event_ns: int
    reference_price: float | None


@dataclass(frozen=True, slots=True)
class OrderRef:
    instrument: str
    decision_id: str
    entry_type: str
    entry_price: float | None
    stop_price: float | None
    target_price: float | None


@dataclass
class Context:
    """What rows of other tables say about a row: sessions' accounts, decisions, orders. Held whole (a few
    hundred bytes an order); ``max_items`` bounds a live feed's, oldest forgotten first."""

    accounts: dict[int, str] = field(default_factory=dict)
    decisions: dict[str, DecisionRef] = field(default_factory=dict)
    orders: dict[str, OrderRef] = field(default_factory=dict)
    max_items: int = 1_000_000

    def learn(self, table: str, df: pd.DataFrame) -> None:
        if table == "sessions":
            for sid, account in zip(df["session_id"], df["account"]):
                self.accounts[int(sid)] = account or ""
        elif table == "decisions":
            for did, strategy, ts, inputs in zip(df["decision_id"], df["strategy"], df["ts_event_ns"], df["inputs"]):
                self.decisions[did] = DecisionRef(strategy, int(ts), reference_price(inputs))
        elif table == "orders":
            for row in df[["client_order_id", "instrument", "decision_id", "entry_type", "entry_price", "stop_price",
                           "target_price"]].itertuples(index=False):
                self.orders[row[0]] = OrderRef(row[1], row[2] or "", row[3], _num(row[4]), _num(row[5]), _num(row[6]))
        for d in (self.accounts, self.decisions, self.orders):
            while len(d) > self.max_items:
                del d[next(iter(d))]  # dicts keep insertion order: the oldest first


def reference_price(inputs: str | None) -> float | None:
    """The decision's reference price from its ``inputs`` JSON (see the module docstring); None if absent."""
    if not inputs:
        return None
    try:
        doc = json.loads(inputs)
        for check in doc.get("risk") or ():
            if check.get("check") == "reference_price":
                return _num(check.get("value"))
        signal = doc.get("signal") or {}
        return _num(signal.get("entry_price")) or _num((doc.get("features") or {}).get("close"))
    except (ValueError, AttributeError, TypeError):
        return None  # not the object the engine writes: no reference, the fill's slippage is NULL


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


# ------------------------------------------------------------------------------------------------- columns


def _str(s: pd.Series) -> np.ndarray:
    return s.where(s.notna(), "").astype(str).to_numpy(dtype=object)


def _nprice(s: pd.Series) -> pd.arrays.FloatingArray:
    return pd.array(pd.to_numeric(s, errors="coerce"), dtype="Float64")  # NaN and None: NULL


def _nint(s: pd.Series, dtype: str = "Int64") -> pd.api.extensions.ExtensionArray:
    """Integers, NULL where absent or outside the column's type (a negative tick count is no count)."""
    info = np.iinfo(dtype.lower())
    x = pd.to_numeric(s, errors="coerce").astype(float).round()
    return pd.array(x.where((x >= info.min) & (x <= info.max)), dtype=dtype)


def _i64(s: pd.Series) -> np.ndarray:
    return s.to_numpy(dtype=np.int64)


def _base(df: pd.DataFrame, ts: str) -> dict[str, Any]:
    return {"instrument": _str(df["instrument"]), "ts": _i64(df[ts]),
            "session_id": df["session_id"].to_numpy(np.uint64)}


def _sized(size: np.ndarray, mask: np.ndarray) -> pd.arrays.IntegerArray:
    """``size`` where ``mask``, NULL elsewhere (the side a quote update did not move)."""
    return pd.arrays.IntegerArray(np.where(mask, size, 0).astype(np.uint64), ~mask)


def _ticks(df: pd.DataFrame, _ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    kind = df["kind"].to_numpy()
    last, q = df[kind == 0], df[kind != 0]
    out = [("ticks", pd.DataFrame({**_base(last, "ts_exchange_ns"), "seq": last["seq"].to_numpy(np.uint64),
                                   "price": last["price"].to_numpy(float),
                                   "volume": last["size"].to_numpy(np.uint64)}))]
    is_bid = (q["kind"] == 1).to_numpy()
    price, size = q["price"].to_numpy(float), q["size"].to_numpy(np.int64)
    bid = np.where(is_bid, price, pd.to_numeric(q["bid"], errors="coerce").to_numpy(float))
    ask = np.where(~is_bid, price, pd.to_numeric(q["ask"], errors="coerce").to_numpy(float))
    out.append(("quotes", pd.DataFrame({**_base(q, "ts_exchange_ns"), "seq": q["seq"].to_numpy(np.uint64),
                                        "bid": bid, "ask": ask,
                                        "bid_size": _sized(size, is_bid), "ask_size": _sized(size, ~is_bid)})))
    return [(t, f) for t, f in out if len(f)]


def _bars(df: pd.DataFrame, _ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    return [("bars", pd.DataFrame({**_base(df, "ts_close_ns"), "period_s": df["period_s"].to_numpy(np.uint32),
                                   **{c: df[c].to_numpy(float) for c in ("open", "high", "low", "close")},
                                   "volume": df["volume"].to_numpy(np.uint64),
                                   "tick_count": _nint(df["tick_count"], "UInt32"), "built_by": _str(df["source"])}))]


def _quality(df: pd.DataFrame, _ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    return [("quality_events", pd.DataFrame({**_base(df, "ts_event_ns"), "seq": _nint(df["seq"]),
                                             "reason": _str(df["reason"]), "detail": _str(df["detail"]),
                                             "payload": _str(df["payload"])}))]


def _decisions(df: pd.DataFrame, _ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    refs = [reference_price(x) for x in df["inputs"]]
    return [("decisions", pd.DataFrame({**_base(df, "ts_event_ns"), "decision_id": _str(df["decision_id"]),
                                        "strategy": _str(df["strategy"]), "outcome": _str(df["outcome"]),
                                        "decided_ns": _i64(df["ts_sidecar_ns"]),
                                        "reference_price": pd.array(refs, dtype="Float64"),
                                        "inputs": _str(df["inputs"]), "rationale": _str(df["rationale"])}))]


def _strategy_of(decision_ids: pd.Series, ctx: Context) -> list[str]:
    return [d.strategy if (d := ctx.decisions.get(x)) is not None else "" for x in decision_ids]


def _accounts(df: pd.DataFrame, ctx: Context) -> list[str]:
    return [ctx.accounts.get(int(s), "") for s in df["session_id"]]


def _orders(df: pd.DataFrame, ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    did = pd.Series(_str(df["decision_id"]), index=df.index)
    return [("orders", pd.DataFrame({**_base(df, "ts_created_ns"), "client_order_id": _str(df["client_order_id"]),
                                     "decision_id": did.to_numpy(object), "strategy": _strategy_of(did, ctx),
                                     "account": _accounts(df, ctx), "side": _str(df["side"]),
                                     "entry_type": _str(df["entry_type"]), "quantity": _i64(df["quantity"]),
                                     **{c: _nprice(df[c]) for c in ("entry_price", "stop_price", "target_price")},
                                     "time_in_force": _str(df["time_in_force"]),
                                     "algorithm_id": _str(df["algorithm_id"])}))]


def _order_updates(df: pd.DataFrame, ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    # the storage keeps an update's instrument in its order's row
    instrument = [o.instrument if (o := ctx.orders.get(c)) is not None else "" for c in df["client_order_id"]]
    return [("order_updates", pd.DataFrame({
        "instrument": instrument, "ts": _i64(df["ts_event_ns"]),
        "session_id": df["session_id"].to_numpy(np.uint64), "seq": _i64(df["seq"]),
        **{c: _str(df[c]) for c in ("client_order_id", "role", "nt8_order_id", "state")},
        "quantity": _i64(df["quantity"]), "filled": _i64(df["filled"]),
        **{c: _nprice(df[c]) for c in ("limit_price", "stop_price", "avg_fill_price")},
        "error_code": _nint(df["error_code"], "Int32"), "comment": _str(df["comment"])}))]


def _expected(role: str, order: OrderRef | None, decision: DecisionRef | None) -> float | None:
    if order is None:
        return None
    if role == "ENTRY":
        if order.entry_type != "MARKET" and order.entry_price is not None:
            return order.entry_price
        return decision.reference_price if decision is not None else None
    return {"STOP": order.stop_price, "TARGET": order.target_price}.get(role)


def _executions(df: pd.DataFrame, ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    coid, role, ts = _str(df["client_order_id"]), _str(df["role"]), _i64(df["ts_event_ns"])
    orders = [ctx.orders.get(c) for c in coid]
    dids = [o.decision_id if o is not None else "" for o in orders]
    decisions = [ctx.decisions.get(d) for d in dids]
    expected = [_expected(r, o, d) for r, o, d in zip(role, orders, decisions)]
    latency = [int(t) - d.ts_event_ns if r == "ENTRY" and d is not None else None
               for t, r, d in zip(ts, role, decisions)]
    return [("executions", pd.DataFrame({
        **_base(df, "ts_event_ns"), "seq": _i64(df["seq"]), "execution_id": _str(df["execution_id"]),
        "client_order_id": coid, "decision_id": dids,
        "strategy": [d.strategy if d is not None else "" for d in decisions], "account": _accounts(df, ctx),
        "role": role, "side": _str(df["side"]), "quantity": _i64(df["quantity"]), "price": df["price"].to_numpy(float),
        "commission": _nprice(df["commission"]), "expected_price": pd.array(expected, dtype="Float64"),
        "latency_ns": pd.array(latency, dtype="Int64")}))]


def _positions(df: pd.DataFrame, ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    return [("positions", pd.DataFrame({**_base(df, "ts_event_ns"), "seq": _i64(df["seq"]),
                                        "account": _accounts(df, ctx), "market_position": _str(df["market_position"]),
                                        "quantity": _i64(df["quantity"]), "avg_price": _nprice(df["avg_price"])}))]


_CONVERT: dict[str, Callable[[pd.DataFrame, Context], list[tuple[str, pd.DataFrame]]]] = {
    "ticks": _ticks, "bars": _bars, "quality_events": _quality, "decisions": _decisions, "orders": _orders,
    "order_updates": _order_updates, "executions": _executions, "positions": _positions,
}


def convert(table: str, df: pd.DataFrame, ctx: Context) -> list[tuple[str, pd.DataFrame]]:
    """Storage rows of ``table`` (a frame with the storage's column names) as (analytics table, frame) pairs,
    each frame holding every column of its table but ``source``; empty frames are left out."""
    if table not in _CONVERT or not len(df):
        return []
    return [(t, f.reset_index(drop=True)) for t, f in _CONVERT[table](df, ctx) if len(f)]
