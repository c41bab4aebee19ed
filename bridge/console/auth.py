"""Who may use the console, and whether it may listen where it is told to.

On loopback (the default, ``console.bind = 127.0.0.1:8080``) nobody else can reach the console, so it
needs no login: every browser on the desk's own machine may use it (the page still guards its POSTs
against cross-site requests, bridge/console/csrf.py). Anything else must have a credential and HTTPS,
or the console refuses to start (:func:`exposure_problem`): a web page that can press KILL must not
be reachable by anyone on the network, nor its operator's password readable on the wire.

Credentials (paths in the config, never the secrets themselves: the configuration is an audit record):

- ``console.token_file``: bearer tokens for scripts, one a line (``#`` comments and blank lines skipped;
  ``nt8bridge secret new FILE`` writes one), sent as ``Authorization: Bearer TOKEN``;
- ``console.users_file``: TOML ``[users] NAME = "pbkdf2_sha256$ITERATIONS$SALT$HASH"`` (written by
  ``nt8bridge console user NAME --file FILE``), checked with PBKDF2-HMAC-SHA256 and a constant-time
  comparison, by HTTP Basic or the login form (which sets a signed session cookie). The user's name is
  the operator of everything they do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from bridge.core.config import ConfigError, ConsoleConfig

__all__ = ["Authenticator", "Identity", "exposure_problem", "hash_password", "is_loopback_host", "parse_bind",
           "read_tokens", "read_users", "verify_password", "write_user"]

log = logging.getLogger("nt8bridge.console.auth")

SCHEME = "pbkdf2_sha256"
# OWASP's 2023 figure for PBKDF2-HMAC-SHA256; about half a second here, paid once per login (verified
# passwords are remembered for CACHE_S so HTTP Basic does not pay it on every request)
DEFAULT_ITERATIONS = 600_000
MAX_ITERATIONS = 10_000_000  # a users file naming more is a mistake (or an attempt to make logins hang)
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as operator names (bridge/transport/security.py)
SESSION_COOKIE = "nt8bridge_session"
SESSION_S = 12 * 3600  # a desk shift; the operator logs in again after it
CACHE_S = 600.0
FAILURES_ALLOWED = 10  # failed logins per client address within FAILURE_WINDOW_S before it must wait
FAILURE_WINDOW_S = 300.0


# --------------------------------------------------------------------------- passwords


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (salt and hash in hex) of ``password``."""
    if not password:
        raise ValueError("an empty password is not a password")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be within 1..{MAX_ITERATIONS}")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def _parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"not {SCHEME}$ITERATIONS$SALT$HASH")
    try:
        iterations, salt, digest = int(parts[1]), bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        raise ValueError("ITERATIONS must be a number, SALT and HASH hexadecimal") from None
    if not 1 <= iterations <= MAX_ITERATIONS or not salt or len(digest) != 32:
        raise ValueError(f"ITERATIONS must be within 1..{MAX_ITERATIONS}, SALT non-empty, HASH 32 bytes")
    return iterations, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` is the one ``encoded`` was made from (constant-time comparison)."""
    try:
        iterations, salt, digest = _parse_hash(encoded)
    except ValueError:
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(candidate, digest)


# --------------------------------------------------------------------------- files


def read_users(path: str | Path) -> dict[str, str]:
    """NAME -> encoded hash from a users file; a ConfigError names the file and what is wrong."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read console.users_file {p}: {exc.strerror or exc}; create it with "
                          f"`nt8bridge console user NAME --file {p}`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"console.users_file {p} is not valid TOML: {exc}") from None
    users = doc.get("users")
    if not isinstance(users, dict) or not users:
        raise ConfigError(f"console.users_file {p} has no [users] table with at least one user; add one with "
                          f"`nt8bridge console user NAME --file {p}`")
    for name, encoded in users.items():
        if not USER_NAME.match(name):
            raise ConfigError(f"console.users_file {p}: user name {name!r} must be letters, digits, '.', '_' or '-' "
                              "(at most 64)")
        try:
            _parse_hash(encoded if isinstance(encoded, str) else "")
        except ValueError as exc:
            raise ConfigError(f"console.users_file {p}: the password hash of {name} is not usable ({exc}); set it "
                              f"again with `nt8bridge console user {name} --file {p}`") from None
    return dict(users)


def write_user(path: str | Path, name: str, password: str, iterations: int = DEFAULT_ITERATIONS) -> bool:
    """Add ``name`` to a users file (created if missing, readable by its owner only) or change their
    password; returns True when the user was new."""
    from bridge.transport.security import write_private

    if not USER_NAME.match(name):
        raise ConfigError(f"user name {name!r} must be letters, digits, '.', '_' or '-' (at most 64), starting with "
                          "a letter or digit")
    p = Path(path)
    users = read_users(p) if p.exists() else {}
    new = name not in users
    users[name] = hash_password(password, iterations)
    lines = ["# nt8bridge console users (docs/console.md): NAME = PBKDF2-HMAC-SHA256 hash of the password.",
             "# Add or change one with `nt8bridge console user NAME --file THIS_FILE`.", "[users]"]
    lines += [f'"{n}" = "{h}"' for n, h in sorted(users.items())]
    write_private(p, "\n".join(lines) + "\n")
    return new


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """The bearer tokens of a token file: every line but blanks and ``#`` comments."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read console.token_file {p}: {exc.strerror or exc}; create it with "
                          f"`nt8bridge secret new {p}`") from None
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not tokens:
        raise ConfigError(f"console.token_file {p} holds no token; create one with `nt8bridge secret new {p}`")
    if any(len(t) < 16 for t in tokens):
        raise ConfigError(f"console.token_file {p}: a token shorter than 16 characters is guessable; create one "
                          f"with `nt8bridge secret new {p}`")
    return tokens


# --------------------------------------------------------------------------- where it listens


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port); a ValueError says what is expected."""
    host, sep, port = bind.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"console bind {bind!r} is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080)")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str) -> bool:
    """True when only this machine can reach ``host`` (a loopback address, or localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost, 0.0.0.0, '::': reachable from elsewhere


def exposure_problem(console: ConsoleConfig, bind: str | None = None) -> str | None:
    """Why the console must not start on ``bind`` (default ``console.bind``), in one line that names what
    to set; None when it may."""
    bind = bind or console.bind
    host, _port = parse_bind(bind)
    if is_loopback_host(host):
        return None
    needs = []
    if not (console.users_file or console.token_file):
        needs.append("a credential (console.users_file, see `nt8bridge console user NAME --file FILE`, or "
                     "console.token_file)")
    if not (console.tls_cert and console.tls_key):
        needs.append("HTTPS (console.tls_cert and console.tls_key)")
    if not needs:
        return None
    return (f"console bind {bind} is reachable from other machines and needs {' and '.join(needs)}: set them, or "
            "bind 127.0.0.1:PORT (docs/console.md)")


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Identity:
    """Who made a request. ``user`` is a logged-in user's name (the operator of what they do); None for
    a bearer token or the loopback console without login, whose requests name their operator."""

    method: str  # "none" (loopback, no credentials configured), "bearer", "basic", "session"
    user: str | None = None


class Authenticator:
    """Checks a request's credentials against the configured token and users files (read once at start)."""

    def __init__(self, tokens: tuple[str, ...] = (), users: Mapping[str, str] | None = None,
                 secure_cookies: bool = False, clock=time.time) -> None:
        self.tokens = tuple(tokens)
        self.users = dict(users or {})
        self.secure_cookies = secure_cookies
        self._clock = clock
        self._key = secrets.token_bytes(32)  # signs session cookies; a restart logs everyone out
        self._verified: dict[bytes, float] = {}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, console: ConsoleConfig) -> Authenticator:
        tokens = read_tokens(console.token_file) if console.token_file else ()
        users = read_users(console.users_file) if console.users_file else {}
        return cls(tokens, users, secure_cookies=bool(console.tls_cert and console.tls_key))

    @property
    def required(self) -> bool:
        """Whether requests need credentials: any are configured (on loopback too)."""
        return bool(self.tokens or self.users)

    def authenticate(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Identity | None:
        """The request's identity, or None when it has none that is valid."""
        if not self.required:
            return Identity("none")
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and self.tokens:
            token = value.strip().encode()
            if any(hmac.compare_digest(token, t.encode()) for t in self.tokens):
                return Identity("bearer")
            return None
        if scheme.lower() == "basic" and self.users:
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return Identity("basic", name) if self.check_password(name, password) else None
        session = cookies.get(SESSION_COOKIE)
        if session:
            name = self.session_user(session)
            if name is not None:
                return Identity("session", name)
        return None

    def check_password(self, name: str, password: str) -> bool:
        encoded = self.users.get(name)
        if encoded is None:
            return False
        # verified pairs are remembered by an HMAC of them under the process key, never in clear
        mark = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        now = self._clock()
        with self._lock:
            until = self._verified.get(mark)
        if until is not None and until > now:
            return True
        if not verify_password(password, encoded):
            return False
        with self._lock:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[mark] = now + CACHE_S
        return True

    # --- the login form's session cookie ---

    def issue_session(self, name: str) -> str:
        expires = int(self._clock()) + SESSION_S
        body = f"{name}|{expires}"
        sig = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        return base64.urlsafe_b64encode(f"{body}|{sig}".encode()).decode().rstrip("=")

    def session_user(self, cookie: str) -> str | None:
        try:
            text = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)).decode("utf-8")
            name, expires, sig = text.split("|")
            expected = hmac.new(self._key, f"{name}|{expires}".encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(sig, expected) or int(expires) < self._clock() or name not in self.users:
                return None
        except (ValueError, UnicodeDecodeError):
            return None
        return name

    # --- guessing ---

    def too_many_failures(self, client: str) -> bool:
        """Whether ``client`` (an address) failed FAILURES_ALLOWED logins within FAILURE_WINDOW_S."""
        now = self._clock()
        with self._lock:
            recent = self._failures.get(client)
            while recent and recent[0] < now - FAILURE_WINDOW_S:
                recent.popleft()
            return bool(recent) and len(recent) >= FAILURES_ALLOWED

    def failed(self, client: str) -> None:
        with self._lock:
            if len(self._failures) > 10_000:  # bounded: many addresses guessing at once get counted afresh
                self._failures.clear()
            self._failures.setdefault(client, deque(maxlen=FAILURES_ALLOWED * 2)).append(self._clock())
        log.warning("console: failed login from %s", client)

