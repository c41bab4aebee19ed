"""``nt8bridge analytics load --data FILE...`` and ``nt8bridge analytics bars --instrument ES --resolution 5m``:
the ClickHouse analytics store (bridge/analytics, docs/storage.md). The store is ``analytics.url``
(``chdb:///PATH`` or ``clickhouse://HOST:PORT/DB``) or ``--url``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from bridge.core.config import Config, parse_utc
from bridge.core.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("analytics", help="the ClickHouse analytics store: load NT8 exports, query bars")
    asub = s.add_subparsers(dest="analytics_command", required=True, metavar="SUBCOMMAND")

    def url_option(d: argparse.ArgumentParser) -> None:
        d.add_argument("--url", help="chdb:///PATH or clickhouse://HOST:PORT/DB (default: analytics.url)")

    d = asub.add_parser("load", help="load NT8 exports (ticks, tick replay, minute or day bars) or the sidecar's "
                        "database; what is loaded already is skipped, a retried batch inserts nothing twice")
    what = d.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", nargs="+", metavar="FILE", help="NT8 export files (plain or .gz)")
    what.add_argument("--db", nargs="?", const="", metavar="URL", help="the recorded sessions of this database "
                      "(default: storage.url); each session's rows are counted against the store's, and only "
                      "missing ones are sent (a backfill after the live feed dropped rows)")
    d.add_argument("--include-open", action="store_true", help="with --db: also sessions with no end recorded "
                   "(after a crash; a running sidecar may be feeding them)")
    d.add_argument("--instrument", help="instrument name for every file (default: from each file's name)")
    d.add_argument("--json", action="store_true")
    url_option(d)
    d.set_defaults(func=cmd_analytics_load)

    d = asub.add_parser("bars", help="OHLCV bars built from the stored ticks, stamped at the bar's end (NT8)")
    d.add_argument("--instrument", required=True, help="root (ES: every ES contract) or full name ('ES 06-18')")
    d.add_argument("--resolution", default="5m", help="30s, 5m, 1h, 1d ... (default 5m)")
    d.add_argument("--from", dest="start", metavar="TIME", help="ISO 8601, UTC when no offset (inclusive)")
    d.add_argument("--to", dest="end", metavar="TIME", help="ISO 8601, UTC when no offset (exclusive)")
    fmt = d.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    url_option(d)
    d.set_defaults(func=cmd_analytics_bars)

    def session_options(d: argparse.ArgumentParser) -> None:
        d.add_argument("--instrument", required=True, help="root (ES: every ES contract) or full name ('ES 06-18')")
        d.add_argument("--from", dest="start", metavar="TIME", help="ISO 8601, UTC when no offset (inclusive)")
        d.add_argument("--to", dest="end", metavar="TIME", help="ISO 8601, UTC when no offset (exclusive)")
        d.add_argument("--tz", default="America/Chicago", help="the sessions' time zone (default America/Chicago)")
        d.add_argument("--session-start", type=int, default=17, metavar="HOUR",
                       help="local hour a session starts, labelled by the day it ends (default 17, the CME's; "
                       "0: calendar days)")
        fmt = d.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true")
        fmt.add_argument("--csv", action="store_true")
        url_option(d)

    d = asub.add_parser("vwap", help="volume-weighted average price, volume, high and low per session")
    session_options(d)
    d.set_defaults(func=cmd_analytics_vwap)
    d = asub.add_parser("profile", help="volume profile per session: volume at each price, the point of control")
    session_options(d)
    d.add_argument("--bucket", type=float, metavar="WIDTH", help="price band width (default: each traded price)")
    d.set_defaults(func=cmd_analytics_profile)
    d = asub.add_parser("spreads", help="bid-ask spread per session and/or hour: quotes, mean, median, p95, "
                        "time-weighted")
    session_options(d)
    d.add_argument("--by", default="session", help="session, hour (local hour of day in --tz) or session,hour")
    d.set_defaults(func=cmd_analytics_spreads)

    d = asub.add_parser("executions", help="fills, volume, slippage (ticks and money, mean and p95) and "
                        "decision-to-fill latency per strategy, instrument, hour ...")
    d.add_argument("--by", default="strategy,instrument", help="comma-separated: strategy, instrument, hour "
                   "(local hour of day in --tz), session_id, role, side, account (default strategy,instrument)")
    d.add_argument("--instrument", help="root (ES: every ES contract) or full name (default: all)")
    d.add_argument("--from", dest="start", metavar="TIME", help="ISO 8601, UTC when no offset (inclusive)")
    d.add_argument("--to", dest="end", metavar="TIME", help="ISO 8601, UTC when no offset (exclusive)")
    d.add_argument("--tz", default="America/Chicago", help="time zone of --by hour (default America/Chicago)")
    fmt = d.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    url_option(d)
    d.set_defaults(func=cmd_analytics_executions)

    d = asub.add_parser("ddl", help="print the schema's SQL: for one node, or with --cluster for a ClickHouse "
                        "cluster (ReplicatedMergeTree tables under Distributed ones)")
    d.add_argument("--cluster", metavar="NAME", help="the cluster's name in the servers' remote_servers")
    d.add_argument("--database", default="nt8bridge", help="database name (default nt8bridge)")
    d.set_defaults(func=cmd_analytics_ddl)


def _store(args: argparse.Namespace, config: Config) -> Any:
    from bridge.analytics.store import AnalyticsError, open_store
    try:
        return open_store(args.url or config.analytics.url, batch_rows=config.analytics.batch_rows)
    except AnalyticsError as exc:
        raise UserError(str(exc)) from None


def cmd_analytics_load(args: argparse.Namespace, config: Config) -> int:
    if args.db is not None:
        return _load_db(args, config)
    from bridge.analytics.load import load_nt8_file
    from bridge.analytics.store import AnalyticsError
    from bridge.data.nt8files import DataFileError
    results = []
    with _store(args, config) as store:
        for path in args.data:
            try:
                results.extend(load_nt8_file(store, path, instrument=args.instrument))
            except (DataFileError, AnalyticsError, OSError) as exc:
                raise UserError(f"{path}: {exc}") from None
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            what = "already loaded, skipped" if r.skipped else f"{r.sent:,} rows sent"
            bad = f", {r.bad_rows:,} unreadable lines skipped (logged)" if r.bad_rows else ""
            print(f"{r.path}: {r.instrument} {r.format} -> {r.table}: {r.rows:,} rows, {what}{bad}")
    return 0


def _load_db(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.load_db import load_database, source_for
    from bridge.analytics.store import AnalyticsError
    from bridge.cli.common import db_url
    from bridge.storage.database import StorageError, safe_url
    url = db_url(args, config)
    with _store(args, config) as store:
        try:
            results = load_database(store, url, include_open=args.include_open)
        except (AnalyticsError, StorageError) as exc:
            raise UserError(f"{safe_url(url)}: {exc}") from None
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    print(f"{source_for(url)}:")
    for r in results:
        extra = f", {r.sessions_repaired} held in part (replaced)" if r.sessions_repaired else ""
        extra += f", {r.sessions_open} still open (skipped; --include-open)" if r.sessions_open else ""
        print(f"  {r.table}: {r.storage_rows:,} rows in the database, {r.sent:,} sent; sessions: "
              f"{r.sessions_loaded} loaded, {r.sessions_skipped} already there{extra}")
    return 0


def _ns(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_utc(text)
    except ValueError:
        raise UserError(f"--{name} {text!r}: not an ISO 8601 time (e.g. 2018-05-08T13:30)") from None


def cmd_analytics_bars(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.queries import bars
    from bridge.analytics.store import AnalyticsError
    start, end = _ns(args.start, "from"), _ns(args.end, "to")
    with _store(args, config) as store:
        try:
            df = bars(store, args.instrument, args.resolution, start, end)
        except AnalyticsError as exc:
            raise UserError(str(exc)) from None
    if args.json or args.csv:
        _emit(df, args)
    else:
        import pandas as pd
        shown = df.assign(end=pd.to_datetime(df["ts_ns"], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S")) if len(df) else df
        print(shown.drop(columns=["ts_ns"]).to_string(index=False) if len(df) else "no ticks in that range")
    return 0


def _emit(df: Any, args: argparse.Namespace, empty: str = "no ticks in that range") -> None:
    if "session" in df.columns:  # a date: text in JSON and CSV alike
        df = df.assign(session=df["session"].astype(str))
    if args.json:
        print(json.dumps(df.to_dict(orient="records")))
    elif args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        print(df.to_string(index=False) if len(df) else empty)


def _session_query(args: argparse.Namespace, config: Config, fn: Any, empty: str = "no ticks in that range",
                   **kw: Any) -> int:
    from bridge.analytics.store import AnalyticsError
    start, end = _ns(args.start, "from"), _ns(args.end, "to")
    with _store(args, config) as store:
        try:
            df = fn(store, args.instrument, start, end, tz=args.tz, session_start_h=args.session_start, **kw)
        except AnalyticsError as exc:
            raise UserError(str(exc)) from None
    _emit(df, args, empty)
    return 0


def cmd_analytics_vwap(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.queries import vwap
    return _session_query(args, config, vwap)


def cmd_analytics_profile(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.queries import volume_profile
    return _session_query(args, config, volume_profile, bucket=args.bucket)


def cmd_analytics_ddl(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.cluster import cluster_ddl
    from bridge.analytics.rollups import rollup_ddl
    from bridge.analytics.schema import all_ddl
    ddl = cluster_ddl(args.database, args.cluster) if args.cluster else all_ddl(args.database) + rollup_ddl(args.database)
    print(";\n\n".join(ddl) + ";")
    return 0


def cmd_analytics_spreads(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.queries import spreads
    return _session_query(args, config, spreads, "no quotes with both sides in that range", by=args.by)


def cmd_analytics_executions(args: argparse.Namespace, config: Config) -> int:
    from bridge.analytics.queries import executions, tick_sizes
    from bridge.analytics.store import AnalyticsError
    from bridge.core.instruments import InstrumentMaster
    start, end = _ns(args.start, "from"), _ns(args.end, "to")
    master = InstrumentMaster.default().with_declared(list(config.instruments))
    with _store(args, config) as store:
        try:
            df = executions(store, tick_sizes(store, master), by=args.by, instrument=args.instrument,
                            start_ns=start, end_ns=end, tz=args.tz)
        except AnalyticsError as exc:
            raise UserError(str(exc)) from None
    _emit(df, args, empty="no fills in that range")
    return 0
