"""Which feed the sidecar believes, per instrument root: the reference book.

The book holds, per root, the last value of every feed (NT8's own stream under ``"nt8"``, IB, the Alpha
Vantage ETF stand-in) with the time it arrived, and from them decides:

* each feed's health for that root: STALE when no value arrived for ``stale_after_s`` while the root's
  market is open; DIVERGING when its price disagrees with the feeds that agree with each other (NT8 and
  IB trade the same contract: the difference is counted in ticks; an ETF stand-in is first multiplied by
  the ratio future/ETF the book learns while both are healthy); DOWN when the feed itself says so (not
  connected, throttled, out of budget) or when no NT8 session streams the root; else LIVE, or DELAYED
  for a delayed, frozen or end-of-day value;
* the reference: the best healthy feed, real time before delayed, then by preference nt8 > ib >
  alpha_vantage, with hysteresis: the book leaves its reference only once that feed has been unhealthy
  for ``switch_after_s``, and comes back to a preferred feed only once it has been healthy that long.
  Every switch is returned by :meth:`ReferenceBook.evaluate` as a :class:`FeedSwitch` for the caller to
  record and count;
* the policy on top: a reference that is not real time never decides a new entry
  (:meth:`Reference.entry_denial`), and NT8's own feed stale or down for ``switch_after_s`` in a root
  whose market is open is reported in :attr:`ReferenceBook.nt8_down` (the sidecar holds trading at
  REDUCING while it is not empty, ``feeds.on_nt8_down``), and cleared once it has been back that long.

Which clock. The book does arithmetic only on the times it is given, so tests and playbacks drive it
deterministically; the sidecar gives it its **wall clock**: every value is timed by when it *arrived*
(``FeedQuote.received_ns``; for NT8, when its last tick was read), and ``evaluate(now_ns)`` gets
``time.time_ns()``. Staleness is about values not arriving, and the machine's clock is the only one every
feed shares: a lockstep playback's data runs faster or slower than real time, so data time would call a
live IB stream stale after one fast minute of playback and could never call a paused NT8 stale (its data
clock stops with its ticks). What depends on the data's own time is whether the market is open: for a
live session that is the wall clock; for a lockstep playback it is the root's last NT8 event time moved
on by the wall time since that tick arrived, so a pause inside a 2018 Tuesday session is a pause while
the market is open, whatever day the playback runs. Comparing a delayed value with a real-time one uses
each feed's recent prices by arrival time (a value delayed by 15 minutes is compared with what the other
feeds said 15 minutes earlier).

Nothing here takes a lock, a socket or a thread: the sidecar's loop feeds and evaluates the book between
bursts of NT8 messages, and the decision path only reads :meth:`ReferenceBook.reference`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from bridge.feeds.base import NT8_FEED, FeedQuote, Freshness, Health

__all__ = ["FeedSwitch", "PREFERENCE", "Reference", "ReferenceBook", "STAND_IN_FEEDS"]

_NS = 1_000_000_000
PREFERENCE = (NT8_FEED, "ib", "alpha_vantage")  # who is believed first; a feed not listed comes after these
STAND_IN_FEEDS = frozenset({"alpha_vantage"})  # feeds quoting an ETF for the root, not the future itself
_HEALTHY = (Health.LIVE, Health.DELAYED)
_UNUSABLE = (Health.STALE, Health.DOWN)  # no current value to compare or to believe
# how bad a health is, for a feed's one-line summary over its roots
_SEVERITY = {Health.LIVE: 0, Health.DELAYED: 1, Health.DIVERGING: 2, Health.STALE: 3, Health.DOWN: 4}
_HISTORY_S = 1800.0  # how far back a feed's prices are kept: delayed data is 15-20 minutes behind
_HISTORY_STEP_NS = _NS  # at most one remembered price per feed and root per second


@dataclass(frozen=True, slots=True)
class FeedSwitch:
    """The reference of ``root`` moved from one feed to another; ``delayed``: the new one is not real time
    (no new entry is decided on it)."""

    root: str
    from_feed: str | None
    to_feed: str
    reason: str
    at_ns: int
    delayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "from": self.from_feed, "to": self.to_feed, "reason": self.reason,
                "at_ns": self.at_ns, "delayed": self.delayed}


@dataclass(frozen=True, slots=True)
class Reference:
    """What the book believes for one root: the feed, its price in the future's units (an ETF stand-in's
    price times its learnt ratio), its freshness, and whether that feed is healthy right now (a reference
    can be unhealthy while nothing better is there, or during its hysteresis time)."""

    root: str
    feed: str
    price: float
    freshness: Freshness
    healthy: bool
    since_ns: int
    delay_s: float = 0.0

    @property
    def delayed(self) -> bool:
        return self.freshness is not Freshness.REALTIME

    def entry_denial(self) -> str | None:
        """Why a new entry on this root is refused, or None: never on delayed, frozen or end-of-day data."""
        if not self.delayed:
            return None
        late = f", {self.delay_s:g} s behind" if self.delay_s else ""
        return (f"RISK_FEED_DELAYED ({self.root}: the reference is {self.feed}, {self.freshness}{late}; no new entry "
                "is decided on delayed or end-of-day data)")


@dataclass(slots=True)
class _History:
    """A feed's recent prices by arrival time (at most one a second, ``_HISTORY_S`` back)."""

    times: list[int] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)

    def add(self, t_ns: int, price: float) -> None:
        if self.times and t_ns - self.times[-1] < _HISTORY_STEP_NS:
            if t_ns >= self.times[-1]:
                self.prices[-1] = price  # the latest value of that second
            return
        self.times.append(t_ns)
        self.prices.append(price)
        if len(self.times) > 2 * _HISTORY_S:
            cut = bisect_right(self.times, t_ns - int(_HISTORY_S * _NS))
            del self.times[:cut], self.prices[:cut]

    def at(self, t_ns: int, tolerance_ns: int) -> float | None:
        """The price in force at ``t_ns`` (the last one that arrived at or before it, no older than
        ``tolerance_ns``), or None."""
        i = bisect_right(self.times, t_ns) - 1
        if i < 0 or t_ns - self.times[i] > tolerance_ns:
            return None
        return self.prices[i]


@dataclass(slots=True)
class _Slot:
    """One feed's last value for one root, and what the book made of it."""

    feed: str
    price: float = math.nan
    bid: float = math.nan
    ask: float = math.nan
    symbol: str = ""
    ts_ns: int = 0                # the source's time of the value
    received_ns: int = 0          # when it arrived (the book's clock); 0: never
    freshness: Freshness = Freshness.REALTIME
    delay_s: float = 0.0
    health: Health = Health.DOWN
    reason: str = "no value yet"
    divergence_ticks: float | None = None  # from the reference, in ticks of the root (None: not comparable)
    healthy_since: int | None = None
    unhealthy_since: int | None = None
    down_since: int | None = None  # STALE or DOWN since (NT8: what the REDUCING hold watches)
    up_since: int | None = None
    history: _History | None = None
    ratio: float = math.nan       # an ETF stand-in: the learnt future/ETF ratio
    ratio_samples: int = 0
    ratio_learned_ns: int = 0     # arrival time of the last value the ratio looked at

    @property
    def value_ns(self) -> int:
        """When the value was current: its arrival less its delay."""
        return self.received_ns - int(self.delay_s * _NS)

    def healthy(self) -> bool:
        return self.health in _HEALTHY and self.price == self.price


@dataclass(slots=True)
class _Root:
    root: str
    tick_size: float
    slots: dict[str, _Slot] = field(default_factory=dict)
    watched: bool = False          # an NT8 session streams it: the book decides its reference
    watched_since: int = 0
    ref: str | None = None
    ref_since: int = 0
    nt8_down: str | None = None    # the reason while NT8's feed counts as down (after the hysteresis)
    nt8_event_ns: int = 0          # the data time of NT8's last tick, for a lockstep session's market clock
    data_clock: bool = False       # True: a lockstep playback streams it (market time = its data time)


class ReferenceBook:
    """Per-root feed values, health, divergence and the reference (see the module docstring).

    Parameters
    ----------
    tick_size
        The root's tick size (from the instrument master); raises ``KeyError``/``ValueError`` for an
        unknown root, whose values are then dropped and counted.
    market_open
        Whether the root's market is open at a time (its trading hours; always True when the sidecar
        ignores hours).
    stale_after_s, divergence_ticks, switch_after_s
        ``[feeds]``; ``stale_after_by_feed`` overrides the stale limit of a feed (a feed that polls once an
        hour is not stale after 5 s).
    preference
        Who is believed first among healthy feeds of the same freshness.
    stand_in_feeds
        Feeds whose values are an ETF standing in for the root's future (compared through a ratio).
    ratio_halflife
        Samples over which the future/ETF ratio forgets half of what it learnt.
    """

    def __init__(self, *, tick_size: Callable[[str], float], market_open: Callable[[str, int], bool],
                 stale_after_s: float, divergence_ticks: float, switch_after_s: float,
                 stale_after_by_feed: Mapping[str, float] | None = None, preference: Iterable[str] = PREFERENCE,
                 stand_in_feeds: Iterable[str] = STAND_IN_FEEDS, ratio_halflife: float = 20.0,
                 ratio_min_samples: int = 2) -> None:
        self._tick_size = tick_size
        self._market_open = market_open
        self.stale_after_ns = int(stale_after_s * _NS)
        self._stale_by_feed = {f: int(s * _NS) for f, s in (stale_after_by_feed or {}).items()}
        self.divergence_ticks = divergence_ticks
        self.switch_after_ns = int(switch_after_s * _NS)
        self.preference = tuple(preference)
        self.stand_in = frozenset(stand_in_feeds)
        self._ratio_alpha = 1.0 - 0.5 ** (1.0 / ratio_halflife)
        self._ratio_min = ratio_min_samples
        self._roots: dict[str, _Root] = {}
        self._feed_health: dict[str, tuple[Health, str]] = {}  # what a feed says of itself (its FeedStatus)
        self.bad_values: Counter[str] = Counter()  # feed -> values dropped (not finite, not positive, unknown root)
        self.switches: Counter[tuple[str, str]] = Counter()  # (root, to feed) -> switches so far
        self.last_evaluated_ns = 0

    # --- input ----------------------------------------------------------------------------------

    def _root(self, root: str) -> _Root | None:
        r = self._roots.get(root)
        if r is None:
            try:
                tick = float(self._tick_size(root))
            except (KeyError, ValueError):
                return None
            if not (tick > 0 and math.isfinite(tick)):
                return None
            r = self._roots[root] = _Root(root, tick)
        return r

    def _slot(self, r: _Root, feed: str) -> _Slot:
        s = r.slots.get(feed)
        if s is None:
            s = r.slots[feed] = _Slot(feed)
            if feed not in self.stand_in:
                s.history = _History()
        return s

    def watch_nt8(self, roots: Iterable[str], now_ns: int) -> None:
        """The roots NT8 sessions stream now. A root newly streamed starts with NT8 as its reference (no
        switch); a root no session streams any more has no reference until one does (there is nothing to
        decide for it), and never counts as NT8 being down."""
        wanted = set(roots)
        for root in wanted:
            r = self._root(root)
            if r is None or r.watched:
                continue
            r.watched, r.watched_since = True, now_ns
            r.ref, r.ref_since = NT8_FEED, now_ns
            s = self._slot(r, NT8_FEED)
            s.healthy_since = s.up_since = now_ns
            s.unhealthy_since = s.down_since = None
        for r in self._roots.values():
            if r.watched and r.root not in wanted:
                r.watched, r.ref, r.nt8_down, r.data_clock = False, None, None, False
                r.slots.pop(NT8_FEED, None)

    def on_nt8(self, root: str, price: float, received_ns: int, event_ns: int = 0, *, lockstep: bool = False) -> None:
        """NT8's last accepted trade of ``root`` (what the decision path believes), ``received_ns`` when
        its last tick arrived; ``event_ns`` its data time, the market clock of a ``lockstep`` playback."""
        r = self._root(root)
        if r is None:
            self.bad_values[NT8_FEED] += 1
            return
        s = self._slot(r, NT8_FEED)
        if received_ns > s.received_ns:
            s.received_ns = received_ns
        if price == price and price > 0 and math.isfinite(price):
            s.price = price
        s.ts_ns = event_ns
        r.nt8_event_ns, r.data_clock = event_ns, lockstep and event_ns > 0

    def on_quote(self, q: FeedQuote) -> None:
        """One value from a feed beside NT8 (drained from the FeedBus). Values not finite or not positive,
        and roots the instrument master does not know, are dropped and counted in ``bad_values``."""
        price = q.price
        if not (price == price and 0 < price < math.inf):
            self.bad_values[q.feed] += 1
            return
        r = self._root(q.root)
        if r is None:
            self.bad_values[q.feed] += 1
            return
        s = self._slot(r, q.feed)
        if q.received_ns < s.received_ns:
            return  # an older value than the one held (a feed's threads may hand over out of order)
        s.price, s.bid, s.ask, s.symbol, s.ts_ns = price, q.bid, q.ask, q.symbol, q.ts_ns
        s.received_ns, s.freshness, s.delay_s = q.received_ns, q.freshness, q.delay_s

    def on_quotes(self, quotes: Iterable[FeedQuote]) -> int:
        """A drained batch: only the last good value per feed and root matters to the book (a bad one is counted
        and never hides a good one before it); returns how many."""
        last: dict[tuple[str, str], FeedQuote] = {}
        n = 0
        for q in quotes:
            n += 1
            price = q.price
            if not (price == price and 0 < price < math.inf):
                self.bad_values[q.feed] += 1
                continue
            last[(q.feed, q.root)] = q
        for q in last.values():
            self.on_quote(q)
        return n

    def set_feed_health(self, feed: str, health: Health, reason: str = "") -> None:
        """What a feed says of itself (its ``FeedStatus``): DOWN makes every value of it unusable."""
        self._feed_health[feed] = (health, reason)

    # --- evaluation -----------------------------------------------------------------------------

    def evaluate(self, now_ns: int) -> list[FeedSwitch]:
        """Judge every value at ``now_ns``, move references whose hysteresis has run out, and update
        ``nt8_down``; returns the switches made (the caller records and counts each)."""
        self.last_evaluated_ns = now_ns
        out: list[FeedSwitch] = []
        for r in self._roots.values():
            self._judge(r, now_ns)
            if r.watched:
                switch = self._choose(r, now_ns)
                if switch is not None:
                    self.switches[(r.root, switch.to_feed)] += 1
                    out.append(switch)
                self._nt8_state(r, now_ns)
            self._divergence_from_reference(r)
        return out

    def market_time(self, r: _Root, now_ns: int) -> int:
        """The root's market clock: the wall clock, or for a lockstep playback its data time moved on by
        the wall time since its last tick arrived (see the module docstring)."""
        if r.data_clock:
            s = r.slots.get(NT8_FEED)
            if s is not None and s.received_ns:
                return r.nt8_event_ns + (now_ns - s.received_ns)
        return now_ns

    def _stale_limit(self, feed: str) -> int:
        return self._stale_by_feed.get(feed, self.stale_after_ns)

    def _judge(self, r: _Root, now_ns: int) -> None:
        is_open = self._market_open(r.root, self.market_time(r, now_ns))
        for s in r.slots.values():
            own = self._feed_health.get(s.feed)
            if s.feed == NT8_FEED and not r.watched:
                s.health, s.reason = Health.DOWN, f"no NT8 session streams {r.root}"
            elif own is not None and own[0] is Health.DOWN:
                s.health, s.reason = Health.DOWN, own[1] or "the feed is down"
            else:
                since = s.received_ns or (r.watched_since if s.feed == NT8_FEED else now_ns)
                age = now_ns - since
                if is_open and age > self._stale_limit(s.feed):
                    what = "tick" if s.feed == NT8_FEED else "value"
                    s.health, s.reason = Health.STALE, f"no {what} for {age / _NS:.1f} s while the market is open"
                elif s.price != s.price:
                    s.health, s.reason = Health.DOWN, "no value yet"
                elif s.freshness is Freshness.REALTIME:
                    s.health, s.reason = Health.LIVE, ""
                else:
                    late = f" by {s.delay_s:g} s" if s.delay_s else ""
                    s.health, s.reason = Health.DELAYED, f"{s.freshness}{late}"
            if s.history is not None and s.health in _HEALTHY:
                s.history.add(s.received_ns, s.price)
        self._learn_ratios(r)
        self._diverging(r)
        for s in r.slots.values():
            if s.healthy():
                s.unhealthy_since = None
                if s.healthy_since is None:
                    s.healthy_since = now_ns
            else:
                s.healthy_since = None
                if s.unhealthy_since is None:
                    s.unhealthy_since = now_ns
            if s.health in _UNUSABLE:
                s.up_since = None
                if s.down_since is None:
                    s.down_since = now_ns
            else:
                s.down_since = None
                if s.up_since is None:
                    s.up_since = now_ns

    def _future_price_at(self, s: _Slot, t_ns: int) -> float | None:
        """A future feed's price when ``t_ns`` was current (its own value when that is the newer one)."""
        if s.value_ns <= t_ns:
            return s.price
        if s.history is None:
            return None
        return s.history.at(t_ns, max(self._stale_limit(s.feed), 60 * _NS))

    def _learn_ratios(self, r: _Root) -> None:
        """Each new ETF value teaches the ratio future/ETF, against the best healthy real-time future feed at
        the ETF value's time: its first values set it, later ones move it while they agree with it (a value
        that disagrees is a divergence, not something to learn)."""
        futures = sorted((s for s in r.slots.values() if s.feed not in self.stand_in and s.health is Health.LIVE),
                         key=lambda s: self._rank_of(s.feed))
        for e in r.slots.values():
            if e.feed not in self.stand_in or e.received_ns == e.ratio_learned_ns or e.health not in _HEALTHY:
                continue
            if e.freshness is Freshness.END_OF_DAY:
                continue  # a daily close says nothing about an intraday price
            for f in futures:
                fp = self._future_price_at(f, e.value_ns)
                if fp is None:
                    continue
                e.ratio_learned_ns = e.received_ns
                ratio = fp / e.price
                if e.ratio_samples and abs(e.ratio * e.price - fp) / r.tick_size > self.divergence_ticks:
                    if e.ratio_samples < self._ratio_min:  # not learnt yet: start again from this value
                        e.ratio, e.ratio_samples = ratio, 1
                    break
                e.ratio = ratio if not e.ratio_samples else e.ratio + self._ratio_alpha * (ratio - e.ratio)
                e.ratio_samples += 1
                break

    def _compare(self, r: _Root, a: _Slot, b: _Slot) -> float | None:
        """|a - b| in ticks of the root, each taken when the older of the two values was current; None when
        they cannot be compared (an end-of-day value, an ETF whose ratio is not learnt, no price then)."""
        if Freshness.END_OF_DAY in (a.freshness, b.freshness):
            return None
        if a.feed in self.stand_in and b.feed in self.stand_in:
            return None
        if b.feed in self.stand_in:
            a, b = b, a
        if a.feed in self.stand_in:  # a is the ETF, b a future
            if a.ratio_samples < self._ratio_min:
                return None
            fp = self._future_price_at(b, a.value_ns)
            return None if fp is None else abs(a.ratio * a.price - fp) / r.tick_size
        t = min(a.value_ns, b.value_ns)
        pa, pb = self._future_price_at(a, t), self._future_price_at(b, t)
        if pa is None or pb is None:
            return None
        return abs(pa - pb) / r.tick_size

    def _diverging(self, r: _Root) -> None:
        """Mark DIVERGING the feeds that disagree with the largest group of feeds agreeing with each other
        (ties: the group holding the preferred feed). Two feeds that disagree: the preferred one is
        believed; three where one disagrees with the two others: that one diverges, NT8 included."""
        usable = [s for s in r.slots.values() if s.health in _HEALTHY and s.price == s.price]
        for s in usable:
            s.divergence_ticks = None
        if len(usable) < 2:
            return
        limit = self.divergence_ticks
        verdict: dict[tuple[str, str], bool] = {}  # (a, b) -> agree; pairs not comparable are absent
        gaps: dict[tuple[str, str], float] = {}
        for a, b in combinations(usable, 2):
            d = self._compare(r, a, b)
            if d is not None:
                verdict[(a.feed, b.feed)] = verdict[(b.feed, a.feed)] = d <= limit
                gaps[(a.feed, b.feed)] = gaps[(b.feed, a.feed)] = d
        if not verdict:
            return
        best: tuple[tuple[int, int], list[_Slot]] | None = None
        for n in range(len(usable), 0, -1):
            for group in combinations(usable, n):
                pairs = [verdict.get((a.feed, b.feed)) for a, b in combinations(group, 2)]
                if False in pairs:
                    continue
                score = (sum(1 for p in pairs if p), -min(self._rank_of(s.feed) for s in group))
                if best is None or score > best[0]:
                    best = (score, list(group))
        assert best is not None  # every single feed is a group
        members = best[1]
        top = min(members, key=lambda s: self._rank_of(s.feed))
        for s in usable:
            if s in members:
                continue
            against = [(m, gaps[(s.feed, m.feed)]) for m in members if verdict.get((s.feed, m.feed)) is False]
            if against:
                m, gap = next(((m, g) for m, g in against if m is top), against[0])
                what = "its ratio-adjusted price" if s.feed in self.stand_in else "its price"
                s.health = Health.DIVERGING
                s.reason = f"{what} is {gap:.1f} ticks from {m.feed}'s (limit {limit:g})"

    def _rank_of(self, feed: str) -> int:
        try:
            return self.preference.index(feed)
        except ValueError:
            return len(self.preference)

    def _rank(self, s: _Slot) -> tuple[int, int]:
        """Lower is better: real time before delayed, then the preference order."""
        return (0 if s.health is Health.LIVE else 1, self._rank_of(s.feed))

    def _choose(self, r: _Root, now_ns: int) -> FeedSwitch | None:
        """Move the reference when the hysteresis allows (see the module docstring)."""
        candidates = [s for s in r.slots.values() if s.healthy()]
        if not candidates:
            return None
        desired = min(candidates, key=self._rank)
        cur = r.slots.get(r.ref) if r.ref else None
        hold = self.switch_after_ns
        if cur is not None and cur.healthy():
            if desired is cur or self._rank(desired) >= self._rank(cur):
                return None
            if desired.healthy_since is None or now_ns - desired.healthy_since < hold:
                return None  # come back only after it has been healthy that long
            reason = (f"{desired.feed} has been healthy for {(now_ns - desired.healthy_since) / _NS:.1f} s"
                      + (f" and {cur.feed} is {cur.health}" if cur.health is not Health.LIVE else ""))
        else:
            if cur is not None and (cur.unhealthy_since is None or now_ns - cur.unhealthy_since < hold):
                return None  # leave it only after it has been unhealthy that long
            if cur is None:
                reason = f"{r.ref or 'no feed'} has no value for {r.root}"
            else:
                reason = f"{cur.feed} {cur.health}" + (f": {cur.reason}" if cur.reason else "")
        delayed = desired.freshness is not Freshness.REALTIME
        if delayed:
            reason += f"; {desired.feed} is {desired.freshness}: no new entry until a real-time feed is back"
        switch = FeedSwitch(r.root, r.ref, desired.feed, reason, now_ns, delayed)
        r.ref, r.ref_since = desired.feed, now_ns
        return switch

    def _nt8_state(self, r: _Root, now_ns: int) -> None:
        s = r.slots.get(NT8_FEED)
        if s is None:
            return
        hold = self.switch_after_ns
        if r.nt8_down is None and s.down_since is not None and now_ns - s.down_since >= hold:
            r.nt8_down = f"NT8's feed of {r.root} is {s.health}: {s.reason}"
        elif r.nt8_down is not None and s.up_since is not None and now_ns - s.up_since >= hold:
            r.nt8_down = None

    def _divergence_from_reference(self, r: _Root) -> None:
        """Each feed's distance from the reference (the figure the metrics export)."""
        ref = r.slots.get(r.ref) if r.ref else None
        for s in r.slots.values():
            if ref is None or s.health in _UNUSABLE or ref.health in _UNUSABLE:
                s.divergence_ticks = None
            elif s is ref:
                s.divergence_ticks = 0.0
            else:
                s.divergence_ticks = self._compare(r, s, ref)

    # --- reading --------------------------------------------------------------------------------

    def reference(self, root: str) -> Reference | None:
        """What the decision path believes for ``root`` (None: no NT8 session streams it)."""
        r = self._roots.get(root)
        if r is None or r.ref is None:
            return None
        s = r.slots.get(r.ref)
        if s is None:
            return Reference(root, r.ref, math.nan, Freshness.REALTIME, False, r.ref_since)
        price = s.price * s.ratio if s.feed in self.stand_in else s.price
        return Reference(root, s.feed, price, s.freshness, s.healthy(), r.ref_since, s.delay_s)

    def nt8_unusable(self, root: str) -> bool:
        """Whether NT8 has no current value for ``root`` (stale, or not streamed)."""
        r = self._roots.get(root)
        s = r.slots.get(NT8_FEED) if r is not None else None
        return s is None or s.health in _UNUSABLE

    @property
    def nt8_down(self) -> dict[str, str]:
        """Roots whose NT8 feed has been stale or down for ``switch_after_s`` while streamed: root -> why."""
        return {r.root: r.nt8_down for r in self._roots.values() if r.nt8_down is not None}

    def roots(self) -> list[str]:
        return sorted(self._roots)

    def feed_health(self, feed: str) -> Health | None:
        """The worst health of ``feed`` over the roots it has values for (None: none)."""
        worst = None
        for r in self._roots.values():
            s = r.slots.get(feed)
            if s is not None and (feed != NT8_FEED or r.watched):
                if worst is None or _SEVERITY[s.health] > _SEVERITY[worst]:
                    worst = s.health
        return worst

    def rows(self, now_ns: int) -> list[tuple[str, str, float | None, float | None]]:
        """(feed, root, age of its last value in s, divergence from the reference in ticks) per value."""
        out = []
        for r in self._roots.values():
            for s in r.slots.values():
                if s.feed == NT8_FEED and not r.watched:
                    continue
                age = (now_ns - s.received_ns) / _NS if s.received_ns else None
                out.append((s.feed, r.root, age, s.divergence_ticks))
        return out

    def report(self, now_ns: int) -> dict[str, Any]:
        """Per root: the reference and each feed's value, health and distance from it (JSON-ready)."""
        roots: dict[str, Any] = {}
        for r in sorted(self._roots.values(), key=lambda r: r.root):
            ref = self.reference(r.root)
            feeds = {}
            for s in sorted(r.slots.values(), key=lambda s: self._rank_of(s.feed)):
                feeds[s.feed] = {
                    "health": str(s.health), "reason": s.reason, "symbol": s.symbol, "price": _num(s.price),
                    "freshness": str(s.freshness), "delay_s": s.delay_s,
                    "age_s": round((now_ns - s.received_ns) / _NS, 3) if s.received_ns else None,
                    "divergence_ticks": None if s.divergence_ticks is None else round(s.divergence_ticks, 2),
                    "ratio": _num(s.ratio) if s.feed in self.stand_in else None}
            roots[r.root] = {
                "reference": ref.feed if ref else None, "since_ns": ref.since_ns if ref else None,
                "price": _num(ref.price) if ref else None, "healthy": ref.healthy if ref else None,
                "entries": ("no NT8 session" if ref is None else "refused: " + (ref.entry_denial() or "")
                            if ref.delayed else "allowed"),
                "nt8_down": r.nt8_down, "feeds": feeds,
                "switches": {to: n for (root, to), n in sorted(self.switches.items()) if root == r.root}}
        return roots


def _num(x: float) -> float | None:
    return x if x == x and math.isfinite(x) else None
