"""Writes the golden vectors of wire protocol v1 into tests/vectors/*.json.

The bytes are built here with plain ``struct.pack`` and format strings written from
docs/protocol.md, independently of ``bridge.protocol.codec``, so the codec is checked against a
second reading of the spec rather than against itself. The C# codec must pass the same files.
Run: ``python tests/vectors/make_vectors.py`` (the files are committed; rerun only when the spec
changes, and review the diff).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

HERE = Path(__file__).parent
EPOCH_T = 17_000_000_000_000_000  # 2023-11-14T22:13:20Z in 100 ns units since the Unix epoch


def s(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<H", len(data)) + data


def header(msg_type: int, seq: int, ts_send: int, ts_echo: int = 0) -> bytes:
    return struct.pack("<4sBBHQqq", b"NT8B", 1, msg_type, 0, seq, ts_send, ts_echo)


def vec(name: str, description: str, msg_type: int, seq: int, body: bytes, fields: dict,
        ts_send: int = EPOCH_T, ts_echo: int = 0) -> dict:
    return {
        "name": name,
        "description": description,
        "type": msg_type,
        "header": {"seq": seq, "ts_send_ns": ts_send * 100, "ts_echo_ns": ts_echo * 100},
        "fields": fields,
        "header_hex": header(msg_type, seq, ts_send, ts_echo).hex(),
        "body_hex": body.hex(),
    }


def f(x: float) -> float | str:
    """JSON has no NaN: write it as the string "NaN"."""
    return "NaN" if math.isnan(x) else x


NAN = float("nan")


def vectors() -> list[dict]:
    out = []
    out.append(vec(
        "hello", "HELLO from instance 'ES chart' on Sim101, lockstep, two instruments, a non-ASCII "
        "version string to pin UTF-8 lengths in bytes", 1, 1,
        s("ES chart") + s("Sim101") + struct.pack("<IIq", 1, 1000, EPOCH_T) + s("8.1.2.1 \u00e9")
        + struct.pack("<H", 2) + s("ES 06-18") + struct.pack("<dd", 0.25, 50.0)
        + s("NQ 06-18") + struct.pack("<dd", 0.25, 20.0),
        {"instance_id": "ES chart", "account": "Sim101", "flags": 1, "heartbeat_ms": 1000,
         "nt8_clock_ns": EPOCH_T * 100, "nt8_version": "8.1.2.1 \u00e9",
         "instruments": [{"name": "ES 06-18", "tick_size": 0.25, "point_value": 50.0},
                         {"name": "NQ 06-18", "tick_size": 0.25, "point_value": 20.0}]}))
    out.append(vec(
        "tick_last", "TICK: a trade (LAST) of 3 contracts at 2670.25 with the quote 2670/2670.25",
        2, 2, struct.pack("<HBdqddqq", 0, 0, 2670.25, 3, 2670.0, 2670.25, EPOCH_T + 5, EPOCH_T + 17),
        {"instrument_id": 0, "kind": 0, "price": 2670.25, "size": 3, "bid": 2670.0, "ask": 2670.25,
         "ts_exchange_ns": (EPOCH_T + 5) * 100, "ts_receive_ns": (EPOCH_T + 17) * 100}))
    out.append(vec(
        "tick_bid_nan_quote", "TICK: a BID update on instrument 1 with no known quote (NaN bid/ask)",
        2, 3, struct.pack("<HBdqddqq", 1, 1, 9100.5, 12, NAN, NAN, EPOCH_T, EPOCH_T),
        {"instrument_id": 1, "kind": 1, "price": 9100.5, "size": 12, "bid": "NaN", "ask": "NaN",
         "ts_exchange_ns": EPOCH_T * 100, "ts_receive_ns": EPOCH_T * 100}))
    out.append(vec(
        "ticks", "TICKS: a burst of two trades of instrument 0 in one message (count, then TICK bodies)",
        10, 11, struct.pack("<H", 2)
        + struct.pack("<HBdqddqq", 0, 0, 2670.25, 2, 2670.0, 2670.25, EPOCH_T + 1, EPOCH_T + 2)
        + struct.pack("<HBdqddqq", 0, 0, 2670.5, 1, NAN, NAN, EPOCH_T + 3, EPOCH_T + 4),
        {"ticks": [
            {"instrument_id": 0, "kind": 0, "price": 2670.25, "size": 2, "bid": 2670.0, "ask": 2670.25,
             "ts_exchange_ns": (EPOCH_T + 1) * 100, "ts_receive_ns": (EPOCH_T + 2) * 100},
            {"instrument_id": 0, "kind": 0, "price": 2670.5, "size": 1, "bid": "NaN", "ask": "NaN",
             "ts_exchange_ns": (EPOCH_T + 3) * 100, "ts_receive_ns": (EPOCH_T + 4) * 100}]}))
    out.append(vec(
        "bar", "BAR: a 60 s bar of instrument 0 closing at EPOCH", 3, 4,
        struct.pack("<HIddddqq", 0, 60, 2670.0, 2671.5, 2669.75, 2671.0, 1234, EPOCH_T),
        {"instrument_id": 0, "period_s": 60, "open": 2670.0, "high": 2671.5, "low": 2669.75,
         "close": 2671.0, "volume": 1234, "ts_close_ns": EPOCH_T * 100}))
    out.append(vec(
        "order_update", "ORDER_UPDATE: the stop leg of bracket B-7 is Working (no fill yet)", 4, 5,
        s("B-7") + struct.pack("<B", 2) + s("nt8-0001") + struct.pack("<HBBBiidddqH",
        0, 4, 2, 2, 2, 0, NAN, 2668.0, NAN, EPOCH_T, 0) + s(""),
        {"client_order_id": "B-7", "role": 2, "nt8_order_id": "nt8-0001", "instrument_id": 0,
         "state": 4, "order_type": 2, "side": 2, "quantity": 2, "filled": 0,
         "limit_price": "NaN", "stop_price": 2668.0, "avg_fill_price": "NaN",
         "ts_event_ns": EPOCH_T * 100, "error_code": 0, "comment": ""}))
    out.append(vec(
        "execution", "EXECUTION: the entry of bracket B-7 filled 2 @ 2670.25, commission 4.18",
        5, 6, s("ex-1") + s("B-7") + struct.pack("<B", 1) + s("nt8-0000")
        + struct.pack("<HBdidq", 0, 1, 2670.25, 2, 4.18, EPOCH_T + 1),
        {"execution_id": "ex-1", "client_order_id": "B-7", "role": 1, "nt8_order_id": "nt8-0000",
         "instrument_id": 0, "side": 1, "price": 2670.25, "quantity": 2, "commission": 4.18,
         "ts_event_ns": (EPOCH_T + 1) * 100}))
    out.append(vec(
        "position", "POSITION: long 2 ES at 2670.25", 6, 7,
        struct.pack("<HBidq", 0, 1, 2, 2670.25, EPOCH_T + 1),
        {"instrument_id": 0, "market_position": 1, "quantity": 2, "avg_price": 2670.25,
         "ts_event_ns": (EPOCH_T + 1) * 100}))
    out.append(vec(
        "account", "ACCOUNT: Sim101 values", 7, 8,
        s("Sim101") + struct.pack("<ddddq", 100000.0, -12.5, 25.0, 400000.0, EPOCH_T),
        {"account": "Sim101", "cash_value": 100000.0, "realized_pnl": -12.5, "unrealized_pnl": 25.0,
         "buying_power": 400000.0, "ts_event_ns": EPOCH_T * 100}))
    out.append(vec(
        "heartbeat", "HEARTBEAT acknowledging the peer's message 41", 8, 9,
        struct.pack("<Q", 41), {"ack_seq": 41}))
    out.append(vec("bye", "BYE: the strategy was disabled", 9, 10, s("strategy disabled"),
                   {"reason": "strategy disabled"}))
    out.append(vec(
        "welcome", "WELCOME to session 123456789, 1 s heartbeats, 5 s timeout, 64 KiB messages",
        16, 1, struct.pack("<Q", 123456789) + s("0.1.0") + struct.pack("<IIqI", 1000, 5000, EPOCH_T, 65536),
        {"session_id": 123456789, "sidecar_version": "0.1.0", "heartbeat_ms": 1000,
         "heartbeat_timeout_ms": 5000, "sidecar_clock_ns": EPOCH_T * 100,
         "max_message_bytes": 65536}, ts_echo=EPOCH_T - 3))
    out.append(vec(
        "bracket", "BRACKET: buy 2 at market, stop 2668, target 2674, DAY", 17, 2,
        s("B-7") + struct.pack("<HBiBdddB", 0, 1, 2, 1, NAN, 2668.0, 2674.0, 1)
        + s("breakout@0.1.0") + s("D-42"),
        {"client_order_id": "B-7", "instrument_id": 0, "side": 1, "quantity": 2, "entry_type": 1,
         "entry_price": "NaN", "stop_price": 2668.0, "target_price": 2674.0, "time_in_force": 1,
         "algorithm_id": "breakout@0.1.0", "decision_id": "D-42"}, ts_echo=EPOCH_T + 17))
    out.append(vec("cancel", "CANCEL every working leg of B-7", 18, 3, s("B-7") + s("time limit"),
                   {"client_order_id": "B-7", "reason": "time limit"}))
    out.append(vec(
        "change", "CHANGE the stop leg of B-7 to 2669.5, quantity unchanged", 19, 4,
        s("B-7") + struct.pack("<Bidd", 2, 0, NAN, 2669.5),
        {"client_order_id": "B-7", "role": 2, "quantity": 0, "limit_price": "NaN",
         "stop_price": 2669.5}))
    out.append(vec("flatten", "FLATTEN every instrument (0xFFFF)", 20, 5,
                   struct.pack("<H", 0xFFFF) + s("kill switch"),
                   {"instrument_id": 65535, "reason": "kill switch"}))
    out.append(vec(
        "error", "ERROR: a TICK with seq 99 had a NaN price", 21, 6,
        struct.pack("<HQB", 300, 99, 2) + s("price is NaN"),
        {"code": 300, "offending_seq": 99, "offending_type": 2, "text": "price is NaN"}))
    return out


def main() -> None:
    for i, v in enumerate(vectors()):
        path = HERE / f"{i:02d}_{v['name']}.json"
        path.write_text(json.dumps(v, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(path.name)


if __name__ == "__main__":
    main()
