"""What every market-data feed beside NT8 is to the sidecar: quotes with their freshness, a health with
its reason, and a hand-over that never makes the decision path wait.

A feed runs on threads of its own (an IB connection's event loop, an HTTP poller). It hands each value
to a :class:`FeedBus`, a lock-free append the sidecar's loop drains between bursts of NT8 messages, so
a feed that floods or hangs costs the hot path nothing but the drain of what already arrived. NT8's own
stream is the primary feed: it needs no adapter, the sidecar reports its values to the same reference
book under the name ``"nt8"``.

Freshness is per value, because one feed can mix them: IB answers with frozen or delayed data when the
account has no live subscription, Alpha Vantage's free tier is delayed by 15 minutes or end of day.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Feed", "FeedBus", "FeedError", "FeedQuote", "FeedStatus", "Freshness", "Health", "NT8_FEED"]

NT8_FEED = "nt8"


class Freshness(str, Enum):
    REALTIME = "realtime"
    DELAYED = "delayed"        # by ``FeedQuote.delay_s`` (IB delayed data: 15-20 min; Alpha Vantage free: 15 min)
    FROZEN = "frozen"          # the last value of a closed market (IB market data type 2)
    END_OF_DAY = "end_of_day"  # a daily close

    def __str__(self) -> str:
        return self.value


class Health(str, Enum):
    LIVE = "live"            # real-time values arriving
    DELAYED = "delayed"      # values arriving, but not real time (never used for a new entry)
    STALE = "stale"          # connected, but no value for longer than the feed's stale limit
    DIVERGING = "diverging"  # values arriving that disagree with the other feeds beyond the tolerance
    DOWN = "down"            # not connected, refused, throttled, out of budget: ``FeedStatus.reason`` says which

    def __str__(self) -> str:
        return self.value


class FeedError(Exception):
    """A feed that cannot do what it was asked (unreachable, throttled, bad key); the message is one sentence
    an operator can act on, and never contains a credential."""


@dataclass(frozen=True, slots=True)
class FeedQuote:
    """One value from a feed. ``root`` is the instrument master's root (ES, NQ, MES, ...) the value stands
    for; ``symbol`` what the feed itself calls it (``ESM8``, ``SPY``): an ETF stand-in carries the root of
    the future it stands in for and its own symbol."""

    feed: str
    root: str
    symbol: str
    price: float                  # last trade (or the close, for a bar or an end-of-day value)
    bid: float = float("nan")
    ask: float = float("nan")
    size: int = 0
    ts_ns: int = 0                # the source's time of the value (exchange time where the feed gives it)
    received_ns: int = 0          # the sidecar machine's wall clock when the feed got it
    freshness: Freshness = Freshness.REALTIME
    delay_s: float = 0.0          # how far behind real time the source says it is


@dataclass
class FeedStatus:
    """A feed's health as ``nt8bridge feeds status`` prints it and the metrics export it."""

    name: str
    health: Health
    reason: str = ""                      # why, when not LIVE: "connection refused by 127.0.0.1:4002", "throttled: ..."
    freshness: Freshness | None = None    # of the last value
    connected: bool = False
    last_value_ns: int | None = None      # wall clock of the last value received
    last: dict[str, FeedQuote] = field(default_factory=dict)  # root -> the last value
    counters: dict[str, int] = field(default_factory=dict)    # requests, errors, reconnects, throttled, ...

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "health": str(self.health), "reason": self.reason,
                "freshness": str(self.freshness) if self.freshness else None, "connected": self.connected,
                "last_value_ns": self.last_value_ns, "counters": dict(self.counters),
                "last": {root: {"symbol": q.symbol, "price": q.price, "bid": q.bid, "ask": q.ask, "ts_ns": q.ts_ns,
                                "received_ns": q.received_ns, "freshness": str(q.freshness), "delay_s": q.delay_s}
                         for root, q in self.last.items()}}


class FeedBus:
    """The hand-over from feed threads to the sidecar's loop: ``put`` from any thread, ``drain`` from the
    loop. A deque's append and popleft are atomic in CPython, so neither side takes a lock; the bound
    drops the oldest values of a feed that floods a loop that is busy (``dropped`` counts them)."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._q: deque[FeedQuote] = deque()
        self.maxlen = maxlen
        self.put_count = 0
        self.dropped = 0

    def put(self, quote: FeedQuote) -> None:
        self._q.append(quote)
        self.put_count += 1
        if len(self._q) > self.maxlen:
            try:
                self._q.popleft()
                self.dropped += 1
            except IndexError:
                pass

    def drain(self, limit: int = 10_000) -> list[FeedQuote]:
        out: list[FeedQuote] = []
        q = self._q
        for _ in range(min(limit, len(q))):
            out.append(q.popleft())
        return out


class Feed(ABC):
    """A market-data source beside NT8. Subclasses run their own threads between ``start`` and ``stop``,
    ``put`` every value on the bus, keep ``status()`` current, and never let an exception out of a
    thread: a failure is a health with its reason, a counter and a log line."""

    name: str

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._status = FeedStatus(name, Health.DOWN, "not started")

    @abstractmethod
    def start(self, bus: FeedBus, roots: list[str]) -> None:
        """Subscribe to ``roots`` (instrument master roots) and deliver to ``bus`` until ``stop``."""

    @abstractmethod
    def stop(self) -> None:
        """Unsubscribe, disconnect, join the threads (bounded: a hung peer must not hold a stop)."""

    @abstractmethod
    def probe(self, root: str, timeout_s: float = 10.0) -> FeedQuote:
        """One request or subscription for ``root``, answered or ``FeedError`` (``nt8bridge feeds probe``)."""

    def status(self) -> FeedStatus:
        with self._lock:
            s = self._status
            return FeedStatus(s.name, s.health, s.reason, s.freshness, s.connected, s.last_value_ns, dict(s.last),
                              dict(s.counters))

    def _set_health(self, health: Health, reason: str = "", *, connected: bool | None = None) -> None:
        with self._lock:
            self._status.health, self._status.reason = health, reason
            if connected is not None:
                self._status.connected = connected

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._status.counters[key] = self._status.counters.get(key, 0) + n

    def _delivered(self, bus: FeedBus, quote: FeedQuote) -> None:
        """Hand one value over and note it in the status."""
        bus.put(quote)
        with self._lock:
            s = self._status
            s.last[quote.root] = quote
            s.last_value_ns, s.freshness = quote.received_ns, quote.freshness
            s.counters["values"] = s.counters.get("values", 0) + 1
