"""``nt8bridge``: the command line of the sidecar. ``nt8bridge --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.config import Config, ConfigError, load_config, to_toml

log = logging.getLogger("nt8bridge")


class UserError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _db_url(args: argparse.Namespace, config: Config) -> str:
    from bridge.storage.database import default_db_url
    return args.db or config.storage.url or default_db_url()


def _console():
    from rich.console import Console
    return Console(stderr=True)


# --- serve --------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from bridge.sidecar import run_sidecar
    run_sidecar(config, _db_url(args, config), args.bind, Path(args.ready_file) if args.ready_file else None,
                metrics=False if args.no_metrics else None)
    return 0


# --- playback and demo --------------------------------------------------------------------------

def _playback(files: list[Path], args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from bridge.playback import PlaybackError, load_stream, run_playback
    from bridge.sidecar import SidecarProcess, master_for
    from bridge.storage.queries import session_counts

    if args.window < 1:
        raise UserError("--window must be at least 1")
    if args.engine != "python":
        raise UserError(f"engine {args.engine!r} is not available yet; use --engine python "
                        "(the NT8 simulator engine arrives with the NinjaScript work)")
    console = _console()
    try:
        with console.status("reading data files"):
            stream = load_stream(files, args.instrument)
    except (PlaybackError, ValueError) as exc:
        raise UserError(str(exc)) from None
    master = master_for(config)
    for name in stream.names:
        try:
            master.resolve(name)
        except ValueError as exc:
            raise UserError(f"{exc} (or name the instrument with --instrument)") from None
    db = _db_url(args, config)
    proc = None
    endpoint = args.sidecar
    if endpoint is None:
        proc = SidecarProcess(db, Path(args.config) if args.config else None)
        endpoint = proc.start()
    try:
        with Progress(TextColumn("[bold]playback"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} ticks"),
                      TimeRemainingColumn(), console=console, transient=True, disable=args.quiet) as progress:
            task = progress.add_task("playback", total=len(stream))
            result = run_playback(stream, endpoint, config, master, window=args.window,
                                  progress=lambda n: progress.update(task, completed=n))
    except BaseException:
        if proc is not None:
            proc.stop()
            console.print(f"[red]the playback failed; the sidecar's log is {proc.log_path}:\n{proc.tail()}")
        raise
    summary: dict[str, Any] = {
        "engine": args.engine, "files": stream.sources, "instruments": stream.names, "session_id": result.session_id,
        "ticks_read": result.ticks_read, "ticks_rejected": result.ticks_rejected,
        "ticks_rejected_by_reason": result.rejected_by_reason, "bars_read": result.bars_read,
        "bars_rejected_by_reason": result.bars_rejected_by_reason, "brackets": result.brackets, "fills": result.fills,
        "realized_pnl": result.realized_pnl, "commission": result.commission,
        "net_pnl": round(sum(result.realized_pnl.values()) - result.commission, 2),
        "final_position": result.final_position, "refused_commands": result.refused_commands,
        "digest": result.digest, "window": args.window, "elapsed_s": round(result.elapsed_s, 3),
        "events_per_s": round((result.ticks_read + result.bars_read) / result.elapsed_s) if result.elapsed_s else None,
    }
    if proc is not None:
        code = proc.stop()
        if code != 0:
            raise RuntimeError(f"the sidecar exited with code {code}; its log: {proc.log_path}\n{proc.tail()}")
        counts = session_counts(db, result.session_id)
        summary["stored"] = {
            "ticks": counts.ticks, "quality_events_by_reason": counts.quality_events_by_reason, "bars": counts.bars,
            "decisions": counts.decisions, "orders": counts.orders, "order_updates": counts.order_updates,
            "executions": counts.executions, "audit_records": counts.audit_records, "session_end": counts.end_reason,
        }
        summary["decisions"] = counts.decisions
        summary["ticks_reconciled"] = counts.ticks == result.ticks_read - result.ticks_rejected
        summary["database"] = db
    return summary


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"playback of {', '.join(summary['instruments'])}", show_header=False)
    rows = [("ticks read", f"{summary['ticks_read']:,}"), ("ticks refused", f"{summary['ticks_rejected']:,}")]
    rows += [(f"  {k}", f"{v:,}") for k, v in summary["ticks_rejected_by_reason"].items()]
    if summary["bars_read"]:
        rows.append(("bars read", f"{summary['bars_read']:,}"))
        rows += [(f"  refused: {k}", f"{v:,}") for k, v in summary["bars_rejected_by_reason"].items()]
    if "stored" in summary:
        rows.append(("ticks stored", f"{summary['stored']['ticks']:,}"
                     + ("  (= read - refused)" if summary["ticks_reconciled"] else "  [red](MISMATCH)")))
        rows.append(("decisions", f"{summary['decisions']:,}"))
    rows += [("brackets", f"{summary['brackets']:,}"), ("fills", f"{summary['fills']:,}"),
             ("realized P&L", ", ".join(f"{k} {v:,.2f}" for k, v in summary["realized_pnl"].items()) or "0"),
             ("commission", f"{summary['commission']:,.2f}"), ("net P&L", f"{summary['net_pnl']:,.2f}"),
             ("throughput", f"{summary['events_per_s']:,} events/s ({summary['elapsed_s']} s)"),
             ("digest", summary["digest"][:16] + "...")]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def cmd_playback(args: argparse.Namespace, config: Config) -> int:
    _print_summary(_playback([Path(f) for f in args.data], args, config), args.json)
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from bridge.data.nt8files import Nt8Format, write_nt8
    from bridge.data.synthetic import generate_session
    from bridge.instruments import front_contract

    start = datetime.fromisoformat(args.start).replace(tzinfo=timezone.utc)
    names = [front_contract(root, start.date()) for root in args.roots.split(",")]
    console = _console()
    with console.status(f"generating {args.minutes} minutes of {', '.join(names)}"):
        frames = generate_session(names, start, args.minutes, seed=args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nt8bridge-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, df in frames.items():
        path = out / f"{name}.Last.txt"
        write_nt8(df, path, Nt8Format.TICK_REPLAY)
        files.append(path)
    if not args.quiet:
        console.print(f"synthetic session written to {out} ({sum(len(f) for f in frames.values()):,} ticks)")
    args.instrument = None
    args.sidecar = None
    args.engine = "python"
    _print_summary(_playback(files, args, config), args.json)
    return 0


# --- data, db, config ---------------------------------------------------------------------------

def cmd_data_inspect(args: argparse.Namespace, config: Config) -> int:
    from bridge.data.nt8files import DataFileError, inspect_file
    try:
        info = inspect_file(args.file)
    except (DataFileError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        table = Table(title=str(args.file), show_header=False)
        for k, v in info.items():
            table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        Console().print(table)
    return 0


def cmd_db(args: argparse.Namespace, config: Config) -> int:
    from bridge.storage.database import StorageError, backup, safe_url, upgrade
    url = _db_url(args, config)
    try:
        if args.db_command == "upgrade":
            rev = upgrade(url)
            print(f"{safe_url(url)} is at revision {rev}")
        else:
            dest = Path(args.to) if args.to else Path(f"nt8bridge-backup-{datetime.now():%Y%m%d-%H%M%S}"
                                                      + (".sqlite" if url.startswith("sqlite") else ".dump"))
            path = backup(url, dest)
            print(f"backup of {safe_url(url)} written to {path}")
    except StorageError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_config_show(args: argparse.Namespace, config: Config) -> int:
    print(to_toml(config), end="")
    return 0


# --- parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nt8bridge", description="NinjaTrader 8 <-> Python decision sidecar.")
    p.add_argument("--version", action="version", version=f"nt8bridge {__version__}")
    p.add_argument("--config", help="TOML config file (default: $NT8BRIDGE_CONFIG, else the user's config.toml)")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                   help="log verbosity on stderr (default: info for serve, warning otherwise)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", help="SQLAlchemy URL (default: storage.url, else an SQLite file in the user's data "
                                     "folder)")

    s = sub.add_parser("serve", help="run the sidecar until Ctrl+C")
    s.add_argument("--bind", help="ZeroMQ endpoint (default: server.bind, tcp://127.0.0.1:5555)")
    s.add_argument("--ready-file", help="write the bound endpoint to this file once listening (for supervisors)")
    s.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    db_option(s)
    s.set_defaults(func=cmd_serve)

    def playback_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--window", type=int, default=256, help="ticks sent together while no order is live "
                        "(1: exact lockstep throughout; the digest depends on it; default 256)")
        sp.add_argument("--json", action="store_true", help="print the summary as JSON")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        db_option(sp)

    s = sub.add_parser("playback", help="replay NT8 data files through the sidecar")
    s.add_argument("--data", nargs="+", required=True, metavar="FILE", help="NT8 exports: ticks, tick replay or minute "
                   "bars, plain or .gz; several are merged in time order")
    s.add_argument("--instrument", help="instrument name when a single file's name does not say it (e.g. 'ES 06-18')")
    s.add_argument("--engine", default="python", choices=["python", "nt8sim"], help="who plays NT8 (default python)")
    s.add_argument("--sidecar", metavar="ENDPOINT", help="use a running sidecar instead of starting one")
    playback_options(s)
    s.set_defaults(func=cmd_playback)

    s = sub.add_parser("demo", help="generate a synthetic session and play it back end to end")
    s.add_argument("--roots", default="ES", help="instrument roots, comma separated (default ES)")
    s.add_argument("--start", default="2024-03-12T13:30:00", help="session start, UTC (default 2024-03-12T13:30:00)")
    s.add_argument("--minutes", type=int, default=390, help="length in minutes (default 390, a cash session)")
    s.add_argument("--seed", type=int, default=7, help="random seed (same seed, same session)")
    s.add_argument("--out", help="folder for the generated NT8 files (default: a temporary folder)")
    playback_options(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("data", help="look at NT8 data files")
    dsub = s.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    d = dsub.add_parser("inspect", help="format, rows, time span, tick size, gaps of an NT8 export")
    d.add_argument("file")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_inspect)

    s = sub.add_parser("db", help="database schema and backups")
    dsub = s.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    d = dsub.add_parser("upgrade", help="bring the schema to the latest migration")
    db_option(d)
    d.set_defaults(func=cmd_db)
    d = dsub.add_parser("backup", help="copy the database (SQLite: online backup; PostgreSQL: pg_dump)")
    d.add_argument("--to", help="destination file")
    db_option(d)
    d.set_defaults(func=cmd_db)

    s = sub.add_parser("config", help="the effective configuration")
    csub = s.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser("show", help="print the configuration in force, as commented TOML")
    c.set_defaults(func=cmd_config_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level or ("info" if args.command == "serve" else "warning"))
    try:
        config = load_config(args.config)
        return args.func(args, config)
    except (UserError, ConfigError) as exc:
        print(f"nt8bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nt8bridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
