"""How many alerts reach a person: one per kind and subject in ``alerts.dedup_s`` (:class:`Dedup`), and at
most ``alerts.rate_per_min`` per destination (:class:`RateLimiter`, a token bucket).

Nothing is dropped silently. A repeat within the window is counted and, when the window ends, the
count goes out as one summary ("repeated 99 times"); an alert the bucket refuses is held as a count,
and the counts go out as one summary as soon as the bucket has a token again. Both count what they
held back by kind (``suppressed``) for the notifier's metrics. Single-threaded; times are monotonic
seconds passed in by the caller, so tests drive them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from bridge.alerts.alert import Alert, Severity

__all__ = ["Dedup", "RateLimiter", "TokenBucket"]

_SAMPLES = 5  # titles quoted in a rate summary


@dataclass
class _Window:
    sent_at: float
    last: Alert
    repeats: int = 0


class Dedup:
    def __init__(self, dedup_s: float) -> None:
        self.dedup_s = dedup_s
        self._windows: dict[tuple[str, str], _Window] = {}
        self.suppressed: Counter[str] = Counter()  # by kind
        self.summaries = 0

    def offer(self, alert: Alert, now: float) -> list[Alert]:
        """What to send now: the alert, nothing (a repeat, counted), and before it the summary of a kind
        it clears (an enable ends the kill's window: the next kill is news at once)."""
        out: list[Alert] = []
        if alert.clears:
            for key in [k for k in self._windows if k[0] == alert.clears]:
                out += self._close(key, now)
        w = self._windows.get(alert.key)
        if w is not None and now - w.sent_at < self.dedup_s:
            w.repeats += 1
            w.last = alert
            self.suppressed[alert.kind] += 1
            return out
        if self.dedup_s > 0:
            self._windows[alert.key] = _Window(now, alert)
        return out + [alert]

    def due(self, now: float) -> list[Alert]:
        """Summaries of the windows that ended with repeats in them; a window without repeats just ends."""
        out: list[Alert] = []
        for key, w in list(self._windows.items()):
            if now - w.sent_at >= self.dedup_s:
                if w.repeats:
                    out.append(self._summary(w))
                    w.sent_at, w.repeats = now, 0  # the summary opens the next window: a long burst, one a window
                else:
                    del self._windows[key]
        return out

    def _close(self, key: tuple[str, str], now: float) -> list[Alert]:
        w = self._windows.pop(key)
        return [self._summary(w)] if w.repeats else []

    def _summary(self, w: _Window) -> Alert:
        self.summaries += 1
        a = w.last
        n = w.repeats
        return replace(a, title=f"{a.title} (repeated {n} more time{'s' if n != 1 else ''})",
                       text=f"{a.text}\n\nThis alert came {n} more time{'s' if n != 1 else ''} within "
                            f"{self.dedup_s:g} s of the one sent; the last is shown.",
                       fields={**a.fields, "repeats": n, "summary": "duplicates"}, clears="")


class TokenBucket:
    """``rate_per_min`` tokens a minute, holding at most ``burst`` (a burst of that many goes out at once)."""

    def __init__(self, rate_per_min: float, burst: float | None = None, now: float = 0.0) -> None:
        self.rate_per_s = rate_per_min / 60.0
        self.burst = max(1.0, burst if burst is not None else rate_per_min)
        self.tokens = self.burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate_per_s)
        self._at = max(self._at, now)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Held:
    count: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[int, int, str]] = field(default_factory=list)  # (-severity rank, arrival, title)
    worst: Severity = Severity.INFO
    since_ns: int = 0


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class RateLimiter:
    """A token bucket per destination; what it refuses becomes one summary per destination."""

    def __init__(self, rate_per_min: float, burst: float | None = None) -> None:
        self.rate_per_min = rate_per_min
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[str, _Held] = {}
        self.suppressed: Counter[tuple[str, str]] = Counter()  # (kind, destination)
        self.summaries = 0

    def _bucket(self, destination: str, now: float) -> TokenBucket:
        b = self._buckets.get(destination)
        if b is None:
            b = self._buckets[destination] = TokenBucket(self.rate_per_min, self.burst, now)
        return b

    def offer(self, destination: str, alert: Alert, now: float) -> bool:
        """True: send it. False: held back, counted, summarised later. While a summary waits, new alerts
        queue behind it (they would otherwise overtake the count of older ones)."""
        held = self._held.get(destination)
        if held is None and self._bucket(destination, now).take(now):
            return True
        if held is None:
            held = self._held[destination] = _Held(since_ns=alert.ts_ns)
        held.count += 1
        held.kinds[alert.kind] += 1
        # the summary quotes a few titles: the most severe first, so a kill held behind a flood of feed
        # warnings is named in it, not only counted
        held.samples.append((-_RANK[alert.severity], held.count, alert.title))
        held.samples = sorted(held.samples)[:_SAMPLES]
        if _RANK[alert.severity] > _RANK[held.worst]:
            held.worst = alert.severity
        self.suppressed[(alert.kind, destination)] += 1
        return False

    def held(self, destination: str) -> int:
        h = self._held.get(destination)
        return h.count if h else 0

    def due(self, now: float) -> list[tuple[str, Alert]]:
        """(destination, summary) for each destination whose bucket has a token again."""
        out: list[tuple[str, Alert]] = []
        for dest, held in list(self._held.items()):
            if self._bucket(dest, now).take(now):
                del self._held[dest]
                self.summaries += 1
                kinds = ", ".join(f"{n} {k}" for k, n in held.kinds.most_common())
                more = held.count - len(held.samples)
                out.append((dest, Alert(
                    "rate_limited", held.worst, dest, f"{held.count} alerts held back by the rate limit",
                    f"At most {self.rate_per_min:g} alerts a minute go to {dest}; {held.count} more came: {kinds}. "
                    "Among them: " + "; ".join(t for *_, t in held.samples) + (f"; and {more} more" if more > 0 else "")
                    + ". The console and the notifier's metrics have them all.",
                    fields={"held": held.count, "kinds": dict(held.kinds), "summary": "rate"})))
        return out
