"""The notifier's Prometheus metrics (``alerts.metrics_port``, 9109 by default), read at scrape time.

Alert on ``increase(nt8bridge_alerts_destination_failures_total[15m]) > 0`` (a destination that takes
nothing: the desk would not hear of a kill) and on the notifier's own ``up``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bridge.alerts.dispatch import Dispatcher
from bridge.alerts.rules import Rules
from bridge.transport.events import EventFeed

__all__ = ["NotifierCollector", "NotifierParts"]


class NotifierParts(Protocol):
    """What the metrics read of the notifier (bridge/alerts/service.py's AlertService)."""

    dispatcher: Dispatcher
    rules: Rules
    feed: EventFeed
    storage: Any  # StorageWatch or None


class NotifierCollector(Collector):
    def __init__(self, service: NotifierParts) -> None:
        self.service = service

    def collect(self) -> Iterator:
        svc = self.service
        d = svc.dispatcher
        raised = CounterMetricFamily("nt8bridge_alerts_raised", "alerts the rules raised, by kind", labels=["kind"])
        for kind, n in sorted(d.raised.items()):
            raised.add_metric([kind], n)
        yield raised
        with d.lock:
            sent_items = sorted(d.stats.sent.items())
            failed_items = sorted(d.stats.failed.items())
            attempts = dict(d.stats.attempts)
        sent = CounterMetricFamily("nt8bridge_alerts_sent", "alerts delivered, by kind and destination",
                                   labels=["kind", "destination"])
        for (kind, dest), n in sent_items:
            sent.add_metric([kind, dest], n)
        yield sent
        failed = CounterMetricFamily("nt8bridge_alerts_failed", "alerts not delivered after every retry, by kind and "
                                     "destination", labels=["kind", "destination"])
        for (kind, dest), n in failed_items:
            failed.add_metric([kind, dest], n)
        yield failed
        # one series per destination from the start, so that increase() sees the first failure
        per_dest = CounterMetricFamily("nt8bridge_alerts_destination_failures", "alerts not delivered, by "
                                       "destination", labels=["destination"])
        tries = CounterMetricFamily("nt8bridge_alerts_delivery_attempts", "delivery attempts (retries included), "
                                    "by destination", labels=["destination"])
        depth = GaugeMetricFamily("nt8bridge_alerts_queue_depth", "alerts waiting for their destination",
                                  labels=["destination"])
        for dest, worker in d.workers.items():
            per_dest.add_metric([dest], sum(n for (_, x), n in failed_items if x == dest))
            tries.add_metric([dest], attempts.get(dest, 0))
            depth.add_metric([dest], worker.queue.unfinished_tasks)
        yield per_dest
        yield tries
        yield depth
        suppressed = CounterMetricFamily("nt8bridge_alerts_suppressed", "alerts held back: duplicate (a repeat "
                                         "within alerts.dedup_s, destination 'all'), rate (the destination's "
                                         "token bucket; summarised) or queue_full", labels=["kind", "destination",
                                                                                           "reason"])
        for (kind, dest, reason), n in sorted(d.suppressed().items()):
            suppressed.add_metric([kind, dest, reason], n)
        yield suppressed
        yield CounterMetricFamily("nt8bridge_alerts_summaries", "summary messages sent for repeats and for what the "
                                  "rate limit held", value=d.dedup.summaries + d.rate.summaries)
        yield GaugeMetricFamily("nt8bridge_alerts_sidecar_up", "1 while the sidecar's snapshots arrive",
                                value=1.0 if svc.rules.sidecar_up else 0.0)
        feed = svc.feed
        yield CounterMetricFamily("nt8bridge_alerts_events_received", "events read from the sidecar's stream",
                                  value=feed.received)
        yield CounterMetricFamily("nt8bridge_alerts_events_lost", "events of the stream that never arrived (seq gaps)",
                                  value=feed.lost)
        yield CounterMetricFamily("nt8bridge_alerts_events_malformed", "messages on the stream that were not events",
                                  value=feed.malformed)
        yield CounterMetricFamily("nt8bridge_alerts_bad_records", "records with an unreadable payload (alerted with "
                                  "what the row said)", value=svc.rules.stats.bad_records)
        verifications = CounterMetricFamily("nt8bridge_alerts_audit_verifications", "audit chain verifications, by "
                                            "result: ok, broken, error (storage unreadable)", labels=["result"])
        storage = svc.storage
        for result in ("ok", "broken", "error"):
            verifications.add_metric([result], storage.stats.verifications[result] if storage else 0)
        yield verifications
        yield CounterMetricFamily("nt8bridge_alerts_storage_read_failures", "failed reads of storage (drift alerts, "
                                  "the audit chain)", value=storage.stats.read_failures if storage else 0)
