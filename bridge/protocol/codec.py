"""Binary codec for wire protocol v1: little-endian, fixed layouts, length-prefixed UTF-8 strings.

A message is two ZeroMQ frames: a 32-byte header and a body. Each body layout is declared once in
``LAYOUTS`` (the single source of truth next to docs/protocol.md) and compiled into runs of
``struct.Struct`` so that a fixed-layout body such as TICK decodes in one ``unpack_from`` call.

Every failure raises ``ProtocolError`` with an ``ErrorCode``; nothing here logs or counts, the
server does (one place for that policy).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from operator import attrgetter
from enum import IntEnum
from typing import Any

from bridge.protocol.messages import (
    MAGIC,
    MESSAGE_CLASSES,
    PROTOCOL_VERSION,
    EntryType,
    ErrorCode,
    InstrumentDecl,
    MarketPosition,
    Message,
    MsgType,
    OrderRole,
    OrderState,
    OrderType,
    Side,
    Tick,
    TickKind,
    TimeInForce,
)

HEADER = struct.Struct("<4sBBHQqq")  # magic, version, type, flags, seq, ts_send, ts_echo
HEADER_SIZE = HEADER.size  # 32
_U16 = struct.Struct("<H")
_DECL_TAIL = struct.Struct("<dd")
_NS_PER_WIRE_TICK = 100  # wire times are 100 ns units since the Unix epoch (C# DateTime ticks)
# Times must fit int64 nanoseconds once converted (years 1677..2262), and sequence numbers a signed
# 64-bit column: larger values are refused as malformed rather than overflowing later.
_MAX_WIRE_TIME = (2**63 - 1) // _NS_PER_WIRE_TICK
MAX_SEQ = 2**63 - 1
MAX_STRING_BYTES = 0xFFFF


class ProtocolError(Exception):
    """A frame that cannot be accepted; ``code`` is what ERROR will carry back."""

    def __init__(self, code: ErrorCode, text: str, seq: int = 0, msg_type: int = 0) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text
        self.seq = seq
        self.msg_type = msg_type


@dataclass(slots=True)
class Header:
    msg_type: int
    seq: int
    ts_send_ns: int
    ts_echo_ns: int  # for a reply: ts_send of the message that caused it; else 0
    flags: int = 0
    version: int = PROTOCOL_VERSION


# Field kinds: struct codes for fixed fields, "ts" for a time (i64 on the wire, 100 ns units),
# "str" for u16-length-prefixed UTF-8, "decls" for HELLO's instrument list. An enum after the kind
# restricts the values a decoder accepts.
_FIXED_CODES = {"u8": "B", "i8": "b", "u16": "H", "i32": "i", "u32": "I", "i64": "q", "u64": "Q",
                "f64": "d", "ts": "q"}

LAYOUTS: dict[MsgType, tuple[tuple[str, str, type[IntEnum] | None], ...]] = {
    MsgType.HELLO: (
        ("instance_id", "str", None), ("account", "str", None), ("flags", "u32", None),
        ("heartbeat_ms", "u32", None), ("nt8_clock_ns", "ts", None), ("nt8_version", "str", None),
        ("instruments", "decls", None),
    ),
    MsgType.TICK: (
        ("instrument_id", "u16", None), ("kind", "u8", TickKind), ("price", "f64", None),
        ("size", "i64", None), ("bid", "f64", None), ("ask", "f64", None),
        ("ts_exchange_ns", "ts", None), ("ts_receive_ns", "ts", None),
    ),
    MsgType.TICKS: (("ticks", "ticks", None),),
    MsgType.BAR: (
        ("instrument_id", "u16", None), ("period_s", "u32", None), ("open", "f64", None),
        ("high", "f64", None), ("low", "f64", None), ("close", "f64", None),
        ("volume", "i64", None), ("ts_close_ns", "ts", None),
    ),
    MsgType.ORDER_UPDATE: (
        ("client_order_id", "str", None), ("role", "u8", OrderRole), ("nt8_order_id", "str", None),
        ("instrument_id", "u16", None), ("state", "u8", OrderState),
        ("order_type", "u8", OrderType), ("side", "u8", Side), ("quantity", "i32", None),
        ("filled", "i32", None), ("limit_price", "f64", None), ("stop_price", "f64", None),
        ("avg_fill_price", "f64", None), ("ts_event_ns", "ts", None), ("error_code", "u16", None),
        ("comment", "str", None),
    ),
    MsgType.EXECUTION: (
        ("execution_id", "str", None), ("client_order_id", "str", None),
        ("role", "u8", OrderRole), ("nt8_order_id", "str", None), ("instrument_id", "u16", None),
        ("side", "u8", Side), ("price", "f64", None), ("quantity", "i32", None),
        ("commission", "f64", None), ("ts_event_ns", "ts", None),
    ),
    MsgType.POSITION: (
        ("instrument_id", "u16", None), ("market_position", "u8", MarketPosition),
        ("quantity", "i32", None), ("avg_price", "f64", None), ("ts_event_ns", "ts", None),
    ),
    MsgType.ACCOUNT: (
        ("account", "str", None), ("cash_value", "f64", None), ("realized_pnl", "f64", None),
        ("unrealized_pnl", "f64", None), ("buying_power", "f64", None),
        ("ts_event_ns", "ts", None),
    ),
    MsgType.HEARTBEAT: (("ack_seq", "u64", None),),
    MsgType.BYE: (("reason", "str", None),),
    MsgType.WELCOME: (
        ("session_id", "u64", None), ("sidecar_version", "str", None),
        ("heartbeat_ms", "u32", None), ("heartbeat_timeout_ms", "u32", None),
        ("sidecar_clock_ns", "ts", None), ("max_message_bytes", "u32", None),
    ),
    MsgType.BRACKET: (
        ("client_order_id", "str", None), ("instrument_id", "u16", None), ("side", "u8", Side),
        ("quantity", "i32", None), ("entry_type", "u8", EntryType), ("entry_price", "f64", None),
        ("stop_price", "f64", None), ("target_price", "f64", None),
        ("time_in_force", "u8", TimeInForce), ("algorithm_id", "str", None),
        ("decision_id", "str", None),
    ),
    MsgType.CANCEL: (("client_order_id", "str", None), ("reason", "str", None)),
    MsgType.CHANGE: (
        ("client_order_id", "str", None), ("role", "u8", OrderRole), ("quantity", "i32", None),
        ("limit_price", "f64", None), ("stop_price", "f64", None),
    ),
    MsgType.FLATTEN: (("instrument_id", "u16", None), ("reason", "str", None)),
    MsgType.ERROR: (
        ("code", "u16", None), ("offending_seq", "u64", None), ("offending_type", "u8", None),
        ("text", "str", None),
    ),
}


@dataclass(slots=True)
class _Run:
    """A run of consecutive fixed-size fields packed by one Struct."""

    struct: struct.Struct
    names: tuple[str, ...]
    ts_positions: tuple[int, ...]  # positions within the run that are times
    enums: tuple[tuple[int, type[IntEnum]], ...]  # (position, enum) pairs to validate


_Step = _Run | tuple[str, str]  # a run, or ("str" | "decls", field name)


def _compile(layout: tuple[tuple[str, str, type[IntEnum] | None], ...]) -> list[_Step]:
    steps: list[_Step] = []
    run: list[tuple[str, str, type[IntEnum] | None]] = []

    def close_run() -> None:
        if run:
            steps.append(_Run(
                struct=struct.Struct("<" + "".join(_FIXED_CODES[k] for _, k, _ in run)),
                names=tuple(n for n, _, _ in run),
                ts_positions=tuple(i for i, (_, k, _) in enumerate(run) if k == "ts"),
                enums=tuple((i, e) for i, (_, _, e) in enumerate(run) if e is not None),
            ))
            run.clear()

    for name, kind, enum in layout:
        if kind in _FIXED_CODES:
            run.append((name, kind, enum))
        else:
            close_run()
            steps.append((kind, name))
    close_run()
    return steps


_PLANS: dict[int, list[_Step]] = {int(t): _compile(layout) for t, layout in LAYOUTS.items()}


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------


def _encode_str(value: str, name: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_STRING_BYTES:
        raise ValueError(f"{name}: {len(data)} bytes of UTF-8, at most {MAX_STRING_BYTES}")
    return _U16.pack(len(data)) + data


def _encode_steps(plan: list[_Step], msg: Message) -> bytes:
    parts: list[bytes] = []
    for step in plan:
        if isinstance(step, _Run):
            values = [getattr(msg, n) for n in step.names]
            for i in step.ts_positions:
                values[i] = values[i] // _NS_PER_WIRE_TICK
            parts.append(step.struct.pack(*values))
        elif step[0] == "str":
            parts.append(_encode_str(getattr(msg, step[1]), step[1]))
        elif step[0] == "ticks":
            ticks = getattr(msg, step[1])
            parts.append(_U16.pack(len(ticks)))
            encode_tick = _ENCODERS[int(MsgType.TICK)]
            parts.extend(encode_tick(t) for t in ticks)
        else:  # decls
            decls: list[InstrumentDecl] = getattr(msg, step[1])
            parts.append(_U16.pack(len(decls)))
            for d in decls:
                parts.append(_encode_str(d.name, "instrument name"))
                parts.append(_DECL_TAIL.pack(d.tick_size, d.point_value))
    return b"".join(parts)


def _fixed_encoder(run: _Run) -> Any:
    """An encoder for a one-run body: an attrgetter and one pack call."""
    get = attrgetter(*run.names) if len(run.names) > 1 else (lambda m, g=attrgetter(run.names[0]): (g(m),))
    pack = run.struct.pack
    ts_positions = run.ts_positions
    if not ts_positions:
        return lambda msg: pack(*get(msg))

    def encode_fixed(msg: Message) -> bytes:
        values = list(get(msg))
        for i in ts_positions:
            values[i] //= _NS_PER_WIRE_TICK
        return pack(*values)

    return encode_fixed


_ENCODERS: dict[int, Any] = {
    t: _fixed_encoder(plan[0]) if len(plan) == 1 and isinstance(plan[0], _Run)
    else (lambda msg, plan=plan: _encode_steps(plan, msg))
    for t, plan in _PLANS.items()
}


def encode_body(msg: Message) -> bytes:
    return _ENCODERS[msg.TYPE](msg)


def encode_header(header: Header) -> bytes:
    return HEADER.pack(MAGIC, header.version, header.msg_type, header.flags, header.seq,
                       header.ts_send_ns // _NS_PER_WIRE_TICK, header.ts_echo_ns // _NS_PER_WIRE_TICK)


def encode(msg: Message, seq: int, ts_send_ns: int, ts_echo_ns: int = 0, flags: int = 0) -> list[bytes]:
    """The two frames [header, body] of ``msg``; ``flags`` is the header's (bridge/protocol/auth.py sets
    its AUTH bit and adds the trailer frame)."""
    return [
        HEADER.pack(MAGIC, PROTOCOL_VERSION, int(msg.TYPE), flags, seq,
                    ts_send_ns // _NS_PER_WIRE_TICK, ts_echo_ns // _NS_PER_WIRE_TICK),
        _ENCODERS[msg.TYPE](msg),
    ]


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------


def decode_header(buf: bytes) -> Header:
    if len(buf) != HEADER_SIZE:
        raise ProtocolError(ErrorCode.PROTOCOL_TRUNCATED if len(buf) < HEADER_SIZE
                            else ErrorCode.PROTOCOL_MALFORMED_BODY,
                            f"header is {len(buf)} bytes, expected {HEADER_SIZE}")
    magic, version, msg_type, flags, seq, ts_send, ts_echo = HEADER.unpack(buf)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.PROTOCOL_BAD_MAGIC, f"magic {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.PROTOCOL_UNSUPPORTED_VERSION,
                            f"protocol version {version}, this sidecar speaks {PROTOCOL_VERSION}",
                            seq, msg_type)
    if msg_type not in _PLANS:
        raise ProtocolError(ErrorCode.PROTOCOL_UNKNOWN_TYPE, f"unknown message type {msg_type}",
                            seq, msg_type)
    if seq > MAX_SEQ or not (-_MAX_WIRE_TIME <= ts_send <= _MAX_WIRE_TIME
                             and -_MAX_WIRE_TIME <= ts_echo <= _MAX_WIRE_TIME):
        raise ProtocolError(ErrorCode.PROTOCOL_MALFORMED_BODY,
                            f"header out of range: seq {seq} (at most {MAX_SEQ}) or a time beyond int64 ns",
                            0, msg_type)
    return Header(msg_type, seq, ts_send * _NS_PER_WIRE_TICK, ts_echo * _NS_PER_WIRE_TICK, flags,
                  version)


def _read_str(buf: bytes, offset: int, name: str) -> tuple[str, int]:
    (n,) = _U16.unpack_from(buf, offset)
    offset += 2
    end = offset + n
    if end > len(buf):
        raise struct.error(f"{name}: string of {n} bytes runs past the end of the body")
    try:
        return buf[offset:end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not valid UTF-8 ({exc.reason})") from None


def _decode_steps(plan: list[_Step], body: bytes) -> tuple[list[Any], int]:
    values: list[Any] = []
    offset = 0
    for step in plan:
        if isinstance(step, _Run):
            chunk = list(step.struct.unpack_from(body, offset))
            offset += step.struct.size
            for i in step.ts_positions:
                if not -_MAX_WIRE_TIME <= chunk[i] <= _MAX_WIRE_TIME:
                    raise ValueError(f"{step.names[i]} = {chunk[i]} is outside the representable time range")
                chunk[i] *= _NS_PER_WIRE_TICK
            for i, enum in step.enums:
                if chunk[i] not in enum._value2member_map_:
                    raise ValueError(f"{step.names[i]} = {chunk[i]} is not a valid {enum.__name__}")
            values.extend(chunk)
        elif step[0] == "str":
            text, offset = _read_str(body, offset, step[1])
            values.append(text)
        elif step[0] == "ticks":
            (count,) = _U16.unpack_from(body, offset)
            offset += 2
            end = offset + count * _TICK_SIZE
            if end > len(body):
                raise struct.error(f"{count} ticks need {count * _TICK_SIZE} bytes")
            values.append(_decode_ticks(memoryview(body)[offset:end]))
            offset = end
        else:
            (count,) = _U16.unpack_from(body, offset)
            offset += 2
            decls = []
            for _ in range(count):
                name, offset = _read_str(body, offset, "instrument name")
                tick, pv = _DECL_TAIL.unpack_from(body, offset)
                offset += _DECL_TAIL.size
                decls.append(InstrumentDecl(name, tick, pv))
            values.append(decls)
    return values, offset


def _fixed_decoder(cls: type, run: _Run) -> Any:
    """A decoder for a body that is one fixed-size run: one unpack, no per-step dispatch."""
    unpack = run.struct.unpack
    size = run.struct.size
    ts_positions = run.ts_positions
    enums = tuple((i, frozenset(e._value2member_map_), run.names[i], e.__name__) for i, e in run.enums)

    def decode_fixed(body: bytes) -> Any:
        if len(body) != size:
            raise struct.error(f"expected {size} bytes") if len(body) < size else \
                ValueError(f"body has {len(body) - size} trailing bytes")
        values = list(unpack(body))
        for i in ts_positions:
            t = values[i]
            if not -_MAX_WIRE_TIME <= t <= _MAX_WIRE_TIME:
                raise ValueError(f"{run.names[i]} = {t} is outside the representable time range")
            values[i] = t * _NS_PER_WIRE_TICK
        for i, allowed, name, enum_name in enums:
            if values[i] not in allowed:
                raise ValueError(f"{name} = {values[i]} is not a valid {enum_name}")
        return cls(*values)

    return decode_fixed


def _general_decoder(cls: type, plan: list[_Step]) -> Any:
    def decode_general(body: bytes) -> Any:
        values, offset = _decode_steps(plan, body)
        if offset != len(body):
            raise ValueError(f"body has {len(body) - offset} trailing bytes")
        return cls(*values)

    return decode_general


_DECODERS: dict[int, tuple[str, Any]] = {
    t: (MsgType(t).name,
        _fixed_decoder(MESSAGE_CLASSES[MsgType(t)], plan[0])
        if len(plan) == 1 and isinstance(plan[0], _Run)
        else _general_decoder(MESSAGE_CLASSES[MsgType(t)], plan))
    for t, plan in _PLANS.items()
}


_TICK_RUN: _Run = _PLANS[int(MsgType.TICK)][0]
_TICK_SIZE = _TICK_RUN.struct.size  # 51
_TICK_KINDS = frozenset(TickKind._value2member_map_)


def _decode_ticks(buf: memoryview) -> list[Tick]:
    """The bodies of a TICKS message in one ``iter_unpack`` pass (half the cost of one at a time)."""
    out = []
    append = out.append
    lim = _MAX_WIRE_TIME
    for iid, kind, price, size, bid, ask, t_ex, t_rx in _TICK_RUN.struct.iter_unpack(buf):
        if kind not in _TICK_KINDS:
            raise ValueError(f"kind = {kind} is not a valid TickKind")
        if not (-lim <= t_ex <= lim and -lim <= t_rx <= lim):
            raise ValueError("a tick's time is outside the representable time range")
        append(Tick(iid, kind, price, size, bid, ask, t_ex * _NS_PER_WIRE_TICK, t_rx * _NS_PER_WIRE_TICK))
    return out


def decode_body(msg_type: int, body: bytes, seq: int = 0) -> Message:
    entry = _DECODERS.get(msg_type)
    if entry is None:
        raise ProtocolError(ErrorCode.PROTOCOL_UNKNOWN_TYPE, f"unknown message type {msg_type}",
                            seq, msg_type)
    name, decoder = entry
    try:
        return decoder(body)
    except struct.error as exc:
        raise ProtocolError(ErrorCode.PROTOCOL_TRUNCATED,
                            f"{name} body of {len(body)} bytes is too short ({exc})",
                            seq, msg_type) from None
    except ValueError as exc:
        raise ProtocolError(ErrorCode.PROTOCOL_MALFORMED_BODY, f"{name}: {exc}", seq,
                            msg_type) from None


def decode(frames: list[bytes]) -> tuple[Header, Message]:
    """Decode [header, body] frames (routing id already stripped)."""
    if len(frames) != 2:
        # three frames is what a peer in remote mode sends: say so, a secret on one side only is a setup slip
        raise ProtocolError(ErrorCode.PROTOCOL_BAD_FRAME_COUNT,
                            f"{len(frames)} frames, expected 2 (header, body)" + (
                                "; a third frame is an HMAC trailer (remote mode): give both sides the same "
                                "shared secret, or neither (docs/security.md)" if len(frames) == 3 else ""))
    header = decode_header(frames[0])
    return header, decode_body(header.msg_type, frames[1], header.seq)
