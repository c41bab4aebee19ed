"""Prometheus metrics on loopback, read from the server's own counters at scrape time.

A custom collector means the hot path pays nothing per tick for metrics (prometheus_client's own
Counter takes a lock per increment); a scrape reads plain integers and the folded histograms.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bridge.transport.server import SidecarServer
from bridge.storage.writer import StorageWriter
from bridge.core.timing import BUCKET_BOUNDS_US


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
        refused = CounterMetricFamily("nt8bridge_sessions_refused", "HELLOs refused with SESSION_LIMIT_REACHED, by the "
                                      "limit reached", labels=["limit"])
        for limit, n in sorted(s.sessions_refused.items()):
            refused.add_metric([limit], n)
        yield refused
        yield CounterMetricFamily("nt8bridge_sessions_lost", "sessions ended by heartbeat timeout",
                                  value=s.sessions_lost)
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


def serve_metrics(server: SidecarServer, writer: StorageWriter | None, host: str, port: int) -> int:
    """Start the HTTP endpoint in a daemon thread; returns the port (``port=0`` picks one)."""
    registry = CollectorRegistry()
    registry.register(SidecarCollector(server, writer))
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    return httpd.server_address[1]
