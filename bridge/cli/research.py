"""``nt8bridge optimize --strategy NAME --grid FILE --train 20d --test 5d --data FILE...``: walk-forward
optimisation over the research engine (bridge/research/walkforward.py), with the deflated Sharpe ratio, the
probability of backtest overfitting and an HTML report (docs/research.md)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bridge.core.config import Config, parse_utc
from bridge.core.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("optimize", help="walk-forward optimisation of one strategy's parameters, with the deflated "
                       "Sharpe ratio, the probability of backtest overfitting and an HTML report")
    s.add_argument("--strategy", required=True, help="the strategy to optimise: momentum, reversion, spread or ml "
                   "(it trades alone, one contract per bracket unless the grid sets sizing keys)")
    s.add_argument("--grid", required=True, metavar="FILE", help="TOML or JSON: dotted config keys and the values to "
                   "try, e.g. \"strategy.lookback_bars\" = [10, 20, 40]")
    s.add_argument("--train", required=True, metavar="LENGTH", help="training window: 20d, 12h, 2w")
    s.add_argument("--test", required=True, metavar="LENGTH", help="test window, and the step between windows: 5d")
    s.add_argument("--anchored", action="store_true", help="every training window starts at the data's start "
                   "(default: rolling, a fixed length)")
    s.add_argument("--data", nargs="+", required=True, metavar="FILE", help="NT8 exports (ticks or minute bars), "
                   "merged in time order")
    s.add_argument("--from", dest="start", metavar="TIME", help="use the data from this UTC time (ISO 8601; default: "
                   "midnight before the first event)")
    s.add_argument("--to", dest="end", metavar="TIME", help="use the data before this UTC time (default: midnight "
                   "after the last event)")
    s.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster (HOST:PORT, or 'local')")
    s.add_argument("--processes", type=int, metavar="N", help="local worker processes (default: one per CPU; 1: in "
                   "this process)")
    s.add_argument("--out", metavar="DIR", help="folder for report.html, optimize.json and oos_returns.csv (default: "
                   "optimize-STRATEGY-TIME)")
    s.add_argument("--json", action="store_true", help="print optimize.json instead of the summary")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_optimize)


def _time(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_utc(text)
    except ValueError:
        raise UserError(f"{option} {text!r} is not an ISO 8601 time (e.g. 2023-10-16 or 2023-10-16T13:30)") from None


def cmd_optimize(args: argparse.Namespace, config: Config) -> int:
    from bridge.cli.common import console as make_console
    from bridge.nt8.playback import PlaybackError
    from bridge.research.executors import TaskError, make_executor
    from bridge.research.grid import GridError, load_grid, study_config
    from bridge.research.report import write_outputs
    from bridge.research.walkforward import WalkForwardError, walk_forward

    if args.processes is not None and args.processes < 1:
        raise UserError("--processes must be at least 1 (1 runs everything in this process)")
    missing = [f for f in args.data if not Path(f).is_file()]
    if missing:
        raise UserError(f"data file {missing[0]} does not exist; pass NT8 exports to --data")
    start, end = _time(args.start, "--from"), _time(args.end, "--to")
    try:
        grid = load_grid(args.grid)
        study = study_config(replace(config, metrics=replace(config.metrics, enabled=False)), args.strategy, grid)
    except GridError as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out or f"optimize-{study.strategy.names}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    console = make_console()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    try:
        with make_executor(ray=args.ray, processes=args.processes) as executor, \
                Progress(TextColumn("[bold]optimize"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                         TimeRemainingColumn(), console=console, transient=True,
                         disable=args.quiet or not console.is_terminal) as bar:
            task = bar.add_task("runs", total=None)
            result = walk_forward(args.data, study, grid, study.strategy.names, train=args.train, test=args.test,
                                  anchored=args.anchored, executor=executor, start_ns=start, end_ns=end,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (WalkForwardError, GridError, PlaybackError) as exc:
        raise UserError(str(exc)) from None
    except TaskError as exc:  # e.g. values each valid alone that a strategy refuses together
        raise UserError(f"a run failed, so the study stopped: {exc}; change the grid or the configuration") from None
    summary = result.summary()
    paths = write_outputs(summary, result.oos_returns(), out)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_summary(console, summary, paths)
    return 0


def _print_summary(console: Any, s: dict[str, Any], paths: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from bridge.research.report import dsr_reading, pbo_reading

    def num(x: Any, digits: int = 2) -> str:
        return "n/a" if x is None else f"{x:,.{digits}f}"

    keys = [k.split(".")[-1] for k in s["grid"]["keys"]]
    table = Table(title=f"walk-forward {s['strategy']}: {len(s['windows'])} windows, {len(s['param_sets'])} "
                  f"parameter sets, {s['train']} / {s['test']} {'anchored' if s['anchored'] else 'rolling'}",
                  caption="chosen: " + ", ".join(keys))
    table.add_column("test from", no_wrap=True)
    table.add_column("chosen")
    for col in ("train Sharpe", "test trades", "test net", "test Sharpe"):
        table.add_column(col, justify="right")
    for w in s["windows"]:
        table.add_row(w["test_from"][:16].replace("T", " ").removesuffix(" 00:00"),
                      ", ".join(str(v) for v in w["chosen_params"].values()),
                      num(w["train_sharpe"][w["chosen"]]), str(w["test"]["trades"]), num(w["test"]["net_pnl"]),
                      num(w["test"]["sharpe"]))
    out = Console()  # the summary goes to stdout; the progress bar stays on stderr
    out.print(table)
    oos = s["oos"]
    out.print(f"out of sample: {oos['days']} days, {oos['trades']} trades, net {num(oos['net_pnl'])}, "
              f"Sharpe {num(oos['sharpe'])}")
    out.print(f"deflated Sharpe ratio {dsr_reading(s['dsr'])}")
    out.print(f"probability of backtest overfitting {pbo_reading(s['pbo'])}")
    out.print(f"{s['timing']['tasks']} runs on {s['timing']['executor']} in {num(s['timing']['elapsed_s'], 1)} s")
    out.print(f"report: {paths['report']}")
