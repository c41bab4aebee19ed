"""Remote mode on the wire: an HMAC-SHA256 trailer authenticates every message (docs/protocol.md, "Remote mode").

CURVE is out of reach of the hand-written C# ZMTP client, so the two sides prove knowledge of a shared
secret instead, per message, with nothing but HMAC-SHA256 (Python's ``hmac``, .NET Framework's
``HMACSHA256``). An authenticated message sets the header flag ``FLAG_AUTH`` and carries a third
frame, the trailer:

- HELLO: ``client_nonce(16) || HMAC(secret, header || body || client_nonce)``
- WELCOME: ``server_nonce(16) || HMAC(k_sidecar, header || body || server_nonce)``
- anything else: ``HMAC(k, header || body)`` with ``k_nt8`` from NT8, ``k_sidecar`` from the sidecar

with the session's two keys derived from the secret and both nonces::

    k_nt8     = HMAC(secret, "nt8bridge nt8->sidecar v1" || client_nonce || server_nonce)
    k_sidecar = HMAC(secret, "nt8bridge sidecar->nt8 v1" || client_nonce || server_nonce)

Why two keys: HEARTBEAT travels both ways, so with one key a HEARTBEAT of the sidecar's, reflected back
to it, would verify and move its sequence numbers (and one of NT8's, reflected to NT8, would acknowledge
messages the sidecar never saw). Why no session id in the derivation: the server nonce is fresh per
session already, and WELCOME, which carries the id, is authenticated with the derived key.

The MAC covers the header, so its sequence number and send time: a message replayed inside its session
is refused by sequence, one replayed into another session fails the MAC (another key), and a HELLO
replayed is refused by its freshness and its nonce (``bridge/transport/security.py``). Every comparison
is ``hmac.compare_digest``. Nothing here logs; keys and secrets never appear in a repr.
"""

from __future__ import annotations

import hmac
import secrets as _random
from dataclasses import dataclass, field
from hashlib import sha256

from bridge.protocol import codec
from bridge.protocol.codec import ProtocolError
from bridge.protocol.messages import ErrorCode, Message, MsgType

FLAG_AUTH = 0x0001  # header flags bit: a trailer frame follows the body
NONCE_BYTES = 16
MAC_BYTES = 32
HANDSHAKE_TRAILER_BYTES = NONCE_BYTES + MAC_BYTES  # HELLO and WELCOME
MIN_SECRET_BYTES = 16  # 128 bits; `nt8bridge secret new` writes 32
LABEL_NT8 = b"nt8bridge nt8->sidecar v1"
LABEL_SIDECAR = b"nt8bridge sidecar->nt8 v1"
_HELLO, _WELCOME = int(MsgType.HELLO), int(MsgType.WELCOME)


class AuthError(ProtocolError):
    """A message refused by remote mode (codes AUTH_*): counted apart, and never acknowledged, since
    nothing in it can be trusted, its sequence number included."""


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of the concatenated parts."""
    return hmac.digest(key, b"".join(parts), "sha256")


def new_nonce() -> bytes:
    return _random.token_bytes(NONCE_BYTES)


def session_keys(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> tuple[bytes, bytes]:
    """(k_nt8, k_sidecar): the keys of NT8's messages and of the sidecar's."""
    tail = client_nonce + server_nonce
    return mac(secret, LABEL_NT8, tail), mac(secret, LABEL_SIDECAR, tail)


def parse_secret(text: str) -> bytes:
    """A secret as written in a secret file: hex digits, at least MIN_SECRET_BYTES bytes. The error never
    quotes the text (it may be a secret with a typo)."""
    text = text.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError("not hexadecimal digits") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{len(secret)} bytes; a secret needs at least {MIN_SECRET_BYTES} (32 hex digits)")
    return secret


def flags_of(header_frame: bytes) -> int:
    """The header's flags, read without decoding the rest (0 for a frame too short to hold them)."""
    return int.from_bytes(header_frame[6:8], "little") if len(header_frame) >= 8 else 0


class _KeyedMac:
    """HMAC-SHA256 under one fixed key, with the key's two padded blocks hashed once (RFC 2104): the very
    MAC of ``hmac.digest``, in 0.7 instead of 1.8 us, paid on every message of a session."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = (sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = sha256(bytes(b ^ 0x36 for b in block))
        self._outer = sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, *parts: bytes) -> bytes:
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __repr__(self) -> str:
        return "<HMAC-SHA256 key>"


@dataclass(slots=True)
class SessionAuth:
    """The keys of one authenticated session, as one side holds them: ``send_key`` MACs what this side
    sends, ``recv_key`` checks what it receives. The sidecar's is made by ``accept_hello``, NT8's by
    ``open_welcome``."""

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    server_nonce: bytes = field(repr=False)  # goes out in WELCOME's trailer (the sidecar's side)
    _send: _KeyedMac = field(init=False, repr=False)
    _recv: _KeyedMac = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._send, self._recv = _KeyedMac(self.send_key), _KeyedMac(self.recv_key)

    def encode(self, msg: Message, seq: int, ts_send_ns: int, ts_echo_ns: int = 0) -> list[bytes]:
        """[header, body, trailer] of ``msg``."""
        header, body = codec.encode(msg, seq, ts_send_ns, ts_echo_ns, FLAG_AUTH)
        if msg.TYPE == _WELCOME:
            return [header, body, self.server_nonce + self._send(header, body, self.server_nonce)]
        return [header, body, self._send(header, body)]

    def check(self, header: bytes, body: bytes, trailer: bytes | None, seq: int = 0, msg_type: int = 0) -> None:
        """Raise AuthError unless ``trailer`` is the MAC of header and body under ``recv_key``."""
        if trailer is None or not header[6] & FLAG_AUTH:  # the flags' low byte (the codec checked the size)
            raise AuthError(ErrorCode.AUTH_REQUIRED, "message without its HMAC trailer: every message of a remote-mode "
                            "session carries one (docs/protocol.md)", seq, msg_type)
        if not hmac.compare_digest(self._recv(header, body), trailer):
            raise AuthError(ErrorCode.AUTH_BAD_MAC, "the HMAC trailer does not verify: the message was altered or "
                            "does not belong to this session", seq, msg_type)


# --- NT8's side ------------------------------------------------------------------------------


def seal_hello(frames: list[bytes], secret: bytes, client_nonce: bytes) -> list[bytes]:
    """Add HELLO's trailer to [header, body] encoded with ``FLAG_AUTH``."""
    header, body = frames
    return [header, body, client_nonce + mac(secret, header, body, client_nonce)]


def encode_hello(msg: Message, seq: int, ts_send_ns: int, secret: bytes, client_nonce: bytes) -> list[bytes]:
    return seal_hello(codec.encode(msg, seq, ts_send_ns, 0, FLAG_AUTH), secret, client_nonce)


def open_welcome(frames: list[bytes], secret: bytes, client_nonce: bytes) -> SessionAuth:
    """NT8's keys from the sidecar's WELCOME ([header, body, trailer]); AuthError when it does not verify."""
    if len(frames) != 3 or not flags_of(frames[0]) & FLAG_AUTH:
        raise AuthError(ErrorCode.AUTH_REQUIRED, "WELCOME without its HMAC trailer: the sidecar is not in remote "
                        "mode, or someone else answered")
    header, body, trailer = frames
    if len(trailer) != HANDSHAKE_TRAILER_BYTES:
        raise AuthError(ErrorCode.AUTH_BAD_MAC, f"WELCOME trailer of {len(trailer)} bytes, expected "
                        f"{HANDSHAKE_TRAILER_BYTES}")
    server_nonce, got = trailer[:NONCE_BYTES], trailer[NONCE_BYTES:]
    k_nt8, k_sidecar = session_keys(secret, client_nonce, server_nonce)
    if not hmac.compare_digest(mac(k_sidecar, header, body, server_nonce), got):
        raise AuthError(ErrorCode.AUTH_BAD_MAC, "WELCOME does not verify: the sidecar holds another shared secret, "
                        "or the answer is not to this HELLO")
    return SessionAuth(send_key=k_nt8, recv_key=k_sidecar, server_nonce=server_nonce)


# --- the sidecar's side ----------------------------------------------------------------------


def open_hello(header: bytes, body: bytes, trailer: bytes | None, secrets: tuple[bytes, ...],
               seq: int = 0) -> tuple[bytes, bytes]:
    """(secret, client nonce) of a HELLO whose trailer verifies under one of ``secrets`` (more than one
    while a secret is being rotated); AuthError otherwise. Every secret is tried, so the time taken
    says nothing about which one matched."""
    if trailer is None or not flags_of(header) & FLAG_AUTH:
        raise AuthError(ErrorCode.AUTH_REQUIRED, "this sidecar runs in remote mode: HELLO needs an HMAC trailer made "
                        "with the shared secret (in NT8: the strategy's 'Shared secret file'; docs/security.md)",
                        seq, _HELLO)
    if len(trailer) != HANDSHAKE_TRAILER_BYTES:
        raise AuthError(ErrorCode.AUTH_BAD_MAC, f"HELLO trailer of {len(trailer)} bytes, expected "
                        f"{HANDSHAKE_TRAILER_BYTES} (nonce and HMAC)", seq, _HELLO)
    nonce, got = trailer[:NONCE_BYTES], trailer[NONCE_BYTES:]
    matched = None
    for secret in secrets:
        if hmac.compare_digest(mac(secret, header, body, nonce), got) and matched is None:
            matched = secret
    if matched is None:
        raise AuthError(ErrorCode.AUTH_BAD_MAC, "HELLO does not verify: NT8 and the sidecar hold different shared "
                        "secrets (the strategy's 'Shared secret file', the sidecar's security.secret_file)",
                        seq, _HELLO)
    return matched, nonce


def accept_hello(secret: bytes, client_nonce: bytes, server_nonce: bytes | None = None) -> SessionAuth:
    """The sidecar's keys for a verified HELLO, with a fresh server nonce (or the one given, for tests)."""
    server_nonce = new_nonce() if server_nonce is None else server_nonce
    k_nt8, k_sidecar = session_keys(secret, client_nonce, server_nonce)
    return SessionAuth(send_key=k_sidecar, recv_key=k_nt8, server_nonce=server_nonce)
