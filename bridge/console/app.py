"""The console's web application: the page, its JSON API under /api/v1/, and the live WebSocket.

Reads come from two places: the sidecar's event stream (bridge/console/live.py, what is happening now)
and its database (bridge/console/history.py, what happened). State changes only by POST, and only
through the sidecar's control channel (``send_command``, the same commands as ``nt8bridge kill``,
``enable`` and ``risk set``), so the sidecar itself writes the audit record that names the operator; the
console keeps no state of its own that matters.

Every error a client can cause is a 4xx with ``{"error": "..."}``; anything else is logged with its
traceback and answered 500 ``{"error": "internal error, see the console log"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from bridge import __version__
from bridge.audit.recorder import json_ready
from bridge.console import csrf
from bridge.console.auditview import AuditWatcher
from bridge.console.auth import SESSION_COOKIE, SESSION_S, Authenticator, Identity, is_loopback_host, parse_bind
from bridge.console.history import History, HistoryUnavailable, NotFound, storage_url
from bridge.console.live import LiveFeed, LiveState, Outgoing, Subscriber
from bridge.core.config import Config
from bridge.core.errors import ControlError

__all__ = ["ConsoleContext", "create_app"]

log = logging.getLogger("nt8bridge.console")

STATIC = Path(__file__).resolve().parent / "static"
API = "/api/v1"
OPERATOR = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
CONFIRM_WORDS = {"kill": "KILL", "enable": "ENABLE"}
_SECURITY_HEADERS = {
    # the page runs only its own script and style; no frame may hold the KILL button (clickjacking)
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class ApiError(Exception):
    """A request the console refuses: its status and the sentence the client gets."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ConsoleJSON(JSONResponse):
    """Strict JSON (a NaN in a stored row becomes null instead of failing the response)."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, allow_nan=False, separators=(",", ":"), default=str).encode()
        except ValueError:
            return json.dumps(json_ready(content), allow_nan=False, separators=(",", ":"), default=str).encode()


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operator: StrictStr = Field("", max_length=64, description="who (a logged-in user's name is used when empty)")
    reason: StrictStr = Field(..., min_length=1, max_length=500, description="why; recorded in the audit trail")


class SwitchBody(_Body):
    confirm: StrictStr = Field(..., description='the word "KILL" (or "ENABLE") typed by the operator')


class LimitBody(_Body):
    scope: StrictStr = Field(..., min_length=1, max_length=100, description='"*", instrument:ES, strategy:momentum, '
                             "account:Sim101")
    limit: StrictStr = Field(..., min_length=1, max_length=100, description="a field of the risk limits, e.g. "
                             "max_order_quantity")
    value: StrictInt | StrictFloat | StrictBool | StrictStr | None = Field(..., description="the new value; null "
                                                                           "removes the limit")


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: StrictStr = Field(..., min_length=1, max_length=64)
    password: StrictStr = Field(..., min_length=1, max_length=1024)


# --------------------------------------------------------------------------- the application's parts


@dataclass
class ConsoleContext:
    config: Config
    history: History
    live: LiveState
    audit: AuditWatcher
    authenticator: Authenticator
    control_endpoint: str
    events_endpoint: str
    loopback_only: bool
    registry: Path | None
    feed: LiveFeed | None = None
    bad_requests: Counter = field(default_factory=Counter)  # by status code
    commands: Counter = field(default_factory=Counter)      # accepted POSTs by command


def _registry(config: Config) -> Path | None:
    try:
        from ml.serving import registry_folder
        return registry_folder(config.strategy.ml_registry)
    except Exception:  # noqa: BLE001 - no registry is a normal desk
        return None


def create_app(config: Config, *, db_url: str | None = None, control_endpoint: str | None = None,
               events_endpoint: str | None = None, bind: str | None = None,
               authenticator: Authenticator | None = None, start_background: bool = True,
               audit_interval_s: float = 60.0) -> FastAPI:
    """The console for ``config``'s sidecar. ``db_url`` defaults to the sidecar's storage (``storage.url``,
    else the default SQLite file), ``control_endpoint`` to ``server.control_bind``, ``events_endpoint`` to
    ``server.events_bind``, ``bind`` to ``console.bind`` (only its host matters here: loopback admits only
    requests addressed to loopback). ``start_background=False`` leaves the event reader and the audit
    verifier stopped (tests that drive them by hand)."""
    url = storage_url(db_url or config.storage.url)
    history = History(url, config.console.history_days)
    live = LiveState(events_endpoint or config.server.events_bind)
    ctx = ConsoleContext(
        config=config, history=history, live=live,
        audit=AuditWatcher(config, url, lambda: history.audit_head(recent=1)["records"], interval_s=audit_interval_s),
        authenticator=authenticator or Authenticator.from_config(config.console),
        control_endpoint=control_endpoint or config.server.control_bind,
        events_endpoint=live.events_endpoint,
        loopback_only=is_loopback_host(parse_bind(bind or config.console.bind)[0]),
        registry=_registry(config))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if start_background:
            ctx.feed = LiveFeed(live)
            ctx.feed.start()
            ctx.audit.start()
        log.info("console: sidecar events %s, control %s, storage %s", ctx.events_endpoint, ctx.control_endpoint,
                 history.where)
        try:
            yield
        finally:
            if ctx.feed is not None:
                ctx.feed.stop()
            ctx.audit.stop()
            history.close()

    # no Swagger page: it loads its script from a CDN, which the page's policy (and an offline desk) refuses
    app = FastAPI(title="nt8bridge console", version=__version__, lifespan=lifespan,
                  default_response_class=ConsoleJSON, docs_url=None, redoc_url=None,
                  openapi_url=f"{API}/openapi.json")
    app.state.console = ctx
    _install_errors(app, ctx)
    _install_guard(app, ctx)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _pages(app, ctx)
    _reads(app, ctx)
    _commands(app, ctx)
    _stream(app, ctx)
    return app


# --------------------------------------------------------------------------- errors


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> ConsoleJSON:
    return ConsoleJSON({"error": message}, status_code=status, headers={**_SECURITY_HEADERS, **(headers or {})})


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the body is not valid JSON"
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",)) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


def _install_errors(app: FastAPI, ctx: ConsoleContext) -> None:
    def refused(request: Request, status: int, message: str) -> None:
        ctx.bad_requests[status] += 1
        log.info("console: %s %s refused %d: %s", request.method, request.url.path, status, message)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if exc.status < 500:
            refused(request, exc.status, exc.message)
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no such page: {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        refused(request, exc.status_code, message)
        return _error(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        status, message = _validation_message(exc)
        refused(request, status, message)
        return _error(status, message)

    @app.exception_handler(HistoryUnavailable)
    async def storage_away(request: Request, exc: HistoryUnavailable) -> Response:
        log.warning("console: %s: %s", request.url.path, exc)
        return _error(503, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.error("console: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error, see the console log")


# --------------------------------------------------------------------------- who may ask


def _is_public(path: str) -> bool:
    """What answers without credentials: the page and its files (they hold no data) and the login."""
    return path == "/" or path == "/favicon.ico" or path.startswith("/static/") or path == f"{API}/login"


def _install_guard(app: FastAPI, ctx: ConsoleContext) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        if not csrf.host_allowed(host, ctx.loopback_only):
            ctx.bad_requests[421] += 1
            return _error(421, f"this console listens on loopback and answers only requests addressed to it "
                               f"(127.0.0.1, localhost, [::1]), not to {host!r}")
        identity = ctx.authenticator.authenticate(request.headers, request.cookies)
        request.state.identity = identity
        if identity is None and not _is_public(request.url.path):
            ctx.bad_requests[401] += 1
            headers = {}
            if "x-console-page" not in request.headers:  # a script: say how to authenticate
                headers["www-authenticate"] = ('Basic realm="nt8bridge console"' if ctx.authenticator.users
                                               else 'Bearer realm="nt8bridge console"')
            return _error(401, "log in first: this console needs a user name and password"
                          + (" or a bearer token" if ctx.authenticator.tokens else "")
                          if ctx.authenticator.users else "send 'Authorization: Bearer TOKEN' (console.token_file)",
                          headers)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not (identity and identity.method == "bearer"):
            problem = csrf.check_post(request.headers, request.cookies, request.url.scheme)
            if problem is not None:
                ctx.bad_requests[403] += 1
                log.warning("console: %s %s from %s refused: %s", request.method, request.url.path,
                            request.client.host if request.client else "?", problem)
                return _error(403, problem)
        response = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def _identity(request: Request) -> Identity:
    return getattr(request.state, "identity", None) or Identity("none")


# --------------------------------------------------------------------------- the page


def _pages(app: FastAPI, ctx: ConsoleContext) -> None:
    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")
        token = request.cookies.get(csrf.COOKIE)
        if not token or len(token) < 32:
            # readable by the page's script (double submit); sent only to this site
            response.set_cookie(csrf.COOKIE, csrf.new_token(), httponly=False, samesite="strict",
                                secure=ctx.authenticator.secure_cookies, path="/")
        return response

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.post(f"{API}/login")
    def login(body: LoginBody, request: Request) -> Response:
        """Log in with a user of ``console.users_file``; sets the session cookie."""
        auth = ctx.authenticator
        client = request.client.host if request.client else "?"
        if not auth.users:
            raise ApiError(400, "this console has no users (console.users_file): there is nothing to log in to")
        if auth.too_many_failures(client):
            raise ApiError(429, "too many failed logins from this address: wait five minutes")
        if not auth.check_password(body.user, body.password):
            auth.failed(client)
            raise ApiError(401, "wrong user name or password")
        log.info("console: %s logged in from %s", body.user, client)
        response = ConsoleJSON({"ok": True, "user": body.user})
        response.set_cookie(SESSION_COOKIE, auth.issue_session(body.user), max_age=SESSION_S, httponly=True,
                            samesite="strict", secure=auth.secure_cookies, path="/")
        return response

    @app.post(f"{API}/logout")
    def logout() -> Response:
        response = ConsoleJSON({"ok": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


# --------------------------------------------------------------------------- reads


Source = Literal["stored", "live"]


def _live_part(ctx: ConsoleContext, key: str) -> Any:
    snap = ctx.live.snapshot
    if not ctx.live.sidecar_up or snap is None:
        raise ApiError(503, f"the sidecar is not reachable at {ctx.events_endpoint} (no snapshot for "
                       f"{ctx.live.alive_s:g} s): drop ?source=live for what storage holds")
    return snap.get(key)


def _reads(app: FastAPI, ctx: ConsoleContext) -> None:
    h, live = ctx.history, ctx.live

    @app.get(f"{API}/status")
    def status(request: Request) -> dict[str, Any]:
        """Is the sidecar up, what the console lost of its events, which version this is."""
        snap = live.snapshot if live.sidecar_up else None
        identity = _identity(request)
        try:
            h.audit_head(recent=1)
            storage = {"url": h.where, "readable": True, "error": None}
        except HistoryUnavailable as exc:
            storage = {"url": h.where, "readable": False, "error": str(exc)}
        sidecar = (snap or {}).get("sidecar") or {}
        return {"console_version": __version__, "sidecar_up": live.sidecar_up,
                "sidecar": sidecar or None, "trading_state": sidecar.get("trading_state"),
                "events_endpoint": ctx.events_endpoint, "control_endpoint": ctx.control_endpoint,
                "events": live.status(), "lost_events": live.lost, "storage": storage,
                "history_days": h.history_days, "user": identity.user, "auth": identity.method,
                "login_required": ctx.authenticator.required, "bad_requests": dict(ctx.bad_requests),
                "commands": dict(ctx.commands)}

    @app.get(f"{API}/sessions")
    def sessions(source: Source = "stored") -> dict[str, Any]:
        if source == "live":
            return {"source": "live", "sessions": _live_part(ctx, "sessions") or []}
        return h.sessions()

    @app.get(f"{API}/positions")
    def positions(source: Source = "stored") -> dict[str, Any]:
        """Stored positions: the latest ``positions`` row of each session and instrument (what NT8 reported);
        ``?source=live``: the running sidecar's own."""
        if source == "live":
            return {"source": "live", "positions": _live_part(ctx, "positions") or []}
        return h.positions()

    @app.get(f"{API}/orders")
    def orders(source: Source = "stored", limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
        if source == "live":
            return {"source": "live", "orders": _live_part(ctx, "orders") or []}
        return h.orders(limit)

    @app.get(f"{API}/pnl")
    def pnl(source: Source = "stored") -> dict[str, Any]:
        if source == "live":
            return {"source": "live", "pnl": _live_part(ctx, "pnl") or []}
        return h.pnl()

    @app.get(f"{API}/equity")
    def equity(points: int = Query(2000, ge=2, le=20000)) -> dict[str, Any]:
        return h.equity(points)

    @app.get(f"{API}/blotter")
    def blotter(limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
        return h.blotter(limit)

    @app.get(f"{API}/decisions/{{decision_id}}")
    def decision(decision_id: str) -> dict[str, Any]:
        """One decision: features, signal, probability, sizing and Kelly fraction, the risk checks and limits,
        its orders and fills, and whether its audit record vouches for the stored inputs."""
        try:
            return h.decision(decision_id)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None

    @app.get(f"{API}/risk")
    def risk() -> dict[str, Any]:
        snap = live.snapshot if live.sidecar_up else None
        try:
            stored: dict[str, Any] = h.risk()
        except HistoryUnavailable as exc:
            stored = {"error": str(exc)}
        live_risk = (snap or {}).get("risk")
        return {"sidecar_up": live.sidecar_up, "live": live_risk,
                "trading_state": (live_risk or {}).get("trading_state") or
                ((snap or {}).get("sidecar") or {}).get("trading_state"), "stored": stored}

    @app.get(f"{API}/latency")
    def latency() -> dict[str, Any]:
        snap = live.snapshot if live.sidecar_up else None
        return {"sidecar_up": live.sidecar_up, "live": (snap or {}).get("latency"),
                "note": None if snap else f"the sidecar is not reachable at {ctx.events_endpoint}: latency is "
                                          "only known live"}

    @app.get(f"{API}/models")
    def models() -> dict[str, Any]:
        return h.models(ctx.registry)

    @app.get(f"{API}/audit")
    def audit() -> dict[str, Any]:
        return {**h.audit_head(), **ctx.audit.report()}


# --------------------------------------------------------------------------- commands


def _operator(request: Request, claimed: str) -> str:
    """The operator of a command: a logged-in user is who they are; otherwise the name the body gives."""
    identity = _identity(request)
    claimed = claimed.strip()
    if identity.user is not None:
        if claimed and claimed != identity.user:
            raise ApiError(403, f"you are logged in as {identity.user}: a command may not name another operator "
                                f"({claimed})")
        return identity.user
    if not claimed:
        raise ApiError(422, "operator: name the operator (recorded in the audit trail)")
    if not OPERATOR.match(claimed):
        raise ApiError(422, "operator: at most 64 printable characters")
    return claimed


def _send(ctx: ConsoleContext, cmd: str, **fields: Any) -> dict[str, Any]:
    from bridge.transport.control import send_command
    if not ctx.control_endpoint:
        raise ApiError(503, "the sidecar's control channel is disabled (server.control_bind is empty): start the "
                            "console with --sidecar ENDPOINT")
    try:
        return send_command(ctx.control_endpoint, cmd, **fields)
    except ControlError as exc:
        text = str(exc)
        if text.startswith("no answer"):
            raise ApiError(503, text) from None
        raise ApiError(409, f"the sidecar refused: {text}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed endpoint, a key file that cannot be read
        raise ApiError(503, f"cannot reach the sidecar's control channel at {ctx.control_endpoint}: {exc}") from None


def _commands(app: FastAPI, ctx: ConsoleContext) -> None:
    def switch(cmd: str, body: SwitchBody, request: Request) -> dict[str, Any]:
        word = CONFIRM_WORDS[cmd]
        if body.confirm != word:
            raise ApiError(422, f'confirm: type {word} (in capitals) to confirm')
        operator = _operator(request, body.operator)
        client = request.client.host if request.client else "?"
        log.warning("console: %s by %s from %s: %s", cmd.upper(), operator, client, body.reason)
        reply = _send(ctx, cmd, operator=operator, reason=body.reason.strip())
        ctx.commands[cmd] += 1
        return {"ok": True, "command": cmd, "operator": operator, "state": reply.get("state"),
                "sessions": reply.get("sessions"), "sessions_flattened": reply.get("sessions_flattened")}

    @app.post(f"{API}/kill")
    def kill(body: SwitchBody, request: Request) -> dict[str, Any]:
        """KILL SWITCH: every NT8 session flattens everything; new orders refused until enabled."""
        return switch("kill", body, request)

    @app.post(f"{API}/enable")
    def enable(body: SwitchBody, request: Request) -> dict[str, Any]:
        """Trade again after a kill."""
        return switch("enable", body, request)

    @app.post(f"{API}/limits")
    def limits(body: LimitBody, request: Request) -> dict[str, Any]:
        """Change one limit of one scope in every session (``nt8bridge risk set``)."""
        operator = _operator(request, body.operator)
        log.warning("console: set_limit %s %s = %r by %s: %s", body.scope, body.limit, body.value, operator,
                    body.reason)
        reply = _send(ctx, "set_limit", operator=operator, reason=body.reason.strip(), scope=body.scope.strip(),
                      field=body.limit.strip(), value=body.value)
        ctx.commands["set_limit"] += 1
        return {"ok": True, "command": "set_limit", "operator": operator, "scope": body.scope, "limit": body.limit,
                "value": body.value, "applied": len(reply.get("applied") or []), "state": reply.get("state")}


# --------------------------------------------------------------------------- the live stream


def _stream(app: FastAPI, ctx: ConsoleContext) -> None:
    @app.websocket(f"{API}/stream")
    async def stream(ws: WebSocket) -> None:
        """First message: the full state (``type: state``); then ``snapshot``, ``row``, ``update``, ``ticks``,
        ``status`` (the sidecar came or went) and ``dropped`` (rows this client missed: read storage again)."""
        host = ws.headers.get("host", "")
        origin = ws.headers.get("origin")
        if not csrf.host_allowed(host, ctx.loopback_only):
            await ws.close(code=1008, reason="not addressed to loopback")
            return
        if origin and not csrf.same_origin(origin, ws.url.scheme, host):
            # another site's page may not read the console through the operator's browser
            log.warning("console: WebSocket from origin %s refused", origin)
            await ws.close(code=1008, reason="cross-origin")
            return
        if ctx.authenticator.authenticate(ws.headers, ws.cookies) is None:
            await ws.close(code=1008, reason="log in first")
            return
        await ws.accept()
        sub = Subscriber(loop=asyncio.get_running_loop())
        ctx.live.subscribe(sub)  # before the full state: nothing falls between the two (a duplicate may)
        receiver = asyncio.ensure_future(_until_closed(ws))
        try:
            await ws.send_text(json.dumps(ctx.live.full_state(), default=str))
            while True:
                waiter = asyncio.ensure_future(sub.wake.wait())
                done, _ = await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    waiter.cancel()
                    break
                sub.wake.clear()
                for message in sub.take():
                    await ws.send_text(message.encoded() if isinstance(message, Outgoing)
                                       else json.dumps(message, default=str))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the browser went away mid-send
        finally:
            ctx.live.unsubscribe(sub)
            receiver.cancel()


async def _until_closed(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it disconnects."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
