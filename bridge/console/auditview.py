"""The audit trail as the console reports it: the chain verified up to which record and when, and the
last signed checkpoint.

Verifying recomputes the whole chain from genesis (bridge/audit/trail.py ``verify_database``), which
takes seconds on a long one, so a background thread does it: at start, then whenever the chain has
grown, at most every ``interval_s``. A page asks for the result, never waits for it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from bridge.audit.chain import read_checkpoints
from bridge.audit.trail import AuditPaths, audit_paths, verify_database
from bridge.core.config import Config

__all__ = ["AuditWatcher"]

log = logging.getLogger("nt8bridge.console.audit")


class AuditWatcher:
    def __init__(self, config: Config, db_url: str, head_seq: Any, interval_s: float = 60.0) -> None:
        """``head_seq()`` returns the chain's last stored seq (0 when empty; it may raise while storage is away)."""
        self.db_url = db_url
        self.paths: AuditPaths = audit_paths(config, db_url)
        self.interval_s = interval_s
        self._head_seq = head_seq
        self._lock = threading.Lock()
        self._result: dict[str, Any] | None = None
        self._verified_head: int | None = None
        self._running = False
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-audit-verify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.verify_if_grown()
            self._stop.wait(self.interval_s)

    def verify_if_grown(self) -> None:
        """Verify when the stored chain has records the last verification did not see."""
        try:
            head = self._head_seq()
        except Exception as exc:  # noqa: BLE001 - storage away: said in the report, tried again later
            with self._lock:
                self._error = str(exc)
            return
        if head == self._verified_head:
            return
        self.verify()

    def verify(self) -> None:
        with self._lock:
            self._running = True
        started = time.time_ns()
        try:
            public_key = self.paths.public_key if self.paths.public_key.exists() else None
            result = verify_database(self.db_url, self.paths.checkpoints, public_key)
            with self._lock:
                self._result = {**dataclasses.asdict(result), "verified_at_ns": time.time_ns(),
                                "took_s": round((time.time_ns() - started) / 1e9, 3),
                                "up_to_seq": result.records, "signatures_checked": public_key is not None}
                self._verified_head = result.records if result.ok else None
                self._error = None
            if not result.ok:
                log.error("AUDIT CHAIN BROKEN: first bad record %s: %s", result.first_bad_seq, result.reason)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the web server
            log.warning("audit verification failed to run: %s", exc)
            with self._lock:
                self._error = f"verification could not run: {exc}"
        finally:
            with self._lock:
                self._running = False

    def report(self) -> dict[str, Any]:
        with self._lock:
            result, running, error = self._result, self._running, self._error
        return {"verification": result, "verifying": running, "error": error,
                "journal": str(self.paths.journal), "checkpoints_file": str(self.paths.checkpoints),
                "last_checkpoint": _last_checkpoint(self.paths.checkpoints)}


def _last_checkpoint(path: Path) -> dict[str, Any] | None:
    try:
        checkpoints = read_checkpoints(path)
    except (OSError, ValueError) as exc:
        return {"error": f"{path}: {exc}"}
    if not checkpoints:
        return None
    last = checkpoints[-1]
    return {k: last.get(k) for k in ("seq", "hash", "ts_us", "key_id")} | {"count": len(checkpoints)}
