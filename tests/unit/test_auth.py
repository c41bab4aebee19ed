"""Remote mode on the wire (bridge/protocol/auth.py): the golden session of tests/vectors/auth, key
derivation, and every way a trailer can be wrong, missing, replayed or reflected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.protocol import auth, codec
from bridge.protocol import messages as m
from bridge.protocol.auth import AuthError
from bridge.protocol.messages import ErrorCode

VECTOR = json.loads((Path(__file__).parent.parent / "vectors" / "auth" / "session.json").read_text())
SECRET = bytes.fromhex(VECTOR["secret_hex"])
CLIENT_NONCE = bytes.fromhex(VECTOR["client_nonce_hex"])
SERVER_NONCE = bytes.fromhex(VECTOR["server_nonce_hex"])
MSG = {v["name"]: v for v in VECTOR["messages"]}


def frames(name: str) -> list[bytes]:
    v = MSG[name]
    return [bytes.fromhex(v["header_hex"]), bytes.fromhex(v["body_hex"]), bytes.fromhex(v["trailer_hex"])]


def message(name: str) -> tuple[codec.Header, m.Message]:
    header, body, _ = frames(name)
    return codec.decode([header, body])


def flipped(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def test_the_session_keys_are_the_golden_ones_and_differ_by_direction():
    k_nt8, k_sidecar = auth.session_keys(SECRET, CLIENT_NONCE, SERVER_NONCE)
    assert k_nt8.hex() == VECTOR["k_nt8_hex"] and k_sidecar.hex() == VECTOR["k_sidecar_hex"]
    assert k_nt8 != k_sidecar
    assert auth.session_keys(SECRET, CLIENT_NONCE, bytes(16)) != (k_nt8, k_sidecar)  # a fresh server nonce: new keys


def test_nt8_side_seals_hello_and_every_later_message_byte_for_byte():
    header, hello = message("hello")
    assert auth.encode_hello(hello, header.seq, header.ts_send_ns, SECRET, CLIENT_NONCE) == frames("hello")
    session = auth.open_welcome(frames("welcome"), SECRET, CLIENT_NONCE)
    for name in ("tick", "heartbeat_nt8"):
        h, msg = message(name)
        assert session.encode(msg, h.seq, h.ts_send_ns, h.ts_echo_ns) == frames(name)
    for name in ("bracket", "error"):
        session.check(*frames(name))  # the sidecar's messages verify under the derived key


def test_sidecar_side_opens_hello_and_seals_welcome_and_commands_byte_for_byte():
    header, body, trailer = frames("hello")
    secret, nonce = auth.open_hello(header, body, trailer, (bytes(32), SECRET))  # rotation: the second secret matches
    assert (secret, nonce) == (SECRET, CLIENT_NONCE)
    session = auth.accept_hello(secret, nonce, SERVER_NONCE)
    for name in ("welcome", "bracket", "error"):
        h, msg = message(name)
        assert session.encode(msg, h.seq, h.ts_send_ns, h.ts_echo_ns) == frames(name)
    for name in ("tick", "heartbeat_nt8"):
        session.check(*frames(name))


@pytest.mark.parametrize("part", [0, 1, 2])
def test_a_single_flipped_bit_anywhere_in_hello_is_refused(part):
    original = frames("hello")
    for i in range(len(original[part])):
        tampered = list(original)
        tampered[part] = flipped(original[part], i)
        if part == 0 and i in (6, 7):
            continue  # the flags: checked below, AUTH_REQUIRED when the bit is cleared
        with pytest.raises(AuthError) as info:
            auth.open_hello(*tampered, (SECRET,))
        assert info.value.code is ErrorCode.AUTH_BAD_MAC


@pytest.mark.parametrize("name", ["tick", "heartbeat_nt8"])
def test_a_flipped_bit_in_a_session_message_is_refused(name):
    session = auth.accept_hello(SECRET, CLIENT_NONCE, SERVER_NONCE)
    original = frames(name)
    for part in range(3):
        for i in range(0, len(original[part]), 3):
            if part == 0 and i == 6:
                continue
            tampered = list(original)
            tampered[part] = flipped(original[part], i)
            with pytest.raises(AuthError) as info:
                session.check(*tampered)
            assert info.value.code is ErrorCode.AUTH_BAD_MAC


def test_missing_trailer_or_cleared_flag_is_auth_required():
    session = auth.accept_hello(SECRET, CLIENT_NONCE, SERVER_NONCE)
    header, body, trailer = frames("tick")
    with pytest.raises(AuthError) as info:
        session.check(header, body, None)
    assert info.value.code is ErrorCode.AUTH_REQUIRED
    cleared = header[:6] + b"\x00\x00" + header[8:]
    with pytest.raises(AuthError) as info:
        session.check(cleared, body, trailer)
    assert info.value.code is ErrorCode.AUTH_REQUIRED
    with pytest.raises(AuthError) as info:
        auth.open_hello(*frames("hello")[:2], None, (SECRET,))
    assert info.value.code is ErrorCode.AUTH_REQUIRED


def test_a_wrong_secret_or_a_short_trailer_is_a_bad_mac():
    with pytest.raises(AuthError) as info:
        auth.open_hello(*frames("hello"), (bytes(32),))
    assert info.value.code is ErrorCode.AUTH_BAD_MAC and "different shared secrets" in info.value.text
    header, body, trailer = frames("hello")
    with pytest.raises(AuthError) as info:
        auth.open_hello(header, body, trailer[:40], (SECRET,))
    assert info.value.code is ErrorCode.AUTH_BAD_MAC
    with pytest.raises(AuthError):
        auth.open_welcome(frames("welcome"), bytes(32), CLIENT_NONCE)  # NT8 with another secret: WELCOME fails


def test_a_welcome_for_another_hello_does_not_verify():
    with pytest.raises(AuthError) as info:
        auth.open_welcome(frames("welcome"), SECRET, bytes(16))
    assert info.value.code is ErrorCode.AUTH_BAD_MAC


def test_a_reflected_heartbeat_does_not_verify_for_its_sender():
    """HEARTBEAT is the one type both sides send: with one key for both directions, the sidecar's own
    HEARTBEAT sent back to it would verify. With a key per direction it does not."""
    sidecar = auth.accept_hello(SECRET, CLIENT_NONCE, SERVER_NONCE)
    nt8 = auth.open_welcome(frames("welcome"), SECRET, CLIENT_NONCE)
    own = sidecar.encode(m.Heartbeat(41), 9, 1_700_000_000_000_000_000)
    with pytest.raises(AuthError):
        sidecar.check(*own)
    ours = nt8.encode(m.Heartbeat(41), 9, 1_700_000_000_000_000_000)
    with pytest.raises(AuthError):
        nt8.check(*ours)
    sidecar.check(*ours)  # the right way round it verifies
    nt8.check(*own)


def test_unauthenticated_encoding_is_unchanged_and_the_flag_bit_is_the_only_header_difference():
    h, msg = message("tick")
    plain = codec.encode(msg, h.seq, h.ts_send_ns, h.ts_echo_ns)
    assert plain[0].hex() == json.loads((Path(__file__).parent.parent / "vectors" / "01_tick_last.json")
                                        .read_text())["header_hex"]
    sealed = auth.accept_hello(SECRET, CLIENT_NONCE, SERVER_NONCE).encode(msg, h.seq, h.ts_send_ns, h.ts_echo_ns)
    assert sealed[1] == plain[1] and sealed[0][:6] == plain[0][:6] and sealed[0][8:] == plain[0][8:]
    assert auth.flags_of(sealed[0]) == auth.FLAG_AUTH and auth.flags_of(plain[0]) == 0


def test_three_frames_without_a_secret_say_what_to_do():
    with pytest.raises(codec.ProtocolError) as info:
        codec.decode(frames("tick"))
    assert info.value.code is ErrorCode.PROTOCOL_BAD_FRAME_COUNT and "shared secret" in info.value.text


@pytest.mark.parametrize("text, why", [("zz" * 16, "not hexadecimal"), ("ab" * 15, "at least 16"), ("", "at least")])
def test_a_bad_secret_is_refused_without_quoting_it(text, why):
    with pytest.raises(ValueError) as info:
        auth.parse_secret(text)
    assert why in str(info.value) and (not text or text not in str(info.value))


def test_keys_never_show_in_a_repr():
    session = auth.accept_hello(SECRET, CLIENT_NONCE, SERVER_NONCE)
    text = repr(session)
    for secret in (session.send_key, session.recv_key, SERVER_NONCE, SECRET):
        assert secret.hex() not in text and repr(secret) not in text


@pytest.mark.parametrize("key_bytes", [0, 16, 32, 64, 65, 100])
def test_the_precomputed_hmac_is_the_standard_one_for_every_key_length(key_bytes):
    import hmac

    key = bytes(range(key_bytes))
    assert auth._KeyedMac(key)(b"header", b"", b"body") == hmac.digest(key, b"headerbody", "sha256")
