"""A local stand-in for Alpha Vantage's ``/query`` endpoint: a real HTTP server on 127.0.0.1 (port chosen
by the system) that answers each request with one of the recorded response shapes in
tests/vectors/alpha_vantage/ (see make_fixtures.py there), as scripted per request, and records every
request's query string. It exists because Alpha Vantage's own servers are not reachable from a test.

    with AlphaVantageServer(default="quote") as av:
        av.script("note", "quote")            # the next two requests: a throttle, then a quote
        config = replace(config, base_url=av.url)
        ...
        av.count, av.requests[0]["symbol"]

Shapes: quote, quote_delayed, quote_empty, intraday, note, information, information_burst, error_symbol,
error_apikey, malformed, server_error (HTTP 503), timeout (no answer until the server closes, or
``hang_limit_s``). ``Reply(shape, replace={...})`` rewrites text in the body (e.g. the trading day).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "alpha_vantage"
FIXTURE_DAY = "2013-10-11"  # the trading day of the recorded SPY quote and bars


@dataclass(frozen=True)
class Shape:
    file: str | None             # body, from VECTORS; None: no body (the request hangs)
    status: int = 200
    content_type: str = "application/json"


SHAPES: dict[str, Shape] = {
    "quote": Shape("global_quote.json"),
    "quote_delayed": Shape("global_quote_delayed.json"),
    "quote_empty": Shape("global_quote_empty.json"),
    "intraday": Shape("intraday_1min.json"),
    "note": Shape("note_throttle.json"),
    "information": Shape("information_throttle.json"),
    "information_burst": Shape("information_burst.json"),
    "error_symbol": Shape("error_symbol.json"),
    "error_apikey": Shape("error_apikey.json"),
    "malformed": Shape("malformed.json"),
    "server_error": Shape("server_error.html", status=503, content_type="text/html"),
    "timeout": Shape(None),
}


@dataclass(frozen=True)
class Reply:
    shape: str
    replace: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")


def _reply(r: str | Reply) -> Reply:
    return r if isinstance(r, Reply) else Reply(r)


class AlphaVantageServer:
    def __init__(self, default: str | Reply = "quote", *, hang_limit_s: float = 60.0) -> None:
        self.default = _reply(default)
        self.hang_limit_s = hang_limit_s  # a hanging request is let go after this, so the server stops by itself
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.requests: list[dict[str, str]] = []   # each request's query, parsed
        self.query_strings: list[str] = []         # and as sent
        self.served: list[str] = []                # the shape each request got
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- control ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/query"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def script(self, *replies: str | Reply) -> None:
        """The next requests' answers, in order; after them, ``default``."""
        with self._lock:
            self._script.extend(_reply(r) for r in replies)

    def set_default(self, reply: str | Reply) -> None:
        with self._lock:
            self.default = _reply(reply)

    def start(self) -> AlphaVantageServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-alpha-vantage", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> AlphaVantageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- serving ------------------------------------------------------------------------------------

    def _next(self, query: str) -> Reply:
        with self._lock:
            self.query_strings.append(query)
            self.requests.append(dict(parse_qsl(query, keep_blank_values=True)))
            reply = self._script.popleft() if self._script else self.default
            self.served.append(reply.shape)
            return reply

    def _body(self, reply: Reply, params: dict[str, str]) -> bytes:
        shape = SHAPES[reply.shape]
        text = (VECTORS / shape.file).read_text(encoding="utf-8") if shape.file else ""
        text = text.replace("${apikey}", params.get("apikey", "")).replace("${symbol}", params.get("symbol", ""))
        for old, new in reply.replace.items():
            text = text.replace(old, new)
        return text.encode("utf-8")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                if parts.path != "/query":
                    self._send(404, b'{"detail": "not found"}', "application/json")
                    return
                reply = fake._next(parts.query)
                shape = SHAPES[reply.shape]
                if shape.file is None:  # a response that never comes: hold the connection, send nothing
                    fake._release.wait(fake.hang_limit_s)
                    self.close_connection = True
                    return
                self._send(shape.status, fake._body(reply, dict(parse_qsl(parts.query))), shape.content_type)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass  # quiet: the requests are recorded in fake.requests

        return Handler
