"""Operators on the control channel, each with a key of their own (remote mode, docs/security.md).

With ``security.operators_file`` set, a control request must be signed. A signed request is the
request's JSON object with four more fields: ``signer`` (the operator whose key signed it), ``ts_ns``
(wall clock, ns), ``nonce`` (16 random bytes, hex) and ``mac``, the hex HMAC-SHA256 under the signer's
key of the canonical request: the object without ``mac`` and ``approver_mac``, as JSON with sorted keys,
no spaces, ASCII only. Both ends are Python and parse and print JSON the same way, so the sidecar
rebuilds the very bytes that were signed.

The sidecar checks (``verify_request``) that the signer is a known operator and the MAC verifies
(constant time), that the request is fresh and its nonce new (``ReplayGuard``), that the signer is the
operator the request names (one cannot act under another's name), and for an override that the approver
signed the same bytes with their own key, which must differ from the operator's: the second person of an
override is only a second person if they hold a second key.

An operator's key file (``nt8bridge operator new``) is private to that operator; the sidecar's operators
file holds every operator's key, so it is as secret as the shared secret.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets as _random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.core.config import ConfigError
from bridge.core.errors import ControlError
from bridge.protocol.auth import mac, parse_secret
from bridge.protocol.messages import ErrorCode
from bridge.transport.security import OPERATOR_NAME, ReplayGuard, read_operators, read_toml_file, write_private

ENV_KEY = "NT8BRIDGE_OPERATOR_KEY"  # path of the operator's key file, for every command that talks to the sidecar
ENV_APPROVER_KEY = "NT8BRIDGE_APPROVER_KEY"  # path of the approver's key file, for `risk override`
KEY_BYTES = 32
_UNSIGNED = ("mac", "approver_mac")
# the commands that act in an operator's name, and the field that names them
_ACTOR_FIELD = {"kill": "operator", "enable": "operator", "shutdown": "operator", "set_limit": "operator",
                "override": "who"}


class ControlAuthError(ControlError):
    """A control request refused by remote mode; ``code`` is one of the AUTH_* codes."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code


@dataclass(frozen=True)
class OperatorKey:
    name: str
    key: bytes = field(repr=False)


# --- key files --------------------------------------------------------------------------------------


def read_operator_key(path: str | Path) -> OperatorKey:
    """An operator's key file: TOML with ``operator = "NAME"`` and ``key = "HEX"``."""
    p = Path(path)
    data = read_toml_file(p, "operator key file", f"give --key FILE (or set {ENV_KEY}) to the file `nt8bridge "
                          "operator new` wrote")
    name = data.get("operator")
    if not isinstance(name, str) or not OPERATOR_NAME.match(name):
        raise ConfigError(f"the operator key file {p} has no valid operator = \"NAME\"")
    try:
        key = parse_secret(data.get("key") if isinstance(data.get("key"), str) else "")
    except ValueError as exc:
        raise ConfigError(f"the key in {p} is not usable ({exc}); make a new one with `nt8bridge operator new "
                          f"{name} --replace`") from None
    return OperatorKey(name, key)


def new_operator_key(name: str, key_file: str | Path, operators_file: str | Path | None = None,
                     replace: bool = False) -> OperatorKey:
    """A fresh key for ``name``: written to ``key_file`` (private to that operator) and, when given, put in
    the sidecar's ``operators_file`` (created if missing). ``replace``: a new key for an operator who has
    one (rotation, or a lost key); otherwise an existing key file or entry is left alone and refused."""
    if not OPERATOR_NAME.match(name):
        raise ConfigError(f"operator name {name!r}: letters, digits, '.', '_' and '-' only, at most 64")
    key_path = Path(key_file)
    if key_path.exists() and not replace:
        raise ConfigError(f"{key_path} exists; give --replace to make a new key for {name} (the old one stops working "
                          "once the sidecar's operators file has the new one and it restarted)")
    operators: dict[str, bytes] = {}
    ops_path = Path(operators_file) if operators_file else None
    if ops_path is not None and ops_path.exists():
        operators = read_operators(ops_path)
        if name in operators and not replace:
            raise ConfigError(f"{ops_path} has a key for {name} already; give --replace for a new one")
    key = _random.token_bytes(KEY_BYTES)
    write_private(key_path, f"# nt8bridge operator key of {name}: private to {name} (docs/security.md)\n"
                            f'operator = "{name}"\nkey = "{key.hex()}"\n')
    if ops_path is not None:
        operators[name] = key
        lines = ["# nt8bridge operators: every operator's control-channel key (security.operators_file); as secret "
                 "as the shared secret (docs/security.md)", "[operators]"]
        lines += [f'{n} = "{k.hex()}"' for n, k in sorted(operators.items())]
        write_private(ops_path, "\n".join(lines) + "\n")
    return OperatorKey(name, key)


def key_from_env(variable: str = ENV_KEY) -> OperatorKey | None:
    path = os.environ.get(variable, "").strip()
    return read_operator_key(path) if path else None


# --- signing ----------------------------------------------------------------------------------------


def canonical(req: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the request without its MACs, as sorted compact ASCII JSON."""
    body = {k: v for k, v in req.items() if k not in _UNSIGNED}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_request(req: dict[str, Any], key: OperatorKey, *, now_ns: int | None = None,
                 nonce: str | None = None) -> dict[str, Any]:
    """``req`` signed by ``key``'s operator (a new dict)."""
    signed = {k: v for k, v in req.items() if k not in _UNSIGNED}
    signed.update(signer=key.name, ts_ns=time.time_ns() if now_ns is None else now_ns,
                  nonce=_random.token_hex(16) if nonce is None else nonce)
    signed["mac"] = mac(key.key, canonical(signed)).hex()
    return signed


def approve_request(signed: dict[str, Any], approver: OperatorKey) -> dict[str, Any]:
    """An override signed by its operator, with the approver's signature over the same bytes added."""
    return {**signed, "approver_mac": mac(approver.key, canonical(signed)).hex()}


def _mac_field(req: dict[str, Any], name: str) -> bytes | None:
    value = req.get(name)
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def verify_request(req: dict[str, Any], operators: dict[str, bytes], guard: ReplayGuard,
                   now_ns: int | None = None) -> str:
    """The signer of a control request when everything holds; ControlAuthError (with its code) otherwise."""
    signer, got = req.get("signer"), _mac_field(req, "mac")
    if not isinstance(signer, str) or got is None or "ts_ns" not in req or "nonce" not in req:
        raise ControlAuthError(ErrorCode.AUTH_REQUIRED, "this sidecar takes only signed control requests: give --key "
                               f"FILE (or set {ENV_KEY}) with your operator key (docs/security.md)")
    body = canonical(req)
    key = operators.get(signer)
    # an unknown name and a wrong key get the same answer: the channel does not say who exists
    if key is None or not hmac.compare_digest(mac(key, body), got):
        raise ControlAuthError(ErrorCode.AUTH_BAD_MAC, f"the signature of {signer!r} does not verify: not an operator "
                               "of this sidecar, or not their key")
    ts, nonce = req.get("ts_ns"), req.get("nonce")
    if isinstance(ts, bool) or not isinstance(ts, int) or not isinstance(nonce, str) or len(nonce) < 16:
        raise ControlAuthError(ErrorCode.AUTH_REPLAY, "ts_ns must be an integer and nonce a random hex string")
    why = guard.check(nonce.encode(), ts, now_ns)
    if why is not None:
        raise ControlAuthError(ErrorCode.AUTH_REPLAY, f"request {why}")
    cmd = req.get("cmd")
    actor_field = _ACTOR_FIELD.get(cmd)
    if actor_field is not None:
        actor = req.get(actor_field)
        actor = actor.strip() if isinstance(actor, str) else ""
        if actor != signer:
            raise ControlAuthError(ErrorCode.AUTH_BAD_MAC, f"the request acts as {actor!r} ({actor_field}) but is "
                                   f"signed by {signer!r}: an operator signs only their own commands")
    if cmd == "override":
        _verify_approval(req, body, signer, operators)
    return signer


def _verify_approval(req: dict[str, Any], body: bytes, signer: str, operators: dict[str, bytes]) -> None:
    approver = req.get("approved_by")
    approver = approver.strip() if isinstance(approver, str) else ""
    got = _mac_field(req, "approver_mac")
    if not approver or got is None:
        raise ControlAuthError(ErrorCode.AUTH_REQUIRED, "an override needs its approver's signature: the approver "
                               f"gives --approver-key FILE (or {ENV_APPROVER_KEY}) with their own key")
    key = operators.get(approver)
    if approver == signer or (key is not None and hmac.compare_digest(key, operators[signer])):
        raise ControlAuthError(ErrorCode.AUTH_APPROVER_SAME_KEY, f"the override is approved by {approver!r} with the "
                               "operator's own key: a second person must approve it with their own key")
    if key is None or not hmac.compare_digest(mac(key, body), got):
        raise ControlAuthError(ErrorCode.AUTH_BAD_MAC, f"the approval of {approver!r} does not verify: not an "
                               "operator of this sidecar, or not their key")
