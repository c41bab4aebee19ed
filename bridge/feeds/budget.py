"""A request budget for a metered HTTP feed: so many requests per UTC day, at most so many a second, and
a back-off after the provider said "too many". Kept in a small JSON file so that a restarted sidecar (or
``nt8bridge feeds probe`` beside a running one) does not spend the day's requests again.

The day count is the hard limit (a free Alpha Vantage key gets 25 requests a day, and a request past it
is wasted: the provider answers with a throttle sentence instead of a quote). The per-second rate is a
token bucket: ``rate`` tokens a second, at most ``max(1, rate)`` saved up, one per request.

Several processes may share the file; each re-reads it before it spends and keeps the larger count of
the same day, so the two together stay within the day's budget but for a race of a few milliseconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["Grant", "RequestBudget", "BudgetState"]

log = logging.getLogger(__name__)

_REPLACE_TRIES = 5  # Windows: os.replace fails while another process (a virus scanner, a reader) holds the file


@dataclass
class BudgetState:
    day: str = ""               # the UTC day the count is for, YYYY-MM-DD
    used: int = 0               # requests spent that day
    tokens: float = 1.0         # the rate bucket at ``tokens_at``
    tokens_at: float = 0.0      # wall clock, seconds since the epoch
    backoff_until: float = 0.0  # wall clock: no request before this (the provider throttled us)
    backoff_reason: str = ""


@dataclass(frozen=True)
class Grant:
    """The answer to "may I send a request now?". Not ``ok``: ``wait_s`` until asking again helps, and
    ``reason`` (when not empty) is why nothing will be sent until then (budget spent, backing off); an
    empty reason means only the per-second rate said wait."""

    ok: bool
    wait_s: float = 0.0
    reason: str = ""


def utc_day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def next_utc_midnight(t: float) -> float:
    d = datetime.fromtimestamp(t, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (d + timedelta(days=1)).timestamp()


class RequestBudget:
    """``per_day`` requests each UTC day and ``per_s`` a second, persisted in ``path`` (None: in memory).
    ``clock`` is the wall clock in seconds (the day boundary is a wall-clock fact); thread-safe."""

    def __init__(self, per_day: int, per_s: float, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        if per_day < 1 or not per_s > 0:
            raise ValueError("a request budget needs per_day >= 1 and per_s > 0")
        self.per_day = per_day
        self.per_s = per_s
        self.capacity = max(1.0, per_s)
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._save_failed = False
        now = clock()
        self._state = BudgetState(day=utc_day(now), tokens=self.capacity, tokens_at=now)
        self._merge(self._read())

    # --- the questions ------------------------------------------------------------------------------

    def spent_reason(self) -> str:
        return f"daily budget of {self.per_day} requests spent; resets at 00:00 UTC"

    def try_spend(self, *, ignore_backoff: bool = False) -> Grant:
        """Spend one request if the day's budget, the back-off and the rate allow it now."""
        with self._lock:
            now = self._clock()
            self._merge(self._read())
            self._roll(now)
            s = self._state
            if not ignore_backoff and now < s.backoff_until:
                return Grant(False, s.backoff_until - now, s.backoff_reason or "backing off")
            if s.used >= self.per_day:
                return Grant(False, max(0.0, next_utc_midnight(now) - now), self.spent_reason())
            self._refill(now)
            if s.tokens < 1.0:
                return Grant(False, (1.0 - s.tokens) / self.per_s)
            s.tokens -= 1.0
            s.used += 1
            self._write()
            return Grant(True)

    def remaining(self) -> int:
        with self._lock:
            self._merge(self._read())
            self._roll(self._clock())
            return max(0, self.per_day - self._state.used)

    def state(self) -> BudgetState:
        with self._lock:
            return BudgetState(**asdict(self._state))

    # --- what the provider said ---------------------------------------------------------------------

    def back_off(self, seconds: float, reason: str) -> None:
        """No request for ``seconds`` (the provider throttled us); ``reason`` must hold no credential."""
        with self._lock:
            self._state.backoff_until = max(self._state.backoff_until, self._clock() + seconds)
            self._state.backoff_reason = reason
            self._write()

    def clear_backoff(self) -> None:
        with self._lock:
            if self._state.backoff_until or self._state.backoff_reason:
                self._state.backoff_until, self._state.backoff_reason = 0.0, ""
                self._write()

    def refund(self) -> None:
        """Give back a request that never reached the provider (the connection was refused): an outage of
        the network must not spend the day's budget."""
        with self._lock:
            self._merge(self._read())
            self._roll(self._clock())
            if self._state.used > 0:
                self._state.used -= 1
                self._write()

    def exhaust(self) -> None:
        """The provider says today's requests are spent, whatever we counted: spend the rest of the day."""
        with self._lock:
            self._roll(self._clock())
            self._state.used = max(self._state.used, self.per_day)
            self._write()

    # --- inside -------------------------------------------------------------------------------------

    def _roll(self, now: float) -> None:
        day = utc_day(now)
        if day != self._state.day:
            self._state.day, self._state.used = day, 0

    def _refill(self, now: float) -> None:
        s = self._state
        elapsed = now - s.tokens_at
        if elapsed < 0:  # the wall clock went back: refill nothing, start counting again from now
            elapsed = 0.0
        s.tokens = min(self.capacity, s.tokens + elapsed * self.per_s)
        s.tokens_at = now

    def _merge(self, other: BudgetState | None) -> None:
        """Take what another process (or an earlier run) spent: the larger count of the same day, the
        emptier bucket, the later back-off."""
        if other is None:
            return
        s = self._state
        if other.day > s.day:
            s.day, s.used = other.day, other.used
        elif other.day == s.day:
            s.used = max(s.used, other.used)
        now = self._clock()
        mine = min(self.capacity, s.tokens + max(0.0, now - s.tokens_at) * self.per_s)
        theirs = min(self.capacity, other.tokens + max(0.0, now - other.tokens_at) * self.per_s)
        s.tokens, s.tokens_at = min(mine, theirs), now
        if other.backoff_until > s.backoff_until:
            s.backoff_until, s.backoff_reason = other.backoff_until, other.backoff_reason

    def _read(self) -> BudgetState | None:
        if self.path is None:
            return None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            state = BudgetState(day=str(raw["day"]), used=int(raw["used"]), tokens=float(raw["tokens"]),
                                tokens_at=float(raw["tokens_at"]), backoff_until=float(raw.get("backoff_until", 0.0)),
                                backoff_reason=str(raw.get("backoff_reason", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A torn or hand-edited file: the count in it is unknown, ours stands (and overwrites it).
            log.warning("request budget file %s is unreadable (%s); keeping the count in memory", self.path, exc)
            return None
        if not all(math.isfinite(x) for x in (state.tokens, state.tokens_at, state.backoff_until)):
            log.warning("request budget file %s holds a non-finite number; ignoring it", self.path)
            return None
        return state

    def _write(self) -> None:
        """Write a temporary file beside the target, then ``os.replace`` it (atomic on Windows and POSIX):
        a crash mid-write leaves the old count, never half a file."""
        if self.path is None:
            return
        text = json.dumps(asdict(self._state), indent=1)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            for attempt in range(_REPLACE_TRIES):
                try:
                    os.replace(tmp, self.path)
                    break
                except PermissionError:
                    if attempt == _REPLACE_TRIES - 1:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            self._save_failed = False
        except OSError as exc:
            if not self._save_failed:  # once per failure streak: the budget still holds in memory
                log.warning("cannot save the request budget to %s (%s); it holds in memory until this process "
                            "stops", self.path, exc)
            self._save_failed = True
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
