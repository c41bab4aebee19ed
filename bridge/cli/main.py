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
from bridge.core.config import Config, ConfigError, load_config, to_toml
from bridge.core.errors import UserError
from bridge.cli import alerts, console, doctor, feeds, ml, ops, remote, service
from bridge.cli import analytics as analytics_cli
from bridge.cli import research as research_cli
from bridge.cli.common import add_control_option, add_key_option, operator_key
from bridge.cli.common import console as _console, db_url as _db_url, setup_logging as _setup_logging

log = logging.getLogger("nt8bridge")


# --- serve --------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from bridge.transport.sidecar import run_sidecar
    try:
        run_sidecar(config, _db_url(args, config), args.bind, Path(args.ready_file) if args.ready_file else None,
                    metrics=False if args.no_metrics else None, control_bind=args.control_bind,
                    events_bind=args.events_bind)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    return 0


# --- playback and demo --------------------------------------------------------------------------

def _playback(files: list[Path], args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bridge.transport.sidecar import SidecarProcess, master_for

    if args.window < 1:
        raise UserError("--window must be at least 1")
    if args.latency_ms and not args.free_running:
        raise UserError("--latency-ms is a free-running setting: add --free-running (lockstep orders act at once)")
    if getattr(args, "chunk_mb", None) is not None and args.engine != "research":
        raise UserError("--chunk-mb reads files in pieces for --engine research; the other engines read them whole")
    if args.engine != "nt8sim" and args.free_running:
        raise UserError("--free-running needs --engine nt8sim (the python and research engines always run in lockstep)")
    master = master_for(config)
    console = _console()
    db = _db_url(args, config)
    if args.engine == "research":
        if args.sidecar:
            raise UserError("--sidecar is for the python and nt8sim engines: research runs the sidecar's decision path "
                            "in this process")
        summary, session_ids = _playback_research(files, args, config, master, db, console)
        summary.update(_stored(db, session_ids, summary))
        return summary
    proc = None
    endpoint = args.sidecar
    if endpoint is None:
        proc = SidecarProcess(db, Path(args.config) if args.config else None)
        endpoint = proc.start()
    try:
        if args.engine == "nt8sim":
            summary, session_ids = _playback_nt8sim(files, args, config, master, endpoint, console)
        else:
            summary, session_ids = _playback_python(files, args, config, master, endpoint, console)
    except BaseException:
        if proc is not None:
            proc.stop()
            console.print(f"[red]the playback failed; the sidecar's log is {proc.log_path}:\n{proc.tail()}")
        raise
    if proc is not None:
        code = proc.stop()
        if code != 0:
            raise RuntimeError(f"the sidecar exited with code {code}; its log: {proc.log_path}\n{proc.tail()}")
        summary.update(_stored(db, session_ids, summary))
    return summary


def _progress(console: Any, total: int, quiet: bool, unit: str) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("[bold]playback"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} " + unit),
                    TimeRemainingColumn(), console=console, transient=True, disable=quiet)


def _read_stream(files: list[Path], args: argparse.Namespace, master: Any, console: Any) -> Any:
    from bridge.nt8.playback import PlaybackError, load_stream
    try:
        with console.status("reading data files"):
            stream = load_stream(files, args.instrument)
    except (PlaybackError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for name in stream.names:
        try:
            master.resolve(name)
        except ValueError as exc:
            raise UserError(f"{exc} (or name the instrument with --instrument)") from None
    return stream


def _lockstep_summary(engine: str, files: list[str], result: Any, window: int) -> dict[str, Any]:
    """The summary of a playback through the Python engine's loop (over a socket, or in this process)."""
    return {
        "engine": engine, "files": files, "instruments": result.instruments, "session_id": result.session_id,
        "ticks_read": result.ticks_read, "ticks_rejected": result.ticks_rejected,
        "ticks_rejected_by_reason": result.rejected_by_reason, "bars_read": result.bars_read,
        "bars_rejected_by_reason": result.bars_rejected_by_reason, "brackets": result.brackets, "fills": result.fills,
        "realized_pnl": result.realized_pnl, "commission": result.commission,
        "net_pnl": round(sum(result.realized_pnl.values()) - result.commission, 2),
        "final_position": result.final_position, "refused_commands": result.refused_commands,
        "digest": result.digest, "window": window, "elapsed_s": round(result.elapsed_s, 3),
        "events_per_s": round((result.ticks_read + result.bars_read) / result.elapsed_s) if result.elapsed_s else None,
    }


def _playback_python(files: list[Path], args: argparse.Namespace, config: Config, master: Any, endpoint: str,
                     console: Any) -> tuple[dict[str, Any], list[int]]:
    from bridge.nt8.playback import run_playback
    from bridge.transport.security import client_secret
    stream = _read_stream(files, args, master, console)
    with _progress(console, len(stream), args.quiet, "ticks") as progress:
        task = progress.add_task("playback", total=len(stream))
        result = run_playback(stream, endpoint, config, master, window=args.window,
                              progress=lambda n: progress.update(task, completed=n),
                              secret=client_secret(config.security))  # a config in remote mode: its secret
    return _lockstep_summary("python", stream.sources, result, args.window), [result.session_id]


def _playback_research(files: list[Path], args: argparse.Namespace, config: Config, master: Any, db: str,
                       console: Any) -> tuple[dict[str, Any], list[int]]:
    from bridge.nt8.playback import PlaybackError, iter_stream
    from bridge.research.inprocess import run_research
    if getattr(args, "chunk_mb", None) is None:
        stream: Any = _read_stream(files, args, master, console)
        total: int | None = len(stream)
    else:  # files larger than memory: pieces of about chunk_mb of each file at a time
        if args.chunk_mb <= 0:
            raise UserError("--chunk-mb must be positive (megabytes of each file held at a time)")
        stream, total = iter_stream(files, args.instrument, chunk_bytes=int(args.chunk_mb * (1 << 20))), None
    try:
        with _progress(console, total or 0, args.quiet, "ticks") as progress:
            task = progress.add_task("playback", total=total)
            result = run_research(stream, config, master, db_url=db, window=args.window,
                                  progress=lambda n: progress.update(task, completed=n))
    except (PlaybackError, ValueError) as exc:  # DataFileError is a ValueError
        raise UserError(str(exc)) from None
    return _lockstep_summary("research", [str(f) for f in files], result, args.window), [result.session_id]


def _playback_nt8sim(files: list[Path], args: argparse.Namespace, config: Config, master: Any, endpoint: str,
                     console: Any) -> tuple[dict[str, Any], list[int]]:
    from bridge.nt8.ninjascript import BuildError, build
    from bridge.nt8.simulator import Nt8SimError, run_nt8sim

    try:
        with console.status("compiling the NinjaScript and the NT8 simulator (mcs)"):
            build()
    except BuildError as exc:
        raise UserError(str(exc)) from None
    with _progress(console, 0, args.quiet, "events") as progress:
        task = progress.add_task("playback", total=0)
        try:
            result = run_nt8sim(files, endpoint, config, master, instrument=args.instrument,
                                lockstep=not args.free_running, window=args.window, latency_ms=args.latency_ms,
                                speed=args.speed,
                                timezone=args.timezone,
                                parameters={"SharedSecretFile": config.security.secret_file},  # remote mode, if set
                                progress=lambda n, total: progress.update(task, completed=n, total=total))
        except Nt8SimError as exc:
            raise UserError(str(exc)) from None
    if result.strategy_error:
        raise UserError(f"the NinjaScript strategy stopped with an error (as NT8 would disable it):\n{result.strategy_error}")
    from collections import Counter
    summary: dict[str, Any] = {
        "engine": "nt8sim",
        "mode": (f"lockstep, window {args.window}" if result.lockstep else f"free-running, {args.latency_ms} ms order latency")
        + (f", {args.speed:g}x real time" if args.speed else ""),
        "files": [str(f) for f in files], "instruments": result.instruments, "instance_id": result.instance_id,
        "ticks_read": result.trades, "bars_read": result.bars, "market_data_events": result.market_data_events,
        "brackets": result.brackets, "orders": len(result.orders),
        "orders_by_state": dict(sorted(Counter(o["state"] for o in result.orders).items())),
        "fills": len(result.fills), "realized_pnl": result.realized_pnl, "commission": result.commission,
        "net_pnl": round(sum(result.realized_pnl.values()) - result.commission, 2),
        "final_position": result.final_position, "digest": result.digest, "chart": result.chart_text,
        "simulator": {k: v for k, v in result.counters.items() if not k.startswith("link_")},
        # the strategy's link to the sidecar (its stop line): free-running, what never reached the sidecar
        "link": {k[len("link_"):]: v for k, v in result.counters.items() if k.startswith("link_")},
        "elapsed_s": round(result.elapsed_s, 3),
        "events_per_s": round(result.events_per_s) if result.elapsed_s else None,
        "fill_ids": [f["execution_id"] for f in result.fills],
    }
    from bridge.storage.queries import sessions_of_instance
    return summary, sessions_of_instance(_db_url(args, config), result.instance_id) if args.sidecar is None else []


def _stored(db: str, session_ids: list[int], summary: dict[str, Any]) -> dict[str, Any]:
    """What the sidecar stored for these sessions, and whether it adds up with what was played."""
    from bridge.storage.queries import execution_ids, session_counts
    totals: dict[str, Any] = {}
    end_reasons = []
    for sid in session_ids:
        c = session_counts(db, sid)
        end_reasons.append(c.end_reason)
        for key in ("ticks", "bars", "decisions", "orders", "order_updates", "executions", "audit_records"):
            totals[key] = totals.get(key, 0) + getattr(c, key)
        for reason, n in c.quality_events_by_reason.items():
            q = totals.setdefault("quality_events_by_reason", {})
            q[reason] = q.get(reason, 0) + n
    totals.setdefault("quality_events_by_reason", {})
    totals["session_end"] = end_reasons[-1] if end_reasons else None
    out: dict[str, Any] = {"stored": totals, "decisions": totals.get("decisions", 0), "database": db,
                           "session_ids": session_ids}
    if summary["engine"] in ("python", "research"):
        out["session_id"] = summary["session_id"]
        out["ticks_reconciled"] = totals.get("ticks", 0) == summary["ticks_read"] - summary["ticks_rejected"]
    else:
        stored_ids = execution_ids(db, session_ids)
        fill_ids = summary.pop("fill_ids")
        out["fills_matched"] = sorted(fill_ids) == sorted(stored_ids)
        out["ticks_sent"] = summary["market_data_events"]
    return out


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"playback of {', '.join(summary['instruments'])} ({summary['engine']})", show_header=False)
    rows = [("ticks read", f"{summary['ticks_read']:,}")]
    if "ticks_rejected" in summary:
        rows.append(("ticks refused", f"{summary['ticks_rejected']:,}"))
    rows += [(f"  {k}", f"{v:,}") for k, v in summary.get("ticks_rejected_by_reason", {}).items()]
    if summary["bars_read"]:
        rows.append(("bars read", f"{summary['bars_read']:,}"))
        rows += [(f"  refused: {k}", f"{v:,}") for k, v in summary.get("bars_rejected_by_reason", {}).items()]
    if "stored" in summary:
        line = f"{summary['stored']['ticks']:,}"
        if "ticks_reconciled" in summary:
            line += "  (= read - refused)" if summary["ticks_reconciled"] else "  [red](MISMATCH)"
        elif "ticks_sent" in summary:
            line += f"  of {summary['ticks_sent']:,} market data events"
        rows.append(("ticks stored", line))
        rows.append(("decisions", f"{summary['decisions']:,}"))
    if "fills_matched" in summary:
        rows.append(("fills stored", "every fill matched by a stored execution" if summary["fills_matched"]
                     else "[red]fills and stored executions differ"))
    if "mode" in summary:
        rows.append(("mode", summary["mode"]))
    link = summary.get("link")
    if link:
        text = (f"{link.get('sent', 0):,} sent, {link.get('dropped', 0):,} dropped (queue full or never sent), "
                f"{link.get('dropped_stale', 0):,} stale dropped, {link.get('downs', 0):,} link downs")
        if link.get("dropped_order_events"):
            text += f"  [red]({link['dropped_order_events']:,} order events dropped)"
        if link.get("dropped") or link.get("dropped_stale"):
            text = "[yellow]" + text
        rows.append(("link", text))
    rows += [("brackets", f"{summary['brackets']:,}"), ("fills", f"{summary['fills']:,}"),
             ("realized P&L", ", ".join(f"{k} {v:,.2f}" for k, v in summary["realized_pnl"].items()) or "0"),
             ("commission", f"{summary['commission']:,.2f}"), ("net P&L", f"{summary['net_pnl']:,.2f}"),
             ("throughput", f"{summary['events_per_s']:,} events/s ({summary['elapsed_s']} s)"),
             ("digest", summary["digest"][:16] + "...")]
    rows += [("chart", text) for text in summary.get("chart", [])]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def cmd_playback(args: argparse.Namespace, config: Config) -> int:
    _print_summary(_playback([Path(f) for f in args.data], args, config), args.json)
    return 0


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from bridge.data.nt8files import Nt8Format, write_nt8
    from bridge.data.synthetic import generate_session
    from bridge.core.instruments import front_contract

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
    if args.config is None:
        # The demo shows the whole path, orders and fills included: one contract per bracket and no
        # regime switch. With the default Kelly sizing the reference strategy, which has no edge after
        # costs, would rightly send nothing (try `nt8bridge backtest` for the sized, honest view).
        from dataclasses import replace
        config = replace(config, sizing=replace(config.sizing, mode="fixed", quantity=1),
                         portfolio=replace(config.portfolio, regime_filter=False))
        demo_config = out / "demo-config.toml"
        demo_config.write_text(to_toml(config), encoding="utf-8")
        args.config = str(demo_config)
        if not args.quiet:
            console.print(f"demo configuration (fixed 1-contract sizing, regime filter off): {demo_config}")
    args.instrument = None
    args.sidecar = None
    args.engine = "python"
    args.free_running, args.latency_ms, args.timezone, args.speed = False, 0, "UTC", 0.0
    _print_summary(_playback(files, args, config), args.json)
    return 0


# --- audit --------------------------------------------------------------------------------------

def cmd_audit_verify(args: argparse.Namespace, config: Config) -> int:
    from bridge.audit.trail import audit_paths, verify_database
    from bridge.storage.database import StorageError, safe_url
    url = _db_url(args, config)
    paths = audit_paths(config, url)
    checkpoints = Path(args.checkpoints) if args.checkpoints else paths.checkpoints
    public_key = Path(args.public_key) if args.public_key else paths.public_key
    try:
        result = verify_database(url, checkpoints, public_key)
    except StorageError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        import dataclasses
        print(json.dumps(dataclasses.asdict(result), indent=2))
    elif result.ok:
        print(f"audit chain of {safe_url(url)} intact: {result.records:,} records, "
              f"{result.checkpoints_verified} signed checkpoints verified ({checkpoints})")
    else:
        print(f"AUDIT CHAIN BROKEN in {safe_url(url)}: first bad record {result.first_bad_seq}: {result.reason}",
              file=sys.stderr)
    return 0 if result.ok else 1


# --- kill switch ----------------------------------------------------------------------------------

def cmd_kill(args: argparse.Namespace, config: Config) -> int:
    import getpass

    from bridge.transport.control import ControlError, send_command
    endpoint = args.control or config.server.control_bind
    key = operator_key(args.key)  # signs the request for a sidecar with operator keys (docs/security.md)
    try:
        if args.command == "kill":
            operator = args.operator or (key.name if key else getpass.getuser())
            reply = send_command(endpoint, "kill", operator=operator, reason=args.reason, key=key)
            print(f"KILLED by {operator}: {reply['sessions_flattened']} NT8 sessions told to flatten everything; "
                  f"new orders are refused until `nt8bridge enable --operator NAME`")
        elif args.command == "enable":
            reply = send_command(endpoint, "enable", operator=args.operator, reason=args.reason, key=key)
            print(f"trading enabled by {args.operator} ({reply['sessions']} sessions)")
        else:
            reply = send_command(endpoint, "status", key=key)
            role = reply.get("role", "single")
            leader = reply.get("leader") or {}
            pair = "" if role == "single" else (f", {role} of a hot-standby pair (epoch {reply.get('leader_epoch')}"
                                                f"{'' if role == 'leader' else ', leader ' + leader.get('endpoint', '?')})")
            from bridge.transport.storage_health import describe
            print(json.dumps(reply, indent=2) if args.json else f"{reply['state']} ({reply['sessions']} sessions{pair})"
                  f"{describe(reply.get('storage'))}")
    except ControlError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_stop(args: argparse.Namespace, config: Config) -> int:
    """``shutdown`` on the control channel; with --wait, until the sidecar released its control endpoint
    (it does so last, after flushing storage and closing the audit journal). Exit 1: still running."""
    import getpass

    from bridge.transport.control import ControlError, send_command, wait_until_released
    endpoint = args.control or config.server.control_bind
    if not endpoint:
        raise UserError("the control channel is disabled (server.control_bind is empty): give --control ENDPOINT")
    if args.wait is not None and args.wait < 0:
        raise UserError("--wait takes a number of seconds >= 0")
    key = operator_key(args.key)
    operator = args.operator or (key.name if key else getpass.getuser())
    try:
        reply = send_command(endpoint, "shutdown", operator=operator, reason=args.reason, key=key)
    except ControlError as exc:
        raise UserError(str(exc)) from None
    print(f"shutdown accepted by the sidecar at {endpoint} (asked by {operator}; {reply['sessions']} NT8 sessions "
          "end): it flushes storage, then exits")
    if args.wait is None:
        return 0
    if wait_until_released(endpoint, args.wait):
        print("stopped: storage flushed, audit journal closed, control endpoint released")
        return 0
    print(f"the sidecar is still running after {args.wait:g} s (a long stop drain, or stuck): see its log",
          file=sys.stderr)
    return 1


# --- backtest -----------------------------------------------------------------------------------

def cmd_backtest(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from bridge.core.config import build_config
    from bridge.nt8.playback import PlaybackError, load_stream
    from bridge.transport.sidecar import master_for
    from bridge.research.backtest import run_backtest

    overrides: dict[str, Any] = {}
    if args.strategies:
        overrides["names"] = args.strategies
    try:  # validated like the config file: a misspelt strategy is named, not ignored
        build_config({"strategy": overrides, "sizing": {"equity": args.equity} if args.equity else {}}, env={})
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    config = replace(config, strategy=replace(config.strategy, **overrides),
                     sizing=replace(config.sizing, equity=args.equity or config.sizing.equity),
                     metrics=replace(config.metrics, enabled=False))
    if not config.strategy.strategy_names():
        raise UserError("no strategies to test: pass --strategies momentum,reversion,spread,ml")
    console = _console()
    try:
        with console.status("reading data files"):
            stream = load_stream([Path(f) for f in args.data])
    except (PlaybackError, ValueError) as exc:
        raise UserError(str(exc)) from None
    master = master_for(config)
    for name in stream.names:
        try:
            master.resolve(name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeRemainingColumn(), console=console, transient=True, disable=args.quiet) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done)
        try:
            report = run_backtest(stream, config, master, _db_url(args, config), split=args.split, window=args.window,
                                  engine=args.engine, out_dir=Path(args.out) if args.out else None,
                                  progress=on_progress)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if not args.trades:
        report.pop("trades")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_backtest(report)
    return 0


def _print_backtest(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: Any, fmt: str = ",.2f") -> str:
        return "-" if x is None else format(x, fmt)
    console = Console()
    if "calibration" in report:
        c = report["calibration"]
        console.print(f"calibration {c['from']} .. {c['to']} (1 contract): " + "; ".join(
            f"{k} {v['wins']}/{v['bets']} won, prior {v['stated_prior']:.3f} -> {v['calibrated_prior']:.3f}"
            for k, v in c["priors"].items()))
    t = report["test"]
    table = Table(title=f"backtest {t['from']} .. {t['to']} on {', '.join(report['instruments'])} ({t['sizing']})")
    for col in ("", "trades", "win rate", "net P&L", "commission", "Sharpe", "Sortino", "max DD", "CAGR", "exposure"):
        table.add_column(col, justify="right" if col else "left")
    for name, m in t["summary"].items():
        table.add_row(name, str(m["trades"]), pct(m["win_rate"]), num(m["net_pnl"]), num(m["commission"]),
                      num(m["sharpe"]), num(m["sortino"]), pct(m["max_drawdown"]), pct(m["cagr"]), pct(m["exposure"]))
    console.print(table)
    console.print(f"engine {report['engine']}, {t['elapsed_s']:.1f} s for the test window"
                  + (f"; files: {', '.join(report['files_written'].values())}" if "files_written" in report else ""))


# --- ninjascript --------------------------------------------------------------------------------

def cmd_ninjascript(args: argparse.Namespace, config: Config) -> int:
    from bridge.nt8.ninjascript import BuildError, build, export_zip, shipped_sources
    if args.ns_command in ("install", "uninstall"):
        return _ninjascript_deploy(args)
    if args.ns_command == "build":
        try:
            with _console().status("compiling with mcs (C# 7.2, .NET Framework 4.8 API)"):
                result = build(Path(args.out) if args.out else None, force=args.force)
        except BuildError as exc:
            raise UserError(str(exc)) from None
        print(f"simulator:   {result.simulator}\nninjascript: {result.ninjascript}")
        return 0
    out = Path(args.to)
    export_zip(out)
    print(f"{out}: Info.xml and {len(shipped_sources())} source files; in NT8: Tools > Import > NinjaScript Add-On, "
          "then enable 'Nt8Bridge' on a chart (Strategies)")
    return 0


def _ninjascript_deploy(args: argparse.Namespace) -> int:
    from bridge.nt8.deploy import DeployError, find_nt8_folder, install_ninjascript, uninstall_ninjascript
    from bridge.protocol.messages import PROTOCOL_VERSION
    try:
        folder = find_nt8_folder(Path(args.nt8_dir) if args.nt8_dir else None)
        if args.ns_command == "install":
            result = install_ninjascript(folder.custom_dir)
        else:
            removed = uninstall_ninjascript(folder.custom_dir)
    except DeployError as exc:
        raise UserError(str(exc)) from None
    if args.ns_command == "uninstall":
        for path in removed:
            print(f"removed {path}")
        print(f"{len(removed)} files of nt8bridge's NinjaScript removed from {folder.custom_dir}; in NT8, compile "
              "once (NinjaScript Editor, F5) so that the Nt8Bridge strategy is gone from its lists")
        return 0
    for path in result.written:
        print(f"{'replaced' if path in result.replaced else 'added'} {path}")
    print(f"NinjaScript of nt8bridge {__version__} (wire protocol v{PROTOCOL_VERSION}) installed in "
          f"{folder.custom_dir} (NT8 user folder from {folder.source}); in NT8, compile it: open a NinjaScript "
          "Editor and press F5, then enable 'Nt8Bridge' on a chart (Strategies)")
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
    from bridge.storage.database import StorageError, safe_url, upgrade
    from bridge.storage.restore import backup_bundle
    url = _db_url(args, config)
    try:
        if args.db_command == "upgrade":
            rev = upgrade(url)
            print(f"{safe_url(url)} is at revision {rev}")
        elif args.prove or args.keep or args.schedule:
            return _proven_backups(args, config, url)
        else:
            dest = Path(args.to) if args.to else Path(f"nt8bridge-backup-{datetime.now():%Y%m%d-%H%M%S}"
                                                      + (".sqlite" if url.startswith("sqlite") else ".dump"))
            path = backup_bundle(url, dest, _audit_files(config, url))
            print(f"backup of {safe_url(url)} written to {path} (audit files and manifest beside it)")
    except StorageError as exc:
        raise UserError(str(exc)) from None
    return 0


def _audit_files(config: Config, url: str) -> Any:
    """The audit journal, checkpoints and public key of ``url``'s sidecar, for a backup bundle."""
    from bridge.audit.trail import audit_paths
    from bridge.storage.restore import AuditFiles
    paths = audit_paths(config, url)
    return AuditFiles(paths.journal, paths.checkpoints, paths.public_key)


def _proven_backups(args: argparse.Namespace, config: Config, url: str) -> int:
    """`db backup --prove/--keep/--schedule`: each backup restored into a scratch database and its audit chain
    verified there; the outcome appended to FOLDER/proofs.jsonl; exit 1 when a single run is not proven."""
    import dataclasses

    from bridge.audit.trail import audit_paths, verify_database
    from bridge.storage.backup_schedule import ProvenBackups
    if not args.to:
        raise UserError("--prove, --keep and --schedule need --to FOLDER (where the backups are kept)")
    if Path(args.to).exists() and not Path(args.to).is_dir():
        raise UserError(f"--to {args.to} is a file: --prove, --keep and --schedule keep backups in a folder")
    if args.keep < 0:
        raise UserError(f"--keep {args.keep}: give the number of backups to keep (1 or more; 0 keeps all)")
    public_key = audit_paths(config, url).public_key  # the desk's own key is the trust anchor, not the bundle's

    def verifier(scratch: str, audit_dir: Path) -> tuple[bool, str, dict[str, Any]]:
        result = verify_database(scratch, audit_dir / "checkpoints.jsonl", public_key)
        return result.ok, result.reason or "audit chain intact", dataclasses.asdict(result)

    def on_proof(proof: Any) -> None:
        print(json.dumps(dataclasses.asdict(proof)), flush=True)
        _record_proof(args.control or config.server.control_bind, dataclasses.asdict(proof))

    job = ProvenBackups(url, Path(args.to), args.keep or 0, _audit_files(config, url), verifier, on_proof=on_proof)
    if args.schedule:
        from ml.retrain import trigger_from_text
        try:
            trigger = trigger_from_text(args.schedule)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        job.serve(trigger)  # until Ctrl+C
        return 0
    return 0 if job.run_once().ok else 1


def _record_proof(endpoint: str, proof: dict[str, Any]) -> None:
    """Hand a proof to the running sidecar, the audit trail's only writer, to be recorded there; without a
    sidecar it stays in proofs.jsonl alone, and the line says so."""
    from bridge.transport.control import ControlError, send_command
    try:
        send_command(endpoint, "backup_proof", operator="backup", reason="proven backup", proof=proof,
                     timeout_ms=3000)
        print(f"proof of {proof['backup']} recorded in the audit trail", file=sys.stderr)
    except (ControlError, OSError) as exc:
        print(f"proof of {proof['backup']} not recorded in the audit trail (no sidecar took it at {endpoint}: "
              f"{exc}); it is in proofs.jsonl", file=sys.stderr)


def cmd_db_restore(args: argparse.Namespace, config: Config) -> int:
    """Restore a backup bundle into --to; its audit files go where `audit verify` of --to looks for them."""
    from bridge.audit.trail import audit_paths
    from bridge.storage.database import StorageError
    from bridge.storage.restore import restore
    try:
        result = restore(Path(args.source), args.to, force=args.force,
                         audit_dir=audit_paths(config, args.to).journal.parent)
    except StorageError as exc:
        raise UserError(str(exc)) from None
    print(f"restored {args.source} into {result.target}" + (" (replaced its data)" if result.replaced else ""))
    if result.audit_files:
        print(f"audit files {', '.join(result.audit_files)} placed in {result.audit_dir}; check with: "
              f"nt8bridge audit verify --db URL")
    else:
        print("the backup carried no audit files: `audit verify` checks the hash chain only")
    return 0


def cmd_db_drill(args: argparse.Namespace, config: Config) -> int:
    import dataclasses

    from bridge.storage.database import StorageError
    from bridge.storage.pg_drill import run_drill
    from bridge.storage.replication import PgTools
    if args.rows < 1:
        raise UserError("--rows must be at least 1")
    try:
        report = run_drill(PgTools.find(args.pg_bin, args.run_as), Path(args.dir) if args.dir else None,
                           rows=args.rows, synchronous=args.sync, keep=args.keep)
    except StorageError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(dataclasses.asdict(report), indent=2))
    return 0 if report.ok else 1


def cmd_config_show(args: argparse.Namespace, config: Config) -> int:
    print(to_toml(config), end="")
    return 0


def cmd_config_init(args: argparse.Namespace, config: Config | None) -> int:
    """Write a commented config.toml from the defaults and the given values, validated as the sidecar
    would load it. ``--account NAME``: the configuration has no account key (the NT8 strategy picks
    its account in NT8 and names it in HELLO), so it becomes the ``[[risk_limits]]`` table of scope
    ``account:NAME``, starting at the desk's order-size and position limits, ready to tighten."""
    from bridge.core.config import build_config
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists: give --force to replace it")
    try:  # the file is what it says: no NT8BRIDGE_* variable of this shell leaks into it
        written = build_config(_init_values(args), env={})
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    header = [f"# nt8bridge configuration, written by `nt8bridge config init` (nt8bridge {__version__}).",
              "# Every key with what it does; `nt8bridge config show --config THIS_FILE` prints what is in force",
              "# (environment variables NT8BRIDGE_<SECTION>__<KEY> override the file)."]
    if args.account:
        header += [f"# [[risk_limits]] scope \"account:{args.account.strip()}\" (at the end): the limits of that NT8 "
                   "account,", "# starting at the desk's; tighten them there."]
    text = "\n".join(header) + "\n\n" + to_toml(written)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)  # never half a config for a sidecar starting at logon
    if load_config(out, env={}) != written:
        raise UserError(f"{out} does not read back as written (a bug): please report it")
    print(f"{out} written; check it with `nt8bridge --config {out} doctor`")
    return 0


def _init_values(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed-TOML form of ``config init``'s options (absent ones keep the defaults)."""
    from bridge.core.config import RiskConfig
    values: dict[str, Any] = {}
    if args.bind is not None:
        values["server"] = {"bind": args.bind}
    if args.db is not None:
        values["storage"] = {"url": args.db}
    if args.metrics_port is not None:
        values["metrics"] = {"port": args.metrics_port}
    if args.account is not None:
        if not args.account.strip():
            raise UserError("--account needs the NT8 account's name, e.g. Sim101")
        desk = RiskConfig()
        values["risk_limits"] = [{"scope": f"account:{args.account.strip()}",
                                  "max_order_quantity": desk.max_order_quantity, "max_net": desk.max_position}]
    return values


# --- parser -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nt8bridge", description="NinjaTrader 8 <-> Python decision sidecar.")
    p.add_argument("--version", action="version", version=f"nt8bridge {__version__}")
    p.add_argument("--config", help="TOML config file (default: $NT8BRIDGE_CONFIG, else the user's config.toml)")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                   help="log verbosity on stderr (default: info for serve and console, warning otherwise)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", help="SQLAlchemy URL (default: storage.url, else an SQLite file in the user's data "
                                     "folder)")

    s = sub.add_parser("serve", help="run the sidecar until Ctrl+C or `nt8bridge stop`")
    s.add_argument("--bind", help="ZeroMQ endpoint (default: server.bind, tcp://127.0.0.1:5555)")
    s.add_argument("--ready-file", help="write the bound endpoint to this file once listening (for supervisors); "
                   "the control endpoint goes to FILE.control, the event stream's to FILE.events")
    s.add_argument("--control-bind", help="control channel endpoint for kill/enable (default: server.control_bind, "
                   "tcp://127.0.0.1:5556; '' disables it)")
    s.add_argument("--events-bind", help="event stream endpoint for the console and the alerts (default: "
                   "server.events_bind, tcp://127.0.0.1:5557; '' disables it)")
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
    s.add_argument("--engine", default="python", choices=["python", "research", "nt8sim"],
                   help="who plays NT8: python (a Python NT8 client over ZeroMQ to a sidecar, default), research (the "
                   "sidecar's decision path in this process, no socket: the same orders and fills, faster), nt8sim "
                   "(the NinjaScript under Mono)")
    s.add_argument("--chunk-mb", type=float, metavar="MB", help="research: read the files in pieces of MB megabytes "
                   "each (memory stays bounded however large the files; the same orders and fills)")
    s.add_argument("--sidecar", metavar="ENDPOINT", help="use a running sidecar instead of starting one")
    s.add_argument("--free-running", action="store_true", help="nt8sim: do not wait for the sidecar after each event "
                   "(faster, closer to live, not repeatable)")
    s.add_argument("--latency-ms", type=int, default=0, help="nt8sim free-running: order latency in event time (default 0)")
    s.add_argument("--speed", type=float, default=0.0, help="nt8sim: N times real time, like NT8's Playback speed "
                   "(default 0: as fast as possible); give one with --free-running so the sidecar's answers land "
                   "while the data plays")
    s.add_argument("--timezone", default="UTC", help="nt8sim: NT8's display time zone (Tools > Options > General), "
                   "e.g. America/Chicago; the wire always carries UTC")
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

    s = sub.add_parser("audit", help="the tamper-evident audit trail")
    asub = s.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    d = asub.add_parser("verify", help="recompute the hash chain and the signed checkpoints; exit 0 when intact, 1 "
                        "naming the first bad record")
    d.add_argument("--checkpoints", help="checkpoint file (default: beside the journal, see audit.dir)")
    d.add_argument("--public-key", help="public key of the checkpoints (default: audit.key_path + .pub)")
    d.add_argument("--json", action="store_true")
    db_option(d)
    d.set_defaults(func=cmd_audit_verify)

    s = sub.add_parser("kill", help="KILL SWITCH: flatten every NT8 session and refuse new orders until enabled")
    s.add_argument("--reason", default="manual kill switch", help="why (recorded in the audit log)")
    s.add_argument("--operator", help="who (default: the name in --key, else the login name)")
    add_control_option(s)
    add_key_option(s)
    s.set_defaults(func=cmd_kill)
    s = sub.add_parser("enable", help="trade again after a kill (needs a named operator)")
    s.add_argument("--operator", required=True, help="who re-enables (recorded)")
    s.add_argument("--reason", default="", help="why (recorded)")
    add_control_option(s)
    add_key_option(s)
    s.set_defaults(func=cmd_kill)
    s = sub.add_parser("status", help="the sidecar's trading state (ACTIVE or HALTED) and sessions")
    add_control_option(s)
    s.add_argument("--json", action="store_true")
    add_key_option(s)
    s.set_defaults(func=cmd_kill)
    s = sub.add_parser("stop", help="stop the running sidecar cleanly (storage flushed), through its control channel; "
                       "recorded in the audit log")
    add_control_option(s)
    s.add_argument("--operator", help="who (default: the login name)")
    s.add_argument("--reason", default="nt8bridge stop", help="why (recorded; default 'nt8bridge stop')")
    s.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to this long until the sidecar has stopped "
                   "(exit 1 if it has not)")
    add_key_option(s)
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser("backtest", help="walk-forward backtest of strategies through the whole decision path")
    s.add_argument("--data", nargs="+", required=True, metavar="FILE", help="NT8 exports (ticks or minute bars), "
                   "merged in time order; e.g. 'ES 12-23.Last.txt' 'NQ 12-23.Last.txt' for the spread")
    s.add_argument("--strategies", help="comma separated: momentum, reversion, spread, ml (default: strategy.names)")
    s.add_argument("--split", help="UTC time (ISO 8601) that ends the calibration window and starts the test "
                   "window, e.g. 2023-11-01; without it the whole data is the test with the configured priors")
    s.add_argument("--equity", type=float, help="account equity for Kelly sizing (default: sizing.equity)")
    s.add_argument("--trades", action="store_true", help="list every trade in the JSON report")
    s.add_argument("--engine", default="research", choices=["research", "playback"],
                   help="research: the sidecar's decision path in this process (default); playback: a sidecar process "
                   "over ZeroMQ (the same orders and fills, slower)")
    s.add_argument("--out", metavar="DIR", help="write the test window's returns.csv, equity.csv and trades.csv there "
                   "(quantstats and empyrical read them directly)")
    playback_options(s)
    s.set_defaults(func=cmd_backtest)

    s = sub.add_parser("ninjascript", help="build the NinjaScript and the NT8 simulator, export the NT8 import zip, or "
                       "install it into NT8's folder")
    nsub = s.add_subparsers(dest="ns_command", required=True)
    d = nsub.add_parser("build", help="compile with Mono's mcs (C# 7.2, .NET Framework 4.8 API)")
    d.add_argument("--out", help="build folder (default: the user's cache, ~/.cache/nt8bridge/build)")
    d.add_argument("--force", action="store_true", help="compile even when a build of the same sources exists")
    d.set_defaults(func=cmd_ninjascript)
    d = nsub.add_parser("export", help="write the zip NT8 imports (Tools > Import > NinjaScript Add-On)")
    d.add_argument("--to", default="nt8bridge-ninjascript.zip", help="zip file to write (default nt8bridge-ninjascript.zip)")
    d.set_defaults(func=cmd_ninjascript)
    for name, text in (("install", "copy the NinjaScript into NT8's bin\\Custom (replacing an older copy of ours; "
                                   "refused while another file there declares one of its types)"),
                       ("uninstall", "remove exactly nt8bridge's NinjaScript files from NT8's bin\\Custom")):
        d = nsub.add_parser(name, help=text)
        d.add_argument("--nt8-dir", metavar="DIR", help="NT8's user folder (default: $NT8BRIDGE_NT8_DIR, else what "
                       "NT8 registered, else Documents\\NinjaTrader 8)")
        d.set_defaults(func=cmd_ninjascript)

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
    d.add_argument("--to", help="destination file (a folder with --prove, --keep, --schedule)")
    d.add_argument("--prove", action="store_true", help="restore the backup into a scratch database and verify its "
                   "audit chain there; the outcome goes to FOLDER/proofs.jsonl (exit 1 when not proven)")
    d.add_argument("--keep", type=int, default=0, metavar="N", help="keep the newest N backups in the folder (and "
                   "always the newest proven one); implies --prove")
    d.add_argument("--schedule", metavar="SPEC", help="repeat until Ctrl+C: 'interval:HOURS' or 'cron:DAY HH:MM "
                   "ZONE' (apscheduler); implies --prove")
    add_control_option(d)  # the running sidecar that records each proof in the audit trail
    db_option(d)
    d.set_defaults(func=cmd_db)
    d = dsub.add_parser("restore", help="restore a backup (its manifest checked, its audit files put in place); "
                        "refuses a target that holds data unless --force")
    d.add_argument("--from", dest="source", required=True, metavar="FILE", help="the backup file `db backup` wrote")
    d.add_argument("--to", required=True, metavar="URL", help="target database: sqlite:///FILE or an existing "
                   "PostgreSQL database's URL")
    d.add_argument("--force", action="store_true", help="replace a target that holds data (its audit files are "
                   "kept aside in replaced-<time>/)")
    d.set_defaults(func=cmd_db_restore)
    d = dsub.add_parser("drill", help="failover and point-in-time recovery drill on throwaway PostgreSQL clusters: "
                        "primary + hot standby + WAL archive, the primary lost, the standby promoted, a base backup "
                        "restored to a point in time; prints what it measured (exit 1 when rows went missing)")
    d.add_argument("--pg-bin", metavar="DIR", help="the server's bin folder (initdb, pg_ctl, pg_basebackup; default: "
                   "PATH, else the newest /usr/lib/postgresql/N/bin)")
    d.add_argument("--dir", metavar="FOLDER", help="an empty folder for the clusters (default: a temporary one)")
    d.add_argument("--run-as", metavar="USER", help="POSIX, as root: the user that owns and runs the clusters "
                   "(default postgres)")
    d.add_argument("--rows", type=int, default=50_000, help="rows in each of the two batches (default 50000)")
    d.add_argument("--sync", action="store_true", help="synchronous replication (synchronous_standby_names)")
    d.add_argument("--keep", action="store_true", help="leave the stopped clusters in --dir to look at")
    d.set_defaults(func=cmd_db_drill)

    ops.register(sub, db_option)
    remote.register(sub)
    ml.register(sub, db_option)
    service.register(sub)
    doctor.register(sub)
    console.register(sub, db_option)
    alerts.register(sub, db_option)
    feeds.register(sub)
    analytics_cli.register(sub)
    research_cli.register(sub)

    s = sub.add_parser("config", help="the effective configuration, or a new config file")
    csub = s.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser("show", help="print the configuration in force, as commented TOML")
    c.set_defaults(func=cmd_config_show)
    c = csub.add_parser("init", help="write a commented config.toml (every key, defaults but for the values given)")
    c.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    c.add_argument("--bind", metavar="ENDPOINT", help="server.bind, where NT8 connects (default tcp://127.0.0.1:5555)")
    c.add_argument("--db", metavar="URL", help="storage.url (default: an SQLite file in the user's data folder)")
    c.add_argument("--metrics-port", type=int, metavar="N", help="metrics.port (default 9108)")
    c.add_argument("--account", metavar="NAME", help="an NT8 account: a [[risk_limits]] table of scope account:NAME, "
                   "starting at the desk's limits")
    c.add_argument("--force", action="store_true", help="replace FILE if it exists")
    c.set_defaults(func=cmd_config_init, needs_config=False)
    _config_after_command(p)
    return p


def _config_after_command(parser: argparse.ArgumentParser) -> None:
    """``--config`` also after the command (``nt8bridge serve --config FILE``, as a logon task writes it): every
    subcommand accepts it and, only when given there, it replaces the one before the command."""
    subparsers = {id(sp): sp for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                  for sp in action.choices.values()}  # by identity: an alias names the same parser twice
    for subparser in subparsers.values():
        subparser.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file (as before the command)")
        _config_after_command(subparser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level or ("info" if args.command in ("serve", "console") else "warning"))
    try:
        # doctor reports a bad config instead of stopping on it; config init writes one without reading any
        config = load_config(args.config) if getattr(args, "needs_config", True) else None
        return args.func(args, config)
    except (UserError, ConfigError) as exc:
        if sys.stderr is None:  # pythonw (the logon task): the log file is the only place anyone will look
            log.error("%s", exc)
        else:
            print(f"nt8bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nt8bridge: interrupted", file=sys.stderr)
        return 130

