"""The C# protocol codec (ninjascript/AddOns/Nt8Bridge/Protocol.cs), compiled with mcs and run under
Mono through pythonnet, against the same golden vectors as the Python codec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.integration.dotnet import net_frames


VECTORS = sorted((Path(__file__).parent.parent / "vectors").glob("*.json"))


def _plain(value):
    """A .NET Fields() value as Python: lists of pairs become dicts, lists stay lists."""
    from System.Collections.Generic import KeyValuePair  # noqa: F401  (pythonnet type)
    if hasattr(value, "Count") and not isinstance(value, str):
        items = [value[i] for i in range(value.Count)]
        if items and hasattr(items[0], "Key"):
            return {kv.Key: _plain(kv.Value) for kv in items}
        return [_plain(x) for x in items]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if hasattr(value, "GetType") and not isinstance(value, (int, float, str)):
        return int(value) if "Int" in value.GetType().Name or "Byte" in value.GetType().Name else value
    return value


def _frames(vector: dict):
    return net_frames([bytes.fromhex(vector["header_hex"]), bytes.fromhex(vector["body_hex"])])


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_csharp_decodes_every_golden_vector_to_its_fields(cs, path):
    vector = json.loads(path.read_text())
    msg, header = cs.Codec.Decode(_frames(vector), None)
    assert int(header.Type) == vector["type"]
    assert int(header.Seq) == vector["header"]["seq"]
    assert int(header.TsSend) * 100 == vector["header"]["ts_send_ns"]
    assert int(header.TsEcho) * 100 == vector["header"]["ts_echo_ns"]
    assert _plain(msg.Fields()) == vector["fields"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_csharp_reencodes_every_golden_vector_byte_for_byte(cs, path):
    vector = json.loads(path.read_text())
    msg, header = cs.Codec.Decode(_frames(vector), None)
    frames = cs.Codec.Encode(msg, header.Seq, header.TsSend, header.TsEcho)
    assert bytes(frames[0]).hex() == vector["header_hex"]
    assert bytes(frames[1]).hex() == vector["body_hex"]


def test_csharp_writes_a_dotnet_nan_as_the_canonical_quiet_nan(cs):
    from System import Double
    tick = cs.Tick()
    tick.Price, tick.Bid, tick.Ask = 2670.25, Double.NaN, Double.NaN
    body = bytes(cs.Codec.Encode(tick, 1, 0, 0)[1])
    assert body[19:27] == bytes.fromhex("000000000000f87f")  # little-endian 0x7FF8000000000000


@pytest.mark.parametrize("mutate, code", [
    (lambda h, b: (h, b[:-1]), 100),                      # truncated body
    (lambda h, b: (h, b + b"\x00"), 105),                  # trailing byte
    (lambda h, b: (b"XXXX" + h[4:], b), 101),              # bad magic
    (lambda h, b: (h[:4] + b"\x02" + h[5:], b), 102),      # version 2
    (lambda h, b: (h[:5] + b"\x0b" + h[6:], b), 103),      # unknown type 11
    (lambda h, b: (h, b[:2] + b"\x07" + b[3:]), 105),      # tick kind 7
])
def test_csharp_refuses_bad_frames_with_the_protocol_codes(cs, mutate, code):
    vector = json.loads((Path(__file__).parent.parent / "vectors" / "01_tick_last.json").read_text())
    h, b = mutate(bytes.fromhex(vector["header_hex"]), bytes.fromhex(vector["body_hex"]))
    with pytest.raises(Exception) as info:
        cs.Codec.Decode(net_frames([h, b]), None)
    assert int(info.value.Code) == code
