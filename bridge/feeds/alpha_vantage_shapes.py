"""What an Alpha Vantage answer means: a quote with its freshness, or a failure with the sentence an
operator reads and the counter it goes to. Pure functions over the status code and the body, so every
shape the service is known to send is checked without a network.

Alpha Vantage answers most failures with HTTP 200: a throttled request gets a body with a ``Note`` or an
``Information`` key (their sentence, which may quote the API key back: it is masked here), a refused
one an ``Error Message`` (a bad key or an unknown symbol), an unknown symbol's quote an empty
``Global Quote``. With a delayed entitlement the quote comes under the key ``Global Quote - DATA DELAYED
BY 15 MINUTES``. Without a real-time entitlement the quote is updated once at the end of the trading
day, so its ``07. latest trading day`` lags today's: that is end-of-day data, and said so.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.feeds.base import FeedQuote, Freshness

__all__ = ["Failure", "NEW_YORK", "interpret", "mask_key", "parse_symbols"]

NEW_YORK = ZoneInfo("America/New_York")
_CLOSE = dtime(16, 0)
_DELAY = re.compile(r"DELAYED BY (\d+) MINUTES", re.IGNORECASE)
_APIKEY_PARAM = re.compile(r"(apikey=)[^&\s\"'#]+", re.IGNORECASE)
_NS = 1_000_000_000


@dataclass(frozen=True)
class Failure:
    """A request that gave no value. ``counter`` names the status counter it adds to."""

    counter: str           # throttled, refused, key_refused, no_quote, malformed, http_errors, timeouts, unreachable
    reason: str            # one sentence, no credential
    throttled: bool = False
    daily_limit: bool = False  # the provider says the day's requests are spent


def mask_key(text: str, key: str) -> str:
    """``text`` with the API key nowhere in it: the key itself and any ``apikey=`` URL parameter."""
    if key:
        text = text.replace(key, "***")
    return _APIKEY_PARAM.sub(r"\1***", text)


def parse_symbols(text: str) -> dict[str, str]:
    """``"ES=SPY,NQ=QQQ"`` -> ``{"ES": "SPY", "NQ": "QQQ"}``; ValueError naming a bad entry."""
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        root, sep, symbol = (p.strip() for p in entry.partition("="))
        if not sep or not root or not symbol:
            raise ValueError(f"feeds.alpha_vantage.symbols: {entry!r} is not ROOT=SYMBOL (e.g. ES=SPY)")
        out[root.upper()] = symbol.upper()
    return out


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * _NS + t.microsecond * 1000


def _number(value: object) -> float | None:
    try:
        x = float(str(value).strip().rstrip("%"))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def interpret(status: int, body: bytes, *, function: str, root: str, symbol: str, key: str, feed: str,
              received_ns: int) -> FeedQuote | Failure:
    """The quote in one answer, or why there is none."""
    if status >= 400:
        kind = "server error" if status >= 500 else "error"
        return Failure("http_errors", f"Alpha Vantage answered HTTP {status} ({kind}) for {symbol}")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Failure("malformed", f"Alpha Vantage sent a response for {symbol} that is not JSON "
                                    f"({len(body)} bytes)")
    if not isinstance(data, dict):
        return Failure("malformed", f"Alpha Vantage sent a JSON {type(data).__name__} for {symbol}, not an object")
    for throttle_key in ("Note", "Information"):
        if throttle_key in data:
            sentence = mask_key(" ".join(str(data[throttle_key]).split()), key)
            text = sentence.lower()
            # "our standard API rate limit is 25 requests per day": the day is spent at their end, whatever we
            # counted. A sentence that also names a per-minute or per-second rate is about the pace instead.
            daily = "per day" in text and not any(w in text for w in ("per minute", "per second", "burst"))
            return Failure("throttled", f"throttled by Alpha Vantage: {sentence}", throttled=True, daily_limit=daily)
    if "Error Message" in data:
        message = mask_key(" ".join(str(data["Error Message"]).split()), key)
        if "apikey" in message.lower() or "api key" in message.lower():
            return Failure("key_refused", f"Alpha Vantage refused the API key: {message}")
        return Failure("refused", f"Alpha Vantage refused {function} for symbol {symbol}: {message}")
    if function == "GLOBAL_QUOTE":
        return _global_quote(data, root=root, symbol=symbol, feed=feed, received_ns=received_ns)
    return _intraday(data, root=root, symbol=symbol, feed=feed, received_ns=received_ns)


def _global_quote(data: dict, *, root: str, symbol: str, feed: str, received_ns: int) -> FeedQuote | Failure:
    top = next((k for k in data if isinstance(k, str) and k.startswith("Global Quote")), None)
    if top is None:
        return Failure("malformed", f"Alpha Vantage's answer for {symbol} has no 'Global Quote' "
                                    f"(keys: {', '.join(map(str, list(data)[:4])) or 'none'})")
    q = data[top]
    if not isinstance(q, dict):
        return Failure("malformed", f"Alpha Vantage's 'Global Quote' for {symbol} is not an object")
    if not q:
        return Failure("no_quote", f"Alpha Vantage has no quote for symbol {symbol} (check "
                                   "feeds.alpha_vantage.symbols)")
    price = _number(q.get("05. price"))
    if price is None or price <= 0:
        return Failure("malformed", f"Alpha Vantage's quote for {symbol} has no usable price "
                                    f"({q.get('05. price')!r})")
    try:
        day = date.fromisoformat(str(q.get("07. latest trading day", "")).strip())
    except ValueError:
        return Failure("malformed", f"Alpha Vantage's quote for {symbol} has no usable latest trading day")
    received = datetime.fromtimestamp(received_ns / _NS, NEW_YORK)
    delayed = _DELAY.search(top)
    if day < received.date():
        # the close of that day (the quote carries no time): how old the value is, not when it was sent
        ts = datetime.combine(day, _CLOSE, NEW_YORK)
        return FeedQuote(feed, root, symbol, price, ts_ns=_ns(ts), received_ns=received_ns,
                         freshness=Freshness.END_OF_DAY, delay_s=max(0.0, (received_ns - _ns(ts)) / _NS))
    if delayed or top != "Global Quote":
        delay_s = 60.0 * int(delayed.group(1)) if delayed else 900.0
        return FeedQuote(feed, root, symbol, price, ts_ns=received_ns - int(delay_s * _NS), received_ns=received_ns,
                         freshness=Freshness.DELAYED, delay_s=delay_s)
    return FeedQuote(feed, root, symbol, price, ts_ns=received_ns, received_ns=received_ns)


def _zone(name: object) -> ZoneInfo:
    try:
        return ZoneInfo(str(name)) if name else NEW_YORK
    except (ZoneInfoNotFoundError, ValueError):
        return NEW_YORK


def _stamp(text: object, zone: ZoneInfo) -> datetime | None:
    s = str(text).strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(s, fmt).replace(tzinfo=zone)
        except ValueError:
            continue
    return None


def _interval_s(text: object) -> float:
    m = re.fullmatch(r"(\d+)min", str(text).strip())
    return 60.0 * int(m.group(1)) if m else 60.0


def _intraday(data: dict, *, root: str, symbol: str, feed: str, received_ns: int) -> FeedQuote | Failure:
    meta = data.get("Meta Data")
    series_key = next((k for k in data if isinstance(k, str) and k.startswith("Time Series")), None)
    if not isinstance(meta, dict) or series_key is None or not isinstance(data[series_key], dict):
        return Failure("malformed", f"Alpha Vantage's intraday answer for {symbol} lacks 'Meta Data' or its "
                                    "'Time Series'")
    series = data[series_key]
    if not series:
        return Failure("no_quote", f"Alpha Vantage sent no intraday bars for symbol {symbol}")
    zone = _zone(meta.get("6. Time Zone"))
    stamped = [(t, k) for k in series if (t := _stamp(k, zone)) is not None]
    if not stamped:
        return Failure("malformed", f"Alpha Vantage's intraday bars for {symbol} have no readable time")
    ts, last_key = max(stamped)
    bar = series[last_key]
    close = _number(bar.get("4. close")) if isinstance(bar, dict) else None
    if close is None or close <= 0:
        return Failure("malformed", f"Alpha Vantage's last intraday bar for {symbol} has no usable close")
    refreshed = _stamp(meta.get("3. Last Refreshed", ""), zone) or ts
    received = datetime.fromtimestamp(received_ns / _NS, NEW_YORK)
    age_s = max(0.0, (received_ns - _ns(refreshed)) / _NS)
    info = str(meta.get("1. Information", ""))
    delayed = _DELAY.search(info) or _DELAY.search(series_key)
    if refreshed.astimezone(NEW_YORK).date() < received.date():
        freshness = Freshness.END_OF_DAY
    elif delayed:
        freshness, age_s = Freshness.DELAYED, max(age_s, 60.0 * int(delayed.group(1)))
    elif age_s > 2 * _interval_s(meta.get("4. Interval")) + 60.0:
        # a bar older than two of its intervals (and a minute of their latency): not real time, however labelled
        freshness = Freshness.DELAYED
    else:
        freshness, age_s = Freshness.REALTIME, 0.0
    return FeedQuote(feed, root, symbol, close, ts_ns=_ns(ts), received_ns=received_ns, freshness=freshness,
                     delay_s=age_s)
