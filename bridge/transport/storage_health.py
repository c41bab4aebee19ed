"""What the sidecar does when its records cannot be kept as they should: the alerts and the trading holds.

Two causes, watched from the hot path's timers (``StorageHealth.poll``, a few attribute reads every
quarter of a second):

* **The database is away** (the storage writer's state is not ``ok``: ``database_down``,
  ``catching_up`` or ``disk_full``, ``bridge.storage.writer``). Rows go to the writer's spool and
  nothing is lost, so by default trading goes on (``storage.on_outage = "continue"``). With
  ``"reducing"`` the switch gets a REDUCING hold while the writer is not ``ok``: new orders pass only
  if they shrink a position, until the backlog is stored.
* **The audit journal's disk is full** (``bridge.audit.chain.AuditChain.disk_full``). The records
  wait in memory, in order, and nothing is lost unless the process dies meanwhile; but a record is
  only durable once it is in the journal, so the switch gets a HALTED hold: no new order (exits and
  flattens still go, as with the kill switch) until the journal has written them all.

Each hold, and its release, is logged once and is an audit record (``trading_hold`` /
``trading_hold_released``, subject the source); an audit record made while the journal is full waits
in memory with the others and is journaled in its place. ``report`` is what ``nt8bridge status``
shows under ``storage``; the metrics read the same (``bridge.transport.metrics``).

Where the writer's spool lives is decided here too (``spool_path_for``): ``storage.spool_path``,
else beside an SQLite database (``<file>.spool``), else beside the audit journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bridge.core.config import Config
from bridge.risk.switch import TradingState, TradingSwitch

log = logging.getLogger("nt8bridge.storage")

AuditFn = Callable[[str, str, int, dict[str, Any]], None]


def spool_path_for(config: Config, db_url: str) -> Path:
    """The storage writer's spool file for this configuration and database."""
    if config.storage.spool_path:
        return Path(config.storage.spool_path)
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database + ".spool")
    from bridge.audit.trail import audit_paths

    return audit_paths(config, db_url).journal.parent / "storage.spool"


class StorageHealth:
    """Turns the writer's and the audit journal's states into holds on the switch, log lines and audit
    records (see the module docstring).

    Parameters
    ----------
    on_outage
        ``storage.on_outage``: ``"continue"`` or ``"reducing"``.
    writer
        The storage writer (anything with ``state`` and ``stats``; a sink without them counts as ok).
    chain
        Returns the audit chain in force (it may change: a standby gets one when it leads), or None.
    switch
        The server's trading switch.
    audit
        Records an audit record: ``(kind, subject_id, now_ns, payload)``.
    """

    def __init__(self, on_outage: str, writer: Any, chain: Callable[[], Any], switch: TradingSwitch,
                 audit: AuditFn) -> None:
        self.on_outage = on_outage
        self.writer = writer
        self._chain = chain
        self.switch = switch
        self._audit = audit
        self.holds_placed = 0

    def poll(self) -> None:
        """Place or lift the holds the causes call for (hot-path thread, between messages)."""
        state = getattr(self.writer, "state", "ok")
        want = self.on_outage == "reducing" and state != "ok"
        if want != ("storage" in self.switch.holds):
            if want:
                self._hold("storage", TradingState.REDUCING,
                           f"the database is unreachable or its backlog not yet stored (storage {state}); "
                           "storage.on_outage = reducing", {"storage_state": state, **self._writer_facts()})
            else:
                self._release("storage", "the database answers and the backlog is stored", self._writer_facts())
        chain = self._chain()
        full = bool(chain is not None and chain.disk_full)
        if full != ("audit" in self.switch.holds):
            if full:
                self._hold("audit", TradingState.HALTED,
                           f"the audit journal's disk is full ({chain.disk_full_error}); records wait in memory",
                           self._audit_facts(chain))
            else:
                self._release("audit", "the audit journal has room again and holds every record",
                              self._audit_facts(chain))

    def _hold(self, source: str, state: TradingState, reason: str, facts: dict[str, Any]) -> None:
        now = time.time_ns()
        self.switch.hold(source, state, reason, now)
        self.holds_placed += 1
        log.error("TRADING %s (%s): %s; new orders that %s are refused until it clears", state, source, reason,
                  "do not reduce a position" if state is TradingState.REDUCING else "open or add to a position")
        self._audit("trading_hold", source, now, {"state": str(state), "reason": reason, **facts})

    def _release(self, source: str, reason: str, facts: dict[str, Any]) -> None:
        now = time.time_ns()
        hold = self.switch.release(source)
        held_s = (now - hold.since_ns) / 1e9 if hold is not None else 0.0
        log.warning("trading hold lifted (%s) after %.1fs: %s", source, held_s, reason)
        self._audit("trading_hold_released", source, now, {"reason": reason, "held_s": round(held_s, 3), **facts})

    def _writer_facts(self) -> dict[str, Any]:
        stats = getattr(self.writer, "stats", None)
        if stats is None:
            return {}
        return {"rows_spooled": stats.rows_spooled, "rows_held": stats.rows_held, "outage_since": stats.outage_since,
                "last_error": stats.last_error}

    @staticmethod
    def _audit_facts(chain: Any) -> dict[str, Any]:
        return {"pending_records": chain.pending_records, "journaled_seq": chain.journaled_seq,
                "disk_full_since": chain.disk_full_since}

    def report(self) -> dict[str, Any]:
        """The ``storage`` field of ``nt8bridge status``."""
        out: dict[str, Any] = {"on_outage": self.on_outage}
        stats = getattr(self.writer, "stats", None)
        if stats is not None:
            out |= {"state": stats.state, "state_since": stats.state_since, "outage_since": stats.outage_since,
                    "rows_spooled": stats.rows_spooled, "spool_bytes": stats.spool_bytes, "rows_held": stats.rows_held,
                    "rows_replayed": stats.rows_replayed, "rows_skipped": stats.rows_skipped,
                    "outages": stats.outages, "queue_depth": stats.queue_depth,
                    "backpressure_waits": stats.backpressure_waits, "rows_written": sum(stats.rows_written.values()),
                    "last_error": stats.last_error, "spool_path": stats.spool_path}
        chain = self._chain()
        if chain is not None:
            out["audit_journal"] = {"disk_full": chain.disk_full, "disk_full_since": chain.disk_full_since,
                                    "pending_records": chain.pending_records, "journaled_seq": chain.journaled_seq,
                                    "head_seq": chain.head[0], "error": chain.disk_full_error}
        out["holds"] = [{"source": h.source, "state": str(h.state), "reason": h.reason, "since_ns": h.since_ns}
                        for h in self.switch.holds.values()]
        return out


def describe(report: dict[str, Any] | None) -> str:
    """``nt8bridge status`` in one line: what the ``storage`` report says is wrong ("" when nothing is)."""
    if not report:
        return ""
    parts = []
    state = report.get("state", "ok")
    if state != "ok":
        parts.append(f"storage {state.upper()}: {report.get('rows_spooled', 0)} rows in the spool, "
                     f"{report.get('rows_held', 0)} in memory")
    journal = report.get("audit_journal") or {}
    if journal.get("disk_full"):
        parts.append(f"AUDIT JOURNAL DISK FULL: {journal.get('pending_records', 0)} records waiting in memory")
    for hold in report.get("holds", []):
        parts.append(f"trading {hold['state']} ({hold['source']})")
    return "; " + "; ".join(parts) if parts else ""
