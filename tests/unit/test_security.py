"""Remote mode's policy (bridge/transport/security.py) and the operators' signed control requests
(bridge/transport/operators.py): secret files, the allowlist, replay guards, what may listen where,
and every way a control request can be unsigned, forged, stale, replayed or self-approved."""

from __future__ import annotations

import os
import stat
import sys
from ipaddress import ip_network

import pytest

from bridge.core.config import ConfigError, SecurityConfig, build_config
from bridge.protocol.messages import ErrorCode
from bridge.transport import operators as ops
from bridge.transport.operators import ControlAuthError, OperatorKey
from bridge.transport.security import (ReplayGuard, Security, exposure_problem, is_local_endpoint, new_secret_file,
                                       read_operators, read_secret_file)

S = 1_000_000_000
NOW = 1_700_000_000 * S


# --- secret files -----------------------------------------------------------------------------------

def test_a_new_secret_file_is_private_and_rotation_keeps_the_old_secret_second(tmp_path):
    path = new_secret_file(tmp_path / "secret")
    (first,) = read_secret_file(path)
    assert len(first) == 32
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ConfigError, match="--rotate"):
        new_secret_file(path)
    assert read_secret_file(path) == (first,)  # refused: nothing changed
    new_secret_file(path, rotate=True)
    newer, old = read_secret_file(path)
    assert old == first and newer != first


def test_a_broken_secret_file_names_file_and_line_but_never_the_content(tmp_path):
    path = tmp_path / "secret"
    path.write_text("# comment\n\nnot-a-secret-at-all-but-sensitive\n")
    with pytest.raises(ConfigError) as info:
        read_secret_file(path)
    assert "line 3" in str(info.value) and "sensitive" not in str(info.value)
    with pytest.raises(ConfigError, match="nt8bridge secret new"):
        read_secret_file(tmp_path / "missing")


# --- replay guard ---------------------------------------------------------------------------------

def test_the_replay_guard_takes_a_nonce_once_and_only_fresh():
    guard = ReplayGuard(30 * S)
    assert guard.check(b"a", NOW, NOW) is None
    assert "seen" in guard.check(b"a", NOW, NOW + 1 * S)
    assert "outside" in guard.check(b"b", NOW - 31 * S, NOW)
    assert "outside" in guard.check(b"c", NOW + 31 * S, NOW)
    assert guard.check(b"d", NOW + 29 * S, NOW) is None  # a clock a little ahead is fine
    # long after, the old nonce is forgotten (its time alone refuses a copy) and the guard does not grow
    assert "outside" in guard.check(b"a", NOW, NOW + 120 * S)
    assert len(guard) == 0


def test_the_replay_guard_is_bounded():
    guard = ReplayGuard(30 * S, capacity=10)
    for i in range(50):
        assert guard.check(i.to_bytes(4, "little"), NOW, NOW) is None
    assert len(guard) == 10


# --- who may connect, and where the sidecar may listen ----------------------------------------------

def test_the_allowlist_takes_addresses_and_networks_and_refuses_what_is_not_an_address():
    sec = Security(allow=(ip_network("10.1.2.0/24"), ip_network("192.168.7.9/32"), ip_network("fd00::/8")))
    assert sec.allows("10.1.2.200") and sec.allows("192.168.7.9") and sec.allows("fd00::1")
    assert sec.allows("::ffff:10.1.2.3")  # an IPv4 peer on a dual-stack socket
    assert not sec.allows("10.1.3.1") and not sec.allows("127.0.0.1") and not sec.allows("routing id 00ab")
    assert not sec.allows(None)
    assert Security().allows("203.0.113.5") and Security().allows(None)  # no allowlist: anyone


def test_security_from_config_validates_the_allowlist():
    with pytest.raises(ConfigError, match="security.allow"):
        build_config({"security": {"allow": "10.0.0.0/8, not-an-ip"}}, env={})
    cfg = build_config({}, env={"NT8BRIDGE_SECURITY__ALLOW": "10.0.0.0/8 192.168.1.5"})
    assert [str(n) for n in Security.from_config(cfg.security).allow] == ["10.0.0.0/8", "192.168.1.5/32"]


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.0.0.1:*", True), ("tcp://[::1]:5555", True),
    ("tcp://localhost:5555", True), ("ipc:///tmp/nt8bridge", True), ("inproc://x", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://10.0.0.5:5555", False),
    ("tcp://eth0:5555", False), ("tcp://sidecar.example:5555", False), ("tcp://[::]:5555", False),
])
def test_what_counts_as_reachable_only_from_this_machine(endpoint, local):
    assert is_local_endpoint(endpoint) is local


def test_a_sidecar_beyond_loopback_needs_the_secret_and_its_control_channel_operator_keys():
    off, remote = Security(), Security(secrets=(bytes(32),))
    assert exposure_problem("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", off) is None
    line = exposure_problem("tcp://0.0.0.0:5555", "tcp://127.0.0.1:5556", off)
    assert "nt8bridge secret new" in line and "security.secret_file" in line and "\n" not in line
    assert exposure_problem("tcp://0.0.0.0:5555", "tcp://127.0.0.1:5556", remote) is None
    line = exposure_problem("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5556", remote)
    assert "security.operators_file" in line
    assert exposure_problem("tcp://0.0.0.0:5555", "", remote) is None  # no control channel at all
    with_ops = Security(secrets=(bytes(32),), operators={"alice": bytes(32)})
    assert exposure_problem("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5556", with_ops) is None


def test_nothing_secret_shows_in_a_repr_or_the_status(tmp_path):
    path = new_secret_file(tmp_path / "secret")
    alice = ops.new_operator_key("alice", tmp_path / "alice.key", tmp_path / "ops.toml")
    sec = Security.from_config(SecurityConfig(secret_file=str(path), operators_file=str(tmp_path / "ops.toml")))
    text = repr(sec) + repr(sec.describe()) + repr(alice)
    for secret in (*sec.secrets, alice.key):
        assert secret.hex() not in text and repr(secret) not in text
    assert sec.describe()["operators"] == ["alice"] and sec.describe()["remote"] is True


# --- operator keys ---------------------------------------------------------------------------------

def test_operator_keys_are_written_private_and_read_back(tmp_path):
    alice = ops.new_operator_key("alice", tmp_path / "alice.key", tmp_path / "ops.toml")
    bob = ops.new_operator_key("bob", tmp_path / "bob.key", tmp_path / "ops.toml")
    assert ops.read_operator_key(tmp_path / "alice.key") == alice
    assert read_operators(tmp_path / "ops.toml") == {"alice": alice.key, "bob": bob.key}
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(tmp_path / "alice.key").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "ops.toml").st_mode) == 0o600
    with pytest.raises(ConfigError, match="--replace"):
        ops.new_operator_key("alice", tmp_path / "alice2.key", tmp_path / "ops.toml")
    renewed = ops.new_operator_key("alice", tmp_path / "alice.key", tmp_path / "ops.toml", replace=True)
    assert renewed.key != alice.key and read_operators(tmp_path / "ops.toml")["alice"] == renewed.key


def test_an_operators_file_where_two_operators_share_a_key_is_refused(tmp_path):
    key = "ab" * 32
    path = tmp_path / "ops.toml"
    path.write_text(f'[operators]\nalice = "{key}"\nbob = "{key}"\n')
    with pytest.raises(ConfigError, match="alice and bob hold the same key"):
        read_operators(path)


# --- signed control requests -------------------------------------------------------------------------

ALICE, BOB, CAROL = OperatorKey("alice", b"a" * 32), OperatorKey("bob", b"b" * 32), OperatorKey("carol", b"c" * 32)
KEYS = {k.name: k.key for k in (ALICE, BOB, CAROL)}
OVERRIDE = {"cmd": "override", "operator": "", "reason": "", "scope": "*", "field": "max_position", "value": 8,
            "who": "alice", "why": "roll", "approved_by": "bob", "duration_s": 600.0}


def verify(req, keys=KEYS, guard=None, now=NOW):
    return ops.verify_request(req, keys, guard if guard is not None else ReplayGuard(30 * S), now)


def refused(req, code, **kw):
    with pytest.raises(ControlAuthError) as info:
        verify(req, **kw)
    assert info.value.code is code, info.value
    return str(info.value)


def test_a_signed_request_verifies_and_names_its_signer():
    req = ops.sign_request({"cmd": "kill", "operator": "alice", "reason": "r"}, ALICE, now_ns=NOW)
    assert verify(req) == "alice"
    assert verify(ops.sign_request({"cmd": "status", "operator": "", "reason": ""}, BOB, now_ns=NOW)) == "bob"


def test_unsigned_wrong_key_unknown_operator_and_altered_requests_are_refused():
    base = {"cmd": "kill", "operator": "alice", "reason": "r"}
    refused(base, ErrorCode.AUTH_REQUIRED)
    refused(ops.sign_request(base, OperatorKey("alice", b"x" * 32), now_ns=NOW), ErrorCode.AUTH_BAD_MAC)
    refused(ops.sign_request({**base, "operator": "mallory"}, OperatorKey("mallory", b"m" * 32), now_ns=NOW),
            ErrorCode.AUTH_BAD_MAC)
    signed = ops.sign_request(base, ALICE, now_ns=NOW)
    refused({**signed, "reason": "something else"}, ErrorCode.AUTH_BAD_MAC)
    refused({**signed, "mac": "zz"}, ErrorCode.AUTH_REQUIRED)


def test_stale_and_replayed_requests_are_refused():
    guard = ReplayGuard(30 * S)
    signed = ops.sign_request({"cmd": "kill", "operator": "alice", "reason": "r"}, ALICE, now_ns=NOW)
    assert verify(signed, guard=guard) == "alice"
    refused(signed, ErrorCode.AUTH_REPLAY, guard=guard)
    stale = ops.sign_request({"cmd": "kill", "operator": "alice", "reason": "r"}, ALICE, now_ns=NOW - 60 * S)
    refused(stale, ErrorCode.AUTH_REPLAY, guard=guard)


def test_an_operator_signs_only_their_own_commands():
    text = refused(ops.sign_request({"cmd": "enable", "operator": "bob", "reason": "r"}, ALICE, now_ns=NOW),
                   ErrorCode.AUTH_BAD_MAC)
    assert "signed by 'alice'" in text


def test_an_override_needs_the_approvers_own_valid_key():
    signed = ops.sign_request(OVERRIDE, ALICE, now_ns=NOW)
    assert verify(ops.approve_request(signed, BOB)) == "alice"
    refused(signed, ErrorCode.AUTH_REQUIRED)  # no approval at all
    refused(ops.approve_request(signed, CAROL), ErrorCode.AUTH_BAD_MAC)  # carol's key, bob named
    refused(ops.approve_request(signed, OperatorKey("bob", b"z" * 32)), ErrorCode.AUTH_BAD_MAC)
    self_approved = ops.sign_request({**OVERRIDE, "approved_by": "alice"}, ALICE, now_ns=NOW)
    refused(ops.approve_request(self_approved, ALICE), ErrorCode.AUTH_APPROVER_SAME_KEY)


def test_an_override_approved_under_another_name_with_the_same_key_is_refused():
    shared = {"alice": b"k" * 32, "bob": b"k" * 32}
    signed = ops.sign_request(OVERRIDE, OperatorKey("alice", b"k" * 32), now_ns=NOW)
    refused(ops.approve_request(signed, OperatorKey("bob", b"k" * 32)), ErrorCode.AUTH_APPROVER_SAME_KEY, keys=shared)
