"""The rules of the Interactive Brokers feed that need no connection: which root gets tick-by-tick lines, how
fast requests may go, what a market data type means as freshness, which error codes mean what, and which
contract month is the front month. ``bridge.feeds.ib`` applies them to a live ib_async session; keeping them
here lets them be tested without one, and keeps ``ib_async`` out of anything that only needs the rules.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bridge.core.instruments import InstrumentSpec, front_contract, parse_contract_name
from bridge.feeds.base import Freshness

__all__ = [
    "CONNECTIVITY_LOST", "CONNECTIVITY_RESTORED_DATA_LOST", "CONNECTIVITY_RESTORED_DATA_MAINTAINED",
    "DELAYED_DATA_S", "KINDS", "MARKET_DATA_TYPES", "PACING_CODES", "REFUSAL_CODES", "TBT_LIMIT_CODE",
    "Pacer", "RootPlan", "freshness_of", "front_month", "plan_lines", "session_day",
]

# IB's system messages (reqId -1): the link between TWS / IB Gateway and IB's servers, not ours to TWS.
CONNECTIVITY_LOST = 1100
CONNECTIVITY_RESTORED_DATA_LOST = 1101        # every market data request is gone: submit them again
CONNECTIVITY_RESTORED_DATA_MAINTAINED = 1102  # IB restored them itself

# Refusals of one subscription: no permission (354, 10089, 10090, 10168), tick-by-tick failed (10189) or
# IB's own limit on simultaneous tick-by-tick subscriptions, which can be lower than ours (10190).
TBT_LIMIT_CODE = 10190
REFUSAL_CODES = frozenset({354, 10089, 10090, 10168, 10189, TBT_LIMIT_CODE})
# 100: more than 50 messages a second from this client; 420: IB's pacing violation on a real-time query.
PACING_CODES = frozenset({100, 420})

# reqMarketDataType: what IB sends for reqMktData when the account has no live subscription.
MARKET_DATA_TYPES = {"live": 1, "frozen": 2, "delayed": 3, "delayed_frozen": 4}
# IB's delayed data runs 10 to 20 minutes behind depending on the exchange; the feed says 15 (CME's usual).
DELAYED_DATA_S = 900.0

# A subscription's kind: tick-by-tick trades, tick-by-tick quotes, or reqMktData (top of book + last).
KINDS = ("Last", "BidAsk", "MktData")


def freshness_of(market_data_type: int) -> tuple[Freshness, float]:
    """The freshness and delay of values sent under an IB market data type (1 live, 2 frozen, 3 delayed,
    4 delayed-frozen). An unknown type is treated as delayed: better to refuse an entry than to believe it."""
    if market_data_type == 1:
        return Freshness.REALTIME, 0.0
    if market_data_type == 2:
        return Freshness.FROZEN, 0.0
    if market_data_type == 4:
        return Freshness.FROZEN, DELAYED_DATA_S
    return Freshness.DELAYED, DELAYED_DATA_S


@dataclass(frozen=True)
class RootPlan:
    """Where one root's trades and quotes come from: tick-by-tick Last and/or BidAsk, and reqMktData for
    whatever tick-by-tick does not cover."""

    root: str
    kinds: tuple[str, ...]

    @property
    def tbt_lines(self) -> int:
        return sum(1 for k in self.kinds if k != "MktData")


def plan_lines(roots: list[str], lines: int) -> list[RootPlan]:
    """Give tick-by-tick lines to roots in the order given, two per root (IB counts Last and BidAsk as one
    subscription each); an odd last line carries the next root's trades, its quotes coming from reqMktData.
    Every root without both tick-by-tick kinds gets reqMktData, so no root is left without a source."""
    plans: list[RootPlan] = []
    left = max(0, lines)
    for root in roots:
        if left >= 2:
            plans.append(RootPlan(root, ("Last", "BidAsk")))
            left -= 2
        elif left == 1:
            plans.append(RootPlan(root, ("Last", "MktData")))
            left = 0
        else:
            plans.append(RootPlan(root, ("MktData",)))
    return plans


def session_day(spec: InstrumentSpec, now_s: float | None = None) -> dt.date:
    """The trading day ``now`` belongs to: a session that opens in the evening (CME: 17:00 Chicago) belongs
    to the day it closes on, which is the day the roll rules count from."""
    zone = ZoneInfo(spec.hours.tz)
    local = dt.datetime.fromtimestamp(time.time() if now_s is None else now_s, zone)
    hours = spec.hours
    if hours.open > hours.close and local.time() >= hours.open:
        return local.date() + dt.timedelta(days=1)
    return local.date()


def front_month(spec: InstrumentSpec, day: dt.date) -> tuple[str, str]:
    """The front-month contract of a future by the instrument master's roll rule: its NT8 name (``ES 06-25``)
    and IB's ``lastTradeDateOrContractMonth`` for it (``202506``)."""
    name = front_contract(spec.root, day)
    _, month, year = parse_contract_name(name)
    assert month is not None and year is not None  # front_contract always names a month
    return name, f"{year:04d}{month:02d}"


class Pacer:
    """When the next request to IB may go. IB takes at most 50 messages a second from a client and answers
    more with error 100 (and then may drop the connection); ib_async throttles at 45. This spreads the feed's
    requests and cancels evenly at ``rate`` a second, below both; after a pacing error (100, 420) it holds
    everything for a backoff that doubles up to ``max_hold_s``; and it never repeats a request identical to
    one sent less than ``min_repeat_s`` ago (IB paces identical requests, and a peer that keeps dropping a
    subscription must not turn its renewal into a flood)."""

    def __init__(self, rate: float = 40.0, min_repeat_s: float = 2.0, first_hold_s: float = 1.0,
                 max_hold_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number of requests a second, got {rate!r}")
        self.gap = 1.0 / rate
        self.min_repeat_s = min_repeat_s
        self.first_hold_s, self.max_hold_s = first_hold_s, max_hold_s
        self.clock = clock
        self._next_at = 0.0
        self._hold_until = 0.0
        self._hold_s = 0.0
        self._last_violation = -math.inf
        self._sent: dict[object, float] = {}

    def wait_s(self, key: object | None = None) -> float:
        """Seconds to wait before a request with ``key`` (None: never an identical one) may go."""
        now = self.clock()
        at = max(self._next_at, self._hold_until)
        if key is not None and key in self._sent:
            at = max(at, self._sent[key] + self.min_repeat_s)
        return max(0.0, at - now)

    def sent(self, key: object | None = None) -> None:
        now = self.clock()
        self._next_at = max(now, self._next_at) + self.gap
        if key is not None:
            self._sent[key] = now
            if len(self._sent) > 1024:  # keys of long-gone requests: only the recent ones matter
                cutoff = now - self.min_repeat_s
                self._sent = {k: t for k, t in self._sent.items() if t >= cutoff}

    def violation(self) -> float:
        """IB said the client goes too fast: hold everything; returns the hold in seconds."""
        now = self.clock()
        # a violation a minute or more after the last one starts again from the first hold
        self._hold_s = self.first_hold_s if now - self._last_violation > 60.0 or self._hold_s == 0 \
            else min(self.max_hold_s, self._hold_s * 2)
        self._last_violation = now
        self._hold_until = max(self._hold_until, now + self._hold_s)
        return self._hold_s

    @property
    def holding(self) -> bool:
        return self.clock() < self._hold_until
