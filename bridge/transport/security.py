"""Remote mode at the sidecar: the shared secret's file, who may connect, and refusing replays.

The wire format (trailer, keys) is ``bridge/protocol/auth.py``; this module is the policy around it:

- the secret lives in a file of its own (``security.secret_file``), never in the TOML, which the audit
  trail records whole at every start; the file holds one secret per line in hex, the first being the
  one to use and the others still accepted, so that a secret can be rotated one NT8 box at a time;
- ``security.allow``: the IP addresses and networks that may open sessions (empty: any);
- a HELLO, or a signed control request, is accepted only when its send time is within
  ``security.hello_window_s`` of the sidecar's clock and its nonce was not seen inside that window
  (``ReplayGuard``): a recorded HELLO played again opens nothing and replaces no session;
- a sidecar that would listen beyond loopback without a secret (or a control channel without operator
  keys) refuses to start, with one line that says what to do (``exposure_problem``).

Nothing here logs a secret, and no repr shows one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as _random
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bridge.core.config import ConfigError, SecurityConfig, split_allow
from bridge.protocol.auth import parse_secret

SECRET_BYTES = 32  # what `nt8bridge secret new` writes: 256 bits
_REPLAY_CAPACITY = 100_000  # nonces remembered at most (each needed a valid MAC to get there)
_PEER_CACHE = 4096


# --- secret files ---------------------------------------------------------------------------------


def read_secret_file(path: str | Path) -> tuple[bytes, ...]:
    """The secrets of a secret file, the one in use first. Blank lines and ``#`` comments are skipped.
    Errors name the file and line, never the content."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the shared secret file {p}: {exc.strerror or exc}; create it with "
                          f"`nt8bridge secret new {p}` or correct security.secret_file") from None
    found: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(parse_secret(line))
        except ValueError as exc:
            raise ConfigError(f"{p} line {number} is not a usable secret ({exc}); create one with "
                              f"`nt8bridge secret new {p}`") from None
    if not found:
        raise ConfigError(f"{p} holds no secret; create one with `nt8bridge secret new {p}`")
    return tuple(found)


OPERATOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def read_toml_file(p: Path, what: str, unreadable_hint: str) -> dict:
    """A small TOML file of keys (``what`` names it in errors); ConfigError saying what to do when it cannot
    be read or parsed."""
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {p}: {exc.strerror or exc}; {unreadable_hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the {what} {p} is not valid TOML ({exc})") from None


def read_operators(path: str | Path) -> dict[str, bytes]:
    """The operators file: a TOML table ``[operators]`` of ``NAME = "HEX KEY"``. Every operator must hold a
    key of their own: two names with one key would let one person approve their own override."""
    p = Path(path)
    data = read_toml_file(p, "operators file", f"create it with `nt8bridge operator new NAME --operators {p}` or "
                          "correct security.operators_file")
    table = data.get("operators")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"the operators file {p} has no [operators] table of NAME = \"KEY\"; add operators with "
                          f"`nt8bridge operator new NAME --operators {p}`")
    keys: dict[str, bytes] = {}
    for name, value in table.items():
        if not OPERATOR_NAME.match(name):
            raise ConfigError(f"{p}: operator name {name!r}: letters, digits, '.', '_' and '-' only, at most 64")
        try:
            keys[name] = parse_secret(value if isinstance(value, str) else "")
        except ValueError as exc:
            raise ConfigError(f"{p}: the key of operator {name} is not usable ({exc}); make a new one with "
                              f"`nt8bridge operator new {name} --operators {p} --replace`") from None
    by_key: dict[bytes, str] = {}
    for name, key in keys.items():
        if key in by_key:
            raise ConfigError(f"{p}: operators {by_key[key]} and {name} hold the same key; each operator needs their "
                              f"own (`nt8bridge operator new {name} --operators {p} --replace`)")
        by_key[key] = name
    return keys


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (POSIX mode 600; on Windows the user's profile folders are
    private to the user already), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def new_secret_file(path: str | Path, rotate: bool = False) -> Path:
    """Write a fresh random secret to ``path``. ``rotate``: the new one goes first and the old ones stay
    below it, still accepted, until they are deleted from the file. Refuses to replace a secret otherwise."""
    p = Path(path)
    old: tuple[bytes, ...] = ()
    if p.exists():
        if not rotate:
            raise ConfigError(f"{p} exists: a new secret would lock out every NT8 that uses it; give --rotate to add "
                              "a new one in front of it (docs/security.md, key rotation), or choose another file")
        old = read_secret_file(p)
    lines = ["# nt8bridge shared secret (docs/security.md). The first line is used; the others are still accepted.",
             _random.token_hex(SECRET_BYTES), *(s.hex() for s in old)]
    write_private(p, "\n".join(lines) + "\n")
    return p


# --- replay -----------------------------------------------------------------------------------------


class ReplayGuard:
    """Accepts each nonce once, and only with a send time within ``window_ns`` of now (wall clock).

    A nonce is remembered until no copy of it could pass the time check any more. At most
    ``capacity`` are kept: beyond that the oldest is forgotten, which only someone who holds the secret
    and sends that many fresh HELLOs within one window could use, and such a peer needs no replay."""

    def __init__(self, window_ns: int, capacity: int = _REPLAY_CAPACITY) -> None:
        self.window_ns = window_ns
        self.capacity = capacity
        self._seen: set[bytes] = set()
        self._order: deque[tuple[int, bytes]] = deque()  # (forget after, nonce), in arrival order

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, nonce: bytes, sent_ns: int, now_ns: int | None = None) -> str | None:
        """None when fresh (and now remembered); else why it is refused."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        while self._order and self._order[0][0] < now_ns:
            self._seen.discard(self._order.popleft()[1])
        skew = sent_ns - now_ns
        if abs(skew) > self.window_ns:
            return (f"sent {skew / 1e9:+.1f} s from the sidecar's clock, outside the {self.window_ns / 1e9:g} s "
                    "window (security.hello_window_s): a replay, or clocks apart; keep both on NTP")
        if nonce in self._seen:
            return "its nonce was seen already: a replay"
        # a copy is refused by time once now > sent + window, and sent <= now + window here
        self._order.append((now_ns + 2 * self.window_ns, nonce))
        self._seen.add(nonce)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft()[1])
        return None


# --- exposure ---------------------------------------------------------------------------------------


def endpoint_host(endpoint: str) -> str | None:
    """The host of a ``tcp://host:port`` endpoint as written (``*`` included); None for other transports."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return host.strip("[]") if host else None


def is_local_endpoint(endpoint: str) -> bool:
    """True when only this machine can reach ``endpoint``: tcp on a loopback address or localhost, ipc,
    inproc. Anything else (``*``, an interface, another address, a host name) counts as reachable."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(bind: str, control_bind: str, security: Security) -> str | None:
    """Why this sidecar must not start as configured, in one line that says what to do; None when it may."""
    if not is_local_endpoint(bind) and not security.remote:
        return (f"server.bind {bind} is reachable from other machines, and remote mode needs a shared secret: "
                "create one with `nt8bridge secret new FILE` and set security.secret_file (docs/security.md), "
                "or bind tcp://127.0.0.1:PORT")
    if control_bind and not is_local_endpoint(control_bind) and security.operators is None:
        return (f"server.control_bind {control_bind} is reachable from other machines, and the control channel then "
                "needs operator keys: create them with `nt8bridge operator new NAME` and set security.operators_file "
                "(docs/security.md), or bind it to tcp://127.0.0.1:PORT")
    return None


# --- the sidecar's security state -------------------------------------------------------------------


@dataclass
class Security:
    """What the server enforces: ``secrets`` (empty: no authentication on the data channel), the
    allowlist (empty: anyone), the operators' keys (None: unsigned control requests), and the replay
    guards of HELLOs and of control requests."""

    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    window_s: float = 30.0
    operators: dict[str, bytes] | None = field(default=None, repr=False)
    remote: bool = field(init=False)  # every message on the data channel is authenticated
    guarded: bool = field(init=False)  # the server looks at a message before decoding it (remote mode or an allowlist)
    hello_guard: ReplayGuard = field(init=False, repr=False)
    control_guard: ReplayGuard = field(init=False, repr=False)
    _peers: dict[str, bool] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # plain attributes, not properties: the server reads them for every message
        self.remote = bool(self.secrets)
        self.guarded = self.remote or bool(self.allow)
        window_ns = int(self.window_s * 1e9)
        self.hello_guard = ReplayGuard(window_ns)
        self.control_guard = ReplayGuard(window_ns)

    @classmethod
    def from_config(cls, cfg: SecurityConfig) -> Security:
        """Read the files the configuration names; ConfigError (naming the file) when one is unusable."""
        return cls(secrets=read_secret_file(cfg.secret_file) if cfg.secret_file else (),
                   allow=tuple(ipaddress.ip_network(e, strict=False) for e in split_allow(cfg.allow)),
                   window_s=cfg.hello_window_s,
                   operators=read_operators(cfg.operators_file) if cfg.operators_file else None)

    def allows(self, peer: str | None) -> bool:
        """Whether ``peer`` (an IP address as libzmq reports it; anything else is no address) may connect."""
        if not self.allow:
            return True
        known = self._peers.get(peer or "")
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            allowed = False  # no address to check: refused when an allowlist exists
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            allowed = any(address.version == net.version and address in net for net in self.allow)
        if len(self._peers) >= _PEER_CACHE:
            self._peers.clear()
        self._peers[peer or ""] = allowed
        return allowed

    def describe(self) -> dict[str, object]:
        """For ``status``: what is enforced, without a single secret."""
        return {"remote": self.remote, "secrets": len(self.secrets), "allow": [str(n) for n in self.allow],
                "hello_window_s": self.window_s,
                "operators": sorted(self.operators) if self.operators is not None else None}


def client_secret(cfg: SecurityConfig) -> bytes | None:
    """The secret a client of this configuration's sidecar sends HELLO with (the first of the file), or
    None when the sidecar is not in remote mode: what a playback, a backtest or a demo uses against the
    sidecar it starts from the same configuration."""
    return read_secret_file(cfg.secret_file)[0] if cfg.secret_file else None
