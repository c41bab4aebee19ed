"""Alpha Vantage over HTTP: ETF stand-ins (SPY, QQQ, DIA, IWM) of the index futures, which Alpha Vantage
does not carry. Each quote carries the future's root and the ETF's symbol; the cross-feed book turns an
ETF price into the future's scale through its rolling ratio.

A poller thread asks each symbol every ``poll_s`` seconds (``GLOBAL_QUOTE``, or the last bar of
``TIME_SERIES_INTRADAY``), spread over the day so that ``requests_per_day`` lasts until 00:00 UTC, and
never faster than ``requests_per_s``. The budget lives in a JSON file in the user's data folder: a
restart does not spend the day's requests again. Every failure (throttled, refused, malformed, HTTP
5xx, timeout, refused connection) is a health DOWN with one sentence, a counter and a log line; a
throttle backs off, doubling up to an hour.

The API key travels only as Alpha Vantage's ``apikey`` URL parameter. It is masked in every URL this
module logs, in every reason and error, and in httpx's own request log lines.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path

import httpx

from bridge import __version__
from bridge.core.config import AlphaVantageConfig, user_data_dir
from bridge.feeds.alpha_vantage_shapes import Failure, interpret, mask_key, parse_symbols
from bridge.feeds.base import Feed, FeedBus, FeedError, FeedQuote, FeedStatus, Freshness, Health
from bridge.feeds.budget import Grant, RequestBudget

__all__ = ["AlphaVantageFeed", "BUDGET_FILE", "FUNCTIONS", "KEY_VARIABLE", "budget_path"]

log = logging.getLogger(__name__)

BUDGET_FILE = "alpha_vantage_budget.json"
FUNCTIONS = ("GLOBAL_QUOTE", "TIME_SERIES_INTRADAY")
KEY_VARIABLE = "NT8BRIDGE_FEEDS_ALPHA_VANTAGE__API_KEY"
BACKOFF_FIRST_S = 60.0
BACKOFF_MAX_S = 3600.0
_IDLE_WAIT_S = 60.0   # the longest the poller sleeps at once: a stop, a new day, a back-off's end are seen soon
_NS = 1_000_000_000


class _MaskApiKey(logging.Filter):
    """httpx logs each request's full URL at INFO, query string and so the key included: mask it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record whose args do not fit its format: leave it to the handler to report
            return True
        if "apikey=" in text.lower():
            record.msg, record.args = mask_key(text, ""), None
        return True


_KEY_FILTER = _MaskApiKey()
for _name in ("httpx", "httpcore"):
    if _KEY_FILTER not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_KEY_FILTER)


def budget_path() -> Path:
    """Where the request budget is kept: the user's data folder."""
    return user_data_dir() / BUDGET_FILE


class AlphaVantageFeed(Feed):
    """The Alpha Vantage feed (``config.feeds_alpha_vantage``). ``function`` is ``GLOBAL_QUOTE`` (one
    request, the latest price) or ``TIME_SERIES_INTRADAY`` (the last ``interval`` bar's close);
    ``budget_file`` defaults to :func:`budget_path`, ``None`` there and ``persist=False`` keeps it in memory."""

    def __init__(self, config: AlphaVantageConfig, *, name: str = "alpha_vantage", function: str = "GLOBAL_QUOTE",
                 interval: str = "1min", budget_file: Path | None = None, persist: bool = True) -> None:
        super().__init__(name)
        if function not in FUNCTIONS:
            raise ValueError(f"function must be one of {', '.join(FUNCTIONS)}, not {function!r}")
        self.config = config
        self.function = function
        self.interval = interval
        try:
            self.symbols = parse_symbols(config.symbols)
        except ValueError as exc:
            raise FeedError(str(exc)) from None
        self._key = config.api_key.strip()
        self.base_url = config.base_url
        self.budget = RequestBudget(config.requests_per_day, config.requests_per_s,
                                    (budget_file or budget_path()) if persist else None)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._throttle_streak = 0
        self._last_logged = ""
        self.roots: list[str] = []

    # --- Feed ----------------------------------------------------------------------------------------

    def start(self, bus: FeedBus, roots: list[str]) -> None:
        unknown = [r for r in roots if r not in self.symbols]
        if unknown:
            log.warning("alpha_vantage: no ETF stand-in for %s (feeds.alpha_vantage.symbols is %r); not polled",
                        ", ".join(unknown), self.config.symbols)
        self.roots = [r for r in roots if r in self.symbols]
        if not self._key:
            self._set_health(Health.DOWN, self._no_key_reason(), connected=False)
            log.warning("alpha_vantage: %s", self._no_key_reason())
            return
        if not self.roots:
            self._set_health(Health.DOWN, "no instrument to poll (none of the roots has an ETF stand-in)")
            return
        self._set_health(Health.DOWN, "starting", connected=False)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(bus,), name=f"feed-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            # a request in flight ends by its own timeout at the latest
            thread.join(self.config.timeout_s + 2.0)
            if thread.is_alive():
                log.warning("alpha_vantage: the poller did not stop within %.0f s; left to end by itself",
                            self.config.timeout_s + 2.0)
        self._thread = None
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        self._set_health(Health.DOWN, "stopped", connected=False)

    def probe(self, root: str, timeout_s: float = 10.0) -> FeedQuote:
        """One request for ``root``'s stand-in (it counts against the day's budget; a back-off does not
        stop it: the operator asked). The quote, or FeedError with one sentence."""
        root = root.upper()
        if not self._key:
            raise FeedError(self._no_key_reason())
        symbol = self.symbols.get(root)
        if symbol is None:
            raise FeedError(f"Alpha Vantage has no stand-in for {root}: feeds.alpha_vantage.symbols is "
                            f"{self.config.symbols!r}")
        deadline = time.monotonic() + timeout_s
        while True:
            grant = self.budget.try_spend(ignore_backoff=True)
            if grant.ok:
                break
            if grant.reason or time.monotonic() + grant.wait_s > deadline:
                reason = grant.reason or f"no request allowed within {timeout_s:g} s (requests_per_s is " \
                                         f"{self.config.requests_per_s:g})"
                self._count("budget_refused")
                self._set_health(Health.DOWN, reason)
                raise FeedError(reason)
            time.sleep(grant.wait_s)
        result = self._fetch(root, symbol, min(timeout_s, self.config.timeout_s))
        self._record(result, quiet=True)
        if isinstance(result, Failure):
            raise FeedError(result.reason)
        self._note(result)
        return result

    def status(self) -> FeedStatus:
        s = super().status()
        s.counters["budget_left_today"] = self.budget.remaining()
        return s

    @property
    def poll_interval_s(self) -> float:
        """Each symbol's interval: ``poll_s``, or longer when that would spend the day's budget before 00:00 UTC
        (or ask faster than ``requests_per_s`` allows)."""
        n = max(1, len(self.roots))
        c = self.config
        return max(c.poll_s, n / c.requests_per_s, 86_400.0 * n / c.requests_per_day)

    # --- the poller ----------------------------------------------------------------------------------

    def _run(self, bus: FeedBus) -> None:
        due = {root: 0.0 for root in self.roots}  # monotonic time each root is next asked
        while not self._stop.is_set():
            try:
                self._poll_step(bus, due)
            except Exception as exc:  # never out of the thread: a health, a counter, a log line
                self._count("errors")
                reason = mask_key(f"internal error in the Alpha Vantage poller: {type(exc).__name__}: {exc}",
                                  self._key)
                self._set_health(Health.DOWN, reason)
                log.error("alpha_vantage: %s\n%s", reason,
                          mask_key("".join(traceback.format_exception(exc)), self._key))
                self._stop.wait(1.0)

    def _poll_step(self, bus: FeedBus, due: dict[str, float]) -> None:
        root = min(due, key=due.__getitem__)
        wait = due[root] - time.monotonic()
        if wait > 0:
            self._stop.wait(min(wait, _IDLE_WAIT_S))
            return
        grant = self.budget.try_spend()
        if not grant.ok:
            self._hold(grant)
            return
        result = self._fetch(root, self.symbols[root], self.config.timeout_s)
        due[root] = time.monotonic() + self.poll_interval_s
        self._record(result, quiet=False)
        if isinstance(result, FeedQuote):
            self._delivered(bus, result)

    def _hold(self, grant: Grant) -> None:
        """No request now: the rate says wait a moment, or the day's budget or a back-off says wait longer."""
        if grant.reason:
            status = self.status()
            if status.health is not Health.DOWN or status.reason != grant.reason:
                if grant.reason == self.budget.spent_reason():
                    self._count("budget_refused")
                    self._set_health(Health.DOWN, grant.reason)
                    self._log_once(logging.WARNING, grant.reason)
                elif status.health is not Health.DOWN:  # backing off: the throttle reason stands
                    self._set_health(Health.DOWN, grant.reason)
        self._stop.wait(min(max(grant.wait_s, 0.01), _IDLE_WAIT_S))

    # --- one request ---------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.config.timeout_s,
                                            headers={"User-Agent": f"nt8bridge/{__version__}"})
            return self._client

    def _fetch(self, root: str, symbol: str, timeout_s: float) -> FeedQuote | Failure:
        params = {"function": self.function, "symbol": symbol}
        if self.function == "TIME_SERIES_INTRADAY":
            params.update(interval=self.interval, outputsize="compact")
        params["apikey"] = self._key
        where = mask_key(self.base_url, self._key)
        self._count("requests")
        try:
            log.debug("alpha_vantage: GET %s", mask_key(str(httpx.URL(self.base_url, params=params)), self._key))
            response = self._http().get(self.base_url, params=params, timeout=timeout_s)
            status, body = response.status_code, response.content
        except httpx.TimeoutException:
            return Failure("timeouts", f"Alpha Vantage at {where} did not answer for {symbol} within {timeout_s:g} s")
        except httpx.ConnectError as exc:
            self.budget.refund()  # no connection, no request at their end
            why = "connection refused" if "refused" in str(exc).lower() else mask_key(str(exc), self._key)
            return Failure("unreachable", f"cannot reach Alpha Vantage at {where}: {why}")
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return Failure("unreachable", mask_key(f"request to Alpha Vantage at {where} failed: "
                                                   f"{type(exc).__name__}: {exc}", self._key))
        return interpret(status, body, function=self.function, root=root, symbol=symbol, key=self._key,
                         feed=self.name, received_ns=time.time_ns())

    def _record(self, result: FeedQuote | Failure, *, quiet: bool) -> None:
        """The health, the counters, the back-off and the log line one answer makes."""
        if isinstance(result, Failure):
            self._count(result.counter)
            connected = result.counter not in ("unreachable", "timeouts")
            self._set_health(Health.DOWN, result.reason, connected=connected)
            if result.throttled:
                self._count("backoffs")
                self._throttle_streak += 1
                self.budget.back_off(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._throttle_streak - 1)),
                                     result.reason)
                if result.daily_limit:
                    self.budget.exhaust()
            self._log_once(logging.INFO if quiet else logging.WARNING, result.reason)
            return
        if self._throttle_streak:
            self._throttle_streak = 0
            self.budget.clear_backoff()
        if result.freshness is Freshness.REALTIME:
            self._set_health(Health.LIVE, "", connected=True)
        elif result.freshness is Freshness.END_OF_DAY:
            day = time.strftime("%Y-%m-%d", time.gmtime(result.ts_ns // _NS))
            self._set_health(Health.DELAYED, f"end-of-day value: {result.symbol}'s latest trading day is {day}",
                             connected=True)
        else:
            self._set_health(Health.DELAYED, f"Alpha Vantage's values are delayed by {result.delay_s / 60:.0f} "
                             "minutes", connected=True)
        if self._last_logged:
            log.info("alpha_vantage: answering again (%s %.4f)", result.symbol, result.price)
            self._last_logged = ""

    def _note(self, quote: FeedQuote) -> None:
        """A probe's value in the status (no bus: nobody drains it)."""
        with self._lock:
            s = self._status
            s.last[quote.root] = quote
            s.last_value_ns, s.freshness = quote.received_ns, quote.freshness

    def _log_once(self, level: int, reason: str) -> None:
        """A failure that repeats is logged when it starts, not at every poll."""
        if reason != self._last_logged:
            log.log(level, "alpha_vantage: %s", reason)
            self._last_logged = reason
        else:
            log.debug("alpha_vantage: %s", reason)

    @staticmethod
    def _no_key_reason() -> str:
        return f"no Alpha Vantage API key: set ${KEY_VARIABLE} (or feeds.alpha_vantage.api_key)"
