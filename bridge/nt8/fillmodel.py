"""A simple, documented fill model for the Python NT8 client (the quick playback path).

The faithful NT8 simulator is the C# one (``bridge.nt8.simulator``, ``--engine nt8sim``); this one
exists so that tests, benchmarks and ``nt8bridge playback --engine python`` can close the loop.
Its rules:

- Only trades (LAST ticks) fill orders; a trade is the evidence that a price was reachable.
- An order becomes live on the first trade *after* the one whose processing produced it (the
  sidecar decides on trade N, NT8 can act on trade N+1 at the earliest).
- Market entry: fills at the opposite quote (ask to buy, bid to sell) when one is known, else at
  the trade price, worsened by ``slippage_ticks``.
- Limit (entry or target): fills at its limit when a trade goes through it (strictly better);
  with ``fill_limit_on_touch`` also when a trade touches it (NT8's IsFillLimitOnTouch).
- Stop-market (entry or stop loss): triggers when a trade reaches the stop, and fills at the worse
  of the stop and that trade, worsened by ``slippage_ticks`` (a gap through a stop fills at the gap).
- After an entry fill, the stop and the target are submitted with one fresh OCO id, sized to the
  filled quantity; a fill of one cancels the other on the same trade. One trade has one price, and
  a valid bracket has the stop and the target on opposite sides of the entry, so one trade can
  never fill both.
- Fills are whole (no partial fills: tick volume is not modelled here) and carry
  ``commission_per_contract`` per side.
- FLATTEN cancels everything working and closes the position at the next trade like a market order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bridge.core.config import FillModelConfig
from bridge.protocol.messages import (
    ALL_INSTRUMENTS,
    CancelOrder,
    ChangeOrder,
    EntryType,
    Execution,
    Flatten,
    InstrumentDecl,
    MarketPosition,
    Message,
    OrderRole,
    OrderState,
    OrderType,
    OrderUpdate,
    Position,
    Side,
    SubmitBracket,
)

_LIVE = (OrderState.ACCEPTED, OrderState.WORKING)


@dataclass(slots=True)
class SimOrder:
    nt8_order_id: str
    bracket_id: str
    role: OrderRole
    instrument_id: int
    side: Side
    order_type: OrderType
    quantity: int
    limit_price: float
    stop_price: float
    oco: str
    live_after_index: int  # the order may fill only on trades after this tick index
    state: OrderState = OrderState.WORKING
    filled: int = 0
    avg_fill_price: float = math.nan


@dataclass(slots=True)
class Fill:
    """One fill, as the playback summary and digest see it."""

    tick_index: int
    bracket_id: str
    role: str
    instrument_id: int
    side: str
    quantity: int
    price: float
    commission: float


@dataclass
class Account:
    positions: dict[int, int] = field(default_factory=dict)  # signed contracts
    avg_price: dict[int, float] = field(default_factory=dict)
    realized_points: dict[int, float] = field(default_factory=dict)  # sum of price moves x contracts
    commission: float = 0.0


class SimBroker:
    def __init__(self, instruments: list[InstrumentDecl], config: FillModelConfig) -> None:
        self.instruments = instruments
        self.config = config
        self.orders: dict[str, SimOrder] = {}
        self._live: dict[str, SimOrder] = {}  # orders that can still fill, by NT8 order id
        self.by_bracket: dict[str, list[SimOrder]] = {}
        self.fills: list[Fill] = []
        self.account = Account()
        self.bid = [math.nan] * len(instruments)
        self.ask = [math.nan] * len(instruments)
        self.refused: list[str] = []  # commands that could not be applied, with why
        self._pending_exits: dict[str, tuple[float, float]] = {}  # bracket id -> (stop, target)
        self._n_orders = 0
        self._n_exec = 0
        self._n_oco = 0

    # --- commands from the sidecar --------------------------------------------------------------

    def _new_order(self, bracket_id: str, role: OrderRole, iid: int, side: Side, otype: OrderType, qty: int,
                   limit: float, stop: float, oco: str, ts: int, index: int) -> tuple[SimOrder, list[Message]]:
        self._n_orders += 1
        o = SimOrder(f"sim-{self._n_orders}", bracket_id, role, iid, side, otype, qty, limit, stop, oco, index)
        self.orders[o.nt8_order_id] = o
        self.by_bracket.setdefault(bracket_id, []).append(o)
        # NT8 reports Submitted, Accepted, then Working (Playback101 does it synchronously)
        return o, [self._update(o, OrderState.SUBMITTED, ts), self._update(o, OrderState.ACCEPTED, ts),
                   self._update(o, OrderState.WORKING, ts)]

    def submit_bracket(self, cmd: SubmitBracket, ts: int, index: int) -> list[Message]:
        otype = {EntryType.MARKET: OrderType.MARKET, EntryType.LIMIT: OrderType.LIMIT,
                 EntryType.STOP: OrderType.STOP_MARKET}[EntryType(cmd.entry_type)]
        if cmd.client_order_id in self.by_bracket:
            self.refused.append(f"{cmd.client_order_id}: bracket id reused")
            return []
        limit = cmd.entry_price if otype == OrderType.LIMIT else math.nan
        stop = cmd.entry_price if otype == OrderType.STOP_MARKET else math.nan
        o, events = self._new_order(cmd.client_order_id, OrderRole.ENTRY, cmd.instrument_id, Side(cmd.side), otype,
                                    cmd.quantity, limit, stop, "", ts, index)
        # the exits are placed once the entry fills
        self._pending_exits[cmd.client_order_id] = (cmd.stop_price, cmd.target_price)
        return events

    def cancel(self, cmd: CancelOrder, ts: int) -> list[Message]:
        events = []
        for o in self.by_bracket.get(cmd.client_order_id, []):
            if o.state in _LIVE:
                events.append(self._update(o, OrderState.CANCELLED, ts))
        return events

    def change(self, cmd: ChangeOrder, ts: int) -> list[Message]:
        for o in self.by_bracket.get(cmd.client_order_id, []):
            if o.role == cmd.role and o.state in _LIVE:
                if cmd.quantity:
                    o.quantity = cmd.quantity
                if not math.isnan(cmd.limit_price):
                    o.limit_price = cmd.limit_price
                if not math.isnan(cmd.stop_price):
                    o.stop_price = cmd.stop_price
                return [self._update(o, OrderState.WORKING, ts)]
        self.refused.append(f"{cmd.client_order_id}: no live {OrderRole(cmd.role).name} leg to change")
        return []

    def flatten(self, cmd: Flatten, ts: int, index: int) -> list[Message]:
        events: list[Message] = []
        for o in list(self._live.values()):
            if cmd.instrument_id == ALL_INSTRUMENTS or o.instrument_id == cmd.instrument_id:
                events.append(self._update(o, OrderState.CANCELLED, ts))
        for iid, pos in self.account.positions.items():
            if pos and (cmd.instrument_id == ALL_INSTRUMENTS or iid == cmd.instrument_id):
                side = Side.SELL if pos > 0 else Side.BUY
                _, ev = self._new_order(f"flatten-{self._n_orders + 1}", OrderRole.FLATTEN, iid, side,
                                        OrderType.MARKET, abs(pos), math.nan, math.nan, "", ts, index)
                events.extend(ev)
        return events

    def has_live_orders(self) -> bool:
        return bool(self._live)

    # --- market ---------------------------------------------------------------------------------

    def on_trade(self, iid: int, price: float, bid: float, ask: float, ts: int, index: int) -> list[Message]:
        """Apply one trade: fill whatever it reaches. Returns the NT8 events it caused, in order."""
        if bid == bid and ask == ask and bid < ask:
            self.bid[iid], self.ask[iid] = bid, ask
        events: list[Message] = []
        for o in [o for o in self._live.values() if o.instrument_id == iid]:
            if o.state not in _LIVE or o.live_after_index >= index:  # cancelled by an OCO sibling above
                continue
            fill_price = self._fill_price(o, price)
            if fill_price is not None:
                events.extend(self._fill(o, fill_price, ts, index))
        return events

    def _fill_price(self, o: SimOrder, trade: float) -> float | None:
        tick = self.instruments[o.instrument_id].tick_size
        slip = self.config.slippage_ticks * tick
        buy = o.side == Side.BUY
        if o.order_type == OrderType.MARKET:
            quote = self.ask[o.instrument_id] if buy else self.bid[o.instrument_id]
            ref = quote if quote == quote else trade
            return ref + slip if buy else ref - slip
        if o.order_type == OrderType.LIMIT:
            through = trade < o.limit_price if buy else trade > o.limit_price
            touch = self.config.fill_limit_on_touch and trade == o.limit_price
            return o.limit_price if through or touch else None
        # stop-market
        if (trade >= o.stop_price) if buy else (trade <= o.stop_price):
            worst = max(o.stop_price, trade) if buy else min(o.stop_price, trade)
            return worst + slip if buy else worst - slip
        return None

    def _fill(self, o: SimOrder, price: float, ts: int, index: int) -> list[Message]:
        decl = self.instruments[o.instrument_id]
        price = round(round(price / decl.tick_size) * decl.tick_size, 10)
        commission = self.config.commission_per_contract * o.quantity
        o.filled = o.quantity
        o.avg_fill_price = price
        self._n_exec += 1
        events: list[Message] = [
            Execution(f"x-{self._n_exec}", o.bracket_id, int(o.role), o.nt8_order_id, o.instrument_id, int(o.side),
                      price, o.quantity, commission, ts),
            self._update(o, OrderState.FILLED, ts),
        ]
        self.fills.append(Fill(index, o.bracket_id, o.role.name, o.instrument_id, o.side.name, o.quantity, price,
                               commission))
        self._book(o, price, commission)
        events.append(self._position(o.instrument_id, ts))
        if o.role == OrderRole.ENTRY:
            events.extend(self._place_exits(o, ts, index))
        elif o.oco:
            for sibling in self.by_bracket[o.bracket_id]:
                if sibling is not o and sibling.oco == o.oco and sibling.state in _LIVE:
                    events.append(self._update(sibling, OrderState.CANCELLED, ts))
        return events

    def _place_exits(self, entry: SimOrder, ts: int, index: int) -> list[Message]:
        stop, target = self._pending_exits.pop(entry.bracket_id)
        self._n_oco += 1
        oco = f"oco-{self._n_oco}"  # never reused, as NT8 requires
        exit_side = Side.SELL if entry.side == Side.BUY else Side.BUY
        _, a = self._new_order(entry.bracket_id, OrderRole.STOP, entry.instrument_id, exit_side, OrderType.STOP_MARKET,
                               entry.filled, math.nan, stop, oco, ts, index)
        _, b = self._new_order(entry.bracket_id, OrderRole.TARGET, entry.instrument_id, exit_side, OrderType.LIMIT,
                               entry.filled, target, math.nan, oco, ts, index)
        return a + b

    def _book(self, o: SimOrder, price: float, commission: float) -> None:
        acct = self.account
        iid = o.instrument_id
        pos = acct.positions.get(iid, 0)
        signed = o.side.sign * o.quantity
        if pos == 0 or (pos > 0) == (signed > 0):  # opening or adding
            total = abs(pos) + o.quantity
            acct.avg_price[iid] = (acct.avg_price.get(iid, 0.0) * abs(pos) + price * o.quantity) / total
        else:  # reducing (a bracket never reverses through zero: exits are sized to the entry)
            closed = min(abs(pos), o.quantity)
            direction = 1 if pos > 0 else -1
            acct.realized_points[iid] = acct.realized_points.get(iid, 0.0) + \
                (price - acct.avg_price[iid]) * direction * closed
        acct.positions[iid] = pos + signed
        acct.commission += commission

    def _position(self, iid: int, ts: int) -> Position:
        pos = self.account.positions.get(iid, 0)
        mp = MarketPosition.FLAT if pos == 0 else MarketPosition.LONG if pos > 0 else MarketPosition.SHORT
        avg = self.account.avg_price.get(iid, math.nan) if pos else math.nan
        return Position(iid, int(mp), abs(pos), avg, ts)

    def _update(self, o: SimOrder, state: OrderState, ts: int) -> OrderUpdate:
        o.state = state
        if state in _LIVE:
            self._live[o.nt8_order_id] = o
        else:
            self._live.pop(o.nt8_order_id, None)
        return OrderUpdate(o.bracket_id, int(o.role), o.nt8_order_id, o.instrument_id, int(state), int(o.order_type),
                           int(o.side), o.quantity, o.filled, o.limit_price, o.stop_price, o.avg_fill_price, ts, 0, "")

    # --- results ---------------------------------------------------------------------------------

    def realized_pnl(self) -> dict[int, float]:
        """Realized P&L per instrument in its currency, before commissions."""
        return {iid: pts * self.instruments[iid].point_value for iid, pts in self.account.realized_points.items()}
