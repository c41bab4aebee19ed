"""Prometheus metrics on loopback, read from the server's own counters at scrape time.

A custom collector means the hot path pays nothing per tick for metrics (prometheus_client's own
Counter takes a lock per increment); a scrape reads plain integers and the folded histograms. The
trading metrics (positions, P&L, limit utilization) read the snapshot the server's loop builds every
``SNAPSHOT_INTERVAL_S`` for the event stream (``SidecarServer.last_state``), so a scrape builds nothing
on the hot path's objects while the loop keeps one fresh; the kill switch's state is read live.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bridge.feeds.base import Health
from bridge.transport.server import SidecarServer
from bridge.storage.writer import STATES, StorageWriter, WriterStats
from bridge.core.timing import BUCKET_BOUNDS_US
from bridge.transport.events import SNAPSHOT_INTERVAL_S

log = logging.getLogger("nt8bridge.metrics")


class SidecarCollector(Collector):
    def __init__(self, server: SidecarServer, writer: StorageWriter | None = None) -> None:
        self.server = server
        self.writer = writer

    def collect(self) -> Iterator:
        s = self.server.stats
        totals = self.server.totals()
        yield CounterMetricFamily("nt8bridge_messages_received", "messages received from NT8", value=s.messages_in)
        yield CounterMetricFamily("nt8bridge_messages_sent", "messages sent to NT8", value=s.messages_out)
        yield CounterMetricFamily("nt8bridge_ticks_accepted", "ticks accepted by the quality gate",
                                  value=totals["ticks_accepted"])
        rejects = CounterMetricFamily("nt8bridge_quality_events", "quality gate verdicts by reason", labels=["reason"])
        counts = dict(self.server.quality_counts)
        for session in list(self.server.sessions.values()):
            for reason, n in session.pipeline.gate.counts.items():
                counts[reason] = counts.get(reason, 0) + n
        for reason, n in sorted(counts.items()):
            rejects.add_metric([str(reason)], n)
        yield rejects
        errors = CounterMetricFamily("nt8bridge_errors_sent", "ERROR messages sent, by code", labels=["code"])
        for code, n in sorted(s.errors_sent.items()):
            errors.add_metric([code], n)
        yield errors
        yield GaugeMetricFamily("nt8bridge_sessions_active", "NT8 sessions connected", value=len(self.server.sessions))
        yield CounterMetricFamily("nt8bridge_sessions_opened", "sessions opened by a HELLO", value=s.sessions_opened)
        ended = CounterMetricFamily("nt8bridge_sessions_ended", "sessions ended, by reason", labels=["reason"])
        for reason, n in sorted(s.sessions_ended.items()):
            ended.add_metric([reason], n)
        yield ended
        refused = CounterMetricFamily("nt8bridge_sessions_refused", "HELLOs refused: SESSION_LIMIT_REACHED by the "
                                      "limit reached, SESSION_STANDBY as 'standby'", labels=["limit"])
        for limit, n in sorted(s.sessions_refused.items()):
            refused.add_metric([limit], n)
        yield refused
        yield CounterMetricFamily("nt8bridge_sessions_lost", "sessions ended by heartbeat timeout",
                                  value=s.sessions_lost)
        leadership = self.server.leadership
        if leadership is not None:  # a hot-standby pair: alert when no sidecar of the cluster says 1
            yield GaugeMetricFamily("nt8bridge_leader", "1 while this sidecar leads its hot-standby pair, 0 as the "
                                    "standby", value=1 if leadership.is_leader else 0)
            yield GaugeMetricFamily("nt8bridge_leader_epoch", "leadership epoch of the pair as this sidecar last "
                                    "read it", value=(leadership.leader.epoch if leadership.leader else 0))
            yield CounterMetricFamily("nt8bridge_leadership_connection_failures", "failed connections and queries "
                                      "of the leadership lock", value=leadership.connection_failures)
        auth = CounterMetricFamily("nt8bridge_auth_refused", "remote mode: messages (data) and control requests "
                                   "(control) refused, by AUTH_* code", labels=["channel", "code"])
        for channel, codes in sorted(s.auth_refused.items()):
            for code, n in sorted(codes.items()):
                auth.add_metric([channel, code], n)
        yield auth
        yield CounterMetricFamily("nt8bridge_send_failures", "replies that could not be sent", value=s.send_failures)
        yield CounterMetricFamily("nt8bridge_internal_errors", "messages the sidecar failed on",
                                  value=s.internal_errors)
        counters = CounterMetricFamily("nt8bridge_strategy_events", "what strategies counted (e.g. ml predictions, "
                                       "predictions the dissimilarity guard withheld), over all sessions",
                                       labels=["strategy", "event"])
        totals: dict[tuple[str, str], float] = dict(self.server.strategy_counts)  # the ended sessions
        for session in list(self.server.sessions.values()):
            for strategy in session.pipeline.strategies:
                for event, value in strategy.metrics().items():
                    key = (strategy.name, event)
                    totals[key] = totals.get(key, 0.0) + value
        for (name, event), value in sorted(totals.items()):
            counters.add_metric([name, event], value)
        yield counters
        hist = HistogramMetricFamily("nt8bridge_stage_latency_microseconds", "decision pipeline stage durations",
                                     labels=["stage"])
        for stage, h in self.server.timings.histograms.items():
            counts_arr = h.counts.copy()
            cumulative = counts_arr.cumsum()
            buckets = [(f"{b:g}", int(c)) for b, c in zip(BUCKET_BOUNDS_US, cumulative[:-1])]
            buckets.append(("+Inf", int(cumulative[-1])))
            hist.add_metric([stage], buckets, sum_value=h.sum_ns / 1000.0)
        yield hist
        if self.writer is not None:
            w = self.writer.stats
            rows = CounterMetricFamily("nt8bridge_storage_rows", "rows committed to storage", labels=["table"])
            for table, n in sorted(w.rows_written.items()):
                rows.add_metric([table], n)
            yield rows
            yield CounterMetricFamily("nt8bridge_storage_backpressure_waits",
                                      "times the hot path waited for the storage queue", value=w.backpressure_waits)
            yield GaugeMetricFamily("nt8bridge_storage_queue_depth", "batches waiting to be committed",
                                    value=w.queue_depth)
            yield from _outage_metrics(w)
        yield from _analytics_metrics(self.server)
        yield from _hold_metrics(self.server)
        yield from _feed_metrics(self.server)
        yield from _trading_metrics(self.server)


def _analytics_metrics(server: SidecarServer) -> Iterator:
    """The live analytics feed (bridge/analytics/feed.py): alert on an increase of the dropped rows."""
    feed = server.analytics
    if feed is None:
        return
    r = feed.report()
    yield CounterMetricFamily("nt8bridge_analytics_rows_sent", "rows sent to the analytics store", value=r["rows_sent"])
    yield CounterMetricFamily("nt8bridge_analytics_batches", "inserts into the analytics store", value=r["batches"])
    yield CounterMetricFamily("nt8bridge_analytics_rows_dropped", "committed rows not sent to the analytics store "
                              "(its queue full or the store away; analytics load --db backfills)",
                              value=r["rows_dropped"])
    yield CounterMetricFamily("nt8bridge_analytics_errors", "failed inserts or opens of the analytics store",
                              value=r["errors"])
    yield GaugeMetricFamily("nt8bridge_analytics_queue_depth", "committed batches waiting for the analytics feed",
                            value=r["queue_depth"])


def _outage_metrics(w: WriterStats) -> Iterator:
    """The writer's state (alert on nt8bridge_storage_state{state!="ok"} == 1) and its backlog."""
    state = GaugeMetricFamily("nt8bridge_storage_state", "1 for the storage writer's current state: ok, catching_up, "
                              "database_down, disk_full", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1.0 if w.state == name else 0.0)
    yield state
    yield GaugeMetricFamily("nt8bridge_storage_state_seconds", "seconds in the current storage state",
                            value=max(0.0, time.time() - w.state_since))
    yield GaugeMetricFamily("nt8bridge_storage_spooled_rows", "rows in the spool, waiting for the database",
                            value=w.rows_spooled)
    yield GaugeMetricFamily("nt8bridge_storage_spool_bytes", "size of the storage spool file", value=w.spool_bytes)
    yield GaugeMetricFamily("nt8bridge_storage_held_rows", "rows the writer holds in memory, neither committed nor "
                            "spooled", value=w.rows_held)
    yield CounterMetricFamily("nt8bridge_storage_outages", "times the database was found unreachable",
                              value=w.outages)
    yield CounterMetricFamily("nt8bridge_storage_rows_replayed", "rows stored from the backlog after an outage",
                              value=w.rows_replayed)


def _hold_metrics(server: SidecarServer) -> Iterator:
    """The audit journal's disk (alert on nt8bridge_audit_journal_disk_full == 1) and the trading holds."""
    chain = server.chain
    if chain is not None:
        yield GaugeMetricFamily("nt8bridge_audit_journal_disk_full", "1 while audit records wait in memory for room "
                                "in the journal", value=1.0 if chain.disk_full else 0.0)
        yield GaugeMetricFamily("nt8bridge_audit_pending_records", "audit records waiting in memory for the journal",
                                value=chain.pending_records)
    holds = GaugeMetricFamily("nt8bridge_trading_hold", "1 while the sidecar holds trading back by itself, by cause "
                              "(storage: REDUCING while the database is away, with storage.on_outage = reducing; "
                              "audit: HALTED while the audit journal's disk is full; nt8_feed_down: REDUCING while "
                              "NT8's own feed is stale, with feeds.on_nt8_down = reducing)", labels=["source", "state"])
    for source, state in (("storage", "REDUCING"), ("audit", "HALTED"), ("nt8_feed_down", "REDUCING")):
        hold = server.switch.holds.get(source)
        holds.add_metric([source, state], 1.0 if hold is not None else 0.0)
    yield holds


def _feed_metrics(server: SidecarServer) -> Iterator:
    """The feeds beside NT8 (bridge/transport/feeds.py), when any is enabled: alert on
    nt8bridge_feed_health{health!="live"} == 1, on an increase of nt8bridge_feed_switches."""
    hub = server.feeds
    if hub is None:
        return
    for _ in range(3):  # read on the scrape's thread while the loop may add a root or a feed: tried again
        try:
            rows = hub.metric_rows()
            break
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    else:
        log.warning("metrics: the feeds changed under three reads; feed metrics skipped this scrape")
        return
    health = GaugeMetricFamily("nt8bridge_feed_health", "1 for each feed's current health (nt8 is NT8's own stream): "
                               "live, delayed, stale, diverging, down", labels=["feed", "health"])
    for feed, h in sorted(rows["health"].items()):
        for name in Health:
            health.add_metric([feed, str(name)], 1.0 if h is name else 0.0)
    yield health
    age = GaugeMetricFamily("nt8bridge_feed_value_age_seconds", "seconds since each feed's last value of a root "
                            "arrived", labels=["feed", "root"])
    divergence = GaugeMetricFamily("nt8bridge_feed_divergence_ticks", "each feed's distance from the reference feed "
                                   "of a root, in ticks (an ETF through its learnt ratio)", labels=["feed", "root"])
    for feed, root, age_s, ticks in sorted(rows["values"], key=lambda r: (r[0], r[1])):
        if age_s is not None:
            age.add_metric([feed, root], age_s)
        if ticks is not None:
            divergence.add_metric([feed, root], ticks)
    yield age
    yield divergence
    switches = CounterMetricFamily("nt8bridge_feed_switches", "moves of a root's reference to another feed, by the "
                                   "feed moved to", labels=["root", "to"])
    for (root, to), n in sorted(rows["switches"].items()):
        switches.add_metric([root, to], n)
    yield switches


def current_state(server: SidecarServer) -> dict[str, Any] | None:
    """The server's last snapshot while its loop keeps one fresh; else one built here, on the scrape's thread
    (a server whose loop does not run, or runs without readers). Built here it reads dicts the hot path may be
    changing: a read that collides is tried again, and after three None (the trading metrics wait a scrape)."""
    if time.monotonic() - server.last_state_at <= 4 * SNAPSHOT_INTERVAL_S and server.last_state is not None:
        return server.last_state
    for _ in range(3):
        try:
            return server.snapshot()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    log.warning("metrics: the sidecar's state changed under three reads; trading metrics skipped this scrape")
    return None


def _trading_metrics(server: SidecarServer) -> Iterator:
    """Positions, P&L, limits, denials and breaks (alert on nt8bridge_trading_halted == 1, on
    nt8bridge_limit_utilization_ratio > 0.8, on an increase of nt8bridge_reconciliation_breaks)."""
    switch = server.switch
    yield GaugeMetricFamily("nt8bridge_trading_halted", "1 while the kill switch has trading HALTED (no new order "
                            "until an operator enables it)", value=1.0 if switch.halted else 0.0)
    yield CounterMetricFamily("nt8bridge_kill_switch_activations", "kills of the switch by an operator",
                              value=sum(1 for e in list(switch.events) if e.kind == "kill"))
    breaks = CounterMetricFamily("nt8bridge_reconciliation_breaks", "the sidecar's ledger disagreeing with NT8, by "
                                 "kind: POSITION_MISMATCH, EXTRA, DIFFERENT, MISSING", labels=["kind"])
    counts = Counter(server.break_counts)
    for session in list(server.sessions.values()):
        counts.update(dict(session.pipeline.breaks_by_kind))
    for kind, n in sorted(counts.items()):
        breaks.add_metric([kind], n)
    yield breaks
    publisher = server.events
    if publisher is not None:
        yield CounterMetricFamily("nt8bridge_events_published", "messages published on the event stream",
                                  value=publisher.stats.published)
        yield CounterMetricFamily("nt8bridge_events_publish_failures", "event stream messages that could not be "
                                  "published (logged)", value=publisher.stats.failed)
    state = current_state(server)
    if state is None:
        return
    positions = GaugeMetricFamily("nt8bridge_position_contracts", "contracts held, signed (long > 0), by account, "
                                  "instrument and strategy ('' for contracts no bracket accounts for)",
                                  labels=["account", "instrument", "strategy"])
    held: Counter = Counter()
    for row in state["positions"]:
        held[(row["account"], row["instrument"], row["strategy"] or "")] += row["quantity"]
    for labels, q in sorted(held.items()):
        positions.add_metric(list(labels), q)
    yield positions
    pnl = GaugeMetricFamily("nt8bridge_pnl_dollars", "P&L of the open sessions by account: realized, and unrealized "
                            "(open contracts at the last trade)", labels=["account", "kind"])
    by_account: dict[str, list[float]] = {}
    for row in state["pnl"]:
        acc = by_account.setdefault(row["account"], [0.0, 0.0])
        acc[0] += row["realized"] or 0.0
        acc[1] += row["unrealized"] or 0.0
    for account, (realized, unrealized) in sorted(by_account.items()):
        pnl.add_metric([account, "realized"], realized)
        pnl.add_metric([account, "unrealized"], unrealized)
    yield pnl
    utilization = GaugeMetricFamily("nt8bridge_limit_utilization_ratio", "how much of a risk limit is used (1: at the "
                                    "limit), for the limits with a standing use (positions, daily loss, drawdown)",
                                    labels=["scope", "limit"])
    for row in state["risk"]["limits"]:
        if row["utilization"] is not None:
            utilization.add_metric([row["scope"], row["limit"]], row["utilization"])
    yield utilization
    denials = CounterMetricFamily("nt8bridge_risk_denials", "decisions denied, by reason (RISK_*, or GROUP_LEG_DENIED "
                                  "for a spread leg whose partner was denied)", labels=["reason"])
    for reason, n in sorted(state["risk"]["denials"].items()):
        denials.add_metric([reason], n)
    yield denials


def serve_metrics(server: SidecarServer, writer: StorageWriter | None, host: str, port: int) -> int:
    """Start the HTTP endpoint in a daemon thread; returns the port (``port=0`` picks one)."""
    registry = CollectorRegistry()
    registry.register(SidecarCollector(server, writer))
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    return httpd.server_address[1]
