"""From a raised alert to every destination: deduplicated, rate-limited per destination, then handed to
that destination's own delivery thread, so a dead webhook retrying with backoff never holds up the
e-mail, nor the notifier reading the event stream.

Every alert ends in exactly one counter per destination: sent, failed (after its retries), or
suppressed with a reason (``duplicate``: a repeat within ``alerts.dedup_s``, counted once for all
destinations as ``destination="all"``; ``rate``: held by the bucket, summarised later;
``queue_full``: a destination so far behind that a thousand alerts wait for it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bridge.alerts.alert import Alert, Severity
from bridge.alerts.destinations import Delivery, Destination, Retry, deliver
from bridge.alerts.throttle import Dedup, RateLimiter

__all__ = ["DispatchStats", "Dispatcher"]

log = logging.getLogger("nt8bridge.alerts")

QUEUE_SIZE = 1000


@dataclass
class DispatchStats:
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)      # (kind, destination)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)    # (kind, destination)
    attempts: Counter[str] = field(default_factory=Counter)              # destination: every try, retries too
    queue_full: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, destination)
    last_error: dict[str, str] = field(default_factory=dict)             # destination -> its last failure


class _Worker:
    def __init__(self, destination: Destination, retry: Retry, stats: DispatchStats, lock: threading.Lock,
                 abort: threading.Event) -> None:
        self.destination = destination
        self.retry = retry
        self.stats = stats
        self.lock = lock
        self.abort = abort
        self.queue: queue.Queue[Alert | None] = queue.Queue(QUEUE_SIZE)
        self.busy = False
        self.thread = threading.Thread(target=self._run, name=f"alerts-{destination.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            alert = self.queue.get()
            if alert is None:
                return
            self.busy = True
            try:
                self._deliver(alert)
            finally:
                self.busy = False
                self.queue.task_done()

    def _deliver(self, alert: Alert) -> None:
        name = self.destination.name
        try:
            result = deliver(self.destination, alert, self.retry, wait=self.abort.wait)
        except Exception as exc:  # noqa: BLE001 - a bug in a destination: counted and logged, the notifier goes on
            log.exception("alert %s to %s: the destination failed unexpectedly", alert.kind, name)
            result = Delivery(False, 1, repr(exc), [repr(exc)])
        with self.lock:
            self.stats.attempts[name] += result.attempts
            if result.ok:
                self.stats.sent[(alert.kind, name)] += 1
            else:
                self.stats.failed[(alert.kind, name)] += 1
                self.stats.last_error[name] = result.error
        if result.ok:
            log.info("alert %s sent to %s%s", alert.kind, name,
                     f" (attempt {result.attempts})" if result.attempts > 1 else "")
        else:
            log.error("alert %s NOT delivered to %s after %d attempt%s: %s", alert.kind, name, result.attempts,
                      "s" if result.attempts != 1 else "", result.error)


class Dispatcher:
    """Used from one thread (the notifier's loop); the delivery threads only touch ``stats`` under its lock."""

    def __init__(self, destinations: Sequence[Destination], dedup_s: float, rate_per_min: float,
                 retry: Retry = Retry(), clock: Callable[[], float] = time.monotonic) -> None:
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must differ: {names}")
        self.clock = clock
        self.dedup = Dedup(dedup_s)
        self.rate = RateLimiter(rate_per_min)
        self.stats = DispatchStats()
        self.lock = threading.Lock()
        self._abort = threading.Event()
        self.workers = {d.name: _Worker(d, retry, self.stats, self.lock, self._abort) for d in destinations}
        self.raised: Counter[str] = Counter()

    @property
    def destinations(self) -> list[str]:
        return list(self.workers)

    def submit(self, alert: Alert) -> None:
        self.raised[alert.kind] += 1
        now = self.clock()
        out = self.dedup.offer(alert, now)
        if alert not in out:  # a repeat: counted, and its summary is logged when it goes out
            log.debug("alert %s [%s] repeated within %g s", alert.kind, alert.subject, self.dedup.dedup_s)
        for a in out:
            self._fan_out(a, now)

    def tick(self) -> None:
        """Summaries whose time has come: windows of repeats that ended, buckets that refilled."""
        now = self.clock()
        for a in self.dedup.due(now):
            self._fan_out(a, now)
        for dest, a in self.rate.due(now):
            self._enqueue(dest, a)

    def _fan_out(self, alert: Alert, now: float) -> None:
        level = {Severity.CRITICAL: logging.ERROR, Severity.WARNING: logging.WARNING}.get(alert.severity, logging.INFO)
        log.log(level, "ALERT %s [%s %s] %s", str(alert.severity).upper(), alert.kind, alert.subject, alert.title)
        for dest in self.workers:
            if self.rate.offer(dest, alert, now):
                self._enqueue(dest, alert)

    def _enqueue(self, dest: str, alert: Alert) -> None:
        try:
            self.workers[dest].queue.put_nowait(alert)
        except queue.Full:
            with self.lock:
                self.stats.queue_full[(alert.kind, dest)] += 1
                n = sum(v for (_, d), v in self.stats.queue_full.items() if d == dest)
            if n == 1 or n % 100 == 0:
                log.error("alerts to %s: %d waiting already, alert %s not queued (%d so far); the destination is "
                          "down or far too slow", dest, QUEUE_SIZE, alert.kind, n)

    def suppressed(self) -> Counter[tuple[str, str, str]]:
        """(kind, destination, reason) -> count, for the metrics."""
        out: Counter[tuple[str, str, str]] = Counter()
        for kind, n in self.dedup.suppressed.items():
            out[(kind, "all", "duplicate")] += n
        for (kind, dest), n in self.rate.suppressed.items():
            out[(kind, dest, "rate")] += n
        with self.lock:
            for (kind, dest), n in self.stats.queue_full.items():
                out[(kind, dest, "queue_full")] += n
        return out

    def pending(self) -> int:
        return sum(w.queue.unfinished_tasks for w in self.workers.values())

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued alert was delivered or given up; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def send_now(self, alert: Alert, retry: Retry) -> dict[str, Delivery]:
        """Straight to every destination, past the throttle, in this thread (``nt8bridge alerts test``)."""
        results: dict[str, Delivery] = {}
        for name, worker in self.workers.items():
            try:
                results[name] = deliver(worker.destination, alert, retry, wait=self._abort.wait)
            except Exception as exc:  # noqa: BLE001 - reported as that destination's failure
                log.exception("test alert to %s: the destination failed unexpectedly", name)
                results[name] = Delivery(False, 1, repr(exc), [repr(exc)])
            with self.lock:
                self.stats.attempts[name] += results[name].attempts
                (self.stats.sent if results[name].ok else self.stats.failed)[(alert.kind, name)] += 1
        return results

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued for up to ``timeout_s``, then cut the retries' waits short and stop."""
        flushed = self.flush(timeout_s)
        self._abort.set()
        for w in self.workers.values():
            try:
                w.queue.put_nowait(None)
            except queue.Full:
                pass
        for w in self.workers.values():
            w.thread.join(5.0)
        if not flushed:
            left = {n: w.queue.qsize() for n, w in self.workers.items() if w.queue.qsize()}
            log.error("alerts not delivered at stop: %s", left)
