"""The feeds beside NT8 inside the sidecar: started with it, drained by its loop, judged by the reference book.

``FeedHub`` owns the :class:`~bridge.feeds.base.FeedBus` the feeds hand their values to, the feeds named in
``feeds.enabled`` (built lazily from ``bridge.feeds.ib`` and ``bridge.feeds.alpha_vantage``, each on threads
of its own), and the :class:`~bridge.feeds.reference.ReferenceBook`. The server calls :meth:`FeedHub.poll`
from its timers, a few times a second, never per tick: it reads NT8's last accepted trade and arrival time
of every streamed instrument off the sessions (what the pipeline already keeps, so a tick costs nothing
more), drains the bus, gives the book each feed's own health, and evaluates. Then, on the same thread:

* a switch of a root's reference is logged, recorded (``feed_switch`` audit record) and counted;
* NT8's feed stale or down (``ReferenceBook.nt8_down``) puts a REDUCING hold with source ``nt8_feed_down``
  on the trading switch while ``feeds.on_nt8_down = "reducing"``, lifted once it is back (audit records
  ``trading_hold`` / ``trading_hold_released``, as the storage holds);
* while another feed stands in for a stale NT8, each session's quality gate takes the reference price as
  its jump anchor, so that NT8's first ticks after an outage are judged against where the market is now.

The decision path reads :meth:`FeedHub.reference` (the collar's reference price, and the refusal of new
entries while the reference is delayed); the status reply, the snapshot and the metrics read
:meth:`FeedHub.report` and :meth:`FeedHub.metric_rows`.

With ``feeds.enabled`` empty there is no hub at all and the sidecar behaves as before: NT8 is its only feed,
and the quality watchdog's STALE_FEED flag is all a silent NT8 causes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from bridge.core.config import Config
from bridge.core.instruments import InstrumentMaster, SessionClock
from bridge.feeds.base import NT8_FEED, Feed, FeedBus, FeedStatus, Health
from bridge.feeds.reference import Reference, ReferenceBook
from bridge.risk.switch import TradingState, TradingSwitch

log = logging.getLogger("nt8bridge.feeds")

KNOWN_FEEDS = ("ib", "alpha_vantage")
HOLD_SOURCE = "nt8_feed_down"
# While feeds run, a thread waiting for the GIL asks for it after 1 ms instead of CPython's 5: a feed thread busy
# in Python (ib_async decoding a burst of ticks, httpx parsing a response) then holds an NT8 tick back for at most
# about that long. Measured with bench/bench_feeds.py: tick-to-BRACKET p99 1.11x and 1.22x of a sidecar without
# feeds at 5 ms, 1.04x and 1.02x at 1 ms (same runs' noise between two identical sidecars: up to 15 %).
FEED_SWITCH_INTERVAL_S = 0.001
AuditFn = Callable[[str, str, int, dict[str, Any]], None]


def enabled_feeds(config: Config) -> list[str]:
    """``feeds.enabled`` as a list of names (lower case, in order, without repeats)."""
    out: list[str] = []
    for name in config.feeds.enabled.split(","):
        name = name.strip().lower()
        if name and name not in out:
            out.append(name)
    return out


def feed_roots(name: str, config: Config) -> list[str]:
    """The instrument roots a feed is asked for: ``[feeds.ib] roots``, or the roots with an ETF stand-in."""
    if name == "alpha_vantage":
        from bridge.feeds.alpha_vantage_shapes import parse_symbols
        return list(parse_symbols(config.feeds_alpha_vantage.symbols))
    return [r.strip().upper() for r in config.feeds_ib.roots.split(",") if r.strip()]


def build_feed(name: str, config: Config, master: InstrumentMaster) -> Feed:
    """The feed named ``name``, imported only now: ``ib_async`` and ``httpx`` are needed by whoever runs them."""
    if name == "ib":
        from bridge.feeds.ib import IbFeed
        return IbFeed(config.feeds_ib, master=master, stale_after_s=config.feeds.stale_after_s)
    if name == "alpha_vantage":
        from bridge.feeds.alpha_vantage import AlphaVantageFeed
        return AlphaVantageFeed(config.feeds_alpha_vantage)
    raise ValueError(f"unknown feed {name!r} in feeds.enabled: one of {', '.join(KNOWN_FEEDS)}")


def alpha_vantage_stale_s(config: Config) -> float:
    """How long an Alpha Vantage value may be old before it is stale: twice the time between two polls of one
    symbol, which the day's budget may stretch far beyond ``poll_s`` (25 requests a day for 4 symbols: one
    every 3.8 hours)."""
    av = config.feeds_alpha_vantage
    try:
        symbols = max(1, len(feed_roots("alpha_vantage", config)))
    except ValueError:
        symbols = 1
    interval = max(av.poll_s, symbols / av.requests_per_s, 86_400.0 * symbols / av.requests_per_day)
    return max(config.feeds.stale_after_s, 2.0 * interval)


class FeedHub:
    """See the module docstring. ``feeds``: already built feeds (tests, benches); None builds those
    ``feeds.enabled`` names when :meth:`start` is called."""

    def __init__(self, config: Config, master: InstrumentMaster, switch: TradingSwitch, audit: AuditFn,
                 feeds: list[Feed] | None = None) -> None:
        self.config = config
        self.master = master
        self.switch = switch
        self._audit = audit
        self.enabled = enabled_feeds(config) if feeds is None else [f.name for f in feeds]
        self.bus = FeedBus()
        self.feeds: dict[str, Feed] = {f.name: f for f in feeds or ()}
        self.failed: dict[str, str] = {}  # a feed that could not be built or started -> why
        self._clocks: dict[str, SessionClock] = {}
        cfg = config.feeds
        self.book = ReferenceBook(tick_size=self._tick_size, market_open=self._market_open,
                                  stale_after_s=cfg.stale_after_s, divergence_ticks=cfg.divergence_ticks,
                                  switch_after_s=cfg.switch_after_s,
                                  stale_after_by_feed={"alpha_vantage": alpha_vantage_stale_s(config)})
        self.quotes_drained = 0
        self.polls = 0
        self.holds_placed = 0
        self._bad_logged = 0
        self._bad_logged_at = -math.inf
        self._switch_interval: float | None = None  # the interpreter's, while the feeds run with a shorter one

    # --- life cycle (the thread that runs the sidecar) ---------------------------------------------

    def start(self) -> None:
        """Build and start every enabled feed; one that cannot start is reported DOWN with the reason and
        the sidecar goes on without it (NT8's own stream is never held up by a feed)."""
        if self.enabled and self._switch_interval is None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, FEED_SWITCH_INTERVAL_S))
        for name in self.enabled:
            try:
                feed = self.feeds.get(name) or build_feed(name, self.config, self.master)
                self.feeds[name] = feed
                feed.start(self.bus, feed_roots(name, self.config))
            except Exception as exc:  # noqa: BLE001 - a feed's failure to start is a status, not the sidecar's end
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.failed[name] = f"could not start: {why}"
                log.error("feed %s could not start (%s); the sidecar goes on without it", name, why)
                continue
            log.info("feed %s started for %s", name, ", ".join(feed_roots(name, self.config)))

    def stop(self) -> None:
        for name, feed in self.feeds.items():
            try:
                feed.stop()
            except Exception:  # noqa: BLE001 - the others must still stop
                log.exception("feed %s did not stop cleanly", name)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    # --- the loop's timers -------------------------------------------------------------------------

    def poll(self, sessions: list[Any], now_ns: int | None = None, now_mono: float | None = None) -> None:
        """Feed the book with NT8's last values and the bus's, evaluate, and act on what changed (see the
        module docstring). ``sessions``: the server's open sessions."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        now_mono = time.monotonic() if now_mono is None else now_mono
        self.polls += 1
        book = self.book
        self._nt8_values(sessions, now_ns, now_mono)
        quotes = self.bus.drain()
        if quotes:
            self.quotes_drained += book.on_quotes(quotes)
        for name in self.enabled:
            status = self._status(name)
            book.set_feed_health(name, status.health if status.health is Health.DOWN else Health.LIVE, status.reason)
        for switch in book.evaluate(now_ns):
            ref = book.reference(switch.root)
            log.warning("reference feed of %s: %s -> %s (%s)", switch.root, switch.from_feed, switch.to_feed,
                        switch.reason)
            self._audit("feed_switch", switch.root, now_ns,
                        {**switch.to_dict(), "price": _num(ref.price) if ref else None,
                         "feeds": book.report(now_ns).get(switch.root, {}).get("feeds", {})})
        self._nt8_hold(now_ns)
        self._anchor_gates(sessions)
        bad = sum(book.bad_values.values())
        if bad > self._bad_logged and now_mono - self._bad_logged_at >= 60.0:  # a line a minute at most
            self._bad_logged, self._bad_logged_at = bad, now_mono
            log.warning("feeds: %d values dropped so far (not a finite positive price, or an unknown root): %s",
                        bad, dict(book.bad_values))

    def _nt8_values(self, sessions: list[Any], now_ns: int, now_mono: float) -> None:
        """NT8's last accepted trade per root, from the session that heard from it last."""
        roots: set[str] = set()
        latest: dict[str, tuple[float, Any, int]] = {}
        for s in sessions:
            p = s.pipeline
            for iid, si in p.instruments.items():
                root = si.spec.root
                roots.add(root)
                heard = s.last_tick_wall.get(iid)
                if heard is not None and (root not in latest or heard > latest[root][0]):
                    latest[root] = (heard, s, iid)
        self.book.watch_nt8(roots, now_ns)
        for root, (heard, s, iid) in latest.items():
            state = s.pipeline.market.instruments[iid]
            self.book.on_nt8(root, state.last, now_ns - int((now_mono - heard) * 1e9), state.last_ts_ns,
                             lockstep=bool(s.hello.lockstep))

    def _nt8_hold(self, now_ns: int) -> None:
        if self.config.feeds.on_nt8_down != "reducing":
            return
        down = self.book.nt8_down
        held = HOLD_SOURCE in self.switch.holds
        if down and not held:
            reason = "; ".join(down[r] for r in sorted(down)) + " (feeds.on_nt8_down = reducing)"
            self.switch.hold(HOLD_SOURCE, TradingState.REDUCING, reason, now_ns)
            self.holds_placed += 1
            log.error("TRADING REDUCING (%s): %s; new orders that do not reduce a position are refused until NT8's "
                      "feed is back", HOLD_SOURCE, reason)
            self._audit("trading_hold", HOLD_SOURCE, now_ns, {"state": str(TradingState.REDUCING), "reason": reason,
                                                              "roots": sorted(down)})
        elif held and not down:
            hold = self.switch.release(HOLD_SOURCE)
            held_s = (now_ns - hold.since_ns) / 1e9 if hold is not None else 0.0
            log.warning("trading hold lifted (%s) after %.1fs: NT8's feed is back", HOLD_SOURCE, held_s)
            self._audit("trading_hold_released", HOLD_SOURCE, now_ns,
                        {"reason": "NT8's feed is back", "held_s": round(held_s, 3)})

    def _anchor_gates(self, sessions: list[Any]) -> None:
        """While a real-time feed stands in for a stale NT8, it is the quality gate's jump anchor."""
        book = self.book
        for s in sessions:
            p = s.pipeline
            for iid, si in p.instruments.items():
                ref = book.reference(si.spec.root)
                if (ref is not None and ref.feed != NT8_FEED and ref.healthy and not ref.delayed
                        and ref.price == ref.price and book.nt8_unusable(si.spec.root)):
                    p.gate.anchor(iid, ref.price)

    # --- reading -----------------------------------------------------------------------------------

    def reference(self, root: str) -> Reference | None:
        return self.book.reference(root)

    def _status(self, name: str) -> FeedStatus:
        feed = self.feeds.get(name)
        if name in self.failed or feed is None:
            return FeedStatus(name, Health.DOWN, self.failed.get(name, "not started"))
        try:
            return feed.status()
        except Exception as exc:  # noqa: BLE001 - a feed's bug must not stop the loop's timers
            return FeedStatus(name, Health.DOWN, f"status unavailable: {exc}")

    def statuses(self, now_ns: int | None = None) -> dict[str, FeedStatus]:
        """Each feed's own status, with the book's judgement where it is worse (a connected feed whose values
        disagree with the others is DIVERGING), and NT8's from the book."""
        out: dict[str, FeedStatus] = {}
        book = self.book
        nt8 = book.feed_health(NT8_FEED)
        out[NT8_FEED] = FeedStatus(NT8_FEED, nt8 or Health.DOWN, "" if nt8 else "no NT8 session streams an instrument",
                                   connected=nt8 is not None)
        for name in self.enabled:
            status = self._status(name)
            judged = book.feed_health(name)
            if judged is not None and status.health is not Health.DOWN and _WORSE[judged] > _WORSE[status.health]:
                status.health = judged
                status.reason = status.reason or "see the roots' reference report"
            out[name] = status
        return out

    def report(self, now_ns: int | None = None) -> dict[str, Any]:
        """``feeds`` in the control channel's ``status`` reply and in the event stream's snapshot."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        return {"enabled": list(self.enabled), "on_nt8_down": self.config.feeds.on_nt8_down,
                "feeds": {name: s.to_dict() for name, s in self.statuses(now_ns).items()},
                "roots": self.book.report(now_ns), "nt8_down": self.book.nt8_down,
                "switches": sum(self.book.switches.values()), "quotes_drained": self.quotes_drained,
                "dropped_by_bus": self.bus.dropped, "bad_values": dict(self.book.bad_values)}

    def metric_rows(self, now_ns: int | None = None) -> dict[str, Any]:
        """What the Prometheus collector exports: health per feed, age and divergence per feed and root,
        switches per root and new reference."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        return {"health": {name: s.health for name, s in self.statuses(now_ns).items()},
                "values": self.book.rows(now_ns), "switches": dict(self.book.switches)}

    # --- the instrument master ---------------------------------------------------------------------

    def _tick_size(self, root: str) -> float:
        return self.master.resolve(root).tick_size

    def _market_open(self, root: str, ts_ns: int) -> bool:
        if not self.config.quality.check_session_hours:
            return True
        clock = self._clocks.get(root)
        if clock is None:
            clock = self._clocks[root] = SessionClock(self.master.resolve(root).hours)
        return clock.is_open(ts_ns)


_WORSE = {Health.LIVE: 0, Health.DELAYED: 1, Health.DIVERGING: 2, Health.STALE: 3, Health.DOWN: 4}


def _num(x: float) -> float | None:
    return x if x == x and math.isfinite(x) else None
