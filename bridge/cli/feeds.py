"""``nt8bridge feeds status`` and ``nt8bridge feeds probe NAME [--instrument ROOT]``: the market-data feeds
beside NT8's own stream (docs/feeds.md).

``status`` asks the running sidecar first (its control channel's ``status`` reply carries every feed's
health when feeds run there); without a sidecar, or one that reports no feeds, it probes each feed named
in ``feeds.enabled`` once and says so. ``probe`` makes one request (Alpha Vantage) or one subscription
(Interactive Brokers) and prints the value; when the feed cannot be reached, throttles, or refuses the
key it exits non-zero with one line, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from datetime import datetime, timezone
from typing import Any

from bridge.cli.common import add_control_option, add_key_option, operator_key
from bridge.core.config import Config
from bridge.core.errors import UserError

FEEDS = ("ib", "alpha_vantage")
CONTROL_TIMEOUT_MS = 1500
# third-party loggers that report a failed connection on their own: the probe says it once, in its own line
_NOISY = ("ib_async", "asyncio", "httpx", "httpcore")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("feeds", help="the market-data feeds beside NT8's own stream: Interactive Brokers, Alpha "
                       "Vantage (docs/feeds.md)")
    fsub = s.add_subparsers(dest="feeds_command", required=True, metavar="SUBCOMMAND")
    d = fsub.add_parser("status", help="every configured feed's health, freshness, last value and counters: from the "
                        "running sidecar, else by probing each feed in feeds.enabled once")
    add_control_option(d)
    d.add_argument("--json", action="store_true")
    add_key_option(d)
    d.set_defaults(func=cmd_feeds_status)
    d = fsub.add_parser("probe", help="one request (Alpha Vantage) or subscription (IB), printed; exit non-zero with "
                        "one line when the feed cannot be reached, throttles or refuses the key")
    d.add_argument("name", choices=FEEDS, help="the feed")
    d.add_argument("--instrument", metavar="ROOT", help="instrument root (default: the feed's first configured root)")
    d.add_argument("--function", choices=("quote", "intraday"), default="quote",
                   help="Alpha Vantage: GLOBAL_QUOTE (default) or the last TIME_SERIES_INTRADAY bar")
    d.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="how long to wait (default 10)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_feeds_probe)


# --- building a feed -----------------------------------------------------------------------------

def _feed(name: str, config: Config, function: str = "quote") -> Any:
    from bridge.feeds.base import FeedError
    if name == "alpha_vantage":
        from bridge.feeds.alpha_vantage import AlphaVantageFeed
        try:
            return AlphaVantageFeed(config.feeds_alpha_vantage,
                                    function="TIME_SERIES_INTRADAY" if function == "intraday" else "GLOBAL_QUOTE")
        except FeedError as exc:
            raise UserError(str(exc)) from None
    if name == "ib":
        try:  # lazily: ib_async is only needed by whoever uses IB
            from bridge.feeds.ib import IbFeed
        except ImportError as exc:
            raise UserError(f"the Interactive Brokers feed cannot load ({exc})") from None
        from bridge.core.instruments import InstrumentMaster
        try:  # the config's declared instruments too, as the sidecar sees them
            master = InstrumentMaster.default().with_declared(list(config.instruments))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return IbFeed(config.feeds_ib, master=master)
    raise UserError(f"unknown feed {name!r}: one of {', '.join(FEEDS)}")


def _default_root(name: str, config: Config) -> str:
    if name == "alpha_vantage":
        from bridge.feeds.alpha_vantage_shapes import parse_symbols
        try:
            roots = list(parse_symbols(config.feeds_alpha_vantage.symbols))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    else:
        roots = [r.strip().upper() for r in config.feeds_ib.roots.split(",") if r.strip()]
    if not roots:
        raise UserError(f"no instrument configured for {name}: give --instrument ROOT")
    return roots[0]


def _quiet_libraries(args: argparse.Namespace) -> None:
    if getattr(args, "log_level", None) is None:
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _probe(name: str, root: str, config: Config, timeout_s: float, function: str = "quote") -> tuple[Any, Any]:
    """(the quote or None, the feed's status after the probe); FeedError's sentence in the status."""
    from bridge.feeds.base import FeedError, Health
    feed = _feed(name, config, function)
    try:
        try:
            quote = feed.probe(root, timeout_s)
        except FeedError as exc:
            status = feed.status()
            status.health, status.reason = Health.DOWN, str(exc)
            return None, status
        return quote, feed.status()
    finally:
        try:
            feed.stop()
        except Exception:  # a probe's clean-up must not hide its answer
            logging.getLogger(__name__).debug("stopping the %s feed after a probe failed", name, exc_info=True)


# --- probe ---------------------------------------------------------------------------------------

def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ns else "?"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} days"


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def describe_quote(q: dict[str, Any]) -> str:
    """One value as one line: ``SPY 170.24 (end_of_day, 4804 days behind) at 2013-10-11 20:00:00 UTC``."""
    text = f"{q.get('symbol', '?')} {q.get('price')}"
    bid, ask = _finite(q.get("bid")), _finite(q.get("ask"))
    if bid is not None or ask is not None:
        text += f" (bid {bid if bid is not None else '-'} / ask {ask if ask is not None else '-'})"
    fresh = q.get("freshness") or "?"
    delay = q.get("delay_s") or 0.0
    text += f" [{fresh}{', ' + _age(delay) + ' behind' if delay else ''}] at {_when(q.get('ts_ns') or 0)}"
    return text


def _quote_dict(quote: Any) -> dict[str, Any]:
    return {"feed": quote.feed, "root": quote.root, "symbol": quote.symbol, "price": quote.price,
            "bid": _finite(quote.bid), "ask": _finite(quote.ask), "size": quote.size, "ts_ns": quote.ts_ns,
            "received_ns": quote.received_ns, "freshness": str(quote.freshness), "delay_s": quote.delay_s}


def cmd_feeds_probe(args: argparse.Namespace, config: Config) -> int:
    _quiet_libraries(args)
    if not args.timeout > 0:
        raise UserError("--timeout takes a number of seconds > 0")
    root = (args.instrument or _default_root(args.name, config)).upper()
    quote, status = _probe(args.name, root, config, args.timeout, args.function)
    if quote is None:
        raise UserError(f"{args.name} probe of {root} failed: {status.reason}")
    q = _quote_dict(quote)
    if args.json:
        print(json.dumps(q, indent=2))
    else:
        print(f"{args.name} {root}: {describe_quote(q)}")
    return 0


# --- status --------------------------------------------------------------------------------------

def _enabled(config: Config) -> list[str]:
    names = [n.strip() for n in config.feeds.enabled.split(",") if n.strip()]
    unknown = [n for n in names if n not in FEEDS]
    if unknown:
        raise UserError(f"feeds.enabled names {', '.join(unknown)}: known feeds are {', '.join(FEEDS)}")
    return names


def _from_sidecar(args: argparse.Namespace, config: Config) -> tuple[list[dict[str, Any]] | None, str, dict[str, Any]]:
    """The feeds the running sidecar reports (each a ``FeedStatus.to_dict()``), a sentence on where they
    came from (or why not), and the whole ``feeds`` block of its status (the reference per root)."""
    from bridge.transport.control import ControlError, send_command
    endpoint = args.control or config.server.control_bind
    if not endpoint:
        return None, "the control channel is disabled (server.control_bind is empty)", {}
    try:
        reply = send_command(endpoint, "status", timeout_ms=CONTROL_TIMEOUT_MS, key=operator_key(args.key))
    except ControlError as exc:
        text = str(exc)
        return None, (f"no sidecar answered at {endpoint}" if text.startswith("no answer") else
                      f"the sidecar at {endpoint} refused the status request ({text})"), {}
    block = reply.get("feeds")
    if not isinstance(block, dict) or not isinstance(block.get("feeds"), dict):
        return None, f"the sidecar at {endpoint} reports no feeds", {}
    rows = [r for r in block["feeds"].values() if isinstance(r, dict)]
    return rows, f"from the sidecar at {endpoint}", block


def _probed(config: Config, timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for name in _enabled(config):
        try:
            _, status = _probe(name, _default_root(name, config), config, timeout_s)
            row = status.to_dict()
        except UserError as exc:  # a feed that cannot even be built: its row says why
            row = {"name": name, "health": "down", "reason": str(exc), "freshness": None, "connected": False,
                   "last_value_ns": None, "counters": {}, "last": {}}
        rows.append(row)
    return rows


def cmd_feeds_status(args: argparse.Namespace, config: Config) -> int:
    _quiet_libraries(args)
    rows, source, block = _from_sidecar(args, config)
    if rows is None:
        names = _enabled(config)
        if not names:
            source += "; feeds.enabled is empty: NT8's own stream is the only feed"
            rows = []
        else:
            source += f"; probed {', '.join(names)} once" + (" each" if len(names) > 1 else "")
            rows = _probed(config, 10.0)
    if args.json:
        print(json.dumps(_json_ready({"source": source, "feeds": rows, "roots": block.get("roots", {})}), indent=2))
        return 0
    print(f"feeds ({source}):")
    for row in rows:
        print(_describe_row(row))
    for root, r in sorted((block.get("roots") or {}).items()):
        if isinstance(r, dict):
            print(f"  reference for {root}: {r.get('reference') or 'none'}; new entries: {r.get('entries', '?')}")
    return 0


def _describe_row(row: dict[str, Any]) -> str:
    health = str(row.get("health", "?")).upper()
    lines = [f"  {row.get('name', '?'):<14} {health:<9} {row.get('reason') or ''}".rstrip()]
    if row.get("freshness"):
        lines.append(f"    freshness: {row['freshness']}")
    last_ns = row.get("last_value_ns")
    if last_ns:
        lines.append(f"    last value received {_age(max(0.0, time.time() - last_ns / 1e9))} ago")
    for root, q in sorted((row.get("last") or {}).items()):
        lines.append(f"    {root}: {describe_quote(q)}")
    counters = row.get("counters") or {}
    if counters:
        lines.append("    counters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return "\n".join(lines)


def _json_ready(x: Any) -> Any:
    """NaN (a quote without a bid) is not JSON: null."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    return _finite(x)
