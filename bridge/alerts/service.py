"""``nt8bridge alerts``: the notifier's loop. It reads the sidecar's event stream (``server.events_bind`` of
the same config file), has storage read in a thread of its own (new drift alerts every
``DRIFT_POLL_S``, the audit chain verified every ``alerts.audit_verify_min``), turns what it finds into
alerts (bridge/alerts/rules.py) and hands them to the dispatcher (deduplicated, rate-limited, one
delivery thread per destination). Its own metrics are on ``alerts.metrics_port`` (bridge/alerts/metrics.py).

It stops cleanly on Ctrl+C, SIGTERM and, on Windows, Ctrl+Break (:func:`install_stop_signals`): what is
queued is delivered for up to ``STOP_FLUSH_S`` first.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from bridge.alerts.alert import Alert, Severity
from bridge.alerts.destinations import Destination, Retry
from bridge.alerts.dispatch import Dispatcher
from bridge.alerts.polls import AuditVerifier, DriftPoller
from bridge.alerts.rules import SIDECAR_GONE_S, TOPICS, Rules
from bridge.core.config import Config, ConfigError
from bridge.transport.events import EventFeed

__all__ = ["AlertService", "StorageWatch", "events_endpoint", "install_stop_signals"]

log = logging.getLogger("nt8bridge.alerts")

DRIFT_POLL_S = 15.0
STOP_FLUSH_S = 10.0
ONCE_FLUSH_S = 120.0


def events_endpoint(bind: str) -> str:
    """Where to connect for a sidecar that binds ``bind``: a wildcard host is this machine's loopback."""
    if not bind:
        raise ConfigError("server.events_bind is empty: that sidecar publishes no event stream; set it (default "
                          "tcp://127.0.0.1:5557) in the sidecar's config and the notifier's, or give --events")
    scheme, sep, rest = bind.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme == "tcp" and sep and colon:
        if port == "*":
            raise ConfigError(f"server.events_bind {bind!r} lets the sidecar pick its port: the notifier cannot "
                              "know it; give the port, or --events ENDPOINT")
        if host in ("*", "0.0.0.0", "[::]", "::"):
            return f"tcp://127.0.0.1:{port}"
    return bind


@dataclass
class StorageStats:
    verifications: Counter[str] = field(default_factory=Counter)  # ok | broken | error
    read_failures: int = 0
    drift_rows: int = 0


class StorageWatch:
    """Storage reads off the loop's thread: a long chain takes a while to verify, and the event stream must
    be read meanwhile. Findings go to ``out`` as ("drift", row), ("audit", VerifyResult) or ("error", what,
    message) for the loop to turn into alerts (the rules are the loop's alone)."""

    def __init__(self, verifier: AuditVerifier, poller: DriftPoller, verify_every_s: float,
                 drift_every_s: float = DRIFT_POLL_S) -> None:
        self.verifier = verifier
        self.poller = poller
        self.verify_every_s = verify_every_s
        self.drift_every_s = drift_every_s
        self.out: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.stats = StorageStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alerts-storage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_verify = next_drift = time.monotonic()  # both at once: a broken chain is news at start
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_drift:
                self.poll_drift()
                next_drift = time.monotonic() + self.drift_every_s
            if now >= next_verify and not self._stop.is_set():
                self.verify()
                next_verify = time.monotonic() + self.verify_every_s
            self._stop.wait(max(0.05, min(next_drift, next_verify) - time.monotonic()))

    def poll_drift(self, since_ns: int | None = None) -> None:
        try:
            rows = self.poller.poll(since_ns)
        except Exception as exc:  # noqa: BLE001 - storage away or a bug: counted, logged, alerted, retried later
            self._failed("reading drift_alerts", exc)
            return
        self.stats.drift_rows += len(rows)
        for row in rows:
            self.out.put(("drift", row))

    def verify(self) -> None:
        try:
            result = self.verifier.verify()
        except Exception as exc:  # noqa: BLE001
            self.stats.verifications["error"] += 1
            self._failed("verifying the audit chain", exc)
            return
        self.stats.verifications["ok" if result.ok else "broken"] += 1
        if result.ok:
            log.info("audit chain of %s verified: %s", self.verifier.where, result.reason)
        else:
            log.error("AUDIT CHAIN BROKEN in %s: first bad record %s: %s", self.verifier.where,
                      result.first_bad_seq, result.reason)
        self.out.put(("audit", result))

    def _failed(self, doing: str, exc: Exception) -> None:
        self.stats.read_failures += 1
        log.warning("alerts: %s in %s failed: %s", doing, self.verifier.where, exc)
        self.out.put(("error", doing, str(exc)))

    def stop(self) -> None:
        """Ends the thread after the read under way (the service's verifier settles on the service's own stop
        event, so a stop never waits out its settle time)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
        self.poller.close()


class AlertService:
    def __init__(self, config: Config, db_url: str | None, destinations: Sequence[Destination], *,
                 events: str | None = None, retry: Retry = Retry(), sidecar_gone_s: float = SIDECAR_GONE_S,
                 drift_poll_s: float = DRIFT_POLL_S, ctx: zmq.Context | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        ac = config.alerts
        self.config = config
        self.endpoint = events or events_endpoint(config.server.events_bind)
        self.rules = Rules(ac.stale_feed_s, sidecar_gone_s, source=self.endpoint, clock=clock)
        self.dispatcher = Dispatcher(destinations, ac.dedup_s, ac.rate_per_min, retry, clock)
        self.retry = retry
        self._stop = threading.Event()
        self.storage: StorageWatch | None = None
        if db_url:
            verifier = AuditVerifier(config, db_url, sleep=self._stop.wait)
            self.storage = StorageWatch(verifier, DriftPoller(db_url), ac.audit_verify_min * 60.0, drift_poll_s)
        self.feed = EventFeed(self.endpoint, TOPICS, ctx, alive_s=sidecar_gone_s)
        self.metrics_port: int | None = None
        self._httpd: Any = None
        self._closed = False

    # --- control --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def serve_metrics(self, host: str, port: int) -> int | None:
        """The notifier's Prometheus endpoint; ``port`` -1: none, 0: a free one."""
        if port < 0:
            return None
        from prometheus_client import start_http_server
        from prometheus_client.core import CollectorRegistry

        from bridge.alerts.metrics import NotifierCollector

        registry = CollectorRegistry()
        registry.register(NotifierCollector(self))
        try:
            self._httpd, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise RuntimeError(f"cannot serve the notifier's metrics on {host}:{port}: {exc.strerror or exc}; "
                               "another program holds the port: set alerts.metrics_port (-1: none)") from None
        self.metrics_port = int(self._httpd.server_address[1])
        log.info("notifier metrics on http://%s:%d/metrics", host, self.metrics_port)
        return self.metrics_port

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Until :meth:`request_stop` (or a stop signal, with :func:`install_stop_signals`)."""
        log.info("notifier reading %s; destinations: %s", self.endpoint,
                 ", ".join(self.dispatcher.destinations) or "none (alerts are only logged)")
        if self.storage is not None:
            self.storage.start()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()

    def run_once(self) -> list[Alert]:
        """One look: the event stream for a little longer than it takes to call the sidecar gone, the audit chain
        verified, the drift alerts of the last ``alerts.audit_verify_min`` (the interval a scheduler would run
        this at); delivered before it returns. Returns what was raised."""
        raised: list[Alert] = []
        if self.storage is not None:
            since = time.time_ns() - int(self.config.alerts.audit_verify_min * 60e9)
            self.storage.poll_drift(since)
            self.storage.verify()
        deadline = time.monotonic() + self.rules.sidecar_gone_s + 0.5
        while time.monotonic() < deadline and not self._stop.is_set():
            raised += self.step(timeout_ms=100)
        raised += self.step(timeout_ms=0)
        self.dispatcher.flush(ONCE_FLUSH_S)
        self.close()
        return raised

    def step(self, timeout_ms: int = 200) -> list[Alert]:
        """Read what arrived, look at the time, send what is due; returns the alerts raised."""
        alerts: list[Alert] = []
        for event in self.feed.poll(timeout_ms):
            alerts += self.rules.on_event(event)
        alerts += self.rules.on_lost(self.feed.lost)
        alerts += self.rules.on_tick()
        alerts += self._storage_findings()
        for alert in alerts:
            self.dispatcher.submit(alert)
        self.dispatcher.tick()
        return alerts

    def _storage_findings(self) -> list[Alert]:
        if self.storage is None:
            return []
        out: list[Alert] = []
        where = self.storage.verifier.where
        while True:
            try:
                item = self.storage.out.get_nowait()
            except queue.Empty:
                return out
            if item[0] == "drift":
                out += self.rules.drift(item[1])
            elif item[0] == "audit" and not item[1].ok:
                r = item[1]
                out += self.rules.audit_broken(where, r.first_bad_seq, r.reason, r.records)
            elif item[0] == "error":
                out += self.rules.storage_unreadable(where, item[1], item[2])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.storage is not None:
            self.storage.stop()
        self.dispatcher.close(STOP_FLUSH_S)
        self.feed.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        log.info("notifier stopped: %d alerts raised, %d sent, %d failed", sum(self.dispatcher.raised.values()),
                 sum(self.dispatcher.stats.sent.values()), sum(self.dispatcher.stats.failed.values()))

    def test_alert_message(self) -> Alert:
        """What ``nt8bridge alerts test`` sends to every destination."""
        return Alert("test", Severity.INFO, "test", "nt8bridge test alert",
                     "A test of the notifier's destinations (`nt8bridge alerts test`): nothing happened on the desk.",
                     fields={"events": self.endpoint})


def install_stop_signals(service: AlertService) -> None:
    """Ctrl+C and SIGTERM everywhere, Ctrl+Break on Windows (what a parent sends a child process group)."""
    from bridge.transport.sidecar import stop_signals

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: the notifier stops after delivering what is queued", signum)
        service.request_stop()

    for signum in stop_signals():
        signal.signal(signum, stop)
