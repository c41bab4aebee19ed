"""``nt8bridge alerts [--once]`` runs the notifier (bridge/alerts/service.py); ``nt8bridge alerts test`` sends one
test alert to every destination and says which took it. Registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import logging
from collections import Counter

from bridge.cli.common import db_url
from bridge.core.config import Config
from bridge.core.errors import UserError


def cmd_alerts(args: argparse.Namespace, config: Config) -> int:
    from bridge.alerts.destinations import Retry, destinations_from_config
    from bridge.alerts.service import AlertService, install_stop_signals

    if args.log_level is None:  # a service: what it sent and why belongs in its log
        logging.getLogger("nt8bridge.alerts").setLevel(logging.INFO)
    destinations = destinations_from_config(config.alerts)
    testing = getattr(args, "alerts_command", None) == "test"
    if testing and not destinations:
        raise UserError("no destinations: set alerts.webhooks_file (slack=, teams= or generic=URL lines) and/or "
                        "alerts.smtp_host with alerts.mail_to")
    storage = None if testing or args.no_storage else db_url(args, config)
    service = AlertService(config, storage, destinations, events=args.events)
    if testing:
        try:
            results = service.dispatcher.send_now(service.test_alert_message(), Retry(attempts=2, backoff_s=1.0))
        finally:
            service.close()
        for dest, d in zip(destinations, results.values()):
            print(f"{dest!r}: " + ("sent" if d.ok else f"FAILED after {d.attempts} attempt"
                                   f"{'s' if d.attempts != 1 else ''}: {d.error}"))
        ok = sum(d.ok for d in results.values())
        print(f"{ok} of {len(results)} destinations took the test alert")
        return 0 if ok == len(results) else 1
    if args.once:
        raised = service.run_once()
        stats = service.dispatcher.stats
        kinds = Counter(a.kind for a in raised)
        print(f"{len(raised)} alerts raised" + (f" ({', '.join(f'{n} {k}' for k, n in kinds.most_common())})"
                                                if raised else "")
              + (f"; {sum(stats.sent.values())} messages sent, {sum(stats.failed.values())} failed" if destinations
                 else "; no destinations configured (alerts.webhooks_file, alerts.smtp_host): only logged"))
        return 1 if stats.failed else 0
    install_stop_signals(service)
    try:
        service.serve_metrics(config.metrics.host, config.alerts.metrics_port)
    except RuntimeError as exc:
        service.close()
        raise UserError(str(exc)) from None
    service.run()
    return 0


def register(sub: argparse._SubParsersAction, db_option) -> None:
    """Add ``alerts`` to the main parser."""
    s = sub.add_parser("alerts", help="the notifier: kills, lost sessions, stale feeds, breaks, limit breaches, drift "
                       "and audit failures to Slack, Teams, a webhook and e-mail (docs/console.md)")
    s.add_argument("--once", action="store_true", help="look once (the event stream for a few seconds, the audit "
                   "chain, recent drift alerts), deliver, and exit: 0 when every alert was delivered")
    s.add_argument("--events", metavar="ENDPOINT", help="the sidecar's event stream (default: server.events_bind)")
    s.add_argument("--no-storage", action="store_true", help="do not read storage (no drift alerts, no audit chain "
                   "verification): a notifier on a machine without the database")
    db_option(s)
    s.set_defaults(func=cmd_alerts)
    asub = s.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND")
    t = asub.add_parser("test", help="send one test alert to every destination and say which took it (exit 1 if "
                        "one did not)")
    t.set_defaults(func=cmd_alerts)
