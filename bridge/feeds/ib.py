"""Interactive Brokers as a feed beside NT8: the front-month CME equity-index futures through TWS or IB Gateway,
with the real ``ib_async`` client on a thread and an asyncio loop of its own.

What it subscribes: for each root (``[feeds.ib] roots``) the front month by the instrument master's roll rule,
resolved to IB's conId with reqContractDetails; tick-by-tick Last and BidAsk for the first roots while the
configured tick-by-tick lines last (``ib_rules.plan_lines``), reqMktData for the rest. A tick-by-tick request
IB refuses (no permission, fewer lines than configured) falls back to reqMktData for that root; a refused
reqMktData leaves the root out and says why. Requests are paced (``ib_rules.Pacer``): evenly spread below IB's
50 messages a second, never an identical one within two seconds, everything held after a pacing error.

Freshness: tick-by-tick data is live only; reqMktData values carry the market data type IB says is in force
for them (1 live, 2 frozen, 3 delayed, 4 delayed-frozen, and delayed tick types), delayed being 15 minutes.

Staying alive, because a feed that reconnects but stays silent is worse than one that is down:
- the connection drops: DOWN, reconnect with backoff, then every subscription the feed had is requested again;
- 1100 (TWS lost IB's servers): DOWN until 1101 / 1102;
- 1101 (restored, data lost): every subscription is requested again;
- 1102 (restored, data maintained): the subscriptions are kept, but each root must deliver again within
  ``verify_after_s``; a root that stays silent (while its market is open) is unsubscribed and subscribed again,
  with a backoff that doubles up to a minute. The same watch runs at all times, so a stream that dies quietly
  for any other reason is renewed too.

Nothing escapes the feed's thread: every failure is a health with its reason, a counter and a log line.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.core.config import IbFeedConfig
from bridge.core.instruments import InstrumentMaster, InstrumentSpec, UnknownInstrumentError, price_on_grid
from bridge.feeds.base import Feed, FeedBus, FeedError, FeedQuote, Freshness, Health
from bridge.feeds.ib_rules import (
    CONNECTIVITY_LOST,
    CONNECTIVITY_RESTORED_DATA_LOST,
    CONNECTIVITY_RESTORED_DATA_MAINTAINED,
    MARKET_DATA_TYPES,
    PACING_CODES,
    REFUSAL_CODES,
    TBT_LIMIT_CODE,
    Pacer,
    freshness_of,
    front_month,
    plan_lines,
    session_day,
)

__all__ = ["IbFeed"]

log = logging.getLogger("nt8bridge.feeds.ib")
# ib_async logs through the logging module; without a handler of ours its errors would reach stderr through
# logging's last-resort handler (a probe's output must be one line). Records still propagate to the root.
logging.getLogger("ib_async").addHandler(logging.NullHandler())

_NAN = float("nan")
_IB_INSTALL = "ib_async is not installed: pip install ib_async (the Interactive Brokers feed needs it)"
_FARM_OK = frozenset({2104, 2106, 2107, 2108, 2119, 2158})     # "data farm connection is OK" notices
_FARM_BROKEN = frozenset({2103, 2105, 2157})                   # "data farm connection is broken"
_DELAYED_TICKS = frozenset(range(66, 77))                      # delayed bid/ask/last/sizes
_BID_TICKS, _ASK_TICKS, _LAST_TICKS = frozenset({1, 66}), frozenset({2, 67}), frozenset({4, 68})
_TICKER_KEY = {"Last": "Last", "BidAsk": "BidAsk", "MktData": "mktData"}  # ib_async's names for its tickers
_MAX_VERIFY_S = 60.0


@dataclass
class _Root:
    """One root's subscriptions and latest values."""

    root: str
    spec: InstrumentSpec
    plan: tuple[str, ...]                # what the configuration gives it: Last, BidAsk, MktData
    kinds: list[str] = field(default_factory=list)  # wanted on this connection (the plan, less IB's refusals)
    name: str = ""                       # NT8 name of the resolved contract, "ES 12-26"
    contract: Any = None                 # ib_async Contract with its conId
    symbol: str = ""                     # IB's local symbol, "ESZ6"
    rolling_to: str = ""                 # the contract a roll under way moves to
    req_ids: dict[str, int] = field(default_factory=dict)  # kind -> reqId on the current connection
    bid: float = _NAN                    # the published quote: never crossed
    ask: float = _NAN
    pending: tuple[float, float] | None = None  # reqMktData's bid and ask arrive one message each
    pending_fresh: tuple[Freshness, float] = (Freshness.REALTIME, 0.0)
    last: float = _NAN
    mkt_type: int = 1                    # market data type in force for its reqMktData
    freshness: Freshness | None = None   # of its latest value
    last_value: float = 0.0              # monotonic time of its latest value
    armed_at: float = 0.0                # monotonic time since which a value is expected
    verify_s: float = 5.0
    refused: dict[str, str] = field(default_factory=dict)  # kind -> why IB refused it


class IbFeed(Feed):
    """The Interactive Brokers feed (module docstring). ``market_open(root)`` says whether a root's market
    is open now (default: the instrument master's hours); silence only counts while it is.
    ``trading_day(spec)`` is the session day the roll rule counts from (default: today's session), checked
    every ``roll_check_s``."""

    def __init__(self, config: IbFeedConfig, *, master: InstrumentMaster | None = None, name: str = "ib",
                 stale_after_s: float = 5.0, verify_after_s: float = 5.0,
                 reconnect_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
                 requests_per_s: float = 40.0, min_repeat_s: float = 2.0,
                 market_open: Callable[[str], bool] | None = None,
                 trading_day: Callable[[InstrumentSpec], dt.date] = session_day, roll_check_s: float = 60.0,
                 stop_timeout_s: float = 5.0) -> None:
        super().__init__(name)
        self.config = config
        self.master = master or InstrumentMaster.default()
        self.stale_after_s = stale_after_s
        self.verify_after_s = verify_after_s
        self.reconnect_backoff_s = tuple(reconnect_backoff_s) or (1.0,)
        self.requests_per_s, self.min_repeat_s = requests_per_s, min_repeat_s
        self.stop_timeout_s = stop_timeout_s
        self._market_open = market_open or self._hours_open
        self._trading_day, self.roll_check_s = trading_day, roll_check_s
        self._market_data_type = MARKET_DATA_TYPES[config.market_data_type]
        # run state (owned by the feed's loop once started)
        self._bus: FeedBus | None = None
        self._roots: dict[str, _Root] = {}
        self._left_out: dict[str, str] = {}        # roots never subscribed, and why
        self._reqs: dict[int, tuple[str, str]] = {}  # reqId -> (root, kind) on the current connection
        self._ops: collections.deque[tuple[str, str, str]] = collections.deque()
        self._pacer = Pacer(requests_per_s, min_repeat_s)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._ops_ready: asyncio.Event | None = None
        self._connected = False
        self._disconnected = False
        self._farm_lost = False
        self._connected_at = 0.0
        self._lost_reason = ""
        self._connect_error = ""
        self._connections = 0
        self._bad_logged = 0
        self._set_health(Health.DOWN, "not started", connected=False)

    # ------------------------------------------------------------------ Feed

    def start(self, bus: FeedBus, roots: list[str]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"feed {self.name!r} is already started")
        self._bus = bus
        wanted = [r.strip().upper() for r in (roots or self.config.roots.split(",")) if r.strip()]
        usable: list[tuple[str, InstrumentSpec]] = []
        for root in dict.fromkeys(wanted):
            try:
                spec = self.master.resolve(root)
            except (UnknownInstrumentError, ValueError) as exc:
                self._left_out[root] = str(exc)
                continue
            if not spec.is_future:
                self._left_out[root] = f"{root} is not a future: the IB feed subscribes CME futures"
                continue
            usable.append((root, spec))
        for root, why in self._left_out.items():
            log.error("IB feed: %s left out: %s", root, why)
        plans = plan_lines([r for r, _ in usable], self.config.tick_by_tick_lines)
        for (root, spec), plan in zip(usable, plans):
            self._roots[root] = _Root(root, spec, plan.kinds, list(plan.kinds), verify_s=self.verify_after_s)
        self._set_health(Health.DOWN, f"connecting to {self._where()}", connected=False)
        self._thread = threading.Thread(target=self._thread_main, name=f"feed-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is None:
            return
        self._started.wait(self.stop_timeout_s)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._halt)
            except RuntimeError:  # the loop already closed: the thread is ending by itself
                pass
        self._thread.join(self.stop_timeout_s)
        if self._thread.is_alive():
            log.warning("IB feed: its thread did not end within %.0f s of stop; left to end as a daemon",
                        self.stop_timeout_s)
        self._set_health(Health.DOWN, "stopped", connected=False)

    def probe(self, root: str, timeout_s: float = 10.0) -> FeedQuote:
        """Connect (with client id ``client_id + 1``, so that a probe can run beside the running feed),
        resolve ``root``'s front month, take one reqMktData snapshot; FeedError in one sentence otherwise."""
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                out["quote"] = asyncio.run(asyncio.wait_for(self._probe(root.strip().upper(), timeout_s), timeout_s))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as a FeedError
                out["error"] = exc

        thread = threading.Thread(target=run, name=f"probe-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout_s + 5.0)
        if thread.is_alive():
            raise FeedError(f"IB at {self._where()} did not answer within {timeout_s:g} s")
        err = out.get("error")
        if isinstance(err, FeedError):
            raise FeedError(str(err)) from None
        if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
            raise FeedError(f"IB at {self._where()} did not answer within {timeout_s:g} s") from None
        if err is not None:
            raise FeedError(f"IB probe failed: {_one_line(err)}") from None
        return out["quote"]

    # ------------------------------------------------------------------ the thread

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._wake, self._ops_ready = asyncio.Event(), asyncio.Event()
            self._loop = loop
            self._started.set()
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - nothing leaves the feed's thread
            log.exception("IB feed: stopped on an internal error")
            self._count("errors")
            self._set_health(Health.DOWN, f"the IB feed stopped on an internal error: {_one_line(exc)}",
                             connected=False)
        finally:
            self._started.set()
            try:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0))
            finally:
                self._loop = None
                loop.close()

    def _halt(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._ops_ready is not None:
            self._ops_ready.set()

    async def _main(self) -> None:
        try:
            import ib_async  # noqa: F401 - imported here: nothing else in the sidecar needs it
        except ImportError:
            self._set_health(Health.DOWN, _IB_INSTALL, connected=False)
            log.error("IB feed: %s", _IB_INSTALL)
            return
        if not self._roots:
            why = "; ".join(f"{r}: {w}" for r, w in self._left_out.items()) or "no roots configured"
            self._set_health(Health.DOWN, f"nothing to subscribe ({why})", connected=False)
            return
        attempt = 0
        while not self._stopping:
            ib = self._new_ib()
            try:
                await self._connect(ib)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is a reason and a retry
                reason = self._connect_failure(exc)
                self._count("connect_failures")
                if reason != self.status().reason:
                    log.warning("IB feed: %s", reason)
                self._set_health(Health.DOWN, reason, connected=False)
                self._drop(ib)
                await self._pause(self._backoff(attempt))
                attempt += 1
                continue
            if self._connections:
                self._count("reconnects")
            self._connections += 1
            began = time.monotonic()
            try:
                await self._session(ib)
            except Exception:  # noqa: BLE001
                log.exception("IB feed: session ended on an error")
                self._count("errors")
            finally:
                await self._teardown(ib)
            if self._stopping:
                break
            reason = f"IB connection lost ({self._lost_reason or 'closed by the peer'}); reconnecting"
            log.warning("IB feed: %s", reason)
            self._set_health(Health.DOWN, reason, connected=False)
            attempt = 0 if time.monotonic() - began > 60.0 else attempt + 1
            await self._pause(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return self.reconnect_backoff_s[min(attempt, len(self.reconnect_backoff_s) - 1)]

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by stop."""
        assert self._wake is not None
        self._wake.clear()
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except (TimeoutError, asyncio.TimeoutError):
            pass

    # ------------------------------------------------------------------ connecting

    def _new_ib(self) -> Any:
        from ib_async import IB

        ib = IB()
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        ib.client.apiError += self._on_api_error
        ib.updateEvent += self._flush_quotes  # once per packet of IB's messages
        # IB's tick-by-tick messages carry the exchange's time, which ib_async's Ticker does not keep; the
        # wrapper's methods are chained (ib_async's own bookkeeping first), so nothing of it is bypassed.
        w = ib.wrapper
        for method, mine in (("tickByTickAllLast", self._on_tbt_last), ("tickByTickBidAsk", self._on_tbt_bid_ask),
                             ("priceSizeTick", self._on_price_size), ("marketDataType", self._on_market_data_type)):
            setattr(w, method, self._chain(getattr(w, method), mine))
        return ib

    def _chain(self, theirs: Callable[..., Any], mine: Callable[..., Any]) -> Callable[..., None]:
        def both(*args: Any) -> None:
            theirs(*args)
            try:
                mine(*args)
            except Exception:  # noqa: BLE001 - a bad value must not reach ib_async's decoder loop
                self._count("errors")
                log.exception("IB feed: handling %s%r failed", getattr(mine, "__name__", "?"), args[:3])
        return both

    async def _connect(self, ib: Any) -> None:
        from ib_async.ib import StartupFetchNONE

        self._connect_error, self._lost_reason = "", ""
        self._disconnected = False
        # A peer that refuses the client (326: client id in use) closes the socket without finishing the
        # handshake: the first of "connected" and "refused" wins, rather than waiting out the timeout.
        connecting = asyncio.ensure_future(ib.connectAsync(
            self.config.host, self.config.port, self.config.client_id, timeout=self.config.connect_timeout_s,
            readonly=True, fetchFields=StartupFetchNONE))
        while not connecting.done():
            await asyncio.wait({connecting}, timeout=0.05)
            if self._connect_error and not connecting.done():
                connecting.cancel()
                raise _Refused(self._connect_error)
            if self._stopping and not connecting.done():
                connecting.cancel()
                raise _Refused("stopped while connecting")
        connecting.result()
        self._connected, self._connected_at, self._farm_lost = True, time.monotonic(), False
        self._set_health(Health.STALE, "connected; no value yet", connected=True)
        log.info("IB feed: connected to %s (server version %s, client id %s)", self._where(),
                 ib.client.serverVersion(), self.config.client_id)

    def _connect_failure(self, exc: BaseException) -> str:
        where = self._where()
        if isinstance(exc, _Refused):
            return str(exc)
        if isinstance(exc, ConnectionRefusedError):
            return (f"connection refused by {where}: is TWS / IB Gateway running with its API enabled on "
                    f"that port?")
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            if self._connect_error:
                return self._connect_error
            return (f"IB at {where} did not complete the API handshake within {self.config.connect_timeout_s:g} s:"
                    f" check the port, and that this machine is a trusted IP in the API settings")
        if isinstance(exc, OSError):
            return f"cannot reach IB at {where}: {exc.strerror or _one_line(exc)}"
        return f"cannot connect to IB at {where}: {_one_line(exc)}"

    def _drop(self, ib: Any) -> None:
        try:
            ib.errorEvent -= self._on_error
            ib.disconnectedEvent -= self._on_disconnected
            ib.client.apiError -= self._on_api_error
            ib.updateEvent -= self._flush_quotes
        except (ValueError, AttributeError):
            pass
        try:
            ib.disconnect()
        except Exception:  # noqa: BLE001 - a socket already gone
            pass

    # ------------------------------------------------------------------ a session

    async def _session(self, ib: Any) -> None:
        assert self._wake is not None and self._ops_ready is not None
        self._ops.clear()
        self._send(ib, None, lambda: ib.reqMarketDataType(self._market_data_type))
        for root in self._roots.values():
            # a new connection starts from the plan: a refusal (no permission, lines held by another
            # client) belongs to the connection it came on and is asked again on the next
            root.req_ids.clear()
            root.kinds, root.pending, root.rolling_to = list(root.plan), None, ""
            root.refused.clear()
            self._queue("setup", root.root)
        requester = asyncio.ensure_future(self._requester(ib))
        next_roll_check = time.monotonic() + self.roll_check_s
        try:
            while not self._stopping and not self._disconnected and not requester.done():
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.25)
                except (TimeoutError, asyncio.TimeoutError):
                    pass
                now = time.monotonic()
                self._watch(now)
                if now >= next_roll_check:
                    next_roll_check = now + self.roll_check_s
                    for root in self._roots.values():
                        name = front_month(root.spec, self._day(root))[0]
                        if root.contract is not None and name not in (root.name, root.rolling_to):
                            root.rolling_to = name  # once: the roll takes a few paced requests
                            self._queue("roll", root.root)
                self._update_health(now)
        finally:
            requester.cancel()
            try:
                await requester
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _teardown(self, ib: Any) -> None:
        if self._stopping and ib.isConnected():
            # a polite goodbye: cancel what we hold, then close (bounded: the peer may be hung)
            for root in self._roots.values():
                for kind in list(root.req_ids):
                    try:
                        self._cancel(ib, root, kind)
                    except Exception:  # noqa: BLE001
                        break
            await asyncio.sleep(0)
        self._drop(ib)
        self._connected = False
        self._reqs.clear()
        for root in self._roots.values():
            root.req_ids.clear()
        self._gauges()

    def _queue(self, op: str, root: str, kind: str = "") -> None:
        item = (op, root, kind)
        if item not in self._ops:
            self._ops.append(item)
        if self._ops_ready is not None:
            self._ops_ready.set()

    async def _requester(self, ib: Any) -> None:
        """Carries out queued requests one at a time, at the pacer's pace."""
        assert self._ops_ready is not None
        while not self._stopping:
            if not self._ops:
                self._ops_ready.clear()
                await self._ops_ready.wait()
                continue
            op, name, kind = self._ops.popleft()
            root = self._roots.get(name)
            if root is None:
                continue
            try:
                if op == "setup":
                    await self._setup(ib, root)
                elif op == "sub":
                    await self._subscribe(ib, root, kind)
                elif op == "resub":
                    for k in list(root.req_ids):
                        await self._paced(None)
                        self._cancel(ib, root, k)
                    for k in root.kinds:
                        await self._subscribe(ib, root, k)
                elif op == "roll":
                    for k in list(root.req_ids):
                        await self._paced(None)
                        self._cancel(ib, root, k)
                    root.contract, root.name = None, ""
                    try:
                        await self._setup(ib, root)
                    finally:
                        root.rolling_to = ""
            except ConnectionError:
                return  # the connection is gone: the session ends and reconnects
            except Exception:  # noqa: BLE001
                self._count("errors")
                log.exception("IB feed: %s of %s failed", op, name)

    async def _paced(self, key: object | None) -> None:
        while (wait := self._pacer.wait_s(key)) > 0:
            await asyncio.sleep(wait)
        self._pacer.sent(key)

    def _send(self, ib: Any, key: object | None, request: Callable[[], Any]) -> Any:
        self._pacer.sent(key)
        self._count("requests")
        return request()

    async def _setup(self, ib: Any, root: _Root) -> None:
        if root.contract is None or root.name != front_month(root.spec, self._day(root))[0]:
            if not await self._resolve(ib, root):
                return
        for kind in list(root.kinds):
            await self._subscribe(ib, root, kind)

    def _day(self, root: _Root) -> dt.date:
        return self._trading_day(root.spec)

    async def _resolve(self, ib: Any, root: _Root) -> bool:
        from ib_async import Future

        spec = root.spec
        name, month = front_month(spec, self._day(root))
        await self._paced(("details", root.root))
        self._count("requests")
        query = Future(symbol=root.root, lastTradeDateOrContractMonth=month, exchange=spec.exchange,
                       currency=spec.currency)
        try:
            details = await asyncio.wait_for(ib.reqContractDetailsAsync(query), self.config.connect_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            self._refuse(root, "details", f"IB did not describe {name} within {self.config.connect_timeout_s:g} s")
            self._queue_later("setup", root.root)
            return False
        found = [d for d in details or [] if (d.contract.lastTradeDateOrContractMonth or "").startswith(month)]
        if len(found) > 1:
            found = [d for d in found if d.contract.tradingClass == root.root] or found[:1]
        if not found:
            self._refuse(root, "details", f"IB knows no contract {name} ({root.root} {month} on {spec.exchange})")
            self._queue_later("setup", root.root, 60.0)  # IB's contract database may have been unreachable
            return False
        d = found[0]
        c = d.contract
        try:
            multiplier = float(c.multiplier or "nan")
        except ValueError:
            multiplier = _NAN
        if not (abs(d.minTick - spec.tick_size) < 1e-9 and multiplier == spec.point_value):
            self._refuse(root, "details", f"IB's {c.localSymbol} has tick {d.minTick:g} and multiplier "
                         f"{c.multiplier}, the instrument master {spec.tick_size:g} and {spec.point_value:g}")
            return False
        root.contract, root.name, root.symbol = c, name, c.localSymbol or name
        root.refused.pop("details", None)
        log.info("IB feed: %s is %s (conId %s) until its roll", root.root, root.symbol, c.conId)
        return True

    def _queue_later(self, op: str, root: str, delay_s: float = 5.0) -> None:
        if self._loop is not None:
            self._loop.call_later(delay_s, self._queue, op, root)

    async def _subscribe(self, ib: Any, root: _Root, kind: str) -> None:
        if kind not in root.kinds or kind in root.req_ids or root.contract is None:
            return
        await self._paced(("sub", root.root, kind))
        if kind in root.req_ids or self._disconnected or self._stopping:
            return
        self._count("requests")
        c = root.contract
        ticker = ib.reqMktData(c, "", False, False) if kind == "MktData" else ib.reqTickByTickData(c, kind)
        req_id = ib.wrapper.ticker2ReqId[_TICKER_KEY[kind]].get(ticker)
        if req_id is None:  # not expected: ib_async registers the ticker before sending
            log.error("IB feed: no request id for %s %s", root.root, kind)
            return
        root.req_ids[kind] = req_id
        self._reqs[req_id] = (root.root, kind)
        root.armed_at = time.monotonic()  # the watch counts its silence from here
        self._gauges()

    def _cancel(self, ib: Any, root: _Root, kind: str) -> None:
        req_id = root.req_ids.pop(kind, None)
        if req_id is None:
            return
        self._reqs.pop(req_id, None)
        self._count("cancels")
        self._pacer.sent(None)
        if kind == "MktData":
            ib.cancelMktData(root.contract)
        else:
            ib.cancelTickByTickData(root.contract, kind)
        self._gauges()

    def _forget(self, root: _Root, kind: str) -> None:
        """Drop a subscription TWS no longer has (refused, or lost with 1101) without telling TWS."""
        req_id = root.req_ids.pop(kind, None)
        if req_id is not None:
            self._reqs.pop(req_id, None)
        self._gauges()

    def _refuse(self, root: _Root, kind: str, why: str) -> None:
        root.refused[kind] = why
        self._count("refused")
        log.warning("IB feed: %s %s: %s", root.root, kind, why)

    # ------------------------------------------------------------------ IB's messages (on the loop)

    def _on_api_error(self, msg: str) -> None:
        msg = _one_line(msg) if msg else ""
        if not msg:
            return
        self._lost_reason = msg
        if not self._connected and not self._connect_error and msg.startswith("Peer closed connection"):
            # closed during the handshake: ib_async would wait out its timeout for an answer that cannot come
            self._connect_error = f"IB at {self._where()} closed the connection during the API handshake ({msg})"

    def _on_disconnected(self) -> None:
        self._disconnected = True
        self._connected = False
        if self._wake is not None:
            self._wake.set()
        if self._ops_ready is not None:
            self._ops_ready.set()

    def _on_error(self, req_id: int, code: int, text: str, contract: Any = None) -> None:
        try:
            self._handle_error(req_id, code, text)
        except Exception:  # noqa: BLE001
            self._count("errors")
            log.exception("IB feed: handling error %s failed", code)

    def _handle_error(self, req_id: int, code: int, text: str) -> None:
        text = _one_line(text)
        now = time.monotonic()
        if code in _FARM_OK:
            log.debug("IB feed: %s %s", code, text)
            return
        if code == 326:
            self._connect_error = (f"client id {self.config.client_id} is already in use at {self._where()}: set "
                                   f"[feeds.ib] client_id to one no other program uses")
            return
        if code == CONNECTIVITY_LOST:
            self._farm_lost = True
            self._count("connectivity_lost")
            log.warning("IB feed: IB lost its connection to its servers (1100)")
            self._set_health(Health.DOWN, "IB lost its connection to its servers (1100): no data until it is "
                             "restored", connected=True)
            return
        if code in (CONNECTIVITY_RESTORED_DATA_LOST, CONNECTIVITY_RESTORED_DATA_MAINTAINED):
            self._farm_lost = False
            lost = code == CONNECTIVITY_RESTORED_DATA_LOST
            self._count("restored_data_lost" if lost else "restored_data_maintained")
            log.warning("IB feed: IB's connection to its servers is back (%s): %s", code,
                        "requesting every subscription again" if lost else "checking that data flows again")
            for root in self._roots.values():
                root.armed_at, root.verify_s = now, self.verify_after_s
                if lost:
                    for kind in list(root.req_ids):
                        self._forget(root, kind)
                    for kind in root.kinds:
                        self._queue("sub", root.root, kind)
            self._update_health(now)
            return
        if code in _FARM_BROKEN:
            log.warning("IB feed: %s %s", code, text)
            return
        target = self._reqs.get(req_id)
        if code in PACING_CODES:
            hold = self._pacer.violation()
            self._count("pacing")
            log.warning("IB feed: IB says the requests go too fast (%s %s): holding them %.0f s", code, text, hold)
            if target is not None:
                root = self._roots[target[0]]
                self._forget(root, target[1])
                self._queue("sub", root.root, target[1])
            return
        if code == 10167:  # delayed data follows instead of live
            if target is not None:
                log.info("IB feed: %s: %s", target[0], text)
            return
        if target is None:
            if code == 300:  # cancel of an id TWS has already forgotten
                log.debug("IB feed: %s %s", code, text)
                return
            log.info("IB feed: %s (reqId %s): %s", code, req_id, text)
            return
        root = self._roots[target[0]]
        kind = target[1]
        if code in REFUSAL_CODES or code == 200:
            self._forget(root, kind)
            if kind in root.kinds:
                root.kinds.remove(kind)
            self._refuse(root, kind, f"{code} {text}")
            if kind != "MktData" and "MktData" not in root.kinds:
                # tick-by-tick refused: reqMktData carries this root instead
                root.kinds.append("MktData")
                self._queue("sub", root.root, "MktData")
            if code == TBT_LIMIT_CODE:
                log.warning("IB feed: IB allows fewer tick-by-tick lines than [feeds.ib] tick_by_tick_lines = %s",
                            self.config.tick_by_tick_lines)
            self._update_health(now)
            return
        self._count("errors")
        log.warning("IB feed: %s %s: %s %s", root.root, kind, code, text)

    def _on_tbt_last(self, req_id: int, tick_type: int, t_s: int, price: float, size: float, *rest: Any) -> None:
        target = self._reqs.get(req_id)
        if target is None:
            return
        root = self._roots[target[0]]
        if self._accept(root, price, "last"):
            root.last = price
            self._emit(root, price, size, int(t_s) * 1_000_000_000, Freshness.REALTIME, 0.0)

    def _on_tbt_bid_ask(self, req_id: int, t_s: int, bid: float, ask: float, *rest: Any) -> None:
        target = self._reqs.get(req_id)
        if target is None:
            return
        root = self._roots[target[0]]
        self._quote(root, bid, ask, int(t_s) * 1_000_000_000, Freshness.REALTIME, 0.0)

    def _on_price_size(self, req_id: int, tick_type: int, price: float, size: float) -> None:
        target = self._reqs.get(req_id)
        if target is None or target[1] != "MktData":
            return
        root = self._roots[target[0]]
        freshness, delay = freshness_of(root.mkt_type)
        if tick_type in _DELAYED_TICKS and freshness is Freshness.REALTIME:
            freshness, delay = freshness_of(3)
        if tick_type in _LAST_TICKS:
            if "Last" in root.req_ids:
                return  # tick-by-tick carries this root's trades
            if self._accept(root, price, "last"):
                root.last = price
                self._emit(root, price, size, 0, freshness, delay)
        elif tick_type in _BID_TICKS or tick_type in _ASK_TICKS:
            if "BidAsk" in root.req_ids:
                return
            # held until the packet has been read: the other side's update usually follows in it, and a
            # quote made of a new bid and the old ask can be crossed
            bid, ask = root.pending or (root.bid, root.ask)
            root.pending = (price if tick_type in _BID_TICKS else bid, price if tick_type in _ASK_TICKS else ask)
            root.pending_fresh = (freshness, delay)
            root.last_value = time.monotonic()

    def _flush_quotes(self) -> None:
        try:
            for root in self._roots.values():
                if root.pending is None:
                    continue
                bid, ask = root.pending
                if bid == bid and ask == ask and bid > 0 and ask > 0 and bid >= ask:
                    continue  # still half updated: wait for the other side
                root.pending = None
                self._quote(root, bid, ask, 0, *root.pending_fresh)
        except Exception:  # noqa: BLE001
            self._count("errors")
            log.exception("IB feed: publishing quotes failed")

    def _on_market_data_type(self, req_id: int, market_data_type: int) -> None:
        target = self._reqs.get(req_id)
        if target is None:
            return
        root = self._roots[target[0]]
        if market_data_type != root.mkt_type:
            freshness, _ = freshness_of(market_data_type)
            log.info("IB feed: %s arrives as %s data (market data type %s)", root.root, freshness, market_data_type)
        root.mkt_type = market_data_type

    # ------------------------------------------------------------------ values

    def _accept(self, root: _Root, price: float, what: str) -> bool:
        if math.isfinite(price) and price > 0 and price_on_grid(price, root.spec.tick_size):
            return True
        self._count("bad_values")
        self._bad_logged += 1
        if self._bad_logged <= 10 or self._bad_logged % 1000 == 0:
            log.warning("IB feed: %s %s of %r dropped: not a positive price on the %g grid (%d so far)",
                        root.root, what, price, root.spec.tick_size, self._bad_logged)
        return False

    def _quote(self, root: _Root, bid: float, ask: float, ts_ns: int, freshness: Freshness, delay: float) -> None:
        # IB sends a non-positive price for an empty side of the book
        bid = bid if bid > 0 and math.isfinite(bid) else _NAN
        ask = ask if ask > 0 and math.isfinite(ask) else _NAN
        if _same(bid, root.bid) and _same(ask, root.ask):
            root.last_value = time.monotonic()  # a size-only update: the stream is alive
            return
        for side, value in (("bid", bid), ("ask", ask)):
            if value == value and not self._accept(root, value, side):
                return
        if bid >= ask:  # crossed or locked: not a quote to believe (NaN sides compare False)
            self._count("crossed_quotes")
            return
        root.bid, root.ask = bid, ask
        if root.last == root.last:
            self._emit(root, root.last, 0, ts_ns, freshness, delay)
        else:
            root.last_value = time.monotonic()

    def _emit(self, root: _Root, price: float, size: float, ts_ns: int, freshness: Freshness, delay: float) -> None:
        now_ns = time.time_ns()
        root.last_value = time.monotonic()
        root.verify_s = self.verify_after_s
        root.freshness = freshness
        assert self._bus is not None
        self._delivered(self._bus, FeedQuote(self.name, root.root, root.symbol, price, root.bid, root.ask,
                                             int(size) if size == size else 0, ts_ns or now_ns, now_ns,
                                             freshness, delay))

    # ------------------------------------------------------------------ watch and health

    def _hours_open(self, root: str) -> bool:
        return self.master.resolve(root).hours.is_open(time.time_ns())

    def _watch(self, now: float) -> None:
        """A subscribed root that stays silent while its market is open is subscribed again."""
        if not self._connected or self._farm_lost:
            return
        for root in self._roots.values():
            if not root.req_ids or not self._market_open(root.root):
                continue
            if now - max(root.last_value, root.armed_at) > root.verify_s:
                self._count("resubscribes")
                log.warning("IB feed: nothing from %s for %.1f s while its market is open: subscribing again",
                            root.root, root.verify_s)
                root.armed_at = now
                root.verify_s = min(root.verify_s * 2, _MAX_VERIFY_S)
                self._queue("resub", root.root)

    def _update_health(self, now: float) -> None:
        if not self._connected:
            return
        if self._farm_lost:
            self._set_health(Health.DOWN, "IB lost its connection to its servers (1100): no data until it is "
                             "restored", connected=True)
            return
        notes = [f"{r.root} {k}: {why}" for r in self._roots.values() for k, why in r.refused.items()]
        notes += [f"{r}: {why}" for r, why in self._left_out.items()]
        suffix = f" ({'; '.join(notes)})" if notes else ""
        live = [r for r in self._roots.values() if r.req_ids]
        if not live:
            if not self._ops and all(r.refused for r in self._roots.values()):
                self._set_health(Health.DOWN, "IB refused every root: " + "; ".join(notes), connected=True)
            else:
                self._set_health(Health.STALE, f"connected; subscribing{suffix}", connected=True)
            return
        open_roots = [r for r in live if self._market_open(r.root)]
        latest = max((r.last_value for r in self._roots.values()), default=0.0)
        fresh = latest >= self._connected_at and now - latest <= self.stale_after_s
        if open_roots and not fresh:
            age = now - max(latest, self._connected_at)
            if latest < self._connected_at and age <= self.stale_after_s:
                self._set_health(Health.STALE, f"connected; no value yet{suffix}", connected=True)
            else:
                self._set_health(Health.STALE, f"no value from IB for {age:.0f} s{suffix}", connected=True)
            return
        if not open_roots and not fresh:
            # silence is expected: the health says what data the feed will give when they open
            notes.insert(0, "markets closed: no values expected")
            suffix = f" ({'; '.join(notes)})"
        delayed = [r.root for r in self._roots.values()
                   if r.freshness is not None and r.freshness is not Freshness.REALTIME]
        if delayed or (self._market_data_type != 1 and not fresh and latest < self._connected_at):
            self._set_health(Health.DELAYED, f"IB sends {', '.join(delayed) or 'its data'} delayed or frozen "
                             f"(market data type {self.config.market_data_type}: no live subscription){suffix}",
                             connected=True)
            return
        self._set_health(Health.LIVE, "; ".join(notes), connected=True)

    def _gauges(self) -> None:
        with self._lock:
            c = self._status.counters
            c["subscriptions"] = len(self._reqs)
            c["tbt_lines"] = sum(1 for _, kind in self._reqs.values() if kind != "MktData")

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # ------------------------------------------------------------------ probe

    async def _probe(self, root: str, timeout_s: float) -> FeedQuote:
        try:
            from ib_async import IB, Future
            from ib_async.ib import StartupFetchNONE
        except ImportError:
            raise FeedError(_IB_INSTALL) from None
        try:
            spec = self.master.resolve(root)
        except (UnknownInstrumentError, ValueError) as exc:
            raise FeedError(_one_line(exc)) from None
        if not spec.is_future:
            raise FeedError(f"{root} is not a future: the IB feed subscribes CME futures")
        errors: list[tuple[int, int, str]] = []
        ib = IB()
        ib.errorEvent += lambda rid, code, text, contract=None: errors.append((rid, code, _one_line(text)))
        where = self._where()
        started = time.monotonic()
        try:
            try:
                await ib.connectAsync(self.config.host, self.config.port, self.config.client_id + 1,
                                      timeout=min(self.config.connect_timeout_s, timeout_s), readonly=True,
                                      fetchFields=StartupFetchNONE)
            except ConnectionRefusedError:
                raise FeedError(f"connection refused by {where}: is TWS / IB Gateway running with its API enabled "
                                f"on that port?") from None
            except (TimeoutError, asyncio.TimeoutError):
                if any(code == 326 for _, code, _ in errors):
                    raise FeedError(f"client id {self.config.client_id + 1} is already in use at {where}") from None
                raise FeedError(f"IB at {where} did not complete the API handshake within "
                                f"{min(self.config.connect_timeout_s, timeout_s):g} s: check the port, and that "
                                f"this machine is a trusted IP in the API settings") from None
            except OSError as exc:
                raise FeedError(f"cannot reach IB at {where}: {exc.strerror or _one_line(exc)}") from None
            ib.reqMarketDataType(self._market_data_type)
            name, month = front_month(spec, self._trading_day(spec))
            left = max(0.5, timeout_s - (time.monotonic() - started))
            details = await asyncio.wait_for(ib.reqContractDetailsAsync(
                Future(symbol=root, lastTradeDateOrContractMonth=month, exchange=spec.exchange,
                       currency=spec.currency)), left)
            found = [d for d in details or [] if (d.contract.lastTradeDateOrContractMonth or "").startswith(month)]
            if not found:
                why = next((f": {code} {text}" for _, code, text in errors if code == 200), "")
                raise FeedError(f"IB knows no contract {name} ({root} {month} on {spec.exchange}){why}")
            contract = found[0].contract
            left = max(0.5, timeout_s - (time.monotonic() - started))
            try:
                tickers = await asyncio.wait_for(ib.reqTickersAsync(contract), left)
            except (TimeoutError, asyncio.TimeoutError):
                raise FeedError(f"IB sent no price for {contract.localSymbol} within {timeout_s:g} s") from None
            refused = [(code, text) for _, code, text in errors if code in REFUSAL_CODES]
            t = tickers[0]
            price = next((p for p in (t.last, t.close) if p == p and p > 0), _NAN)
            if price != price:
                if refused:
                    code, text = refused[0]
                    raise FeedError(f"IB refused market data for {contract.localSymbol}: {code} {text}")
                raise FeedError(f"IB sent no price for {contract.localSymbol} within {timeout_s:g} s")
            freshness, delay = freshness_of(int(t.marketDataType or 1))
            now_ns = time.time_ns()
            return FeedQuote(self.name, root, contract.localSymbol, float(price),
                             float(t.bid) if t.bid == t.bid and t.bid > 0 else _NAN,
                             float(t.ask) if t.ask == t.ask and t.ask > 0 else _NAN,
                             int(t.lastSize) if t.lastSize == t.lastSize and t.lastSize else 0,
                             now_ns, now_ns, freshness, delay)
        finally:
            try:
                ib.disconnect()
            except Exception:  # noqa: BLE001
                pass


class _Refused(Exception):
    """The peer turned the connection down during the handshake; the message says why."""


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _one_line(value: object) -> str:
    """An error's text on one line (operators read them in a status table and a CLI's single line)."""
    text = str(value) or type(value).__name__
    return " ".join(text.split())
