"""The desk's operations commands: run-time limits (``nt8bridge risk ...``) and compliance exports
(``nt8bridge report day``). Registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from bridge.core.config import Config
from bridge.cli.common import add_control_option, add_key_option, db_url, operator_key
from bridge.core.errors import UserError


def _endpoint(args: argparse.Namespace, config: Config) -> str:
    return args.control or config.server.control_bind


def _value(text: str) -> Any:
    """A limit value from the command line: a number, true/false, none (removes the limit), else text."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def cmd_risk(args: argparse.Namespace, config: Config) -> int:
    from bridge.transport.control import ControlError, send_command
    from bridge.transport.operators import ENV_APPROVER_KEY
    endpoint = _endpoint(args, config)
    key = operator_key(args.key)  # signs the request for a sidecar with operator keys (docs/security.md)
    try:
        if args.risk_command == "set":
            reply = send_command(endpoint, "set_limit", operator=args.operator, reason=args.reason, key=key,
                                 scope=args.scope, field=args.limit, value=_value(args.value))
            print(f"{args.scope} {args.limit} = {args.value} by {args.operator} ({len(reply['applied'])} sessions; "
                  f"sessions that connect later get it too); recorded in the audit trail")
        elif args.risk_command == "override":
            approver = operator_key(args.approver_key, ENV_APPROVER_KEY)
            reply = send_command(endpoint, "override", scope=args.scope, field=args.limit, value=_value(args.value),
                                 who=args.who, why=args.why, approved_by=args.approved_by,
                                 duration_s=args.minutes * 60.0, key=key, approver_key=approver)
            print(f"override {args.scope} {args.limit} = {args.value} for {args.minutes:g} min, asked by {args.who}, "
                  f"approved by {args.approved_by} ({len(reply['applied'])} sessions); it expires by itself; "
                  "recorded in the audit trail")
        else:
            reply = send_command(endpoint, "limits", key=key)
            print(json.dumps(reply["limits"], indent=2))
    except ControlError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_report_day(args: argparse.Namespace, config: Config) -> int:
    from bridge.audit.trail import audit_paths, verify_database
    from bridge.storage.database import StorageError
    from reports.exports import export_day
    url = db_url(args, config)
    paths = audit_paths(config, url)
    try:
        verify = verify_database(url, paths.checkpoints, paths.public_key)
        files = export_day(url, args.day, args.out, args.operator_id, end=args.end, verify_result=verify,
                           limits={"risk": _limits_of(config)})
    except (StorageError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for f in files:
        print(f)
    if not verify.ok:
        print(f"AUDIT CHAIN BROKEN at record {verify.first_bad_seq}: {verify.reason} (see the compliance page)")
        return 1
    return 0


def _limits_of(config: Config) -> dict[str, Any]:
    from dataclasses import asdict
    return {"desk": asdict(config.risk), "scopes": list(config.risk_limits)}


def register(sub: argparse._SubParsersAction, db_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``risk`` and ``report`` to the main parser."""
    s = sub.add_parser("risk", help="change limits at run time (logged), temporary overrides, limits in force")
    rsub = s.add_subparsers(dest="risk_command", required=True, metavar="SUBCOMMAND")
    d = rsub.add_parser("set", help="change one limit of one scope in every session (recorded in the audit trail)")
    d.add_argument("--scope", required=True, help='"*" (desk), instrument:ES, strategy:momentum, account:Sim101')
    d.add_argument("--limit", required=True, help="a field of the risk limits, e.g. max_order_quantity")
    d.add_argument("--value", required=True, help="a number, true/false, or none to remove the limit")
    d.add_argument("--operator", required=True, help="who changes it (recorded)")
    d.add_argument("--reason", required=True, help="why (recorded)")
    d = rsub.add_parser("override", help="a temporary value of one numeric limit; needs who, why and a second "
                        "person who approved; expires by itself")
    d.add_argument("--scope", required=True)
    d.add_argument("--limit", required=True)
    d.add_argument("--value", required=True)
    d.add_argument("--who", required=True, help="who asks for it")
    d.add_argument("--why", required=True, help="why")
    d.add_argument("--approved-by", required=True, help="who approved it (another person)")
    d.add_argument("--minutes", type=float, required=True, help="how long it lasts")
    d.add_argument("--approver-key", metavar="FILE", help="the approver's own operator key file, for a sidecar with "
                   "operator keys: the approver signs the same request (default: $NT8BRIDGE_APPROVER_KEY)")
    d = rsub.add_parser("show", help="the limits, overrides and trading states in force in every session")
    for p in rsub.choices.values():
        add_control_option(p)
        add_key_option(p)
        p.set_defaults(func=cmd_risk)

    s = sub.add_parser("report", help="compliance exports")
    psub = s.add_subparsers(dest="report_command", required=True, metavar="SUBCOMMAND")
    d = psub.add_parser("day", help="blotter, limit breaches and overrides, reconciliation breaks, RTS 22 "
                        "transactions (CSV and XML), CFTC position alerts and the HTML compliance summary of a day")
    d.add_argument("--day", required=True, help="the UTC day, YYYY-MM-DD")
    d.add_argument("--end", help="end of a longer period, exclusive (YYYY-MM-DD: that day's UTC midnight)")
    d.add_argument("--operator-id", required=True, help="CME Tag 50: the person or team running the system")
    d.add_argument("--out", default="compliance", help="folder for the files (default: ./compliance)")
    db_option(d)
    d.set_defaults(func=cmd_report_day)
