"""A fake TWS / IB Gateway on loopback that speaks the TWS API as the real ib_async client uses it, and streams
recorded sessions (tests/fakes/tws_replay.py) as IB's market-data messages.

What it does, as TWS does: the ``API\\0`` handshake with the client's version range, answered with the
server version and the connection time; startApi answered with the managed accounts, the next valid id and
the data-farm notices; the start-up requests ib_async makes (positions, orders, executions, account
updates and summaries) answered with their end markers; reqMarketDataType; reqContractDetails for the
quarterly CME equity-index futures (ES NQ YM RTY MES MNQ MYM M2K); reqMktData (tick parameters, the market
data type in force, then tickPrice / tickSize, live or delayed tick types) including snapshots;
reqTickByTickData Last and BidAsk; their cancels; and IB's errors: 102 duplicate ticker id, 200 unknown
contract, 300 cancel of an unknown id, 326 client id in use, 354 / 10089 / 10167 for missing market-data
permissions, 10190 beyond the account's tick-by-tick lines, 100 above 50 messages a second, and whatever a
test asks it to refuse next (420, 100, 10089, ...).

What a test controls: the pace, pausing, dropping every connection cleanly (FIN) or abruptly (RST),
closing and reopening the listening port (the same port), IB's connectivity messages 1100 / 1101 / 1102
(and a 1102 after which the subscriptions stay silent, the failure reconnect logic must catch), injected
refusals and raw ticks. What it records: every request with its time and session, the subscriptions alive
per root and kind, the most tick-by-tick lines ever in use, the highest message rate a client reached,
every error sent and every print streamed.

It runs its own asyncio loop on a thread; its methods are called from the test's thread and return once
the loop has done what they ask.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.fakes import tws_protocol as P
from tests.fakes.tws_replay import Print, ReplaySource

log = logging.getLogger("tests.fake_tws")
T = TypeVar("T")

MAX_MESSAGES_PER_S = 50  # IB's limit on messages from one client


@dataclass
class Subscription:
    session: int
    req_id: int
    kind: str                   # "Last", "BidAsk" (tick-by-tick) or "MktData"
    contract: P.ListedFuture
    market_data_type: int = 1   # for MktData: the type in force (1 live, 3 delayed)
    dead: bool = False          # kept after a 1102 but never streaming again
    last_quote: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def root(self) -> str:
        return self.contract.root


@dataclass
class RequestRecord:
    t: float                    # time.monotonic() when it arrived
    session: int
    name: str
    req_id: int | None = None
    root: str | None = None
    kind: str | None = None
    fields: list[str] = field(default_factory=list)


@dataclass
class _Session:
    id: int
    writer: asyncio.StreamWriter
    client_id: int | None = None
    version: int = 0
    market_data_type: int = 1
    arrivals: collections.deque = field(default_factory=collections.deque)
    last_rate_error: float = 0.0

    def send(self, fields: list[Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(P.frame(fields))


class FakeTws:
    """See the module's docstring. ``sources``: root -> recorded prints; ``live_roots``: roots the account
    has live permission for (None: all; the others get 354 / 10089, or delayed data when asked for it);
    ``tbt_limit``: the account's tick-by-tick lines; ``ticks_per_s``: prints a second per root."""

    def __init__(self, sources: dict[str, ReplaySource], *, host: str = "127.0.0.1", port: int = 0,
                 server_version: int = P.SERVER_VERSION, account: str = "DU1234567", tbt_limit: int = 3,
                 ticks_per_s: float = 100.0, live_roots: set[str] | None = None, today: dt.date | None = None) -> None:
        self.sources = sources
        self.host, self.port = host, port
        self.server_version = server_version
        self.account = account
        self.tbt_limit = tbt_limit
        self.ticks_per_s = ticks_per_s
        self.live_roots = live_roots
        self.listed = P.listed_futures(today or dt.date.today())
        self.paused = False
        self.farm_lost = False
        # observations
        self.request_log: list[RequestRecord] = []
        self.errors_sent: list[tuple[int, int]] = []
        self.printed: dict[str, list[Print]] = collections.defaultdict(list)
        self.tbt_max_in_use = 0
        self.max_rate = 0
        self.sessions_opened = 0
        self.malformed = 0
        # state
        self._subs: dict[tuple[int, int], Subscription] = {}
        self._sessions: dict[int, _Session] = {}
        self._refuse: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
        self._next_session = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._pump_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ life cycle (test thread)

    def start(self) -> int:
        """Start the loop and listen; returns the port."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-tws", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.start_listening()
        self._call(lambda: setattr(self, "_pump_task", asyncio.ensure_future(self._pump())))
        return self.port

    def stop(self) -> None:
        if self._loop is None:
            return
        self.drop_connections(abrupt=False)
        self.stop_listening()

        def halt() -> None:
            if self._pump_task is not None:
                self._pump_task.cancel()
            assert self._loop is not None
            self._loop.call_soon(self._loop.stop)

        self._call(halt)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def start_listening(self) -> None:
        """Listen (again) on the same port."""
        async def listen() -> None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      reuse_address=sys.platform != "win32")
            self.port = self._server.sockets[0].getsockname()[1]
        self._run(listen())

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused; open ones are not touched."""
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
        self._run(close())

    def drop_connections(self, *, abrupt: bool = True) -> int:
        """Close every client connection: abruptly (RST, as a crashed or killed TWS) or cleanly (FIN, as a
        TWS that exits). TWS forgets a client's subscriptions with its connection."""
        def drop() -> int:
            n = 0
            for s in list(self._sessions.values()):
                n += 1
                if abrupt:
                    sock = s.writer.get_extra_info("socket")
                    if sock is not None:
                        # linger on, timeout 0: close sends RST instead of FIN (struct linger: two ints,
                        # two u_shorts on Windows)
                        fmt = "HH" if sys.platform == "win32" else "ii"
                        try:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack(fmt, 1, 0))
                        except OSError:
                            pass
                    s.writer.transport.abort()
                else:
                    s.writer.close()
                self._end_session(s)
            return n
        return self._call(drop)

    # ------------------------------------------------------------------ controls (test thread)

    def connectivity_lost(self) -> None:
        """IB's 1100: TWS lost its servers; nothing streams until it is restored."""
        def lost() -> None:
            self.farm_lost = True
            self._broadcast_error(1100)
        self._call(lost)

    def connectivity_restored(self, *, data_lost: bool, streams_resume: bool = True) -> None:
        """1101 (data lost: TWS dropped every market data subscription, the client must request them again)
        or 1102 (data maintained). ``streams_resume=False`` with 1102: the subscriptions stay on TWS's books
        but never stream again, the stream that stays dead after a reconnect."""
        def restored() -> None:
            self.farm_lost = False
            if data_lost:
                self._subs.clear()
                self._broadcast_error(1101)
            else:
                if not streams_resume:
                    for sub in self._subs.values():
                        sub.dead = True
                self._broadcast_error(1102)
        self._call(restored)

    def refuse_next(self, kind: str, code: int, count: int = 1) -> None:
        """The next ``count`` requests of ``kind`` ("tbt", "mkt" or "details") are answered with error
        ``code`` (IB's text) instead of being served."""
        assert kind in ("tbt", "mkt", "details"), kind
        self._call(lambda: self._refuse[kind].extend([code] * count))

    def pause(self) -> None:
        self._call(lambda: setattr(self, "paused", True))

    def resume(self) -> None:
        self._call(lambda: setattr(self, "paused", False))

    def set_pace(self, ticks_per_s: float) -> None:
        self._call(lambda: setattr(self, "ticks_per_s", ticks_per_s))

    def inject_last(self, root: str, price: float, size: int = 1) -> int:
        """Send one trade at ``price`` (NaN, negative: whatever a test needs) to every live subscription of
        ``root`` that carries trades; returns how many got it."""
        def inject() -> int:
            n = 0
            for sub in self._live_subs(root):
                s = self._sessions.get(sub.session)
                if s is None:
                    continue
                if sub.kind == "Last":
                    s.send(P.msg_tbt_last(sub.req_id, int(time.time()), price, size, sub.contract.spec.exchange))
                    n += 1
                elif sub.kind == "MktData":
                    s.send(P.msg_tick_price(sub.req_id, P.LAST if sub.market_data_type == 1 else P.DELAYED_LAST,
                                            price, size))
                    n += 1
            return n
        return self._call(inject)

    # ------------------------------------------------------------------ observations (test thread)

    def requests(self, name: str | None = None) -> list[RequestRecord]:
        return self._call(lambda: [r for r in self.request_log if name is None or r.name == name])

    def active(self) -> collections.Counter:
        """Subscriptions on TWS's books: (root, kind) -> how many."""
        return self._call(lambda: collections.Counter((s.root, s.kind) for s in self._subs.values()))

    def active_symbols(self) -> collections.Counter:
        """Subscriptions on TWS's books per contract (IB's local symbol, "ESZ6")."""
        return self._call(lambda: collections.Counter(s.contract.local_symbol for s in self._subs.values()))

    def tbt_in_use(self) -> int:
        return self._call(self._tbt_count)

    def sessions(self) -> int:
        return self._call(lambda: len(self._sessions))

    def prints(self, root: str) -> list[Print]:
        return self._call(lambda: list(self.printed[root]))

    def contract_for(self, root: str, contract_month: str) -> P.ListedFuture:
        return next(f for f in self.listed if f.root == root and f.contract_month == contract_month)

    def errors(self) -> list[tuple[int, int]]:
        return self._call(lambda: list(self.errors_sent))

    # ------------------------------------------------------------------ loop plumbing

    def _call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()
        return self._run(wrapper())

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None, "the fake TWS is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # ------------------------------------------------------------------ the wire (loop thread)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = _Session(self._next_session, writer)
        self._next_session += 1
        self._sessions[s.id] = s
        self.sessions_opened += 1
        try:
            if await reader.readexactly(4) != b"API\0":
                return
            m = re.match(r"v(\d+)\.\.(\d+)", (await _read_body(reader)).decode(errors="replace"))
            if m is None or int(m.group(1)) > self.server_version:
                return  # TWS closes on a version range it cannot serve
            s.version = min(int(m.group(2)), self.server_version)
            writer.write(P.frame([s.version, time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime())]))
            while True:
                fields = P.split_fields(await _read_body(reader))
                self._note_rate(s)
                try:
                    self._handle(s, fields)
                except (ValueError, IndexError, KeyError) as exc:
                    self.malformed += 1
                    log.warning("fake TWS: malformed request %r: %s", fields[:4], exc)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._end_session(s)
            if not writer.is_closing():
                writer.close()

    def _end_session(self, s: _Session) -> None:
        # TWS cancels a client's subscriptions when its connection ends
        self._sessions.pop(s.id, None)
        for key in [k for k in self._subs if k[0] == s.id]:
            del self._subs[key]

    def _note_rate(self, s: _Session) -> None:
        now = time.monotonic()
        s.arrivals.append(now)
        while s.arrivals and now - s.arrivals[0] > 1.0:
            s.arrivals.popleft()
        self.max_rate = max(self.max_rate, len(s.arrivals))
        if len(s.arrivals) > MAX_MESSAGES_PER_S and now - s.last_rate_error > 1.0:
            s.last_rate_error = now
            self._error(s, -1, 100, rec=len(s.arrivals))

    def _error(self, s: _Session, req_id: int, code: int, **kw: Any) -> None:
        kw.setdefault("rec", len(s.arrivals))
        self.errors_sent.append((req_id, code))
        s.send(P.msg_error(req_id, code, P.error_text(code, req_id=req_id, **kw)))

    def _broadcast_error(self, code: int) -> None:
        for s in self._sessions.values():
            self._error(s, -1, code)

    def _record(self, s: _Session, name: str, fields: list[str], req_id: int | None = None,
                root: str | None = None, kind: str | None = None) -> None:
        self.request_log.append(RequestRecord(time.monotonic(), s.id, name, req_id, root, kind, fields))

    def _lookup(self, c: dict[str, str]) -> list[P.ListedFuture]:
        return [f for f in self.listed if f.matches(c)]

    def _live_permitted(self, root: str) -> bool:
        return self.live_roots is None or root in self.live_roots

    def _tbt_count(self) -> int:
        return sum(1 for sub in self._subs.values() if sub.kind != "MktData")

    def _live_subs(self, root: str) -> list[Subscription]:
        return [sub for sub in self._subs.values() if sub.root == root and not sub.dead]

    def _handle(self, s: _Session, f: list[str]) -> None:
        msg = int(f[0])
        name = P.REQUEST_NAMES.get(msg, f"msg{msg}")
        if msg == P.START_API:
            self._record(s, name, f)
            client_id = int(f[2])
            if any(o.client_id == client_id for o in self._sessions.values() if o is not s):
                self._error(s, -1, 326)
                s.writer.close()
                return
            s.client_id = client_id
            s.send(P.msg_managed_accounts(self.account))
            s.send(P.msg_next_valid_id(1))
            for code in (2104, 2106, 2158):  # the data-farm notices TWS sends every new client
                s.send(P.msg_error(-1, code, P.error_text(code)))
        elif msg == P.REQ_MARKET_DATA_TYPE:
            self._record(s, name, f)
            s.market_data_type = int(f[2])
        elif msg == P.REQ_CONTRACT_DETAILS:
            req_id = int(f[2])
            c, _ = P.read_contract(f, 3)
            self._record(s, name, f, req_id, c.get("symbol") or None)
            if self._refuse["details"]:
                self._error(s, req_id, self._refuse["details"].popleft())
                return
            found = self._lookup(c)
            if not found:
                self._error(s, req_id, 200)
                return
            for fut in found:
                s.send(fut.details_fields(req_id))
            s.send(P.msg_contract_details_end(req_id))
        elif msg == P.REQ_MKT_DATA:
            self._req_mkt_data(s, f, name)
        elif msg == P.REQ_TICK_BY_TICK:
            self._req_tick_by_tick(s, f, name)
        elif msg in (P.CANCEL_MKT_DATA, P.CANCEL_TICK_BY_TICK):
            req_id = int(f[2] if msg == P.CANCEL_MKT_DATA else f[1])
            sub = self._subs.pop((s.id, req_id), None)
            self._record(s, name, f, req_id, sub.root if sub else None, sub.kind if sub else None)
            if sub is None:
                self._error(s, req_id, 300)
        else:
            self._record(s, name, f)
            self._answer_startup(s, msg, f)

    def _answer_startup(self, s: _Session, msg: int, f: list[str]) -> None:
        """The requests ib_async makes while it connects, answered with their end markers (no orders,
        positions or executions in this account)."""
        if msg == P.REQ_POSITIONS:
            s.send(P.msg_position_end())
        elif msg == P.REQ_OPEN_ORDERS:
            s.send(P.msg_open_order_end())
        elif msg == P.REQ_COMPLETED_ORDERS:
            s.send(P.msg_completed_orders_end())
        elif msg == P.REQ_ACCOUNT_UPDATES and f[2] == "1":
            s.send(P.msg_account_download_end(f[3] or self.account))
        elif msg == P.REQ_EXECUTIONS:
            s.send(P.msg_exec_details_end(int(f[2])))
        elif msg == P.REQ_ACCOUNT_UPDATES_MULTI:
            s.send(P.msg_account_update_multi_end(int(f[2])))
        elif msg == P.REQ_ACCOUNT_SUMMARY:
            s.send(P.msg_account_summary_end(int(f[2])))
        elif msg == P.REQ_CURRENT_TIME:
            s.send(P.msg_current_time(int(time.time())))
        elif msg == P.REQ_MANAGED_ACCTS:
            s.send(P.msg_managed_accounts(self.account))
        elif msg == P.REQ_IDS:
            s.send(P.msg_next_valid_id(1))

    def _contract(self, s: _Session, req_id: int, c: dict[str, str]) -> P.ListedFuture | None:
        found = self._lookup(c)
        if len(found) != 1:
            self._error(s, req_id, 200)
            return None
        return found[0]

    def _req_mkt_data(self, s: _Session, f: list[str], name: str) -> None:
        req_id = int(f[2])
        c, i = P.read_contract(f, 3)
        if f[i] == "1":  # a delta-neutral contract follows: conId, delta, price
            i += 3
        snapshot = f[i + 2] == "1"
        fut = self._contract(s, req_id, c)
        self._record(s, name, f, req_id, fut.root if fut else None, "MktData")
        if fut is None:
            return
        if self._refuse["mkt"]:
            self._error(s, req_id, self._refuse["mkt"].popleft())
            return
        if (s.id, req_id) in self._subs:
            self._error(s, req_id, 102)
            return
        if self._live_permitted(fut.root):
            in_force = 1  # live data wins over any other type asked for
        elif s.market_data_type in (3, 4):
            self._error(s, req_id, 10167)  # a warning: delayed data follows
            in_force = 3
        else:
            self._error(s, req_id, 354)
            return
        s.send(P.msg_tick_req_params(req_id, fut.spec.min_tick, "", 3))
        s.send(P.msg_market_data_type(req_id, in_force))
        sub = Subscription(s.id, req_id, "MktData", fut, in_force)
        if snapshot:
            src = self.sources.get(fut.root)
            if src is not None:
                self._send_print(s, sub, src.next())
            s.send(P.msg_tick_snapshot_end(req_id))
            return
        self._subs[(s.id, req_id)] = sub

    def _req_tick_by_tick(self, s: _Session, f: list[str], name: str) -> None:
        req_id = int(f[1])
        c, i = P.read_contract(f, 2)
        kind = f[i]
        fut = self._contract(s, req_id, c)
        self._record(s, name, f, req_id, fut.root if fut else None, kind)
        if fut is None:
            return
        if self._refuse["tbt"]:
            self._error(s, req_id, self._refuse["tbt"].popleft())
            return
        if kind not in ("Last", "BidAsk"):
            self._error(s, req_id, 10189)
            return
        if (s.id, req_id) in self._subs:
            self._error(s, req_id, 102)
            return
        if not self._live_permitted(fut.root):
            self._error(s, req_id, 10089)  # tick-by-tick data is live only
            return
        if self._tbt_count() >= self.tbt_limit:
            self._error(s, req_id, 10190)
            return
        self._subs[(s.id, req_id)] = Subscription(s.id, req_id, kind, fut)
        self.tbt_max_in_use = max(self.tbt_max_in_use, self._tbt_count())

    # ------------------------------------------------------------------ streaming (loop thread)

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(1.0 / max(self.ticks_per_s, 0.001))
            if self.paused or self.farm_lost:
                continue
            for root, src in self.sources.items():
                subs = self._live_subs(root)
                if not subs:
                    continue
                p = src.next()
                self.printed[root].append(p)
                for sub in subs:
                    s = self._sessions.get(sub.session)
                    if s is not None:
                        self._send_print(s, sub, p)

    def _send_print(self, s: _Session, sub: Subscription, p: Print) -> None:
        now = int(time.time())
        if sub.kind == "Last":
            s.send(P.msg_tbt_last(sub.req_id, now, p.price, p.size, sub.contract.spec.exchange))
        elif sub.kind == "BidAsk":
            if (p.bid, p.ask) != sub.last_quote:
                sub.last_quote = (p.bid, p.ask)
                s.send(P.msg_tbt_bid_ask(sub.req_id, now, p.bid, p.ask, 1, 1))
        else:
            live = sub.market_data_type == 1
            if (p.bid, p.ask) != sub.last_quote:
                sub.last_quote = (p.bid, p.ask)
                s.send(P.msg_tick_price(sub.req_id, P.BID if live else P.DELAYED_BID, p.bid, 1))
                s.send(P.msg_tick_price(sub.req_id, P.ASK if live else P.DELAYED_ASK, p.ask, 1))
            s.send(P.msg_tick_price(sub.req_id, P.LAST if live else P.DELAYED_LAST, p.price, p.size))
            s.send(P.msg_tick_size(sub.req_id, P.LAST_SIZE if live else P.DELAYED_LAST_SIZE, p.size))


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(n)
