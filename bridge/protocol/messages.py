"""Wire protocol v1 messages: one dataclass per message type, mirrored field for field in C#.

Every time is an ``int`` of nanoseconds since the Unix epoch, UTC (``ts_*_ns``). On the wire the
same instants travel as 100 ns units (C# ``DateTime.Ticks - 621355968000000000``); the codec
converts. See docs/protocol.md for layouts and byte offsets.

The dataclasses use ``slots=True`` but not ``frozen=True``: a frozen dataclass costs about 1.3 us
more per construction (measured: 1.70 us against 0.37 us for an 8-field message), and the TICK
decode sits on the hot path. Treat every message as immutable all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

PROTOCOL_VERSION = 1
MAGIC = b"NT8B"
ALL_INSTRUMENTS = 0xFFFF  # FLATTEN target meaning every instrument of the session


class MsgType(IntEnum):
    # NT8 -> sidecar
    HELLO = 1
    TICK = 2
    BAR = 3
    ORDER_UPDATE = 4
    EXECUTION = 5
    POSITION = 6
    ACCOUNT = 7
    HEARTBEAT = 8  # both directions
    BYE = 9
    TICKS = 10
    # sidecar -> NT8
    WELCOME = 16
    BRACKET = 17
    CANCEL = 18
    CHANGE = 19
    FLATTEN = 20
    ERROR = 21


FROM_NT8 = frozenset(
    {MsgType.HELLO, MsgType.TICK, MsgType.BAR, MsgType.ORDER_UPDATE, MsgType.EXECUTION,
     MsgType.POSITION, MsgType.ACCOUNT, MsgType.HEARTBEAT, MsgType.BYE, MsgType.TICKS}
)
FROM_SIDECAR = frozenset(
    {MsgType.WELCOME, MsgType.BRACKET, MsgType.CANCEL, MsgType.CHANGE, MsgType.FLATTEN,
     MsgType.ERROR, MsgType.HEARTBEAT}
)


class HelloFlags(IntEnum):
    """Bits of HELLO.flags."""

    LOCKSTEP = 1  # the sidecar acknowledges every message with a HEARTBEAT(ack_seq) once processed


class TickKind(IntEnum):
    LAST = 0
    BID = 1
    ASK = 2


class Side(IntEnum):
    BUY = 1
    SELL = 2

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class EntryType(IntEnum):
    MARKET = 1
    LIMIT = 2
    STOP = 3  # stop-market


class TimeInForce(IntEnum):
    DAY = 1
    GTC = 2


class OrderRole(IntEnum):
    """Which leg of a bracket an NT8 order is."""

    OTHER = 0
    ENTRY = 1
    STOP = 2
    TARGET = 3
    FLATTEN = 4


class OrderState(IntEnum):
    """NT8's OrderState, in the Help Guide's order."""

    INITIALIZED = 0
    SUBMITTED = 1
    ACCEPTED = 2
    TRIGGER_PENDING = 3
    WORKING = 4
    CHANGE_PENDING = 5
    CHANGE_SUBMITTED = 6
    CANCEL_PENDING = 7
    CANCEL_SUBMITTED = 8
    CANCELLED = 9
    REJECTED = 10
    PART_FILLED = 11
    FILLED = 12
    UNKNOWN = 13


class OrderType(IntEnum):
    """NT8's OrderType."""

    MARKET = 0
    LIMIT = 1
    STOP_MARKET = 2
    STOP_LIMIT = 3
    MIT = 4


class MarketPosition(IntEnum):
    FLAT = 0
    LONG = 1
    SHORT = 2


class ErrorCode(IntEnum):
    """Reason codes carried by ERROR, CATEGORY_CONDITION; docs/protocol.md lists them all."""

    PROTOCOL_TRUNCATED = 100
    PROTOCOL_BAD_MAGIC = 101
    PROTOCOL_UNSUPPORTED_VERSION = 102
    PROTOCOL_UNKNOWN_TYPE = 103
    PROTOCOL_OVERSIZE = 104
    PROTOCOL_MALFORMED_BODY = 105
    PROTOCOL_BAD_FRAME_COUNT = 106
    PROTOCOL_WRONG_DIRECTION = 107
    SESSION_NO_HELLO = 200
    SESSION_DUPLICATE_SEQ = 201
    SESSION_UNKNOWN_INSTRUMENT = 202
    SESSION_BAD_HELLO = 203
    SESSION_LIMIT_REACHED = 204
    SESSION_STANDBY = 205  # this sidecar is the standby of a pair: connect to the leader (the text names it)
    QUALITY_NONFINITE_PRICE = 300
    QUALITY_NONPOSITIVE_PRICE = 301
    QUALITY_OFF_TICK_GRID = 302
    QUALITY_PRICE_JUMP = 303
    QUALITY_CROSSED_QUOTE = 304
    QUALITY_LOCKED_QUOTE = 305
    QUALITY_BAD_SIZE = 306
    QUALITY_TIME_BACKWARDS = 307
    QUALITY_OUTSIDE_SESSION = 308
    QUALITY_BAD_BAR = 309
    # remote mode (bridge/protocol/auth.py, docs/security.md); the control channel uses them too
    AUTH_REQUIRED = 400  # no HMAC trailer (or no signature) where the sidecar requires one
    AUTH_BAD_MAC = 401  # the HMAC does not verify: another secret or key, or an altered message
    AUTH_REPLAY = 402  # seen before, or outside the freshness window
    AUTH_PEER_NOT_ALLOWED = 403  # the peer's address is not in security.allow
    AUTH_APPROVER_SAME_KEY = 404  # an override approved with the operator's own key
    INTERNAL_ERROR = 900


# ---------------------------------------------------------------------------------------------
# NT8 -> sidecar
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class InstrumentDecl:
    """An instrument as NT8 declares it in HELLO; its index in the list is its id on the wire."""

    name: str  # NT8's full name, e.g. "ES 06-18"
    tick_size: float
    point_value: float


@dataclass(slots=True)
class Hello:
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    instance_id: str
    account: str
    flags: int
    heartbeat_ms: int
    nt8_clock_ns: int  # NT8 host clock when HELLO was built, for the clock-offset sample
    nt8_version: str
    instruments: list[InstrumentDecl] = field(default_factory=list)

    @property
    def lockstep(self) -> bool:
        return bool(self.flags & HelloFlags.LOCKSTEP)


@dataclass(slots=True)
class Tick:
    TYPE: ClassVar[MsgType] = MsgType.TICK
    instrument_id: int
    kind: int  # TickKind
    price: float
    size: int
    bid: float  # best bid when the tick was raised, NaN when unknown
    ask: float  # best ask, NaN when unknown
    ts_exchange_ns: int
    ts_receive_ns: int  # NT8 host clock when OnMarketData ran


@dataclass(slots=True)
class TickBatch:
    """TICKS: several ticks in one message, in the order NT8 raised them.

    A live feed delivers market data in bursts; one message per burst saves the per-message cost
    (about 4 us to receive a message in Python), which is what bounds ingest. Each tick is judged on
    its own; a refused one is answered with an ERROR naming its index, the others go on.
    """

    TYPE: ClassVar[MsgType] = MsgType.TICKS
    ticks: list[Tick] = field(default_factory=list)


@dataclass(slots=True)
class Bar:
    TYPE: ClassVar[MsgType] = MsgType.BAR
    instrument_id: int
    period_s: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    ts_close_ns: int  # NT8 stamps bars at their end


@dataclass(slots=True)
class OrderUpdate:
    TYPE: ClassVar[MsgType] = MsgType.ORDER_UPDATE
    client_order_id: str  # the bracket's id, as sent in BRACKET
    role: int  # OrderRole
    nt8_order_id: str
    instrument_id: int
    state: int  # OrderState
    order_type: int  # OrderType
    side: int  # Side
    quantity: int
    filled: int
    limit_price: float
    stop_price: float
    avg_fill_price: float
    ts_event_ns: int
    error_code: int
    comment: str


@dataclass(slots=True)
class Execution:
    TYPE: ClassVar[MsgType] = MsgType.EXECUTION
    execution_id: str
    client_order_id: str
    role: int  # OrderRole
    nt8_order_id: str
    instrument_id: int
    side: int  # Side
    price: float
    quantity: int
    commission: float
    ts_event_ns: int


@dataclass(slots=True)
class Position:
    TYPE: ClassVar[MsgType] = MsgType.POSITION
    instrument_id: int
    market_position: int  # MarketPosition
    quantity: int  # unsigned size; the direction is market_position
    avg_price: float
    ts_event_ns: int


@dataclass(slots=True)
class Account:
    TYPE: ClassVar[MsgType] = MsgType.ACCOUNT
    account: str
    cash_value: float
    realized_pnl: float
    unrealized_pnl: float
    buying_power: float
    ts_event_ns: int


@dataclass(slots=True)
class Heartbeat:
    """Both directions. ``ack_seq`` is the last sequence number of the peer's that was processed."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    ack_seq: int


@dataclass(slots=True)
class Bye:
    """NT8 ends the session on purpose (strategy disabled or terminated)."""

    TYPE: ClassVar[MsgType] = MsgType.BYE
    reason: str


# ---------------------------------------------------------------------------------------------
# sidecar -> NT8
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Welcome:
    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    session_id: int
    sidecar_version: str
    heartbeat_ms: int
    heartbeat_timeout_ms: int
    sidecar_clock_ns: int
    max_message_bytes: int


@dataclass(slots=True)
class SubmitBracket:
    """BRACKET: an entry with a protective stop and a profit target that NT8 links by OCO."""

    TYPE: ClassVar[MsgType] = MsgType.BRACKET
    client_order_id: str
    instrument_id: int
    side: int  # Side
    quantity: int
    entry_type: int  # EntryType
    entry_price: float  # NaN for MARKET
    stop_price: float
    target_price: float
    time_in_force: int  # TimeInForce
    algorithm_id: str
    decision_id: str


@dataclass(slots=True)
class CancelOrder:
    """CANCEL: cancel every working leg of the bracket ``client_order_id``."""

    TYPE: ClassVar[MsgType] = MsgType.CANCEL
    client_order_id: str
    reason: str


@dataclass(slots=True)
class ChangeOrder:
    """CHANGE: move one leg of a bracket (NaN leaves a price unchanged, 0 leaves the quantity)."""

    TYPE: ClassVar[MsgType] = MsgType.CHANGE
    client_order_id: str
    role: int  # OrderRole
    quantity: int
    limit_price: float
    stop_price: float


@dataclass(slots=True)
class Flatten:
    """FLATTEN: cancel everything working and close the position (ALL_INSTRUMENTS for all)."""

    TYPE: ClassVar[MsgType] = MsgType.FLATTEN
    instrument_id: int
    reason: str


@dataclass(slots=True)
class Error:
    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: int  # ErrorCode
    offending_seq: int  # 0 when the offending message had no readable sequence number
    offending_type: int  # 0 when unknown
    text: str


Message = (
    Hello | Tick | TickBatch | Bar | OrderUpdate | Execution | Position | Account | Heartbeat | Bye | Welcome
    | SubmitBracket | CancelOrder | ChangeOrder | Flatten | Error
)

MESSAGE_CLASSES: dict[MsgType, type] = {
    cls.TYPE: cls
    for cls in (Hello, Tick, TickBatch, Bar, OrderUpdate, Execution, Position, Account, Heartbeat, Bye,
                Welcome, SubmitBracket, CancelOrder, ChangeOrder, Flatten, Error)
}
