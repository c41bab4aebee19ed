"""The TWS API wire format as a fake TWS needs it: frames, the messages it sends (with the field orders the
real ib_async client decodes for the server version it negotiates), the requests it reads, IB's error texts,
and the CME futures it knows.

Wire format: after the client's ``API\\0`` prefix, every message in either direction is a 4-byte big-endian
length followed by that many bytes of NUL-terminated text fields; the first field of a message from TWS is
its message id, and most carry a version after it. The handshake's answer is the one message without an id:
the server version and the connection time. Facts are from ib_async's own client.py and decoder.py (2.1.0)
and IB's published message codes; nothing here is copied from either.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from dataclasses import dataclass
from typing import Any

# The highest client version ib_async 2.1 offers (Client.MaxClientVersion); a TWS answers with the lower of
# its own and this, so a current TWS answers 178.
SERVER_VERSION = 178

# ---------------------------------------------------------------------------------------------- frames


def frame(fields: list[Any] | tuple[Any, ...]) -> bytes:
    """One message: the fields as NUL-terminated text, prefixed with their length."""
    body = b"".join(_text(f).encode() + b"\0" for f in fields)
    return struct.pack(">I", len(body)) + body


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def split_fields(body: bytes) -> list[str]:
    """The fields of one message body (the trailing NUL leaves an empty last element, dropped)."""
    fields = body.decode(errors="backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


# ---------------------------------------------------------------------------------------------- ids

# messages from the client (EClient's outgoing ids)
REQ_MKT_DATA, CANCEL_MKT_DATA = 1, 2
REQ_OPEN_ORDERS, REQ_ACCOUNT_UPDATES, REQ_EXECUTIONS, REQ_IDS, REQ_CONTRACT_DETAILS = 5, 6, 7, 8, 9
REQ_AUTO_OPEN_ORDERS, REQ_MANAGED_ACCTS = 15, 17
REQ_CURRENT_TIME = 49
REQ_MARKET_DATA_TYPE = 59
REQ_POSITIONS, REQ_ACCOUNT_SUMMARY, CANCEL_ACCOUNT_SUMMARY, CANCEL_POSITIONS = 61, 62, 63, 64
START_API = 71
REQ_ACCOUNT_UPDATES_MULTI = 76
REQ_TICK_BY_TICK, CANCEL_TICK_BY_TICK, REQ_COMPLETED_ORDERS = 97, 98, 99

REQUEST_NAMES = {
    REQ_MKT_DATA: "reqMktData", CANCEL_MKT_DATA: "cancelMktData", REQ_OPEN_ORDERS: "reqOpenOrders",
    REQ_ACCOUNT_UPDATES: "reqAccountUpdates", REQ_EXECUTIONS: "reqExecutions", REQ_IDS: "reqIds",
    REQ_CONTRACT_DETAILS: "reqContractDetails", REQ_AUTO_OPEN_ORDERS: "reqAutoOpenOrders",
    REQ_MANAGED_ACCTS: "reqManagedAccts", REQ_CURRENT_TIME: "reqCurrentTime",
    REQ_MARKET_DATA_TYPE: "reqMarketDataType", REQ_POSITIONS: "reqPositions",
    REQ_ACCOUNT_SUMMARY: "reqAccountSummary", CANCEL_ACCOUNT_SUMMARY: "cancelAccountSummary",
    CANCEL_POSITIONS: "cancelPositions", START_API: "startApi", REQ_ACCOUNT_UPDATES_MULTI: "reqAccountUpdatesMulti",
    REQ_TICK_BY_TICK: "reqTickByTickData", CANCEL_TICK_BY_TICK: "cancelTickByTickData",
    REQ_COMPLETED_ORDERS: "reqCompletedOrders",
}

# tick types of reqMktData (live; the delayed ones are the same plus 65 for prices, 69..71 for sizes)
BID, ASK, LAST = 1, 2, 4
BID_SIZE, ASK_SIZE, LAST_SIZE = 0, 3, 5
DELAYED_BID, DELAYED_ASK, DELAYED_LAST = 66, 67, 68
DELAYED_BID_SIZE, DELAYED_ASK_SIZE, DELAYED_LAST_SIZE = 69, 70, 71

# tick-by-tick types on the wire
TBT_TYPES = {"Last": 1, "AllLast": 2, "BidAsk": 3, "MidPoint": 4}

# ---------------------------------------------------------------------------------------------- IB's texts

ERROR_TEXTS = {
    100: "Max rate of messages per second has been exceeded:max=50 rec={rec}",
    102: "Duplicate ticker ID.",
    200: "No security definition has been found for the request",
    300: "Can't find EId with tickerId:{req_id}",
    326: "Unable to connect as the client id is already in use. Retry with a unique client id.",
    354: "Requested market data is not subscribed. Check API status by selecting the Account menu then under "
         "Management choose Market Data Subscription Manager and/or availability of delayed data.",
    420: "Invalid Real-time Query:Pacing violation",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    2104: "Market data farm connection is OK:usfarm",
    2106: "HMDS data farm connection is OK:ushmds",
    2158: "Sec-def data farm connection is OK:secdefnj",
    10089: "Requested market data requires additional subscription for API. See link in 'Market Data "
           "Connections' dialog for more details.",
    10167: "Requested market data is not subscribed. Displaying delayed market data.",
    10189: "Failed to request tick-by-tick data.",
    10190: "Max number of tick-by-tick requests has been reached.",
}


def error_text(code: int, **kw: Any) -> str:
    return ERROR_TEXTS.get(code, f"Error {code}").format(**kw)


# ---------------------------------------------------------------------------------------------- messages
# Field orders as ib_async's Decoder reads them at server version >= 166 (the error's advanced-reject
# field) and >= 164 (contract details without a version field, with the size rules).


def msg_error(req_id: int, code: int, text: str) -> list[Any]:
    return [4, 2, req_id, code, text, ""]


def msg_next_valid_id(order_id: int) -> list[Any]:
    return [9, 1, order_id]


def msg_managed_accounts(accounts: str) -> list[Any]:
    return [15, 1, accounts]


def msg_tick_price(req_id: int, tick_type: int, price: float, size: float, attrib_mask: int = 0) -> list[Any]:
    return [1, 6, req_id, tick_type, price, _size(size), attrib_mask]


def msg_tick_size(req_id: int, tick_type: int, size: float) -> list[Any]:
    return [2, 6, req_id, tick_type, _size(size)]


def msg_market_data_type(req_id: int, market_data_type: int) -> list[Any]:
    return [58, 1, req_id, market_data_type]


def msg_tick_req_params(req_id: int, min_tick: float, bbo_exchange: str = "", snapshot_permissions: int = 3
                        ) -> list[Any]:
    return [81, req_id, min_tick, bbo_exchange, snapshot_permissions]


def msg_tick_snapshot_end(req_id: int) -> list[Any]:
    return [57, 1, req_id]


def msg_tbt_last(req_id: int, t_s: int, price: float, size: float, exchange: str) -> list[Any]:
    # time, price, size, attribute mask (pastLimit 1, unreported 2), exchange, special conditions
    return [99, req_id, TBT_TYPES["Last"], t_s, price, _size(size), 0, exchange, ""]


def msg_tbt_bid_ask(req_id: int, t_s: int, bid: float, ask: float, bid_size: float, ask_size: float) -> list[Any]:
    # time, bid, ask, bid size, ask size, attribute mask (bidPastLow 1, askPastHigh 2)
    return [99, req_id, TBT_TYPES["BidAsk"], t_s, bid, ask, _size(bid_size), _size(ask_size), 0]


def msg_contract_details_end(req_id: int) -> list[Any]:
    return [52, 1, req_id]


def msg_position_end() -> list[Any]:
    return [62, 1]


def msg_open_order_end() -> list[Any]:
    return [53, 1]


def msg_completed_orders_end() -> list[Any]:
    return [102]


def msg_account_download_end(account: str) -> list[Any]:
    return [54, 1, account]


def msg_exec_details_end(req_id: int) -> list[Any]:
    return [55, 1, req_id]


def msg_account_update_multi_end(req_id: int) -> list[Any]:
    return [74, 1, req_id]


def msg_account_summary_end(req_id: int) -> list[Any]:
    return [64, 1, req_id]


def msg_current_time(t_s: int) -> list[Any]:
    return [49, 1, t_s]


def _size(size: float) -> str:
    # sizes travel as decimals; a whole number is written without a fraction, as TWS does
    return str(int(size)) if float(size).is_integer() else str(size)


# ---------------------------------------------------------------------------------------------- contracts


@dataclass(frozen=True)
class FutureSpec:
    """What IB says about a CME equity-index future (multiplier and minimum tick as IB lists them)."""

    root: str
    exchange: str
    multiplier: str
    min_tick: float
    long_name: str


FUTURES: dict[str, FutureSpec] = {s.root: s for s in (
    FutureSpec("ES", "CME", "50", 0.25, "E-mini S&P 500"),
    FutureSpec("NQ", "CME", "20", 0.25, "E-mini Nasdaq-100"),
    FutureSpec("YM", "CBOT", "5", 1.0, "E-mini Dow Jones Industrial Average ($5)"),
    FutureSpec("RTY", "CME", "50", 0.1, "E-mini Russell 2000 Index"),
    FutureSpec("MES", "CME", "5", 0.25, "Micro E-Mini S&P 500 Stock Price Index"),
    FutureSpec("MNQ", "CME", "2", 0.25, "Micro E-Mini Nasdaq-100 Index"),
    FutureSpec("MYM", "CBOT", "0.5", 1.0, "Micro E-Mini Dow Jones Industrial Average Index"),
    FutureSpec("M2K", "CME", "5", 0.1, "Micro E-Mini Russell 2000 Index"),
)}

MONTH_CODES = "FGHJKMNQUVXZ"


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


@dataclass(frozen=True)
class ListedFuture:
    """One listed contract month, as reqContractDetails describes it."""

    spec: FutureSpec
    year: int
    month: int

    @property
    def root(self) -> str:
        return self.spec.root

    @property
    def contract_month(self) -> str:
        return f"{self.year:04d}{self.month:02d}"

    @property
    def last_trade_date(self) -> str:
        return third_friday(self.year, self.month).strftime("%Y%m%d")

    @property
    def local_symbol(self) -> str:
        return f"{self.root}{MONTH_CODES[self.month - 1]}{self.year % 10}"

    @property
    def con_id(self) -> int:
        # stable across runs and unique per contract, in the range of IB's own futures conIds
        return 100_000_000 + zlib.crc32(f"{self.root}{self.contract_month}".encode()) % 800_000_000

    def matches(self, c: dict[str, str]) -> bool:
        """Whether a request's contract fields select this contract (IB: every given field must agree)."""
        if c.get("conId") not in ("", "0", None):
            return int(c["conId"]) == self.con_id
        if c.get("localSymbol") and c["localSymbol"] != self.local_symbol:
            return False
        if c.get("symbol") and c["symbol"] != self.root:
            return False
        if not c.get("symbol") and not c.get("localSymbol"):
            return False
        if c.get("secType") not in ("", "FUT"):
            return False
        if c.get("exchange") and c["exchange"] != self.spec.exchange:
            return False
        if c.get("currency") and c["currency"] != "USD":
            return False
        if c.get("multiplier") and float(c["multiplier"]) != float(self.spec.multiplier):
            return False
        ltd = c.get("lastTradeDateOrContractMonth", "")
        return not ltd or self.last_trade_date.startswith(ltd)

    def details_fields(self, req_id: int) -> list[Any]:
        s = self.spec
        return [
            10, req_id, s.root, "FUT",
            f"{self.last_trade_date} 08:30 US/Central",  # last trading day, time and zone in one field
            0, "", s.exchange, "USD", self.local_symbol, s.root, s.root,  # strike, right, ..., marketName, tradingClass
            self.con_id, s.min_tick, s.multiplier,
            "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,DAY,GAT,GTC,GTD,LIT,LMT,MIT,MKT,STP,STPLMT,TRAIL",  # orderTypes
            s.exchange + ",QBALGO", 1, 0,  # validExchanges, priceMagnifier, underConId
            s.long_name, "", self.contract_month,  # longName, primaryExchange, contractMonth
            "", "", "", "US/Central",  # industry, category, subcategory, timeZoneId
            "", "", "", "",  # tradingHours, liquidHours, evRule, evMultiplier
            0,  # secIdList count
            2147483647, s.root, "IND", "", self.last_trade_date, "",  # aggGroup .. stockType
            "1", "1", "1",  # minSize, sizeIncrement, suggestedSizeIncrement
        ]


def listed_futures(today: dt.date, quarters: int = 5) -> list[ListedFuture]:
    """The quarterly contracts IB lists on ``today``: the one expiring next and the following ones."""
    out: list[ListedFuture] = []
    year, month = today.year, ((today.month - 1) // 3) * 3 + 3
    if today > third_friday(year, month):
        month += 3
    while len(out) < quarters * len(FUTURES):
        if month > 12:
            year, month = year + 1, month - 12
        out.extend(ListedFuture(spec, year, month) for spec in FUTURES.values())
        month += 3
    return out


CONTRACT_FIELDS = ("conId", "symbol", "secType", "lastTradeDateOrContractMonth", "strike", "right", "multiplier",
                   "exchange", "primaryExchange", "currency", "localSymbol", "tradingClass")


def read_contract(fields: list[str], at: int) -> tuple[dict[str, str], int]:
    """The 12 contract fields a request carries from index ``at``; returns them and the index after."""
    return dict(zip(CONTRACT_FIELDS, fields[at:at + 12])), at + 12
