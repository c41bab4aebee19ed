"""Writes tests/vectors/auth/session.json: one authenticated session of remote mode, byte for byte.

Computed here with plain ``hmac``/``hashlib``/``struct`` from the formulas of docs/protocol.md ("Remote
mode"), independently of ``bridge.protocol.auth``, so that the Python and the C# implementations are
both checked against a second reading of the spec. The bodies are those of the golden vectors one
folder up; the headers are rebuilt with the AUTH flag. Run: ``python tests/vectors/auth/make_auth_vectors.py``
(the file is committed; rerun only when the spec changes, and review the diff).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path

HERE = Path(__file__).parent
PLAIN = HERE.parent
FLAG_AUTH = 1
SECRET = bytes(range(32))  # a test secret, nothing else
CLIENT_NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")
SERVER_NONCE = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")


def h(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def header(plain: dict) -> bytes:
    p = plain["header"]
    return struct.pack("<4sBBHQqq", b"NT8B", 1, plain["type"], FLAG_AUTH, p["seq"], p["ts_send_ns"] // 100,
                       p["ts_echo_ns"] // 100)


def main() -> None:
    k_nt8 = h(SECRET, b"nt8bridge nt8->sidecar v1" + CLIENT_NONCE + SERVER_NONCE)
    k_sidecar = h(SECRET, b"nt8bridge sidecar->nt8 v1" + CLIENT_NONCE + SERVER_NONCE)
    messages = []
    for name, sender, vector in (("hello", "nt8", "00_hello"), ("welcome", "sidecar", "11_welcome"),
                                 ("tick", "nt8", "01_tick_last"), ("heartbeat_nt8", "nt8", "09_heartbeat"),
                                 ("bracket", "sidecar", "12_bracket"), ("error", "sidecar", "16_error")):
        plain = json.loads((PLAIN / f"{vector}.json").read_text(encoding="utf-8"))
        hdr, body = header(plain), bytes.fromhex(plain["body_hex"])
        if name == "hello":
            trailer = CLIENT_NONCE + h(SECRET, hdr + body + CLIENT_NONCE)
        elif name == "welcome":
            trailer = SERVER_NONCE + h(k_sidecar, hdr + body + SERVER_NONCE)
        else:
            trailer = h(k_nt8 if sender == "nt8" else k_sidecar, hdr + body)
        messages.append({"name": name, "sender": sender, "plain_vector": vector, "seq": plain["header"]["seq"],
                         "header_hex": hdr.hex(), "body_hex": body.hex(), "trailer_hex": trailer.hex()})
    out = {"description": "one remote-mode session: HELLO, WELCOME, then messages both ways, with their trailers",
           "secret_hex": SECRET.hex(), "client_nonce_hex": CLIENT_NONCE.hex(), "server_nonce_hex": SERVER_NONCE.hex(),
           "k_nt8_hex": k_nt8.hex(), "k_sidecar_hex": k_sidecar.hex(), "messages": messages}
    path = HERE / "session.json"
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(path.name)


if __name__ == "__main__":
    main()
