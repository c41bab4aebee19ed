"""Wire protocol v1 codec: golden vectors, round trips, and every way a frame can be wrong."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol import codec
from bridge.protocol import messages as m
from bridge.protocol.codec import ProtocolError
from bridge.protocol.messages import ErrorCode, MsgType

VECTORS = sorted((Path(__file__).parent.parent / "vectors").glob("*.json"))


def _from_json(value):
    return float("nan") if value == "NaN" else value


def _message_from_vector(vector: dict) -> m.Message:
    cls = m.MESSAGE_CLASSES[MsgType(vector["type"])]
    fields = {}
    for k, v in vector["fields"].items():
        if k == "instruments":
            v = [m.InstrumentDecl(**d) for d in v]
        elif k == "ticks":
            v = [m.Tick(**{f: _from_json(x) for f, x in d.items()}) for d in v]
        fields[k] = _from_json(v)
    return cls(**fields)


def _same(a: m.Message, b: m.Message) -> bool:
    """Equality where NaN equals NaN (the wire keeps NaN; dataclass == does not)."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "ticks":
            if len(x) != len(y) or not all(_same(p, q) for p, q in zip(x, y)):
                return False
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def test_every_message_type_has_a_golden_vector():
    assert {json.loads(p.read_text())["type"] for p in VECTORS} == {int(t) for t in MsgType}


def test_layouts_list_every_dataclass_field_in_order():
    for msg_type, layout in codec.LAYOUTS.items():
        cls = m.MESSAGE_CLASSES[msg_type]
        assert [name for name, _, _ in layout] == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_golden_vector_encodes_to_the_same_bytes(path: Path):
    vector = json.loads(path.read_text())
    msg = _message_from_vector(vector)
    h = vector["header"]
    header, body = codec.encode(msg, h["seq"], h["ts_send_ns"], h["ts_echo_ns"])
    assert header.hex() == vector["header_hex"]
    assert body.hex() == vector["body_hex"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_golden_vector_decodes_to_the_described_message(path: Path):
    vector = json.loads(path.read_text())
    header, msg = codec.decode([bytes.fromhex(vector["header_hex"]), bytes.fromhex(vector["body_hex"])])
    assert header.msg_type == vector["type"]
    assert header.seq == vector["header"]["seq"]
    assert header.ts_send_ns == vector["header"]["ts_send_ns"]
    assert header.ts_echo_ns == vector["header"]["ts_echo_ns"]
    assert _same(msg, _message_from_vector(vector))


# --- property round trips -------------------------------------------------------------------

_FIELD_STRATEGIES = {
    "u8": st.integers(0, 255), "i8": st.integers(-128, 127), "u16": st.integers(0, 0xFFFF),
    "i32": st.integers(-(2**31), 2**31 - 1), "u32": st.integers(0, 2**32 - 1),
    "i64": st.integers(-(2**63), 2**63 - 1), "u64": st.integers(0, 2**64 - 1),
    "f64": st.floats(allow_nan=True, allow_infinity=True),
    # times survive the trip in whole 100 ns units
    "ts": st.integers(-codec._MAX_WIRE_TIME, codec._MAX_WIRE_TIME).map(lambda t: t * 100),
    "str": st.text(max_size=40),
    "decls": st.lists(st.builds(m.InstrumentDecl, st.text(max_size=12), st.floats(), st.floats()),
                      max_size=4),
}


def _tick_strategy():
    kwargs = {name: st.sampled_from([int(e) for e in enum]) if enum else _FIELD_STRATEGIES[kind]
              for name, kind, enum in codec.LAYOUTS[MsgType.TICK]}
    return st.builds(m.Tick, **kwargs)


_FIELD_STRATEGIES["ticks"] = st.lists(_tick_strategy(), max_size=5)


def _message_strategy(msg_type: MsgType):
    cls = m.MESSAGE_CLASSES[msg_type]
    kwargs = {}
    for name, kind, enum in codec.LAYOUTS[msg_type]:
        kwargs[name] = st.sampled_from([int(e) for e in enum]) if enum else _FIELD_STRATEGIES[kind]
    return st.builds(cls, **kwargs)


_ANY_MESSAGE = st.one_of([_message_strategy(t) for t in MsgType])


def _same_with_decls(a, b) -> bool:
    if isinstance(a, m.Hello):
        da, db = a.instruments, b.instruments
        if len(da) != len(db):
            return False
        for x, y in zip(da, db):
            if x.name != y.name:
                return False
            for p, q in ((x.tick_size, y.tick_size), (x.point_value, y.point_value)):
                if not (p == q or (math.isnan(p) and math.isnan(q))):
                    return False
        a = dataclasses.replace(a, instruments=[])
        b = dataclasses.replace(b, instruments=[])
    return _same(a, b)


@settings(max_examples=400, deadline=None)
@given(msg=_ANY_MESSAGE, seq=st.integers(0, codec.MAX_SEQ),
       ts=st.integers(0, codec._MAX_WIRE_TIME).map(lambda t: t * 100))
def test_every_message_survives_a_round_trip(msg, seq, ts):
    header, decoded = codec.decode(codec.encode(msg, seq, ts, ts))
    assert (header.seq, header.ts_send_ns, header.ts_echo_ns, header.msg_type) == (seq, ts, ts, int(msg.TYPE))
    assert _same_with_decls(decoded, msg)


@settings(max_examples=300, deadline=None)
@given(msg=_ANY_MESSAGE, data=st.data())
def test_any_truncation_of_a_body_is_rejected_as_truncated(msg, data):
    _, body = codec.encode(msg, 1, 0)
    if not body:
        return
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(ProtocolError) as info:
        codec.decode_body(int(msg.TYPE), body[:cut], seq=5)
    # a cut inside a string length prefix or value may also read as a too-short body
    assert info.value.code in (ErrorCode.PROTOCOL_TRUNCATED, ErrorCode.PROTOCOL_MALFORMED_BODY)
    assert info.value.seq == 5


@settings(max_examples=200, deadline=None)
@given(msg=_ANY_MESSAGE, extra=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_rejected(msg, extra):
    _, body = codec.encode(msg, 1, 0)
    with pytest.raises(ProtocolError) as info:
        codec.decode_body(int(msg.TYPE), body + extra)
    assert info.value.code is ErrorCode.PROTOCOL_MALFORMED_BODY


# --- header and frame errors ---------------------------------------------------------------

def _tick_frames() -> list[bytes]:
    return codec.encode(m.Tick(0, 0, 1.0, 1, 1.0, 1.25, 100, 200), 3, 1000)


def test_bad_magic_is_rejected():
    header, body = _tick_frames()
    with pytest.raises(ProtocolError) as info:
        codec.decode([b"XXXX" + header[4:], body])
    assert info.value.code is ErrorCode.PROTOCOL_BAD_MAGIC


def test_wrong_version_is_rejected_with_its_sequence_number():
    header, body = _tick_frames()
    bad = header[:4] + bytes([2]) + header[5:]
    with pytest.raises(ProtocolError) as info:
        codec.decode([bad, body])
    assert info.value.code is ErrorCode.PROTOCOL_UNSUPPORTED_VERSION
    assert info.value.seq == 3


@pytest.mark.parametrize("msg_type", [0, 11, 15, 22, 255])
def test_unknown_message_type_is_rejected(msg_type):
    header, body = _tick_frames()
    bad = header[:5] + bytes([msg_type]) + header[6:]
    with pytest.raises(ProtocolError) as info:
        codec.decode([bad, body])
    assert info.value.code is ErrorCode.PROTOCOL_UNKNOWN_TYPE


@pytest.mark.parametrize("frames", [[], [b"x"], [b"a", b"b", b"c"]])
def test_wrong_frame_count_is_rejected(frames):
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames)
    assert info.value.code is ErrorCode.PROTOCOL_BAD_FRAME_COUNT


def test_short_header_is_truncated():
    header, body = _tick_frames()
    with pytest.raises(ProtocolError) as info:
        codec.decode([header[:-1], body])
    assert info.value.code is ErrorCode.PROTOCOL_TRUNCATED


def test_out_of_range_enum_is_malformed():
    body = struct.pack("<HBdqddqq", 0, 7, 1.0, 1, 1.0, 1.25, 1, 1)
    with pytest.raises(ProtocolError) as info:
        codec.decode_body(MsgType.TICK, body)
    assert info.value.code is ErrorCode.PROTOCOL_MALFORMED_BODY
    assert "kind" in info.value.text


def test_invalid_utf8_is_malformed():
    body = struct.pack("<H", 2) + b"\xff\xfe"
    with pytest.raises(ProtocolError) as info:
        codec.decode_body(MsgType.BYE, body)
    assert info.value.code is ErrorCode.PROTOCOL_MALFORMED_BODY
    assert "UTF-8" in info.value.text


def test_string_longer_than_u16_cannot_be_encoded():
    with pytest.raises(ValueError, match="at most 65535"):
        codec.encode(m.Bye("x" * 70000), 1, 0)


def test_sequence_numbers_beyond_signed_64_bits_are_refused():
    header = struct.pack("<4sBBHQqq", b"NT8B", 1, 8, 0, 2**63, 0, 0)
    with pytest.raises(ProtocolError) as info:
        codec.decode([header, struct.pack("<Q", 1)])
    assert info.value.code is ErrorCode.PROTOCOL_MALFORMED_BODY


def test_times_that_overflow_int64_nanoseconds_are_refused():
    body = struct.pack("<HBdqddqq", 0, 0, 1.0, 1, 1.0, 1.25, 2**62, 1)
    with pytest.raises(ProtocolError) as info:
        codec.decode_body(MsgType.TICK, body)
    assert info.value.code is ErrorCode.PROTOCOL_MALFORMED_BODY and "ts_exchange_ns" in info.value.text
