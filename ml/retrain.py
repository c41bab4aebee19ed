"""Retraining on a schedule: apscheduler fires, the newest window is trained, a challenger registered.

A challenger never replaces the champion by itself. :func:`promotion_gates` says whether it
*may*: it must beat the base rate out of sample (skill), its ONNX graphs must match the native
models (parity), it must not be expired, and, when a champion exists, the champion-challenger
shadow comparison (``ml.ab``) on the live stream must have decided "promote". With
``auto_promote`` the retrainer promotes a challenger that passes every gate, as operator
``retrainer``; otherwise it only reports.

The schedule is an apscheduler trigger (``cron:fri 16:30 America/Chicago``, after the CME Friday
close, or ``interval:24``). ``nt8bridge retrain`` runs a BackgroundScheduler until Ctrl+C; tests
drive the same scheduler, trigger and job under a controlled clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger("nt8bridge.ml.retrain")

RETRAINER = "retrainer"  # the operator name of automatic promotions
PARITY_TOLERANCE = 1e-4


def trigger_from_text(text: str) -> BaseTrigger:
    """``cron:DAY HH:MM [ZONE]`` (e.g. ``cron:fri 16:30 America/Chicago``) or ``interval:HOURS``."""
    kind, _, spec = text.partition(":")
    try:
        if kind == "interval":
            return IntervalTrigger(hours=float(spec), timezone=dt.timezone.utc)
        if kind == "cron":
            parts = spec.split()
            day, hhmm = parts[0], parts[1]
            zone = ZoneInfo(parts[2]) if len(parts) > 2 else dt.timezone.utc
            hour, minute = hhmm.split(":")
            return CronTrigger(day_of_week=day, hour=int(hour), minute=int(minute), timezone=zone)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"bad schedule {text!r}: {exc}; use 'cron:fri 16:30 America/Chicago' or 'interval:24'") from None
    raise ValueError(f"bad schedule {text!r}: use 'cron:fri 16:30 America/Chicago' or 'interval:24'")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]


def promotion_gates(meta: dict[str, Any], *, has_champion: bool, ab_decision: str | None,
                    now_ns: int) -> GateResult:
    """Whether a challenger may replace the champion; every failed gate is named."""
    reasons = []
    ev = meta["metrics"]["evaluation"]
    if not ev["ensemble"]["log_loss"] < ev["base_rate_model"]["log_loss"]:
        reasons.append(f"no skill out of sample: log-loss {ev['ensemble']['log_loss']:.5f} is not below the base "
                       f"rate's {ev['base_rate_model']['log_loss']:.5f}")
    worst = max(meta["parity_max_abs"].values())
    if not worst <= PARITY_TOLERANCE:
        reasons.append(f"ONNX parity {worst:.2e} above {PARITY_TOLERANCE:.0e}")
    if meta.get("expires_ns", 0) <= now_ns:
        reasons.append("expired")
    if has_champion and ab_decision != "promote":
        reasons.append(f"the shadow A/B comparison with the champion says {ab_decision or 'nothing yet'}")
    return GateResult(not reasons, reasons)


@dataclass
class Retrainer:
    """One retraining job: the newest ``window_days`` of ``paths``, registered in ``registry_root``."""

    paths: list[Path]
    registry_root: Path
    db_url: str | None
    quick: bool = False
    window_days: float = 30.0
    auto_promote: bool = False
    train_fn: Callable[..., Any] | None = None  # ml.train.train unless given (tests give a cheaper one)
    ab_decision: Callable[[str], str | None] = lambda model_id: None  # the shadow comparison's decision
    clock: Callable[[], int] = time.time_ns
    history: list[dict[str, Any]] = field(default_factory=list)

    def run_once(self) -> dict[str, Any]:
        """Train a challenger now; promote it only through the gates (and only with auto_promote)."""
        import json

        from ml.registry import Registry
        from ml.train import TrainConfig, train
        started = self.clock()
        fn = self.train_fn or train
        cfg = TrainConfig(quick=self.quick, window_days=self.window_days)
        record = fn(self.paths, self.registry_root, self.db_url, cfg)
        registry = Registry(self.registry_root, self.db_url)
        meta = json.loads((Path(record.path) / "model.json").read_text())
        champion = registry.champion()
        gates = promotion_gates(meta, has_champion=champion is not None,
                                ab_decision=self.ab_decision(record.model_id), now_ns=self.clock())
        promoted = False
        if gates.passed and self.auto_promote:
            registry.promote(record.model_id, RETRAINER, "passed every promotion gate")
            promoted = True
        result = {"model_id": record.model_id, "started_ns": started, "finished_ns": self.clock(),
                  "gates_passed": gates.passed, "gate_reasons": gates.reasons, "promoted": promoted}
        log.warning("retrained: challenger %s; gates %s%s", record.model_id,
                    "passed" if gates.passed else "failed: " + "; ".join(gates.reasons),
                    "; promoted" if promoted else "")
        self.history.append(result)
        return result

    def schedule(self, scheduler: BaseScheduler, trigger: BaseTrigger) -> None:
        """Add the job: one run at a time, a missed run done once (not once per miss) within six hours."""
        scheduler.add_job(self.run_once, trigger, id="retrain", max_instances=1, coalesce=True,
                          misfire_grace_time=6 * 3600, replace_existing=True)

    def serve(self, trigger: BaseTrigger) -> None:
        """Run the schedule in a BackgroundScheduler until Ctrl+C."""
        scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
        self.schedule(scheduler, trigger)
        scheduler.start()
        job = scheduler.get_job("retrain")
        log.warning("retraining scheduled; next run %s", job.next_run_time if job else "?")
        stop = threading.Event()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            scheduler.shutdown(wait=True)
