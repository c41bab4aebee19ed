"""``nt8bridge train``, ``nt8bridge model ...``, ``nt8bridge drift``, ``nt8bridge retrain``: the ML
commands, registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bridge.core.config import Config
from bridge.cli.common import db_url
from bridge.core.errors import UserError


def registry_root(args: argparse.Namespace, config: Config) -> Path:
    """``--registry``, else ``strategy.ml_registry``, else ``models`` beside the default database."""
    from ml.serving import registry_folder
    return Path(args.registry) if getattr(args, "registry", None) else registry_folder(config.strategy.ml_registry)


def _registry(args: argparse.Namespace, config: Config):
    from ml.registry import Registry
    return Registry(registry_root(args, config), db_url(args, config))


def _paths(names: list[str]) -> list[Path]:
    paths = [Path(n) for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"data file not found: {', '.join(missing)}")
    return paths


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ml.train import TrainConfig, train
    cfg = TrainConfig(quick=args.quick, test_fraction=args.test_fraction, seed=args.seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("training", total=1.0)
        try:
            record = train(_paths(args.data), Path(args.out) if args.out else registry_root(args, config),
                           db_url(args, config), cfg,
                           progress=lambda stage, frac: bar.update(task, description=stage, completed=frac))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    summary = _summary(record)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary)
        print(f"\nregistered as a challenger: {record.model_id} ({record.path})\n"
              f"report: {Path(record.path) / 'report.html'}\n"
              f"to trade it: nt8bridge model promote {record.model_id} --operator NAME --reason TEXT")
    return 0


def _summary(record: Any) -> dict[str, Any]:
    meta = json.loads((Path(record.path) / "model.json").read_text())
    ev = meta["metrics"]["evaluation"]
    return {"model_id": record.model_id, "status": record.status, "path": str(record.path),
            "instruments": meta.get("instruments"), "rows": meta.get("rows"),
            "train_window_ns": [meta["train_start_ns"], meta["train_end_ns"]],
            "test_window_ns": [meta["test_start_ns"], meta["test_end_ns"]],
            "out_of_sample": {name: {k: ev[name].get(k) for k in ("log_loss", "brier", "accuracy", "auc", "ece")}
                              for name in ev},
            "signals": meta["metrics"]["signals"], "parity_max_abs": meta.get("parity_max_abs"),
            "train_seconds": meta.get("train_seconds")}


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"out-of-sample evaluation of {summary['model_id']}")
    for col in ("model", "log-loss", "Brier", "accuracy", "AUC", "ECE"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in summary["out_of_sample"].items():
        table.add_row(name, *(f"{m[k]:.4f}" if isinstance(m.get(k), float) else "-" for k in
                              ("log_loss", "brier", "accuracy", "auc", "ece")))
    Console().print(table)
    s = summary["signals"]
    print(f"signals on the test window (one trade at a time per instrument, after costs): {s.get('trades')} trades, "
          f"total {s.get('total_atr', 0):.2f} ATR, Sharpe per trade {s.get('sharpe_per_trade')}, "
          f"deflated Sharpe {s.get('deflated_sharpe')}")


def cmd_model(args: argparse.Namespace, config: Config) -> int:
    from ml.registry import RegistryError
    reg = _registry(args, config)
    try:
        if args.model_command == "list":
            rows = [_record_row(r) for r in reg.list()]
            if args.json:
                print(json.dumps(rows, indent=2, default=str))
            else:
                _print_records(rows)
        elif args.model_command == "show":
            rec = reg.get(args.model_id)
            print(json.dumps(json.loads((Path(rec.path) / "model.json").read_text()), indent=2, default=str))
        elif args.model_command == "promote":
            rec = reg.promote(args.model_id, args.operator, args.reason)
            print(f"{rec.model_id} is the champion (promoted by {args.operator})")
        elif args.model_command == "rollback":
            rec = reg.rollback(args.operator, args.reason)
            print(f"{rec.model_id} is the champion again (rollback by {args.operator})")
        elif args.model_command == "ab":
            from ml.shadow import read_ab_result
            rec = reg.get(args.model_id)
            result = read_ab_result(reg.root, rec.model_id)
            if result is None:
                raise UserError(f"{rec.model_id} has not run in shadow yet: set strategy.ml_shadow = "
                                f"\"{rec.model_id}\" (or \"latest\") in the sidecar's config")
            print(json.dumps(result, indent=2))
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    return 0


def _record_row(r: Any) -> dict[str, Any]:
    return {"model_id": r.model_id, "status": r.status, "created": _iso(r.created_ns), "expires": _iso(r.expires_ns),
            "expired": bool(r.expires_ns and r.expires_ns < time.time_ns()),
            "log_loss": (r.metrics or {}).get("evaluation", {}).get("ensemble", {}).get("log_loss")}


def _iso(ns: int | None) -> str | None:
    import datetime as dt
    if not ns:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).isoformat(timespec="seconds")


def _print_records(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="registered models")
    for col in ("model id", "status", "created (UTC)", "expires (UTC)", "OOS log-loss"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model_id"], r["status"], r["created"] or "-",
                      (r["expires"] or "-") + (" EXPIRED" if r["expired"] else ""),
                      f"{r['log_loss']:.4f}" if isinstance(r["log_loss"], float) else "-")
    Console().print(table)


def cmd_drift(args: argparse.Namespace, config: Config) -> int:
    from ml.drift import DriftDetector, DriftReference, report_json, store_alerts
    from ml.registry import RegistryError
    from ml.train import TrainConfig, build_dataset
    reg = _registry(args, config)
    try:
        rec = reg.get(args.model)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    meta = json.loads((Path(rec.path) / "model.json").read_text())
    reference = DriftReference.load(Path(rec.path) / "reference.npz")
    try:
        ds = build_dataset(_paths(args.data), TrainConfig())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if list(ds.names) != list(meta["feature_names"]):
        raise UserError(f"model {rec.model_id} was trained on another feature set; retrain it")
    report = DriftDetector(reference).check(ds.X.astype(float))
    store_alerts(db_url(args, config), report, rec.model_id, time.time_ns(), int(ds.t0.min()), int(ds.t0.max()))
    print(report_json(report))
    print(report.summary(), file=sys.stderr)
    return 1 if report.alert else 0


def cmd_retrain(args: argparse.Namespace, config: Config) -> int:
    from ml.retrain import Retrainer, trigger_from_text
    from ml.shadow import read_ab_decision
    root = registry_root(args, config)
    retrainer = Retrainer(_paths(args.data), root, db_url(args, config), quick=args.quick,
                          window_days=args.window_days, auto_promote=args.auto_promote,
                          ab_decision=lambda model_id: read_ab_decision(root, model_id))
    trigger = trigger_from_text(args.schedule)
    if args.once:
        print(json.dumps(retrainer.run_once(), indent=2, default=str))
        return 0
    retrainer.serve(trigger)  # until Ctrl+C
    return 0


def register(sub: argparse._SubParsersAction, db_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``train``, ``model``, ``drift`` and ``retrain`` to the main parser."""
    def registry_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", help="model registry folder (default: strategy.ml_registry, else 'models' in "
                        "the user's data folder)")
        db_option(sp)

    s = sub.add_parser("train", help="train the ML ensemble walk-forward, evaluate it out of sample, export ONNX, "
                       "register a challenger")
    s.add_argument("--data", nargs="+", required=True, metavar="FILE", help="NT8 exports, one per instrument")
    s.add_argument("--out", help="registry folder to register into (default: --registry)")
    s.add_argument("--quick", action="store_true", help="smaller models and fewer folds (same split and purging)")
    s.add_argument("--test-fraction", type=float, default=0.2, help="the last part of the time span kept out of "
                   "every fit, for the evaluation (default 0.2)")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--json", action="store_true")
    registry_option(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("model", help="the model registry: list, show, promote, rollback")
    msub = s.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    d = msub.add_parser("list", help="registered models with status and expiry")
    d.add_argument("--json", action="store_true")
    d = msub.add_parser("show", help="a model's metadata and metrics")
    d.add_argument("model_id")
    d = msub.add_parser("promote", help="make a model the champion (the ml strategy trades it)")
    d.add_argument("model_id")
    d.add_argument("--operator", required=True, help="who promotes (recorded)")
    d.add_argument("--reason", default="promoted", help="why (recorded)")
    d = msub.add_parser("rollback", help="the previous champion back")
    d.add_argument("--operator", required=True)
    d.add_argument("--reason", default="rollback")
    d = msub.add_parser("ab", help="the shadow comparison of a challenger with the champion, and its decision")
    d.add_argument("model_id")
    for p in msub.choices.values():
        registry_option(p)
        p.set_defaults(func=cmd_model)

    s = sub.add_parser("drift", help="feature drift of data against a model's training reference (exit 1 on alert)")
    s.add_argument("--model", required=True, help="model id")
    s.add_argument("--data", nargs="+", required=True, metavar="FILE")
    registry_option(s)
    s.set_defaults(func=cmd_drift)

    s = sub.add_parser("retrain", help="train challengers on a schedule (apscheduler), e.g. after the Friday close")
    s.add_argument("--data", nargs="+", required=True, metavar="FILE")
    s.add_argument("--schedule", default="cron:fri 16:30 America/Chicago",
                   help="'cron:DAY HH:MM ZONE' or 'interval:HOURS' (default: after the Friday close)")
    s.add_argument("--window-days", type=float, default=30.0, help="train on the newest this many days")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--once", action="store_true", help="run one retraining now and exit")
    s.add_argument("--auto-promote", action="store_true", help="promote a challenger that passes every gate "
                   "(skill, ONNX parity, not expired, and the shadow A/B decision when a champion exists)")
    registry_option(s)
    s.set_defaults(func=cmd_retrain)
