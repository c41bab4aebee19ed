"""What the notifier reads from storage itself: new rows of ``drift_alerts``, and the audit chain's verification.

Both only read. Neither creates an SQLite file that is not there yet (an empty database made by the
notifier would hide the sidecar's real one behind a wrong path): that is a StorageError saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bridge.audit.chain import VerifyResult
from bridge.audit.trail import audit_paths, verify_database
from bridge.core.config import Config
from bridge.storage.database import StorageError, as_storage_error, create_engine_for, safe_url
from bridge.storage.schema import drift_alerts

__all__ = ["AuditVerifier", "DriftPoller", "require_database"]

_DRIFT_COLUMNS = ("id", "model_id", "feature", "metric", "value", "threshold", "ts_ns", "window_start_ns",
                  "window_end_ns", "n_rows")


def require_database(db_url: str) -> None:
    """An SQLite file must exist already: the sidecar makes it, the notifier only reads it."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).exists():
        raise StorageError(f"{url.database} does not exist (yet): start the sidecar on it first, or give the "
                           "notifier the sidecar's --db / storage.url", transient=True)


class DriftPoller:
    """New rows of ``drift_alerts`` since the last poll. The first poll only notes where the table ends
    (what was there before the notifier started was somebody's news already), unless ``since_ns`` asks for
    the rows of a recent window (``nt8bridge alerts --once`` run by a scheduler)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._engine: Engine | None = None
        self.last_id: int | None = None

    def poll(self, since_ns: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        try:
            require_database(self.db_url)
            if self._engine is None:
                self._engine = create_engine_for(self.db_url)
            cols = [drift_alerts.c[name] for name in _DRIFT_COLUMNS]
            with self._engine.connect() as conn:
                if self.last_id is None and since_ns is None:
                    self.last_id = int(conn.execute(select(func.coalesce(func.max(drift_alerts.c.id), 0))).scalar())
                    return []
                query = select(*cols).order_by(drift_alerts.c.id).limit(limit)
                if self.last_id is not None:
                    query = query.where(drift_alerts.c.id > self.last_id)
                if since_ns is not None:
                    query = query.where(drift_alerts.c.ts_ns >= since_ns)
                rows = [dict(r) for r in conn.execute(query).mappings()]
        except StorageError:
            raise
        except SQLAlchemyError as exc:
            raise as_storage_error(self.db_url, exc, "reading drift_alerts") from None
        if rows:
            self.last_id = int(rows[-1]["id"])
        return rows

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


@dataclass(frozen=True)
class AuditVerifier:
    """``nt8bridge audit verify`` as a call: the chain stored in the database, against the signed checkpoints
    beside the sidecar's journal where this machine has them (``audit.dir``, ``audit.key_path``)."""

    config: Config
    db_url: str
    # A live sidecar signs a checkpoint when it journals a record, and its writer commits that record a
    # moment later: a checkpoint beyond the stored head is a truncated tail only if it still is this much later.
    settle_s: float = 15.0
    sleep: Callable[[float], object] = time.sleep

    @property
    def where(self) -> str:
        return safe_url(self.db_url)

    def verify(self) -> VerifyResult:
        require_database(self.db_url)
        result = self._verify()
        if not result.ok and "tail truncated" in result.reason and self.settle_s > 0:
            self.sleep(self.settle_s)
            result = self._verify()
        return result

    def _verify(self) -> VerifyResult:
        paths = audit_paths(self.config, self.db_url)
        try:
            return verify_database(self.db_url, paths.checkpoints, paths.public_key)
        except StorageError:
            raise
        except SQLAlchemyError as exc:
            raise as_storage_error(self.db_url, exc, "verifying the audit chain") from None
