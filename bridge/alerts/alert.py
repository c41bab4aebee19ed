"""One alert: what the rules raise, the throttle counts and the destinations render."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

__all__ = ["Alert", "Severity", "iso_time"]


class Severity(StrEnum):
    CRITICAL = "critical"  # trading is stopped or its records are in doubt: somebody acts now
    WARNING = "warning"    # trading goes on, but something a person should look at happened
    INFO = "info"          # a condition cleared, or an operator did what operators do


@dataclass(frozen=True)
class Alert:
    """``kind`` and ``subject`` together are what deduplication compares: the same kind about the same
    subject within ``alerts.dedup_s`` is one alert. ``clears`` names a kind this alert ends (an enable ends
    a kill, the sidecar back ends the sidecar gone): the next alert of that kind is news again at once."""

    kind: str
    severity: Severity
    subject: str
    title: str
    text: str
    ts_ns: int = field(default_factory=time.time_ns)
    fields: dict[str, Any] = field(default_factory=dict)
    clears: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": str(self.severity), "subject": self.subject, "title": self.title,
                "text": self.text, "ts_ns": self.ts_ns, "time": iso_time(self.ts_ns), "fields": dict(self.fields)}


def iso_time(ts_ns: int) -> str:
    """UTC, to the millisecond: what a person reads in a message."""
    t = datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
