"""What keeps another web page from acting through an operator's browser.

A page on any site can make the browser send a POST to http://127.0.0.1:8080, with the console's
cookies (or cached Basic credentials) attached; it cannot read the console's cookies nor set custom
headers across origins. So a state-changing request must carry:

- the double-submit token: the ``nt8bridge_csrf`` cookie, set by ``GET /``, repeated in the
  ``X-CSRF-Token`` header (only a script of the console's own origin can read the cookie to do so);
- an ``Origin`` (else ``Referer``) of the console's own origin.

A request authenticated by a bearer token is exempt: a browser never attaches one by itself, so a
forged request cannot carry it. On a loopback bind the ``Host`` header must name loopback as well,
which defeats DNS rebinding (a hostile name resolved to 127.0.0.1 has its own name in ``Host``).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from typing import Mapping
from urllib.parse import urlsplit

__all__ = ["COOKIE", "HEADER", "check_post", "host_allowed", "new_token", "same_origin"]

COOKIE = "nt8bridge_csrf"
HEADER = "x-csrf-token"
_LOCAL_NAMES = ("localhost",)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _default_port(scheme: str) -> int:
    return 443 if scheme in ("https", "wss") else 80


def _split_host(host: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{host}")
        return (parts.hostname or "").lower(), parts.port or _default_port(scheme)
    except ValueError:
        return None


def same_origin(url: str, scheme: str, host_header: str) -> bool:
    """Whether ``url`` (an Origin or Referer) is the origin the request was sent to (``scheme``, ``Host``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if not parts.scheme or not parts.hostname:
        return False
    own = _split_host(host_header, scheme)
    if own is None:
        return False
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return (parts.scheme.lower() == http_scheme and parts.hostname.lower() == own[0]
            and (port or _default_port(parts.scheme)) == own[1])


def check_post(headers: Mapping[str, str], cookies: Mapping[str, str], scheme: str) -> str | None:
    """Why this state-changing request is refused (one sentence), or None when it passes."""
    cookie = cookies.get(COOKIE, "")
    header = headers.get(HEADER, "")
    if not cookie or not header or not hmac.compare_digest(cookie.encode(), header.encode()):
        return ("CSRF check failed: send the nt8bridge_csrf cookie (set by GET /) back in the X-CSRF-Token header "
                "(the console's page does)")
    host = headers.get("host", "")
    origin = headers.get("origin") or headers.get("referer")
    if not origin:
        return "CSRF check failed: the request has neither Origin nor Referer"
    if not same_origin(origin, scheme, host):
        return f"CSRF check failed: the request comes from {origin}, not from this console ({scheme}://{host})"
    return None


def host_allowed(host_header: str, loopback_only: bool) -> bool:
    """On a loopback bind, only requests addressed to a loopback name or address (DNS rebinding)."""
    if not loopback_only:
        return True
    split = _split_host(host_header, "http")
    if split is None:
        return False
    name = split[0]
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False
