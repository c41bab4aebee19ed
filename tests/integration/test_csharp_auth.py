"""Remote mode in C# (Auth and SessionAuth in ninjascript/AddOns/Nt8Bridge/Protocol.cs, .NET Framework's own
HMACSHA256), compiled with mcs and run under Mono, against the golden session of tests/vectors/auth that
the Python side passes too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.dotnet import net_frames

VECTOR = json.loads((Path(__file__).parent.parent / "vectors" / "auth" / "session.json").read_text())
MSG = {v["name"]: v for v in VECTOR["messages"]}
SECRET = bytes.fromhex(VECTOR["secret_hex"])
CLIENT_NONCE = bytes.fromhex(VECTOR["client_nonce_hex"])


def net(data: bytes):
    from System import Array, Byte
    return Array[Byte](list(data))


def frames(name: str) -> list[bytes]:
    v = MSG[name]
    return [bytes.fromhex(v["header_hex"]), bytes.fromhex(v["body_hex"]), bytes.fromhex(v["trailer_hex"])]


def decoded(cs, name: str):
    """The message and header of a vector, decoded by the C# codec from its header and body."""
    msg, header = cs.Codec.Decode(net_frames(frames(name)[:2]), None)
    return msg, header


def welcomed(cs):
    """NT8's SessionAuth after sealing the golden HELLO and opening the golden WELCOME."""
    session = cs.SessionAuth(net(SECRET))
    hello, header = decoded(cs, "hello")
    session.SealHello(hello, header.Seq, header.TsSend, net(CLIENT_NONCE))
    assert session.OpenWelcome(net_frames(frames("welcome")))
    return session


def test_csharp_derives_the_golden_session_keys(cs):
    nt8, sidecar = cs.Auth.SessionKeys(net(SECRET), net(CLIENT_NONCE), net(bytes.fromhex(VECTOR["server_nonce_hex"])),
                                       None, None)
    assert (bytes(nt8).hex(), bytes(sidecar).hex()) == (VECTOR["k_nt8_hex"], VECTOR["k_sidecar_hex"])


def test_csharp_seals_hello_and_the_session_messages_byte_for_byte(cs):
    session = cs.SessionAuth(net(SECRET))
    hello, header = decoded(cs, "hello")
    sealed = session.SealHello(hello, header.Seq, header.TsSend, net(CLIENT_NONCE))
    assert [bytes(f) for f in sealed] == frames("hello")
    assert not session.Established
    assert session.OpenWelcome(net_frames(frames("welcome"))) and session.Established
    for name in ("tick", "heartbeat_nt8"):
        msg, h = decoded(cs, name)
        assert [bytes(f) for f in session.Seal(msg, h.Seq, h.TsSend, h.TsEcho)] == frames(name)


def test_csharp_accepts_the_sidecars_messages_once_and_in_order(cs):
    session = welcomed(cs)
    bracket, error = frames("bracket"), frames("error")
    assert session.Check(net_frames(bracket), 2) is None
    assert "replayed" in session.Check(net_frames(bracket), 2)  # the same bracket again
    assert session.Check(net_frames(error), 6) is None
    assert "replayed" in session.Check(net_frames(bracket), 2)  # an old one after a newer


@pytest.mark.parametrize("part", [0, 1, 2])
def test_csharp_refuses_a_sidecar_message_with_any_bit_flipped(cs, part):
    original = frames("bracket")
    for i in range(0, len(original[part]), 5):
        session = welcomed(cs)
        tampered = list(original)
        tampered[part] = original[part][:i] + bytes([original[part][i] ^ 0x01]) + original[part][i + 1:]
        assert "does not verify" in session.Check(net_frames(tampered), 2)


def test_csharp_refuses_a_welcome_under_another_secret_or_for_another_hello(cs):
    other = cs.SessionAuth(net(bytes(32)))
    hello, header = decoded(cs, "hello")
    other.SealHello(hello, header.Seq, header.TsSend, net(CLIENT_NONCE))
    assert not other.OpenWelcome(net_frames(frames("welcome")))
    fresh = cs.SessionAuth(net(SECRET))
    fresh.SealHello(hello, header.Seq, header.TsSend)  # a random nonce: the golden WELCOME answers another HELLO
    assert not fresh.OpenWelcome(net_frames(frames("welcome"))) and not fresh.Established


def test_csharp_reflected_heartbeat_does_not_verify(cs):
    """NT8's own HEARTBEAT sent back to it: sealed with k_nt8, checked with k_sidecar."""
    session = welcomed(cs)
    msg, h = decoded(cs, "heartbeat_nt8")
    own = session.Seal(msg, 50, h.TsSend, 0)
    assert "does not verify" in session.Check(own, 50)


def test_csharp_reads_a_secret_file_like_the_sidecar(cs, tmp_path):
    from bridge.transport.security import new_secret_file, read_secret_file

    path = new_secret_file(tmp_path / "secret")
    new_secret_file(path, rotate=True)
    assert bytes(cs.Auth.ReadSecretFile(str(path))) == read_secret_file(path)[0]  # the first line is the one in use
    bad = tmp_path / "bad"
    bad.write_text("# comment\nsensitive-but-not-hex\n")
    with pytest.raises(Exception) as info:
        cs.Auth.ReadSecretFile(str(bad))
    assert "line 2" in str(info.value) and "sensitive" not in str(info.value)
    with pytest.raises(Exception, match="cannot read the shared secret file"):
        cs.Auth.ReadSecretFile(str(tmp_path / "missing"))
