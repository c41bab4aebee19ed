"""Scheduled backups that prove themselves: back up, restore into a scratch database, verify, keep N.

Each run writes a backup bundle (:func:`restore.backup_bundle`) into a folder, restores it into a scratch
database (a temporary SQLite file; for PostgreSQL a scratch database created beside the source on the same
server, then dropped), runs the verifier the caller gives (the CLI passes the audit chain's
``verify_database``: storage is the ground floor and may not import ``bridge.audit``), and appends the
outcome to ``proofs.jsonl`` in the folder. Retention keeps the newest ``keep`` bundles and, whatever
``keep`` says, the newest *proven* one: a run of failed proofs never deletes the last backup known to restore.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bridge.storage.database import StorageError, create_engine_for, parse_url, safe_url
from bridge.storage.restore import AuditFiles, audit_dir_of, backup_bundle, manifest_path, restore

log = logging.getLogger("nt8bridge.storage")

PROOFS_FILE = "proofs.jsonl"

# (scratch database URL, its audit folder) -> (ok, reason, details such as records and checkpoints verified)
Verifier = Callable[[str, Path], tuple[bool, str, dict[str, Any]]]


@dataclass(frozen=True)
class Proof:
    backup: str
    ok: bool
    reason: str
    at_utc: str
    details: dict[str, Any]
    deleted: tuple[str, ...] = ()  # bundles removed by retention after this run


def _scratch_postgres(url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database on the source's server, and the function that drops it."""
    parsed = parse_url(url)
    name = f"nt8bridge_proof_{uuid.uuid4().hex[:12]}"
    admin = create_engine_for(url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - reported as a failed proof
        admin.dispose()
        raise StorageError(f"cannot create a scratch database on {safe_url(parsed)} to prove the backup ({exc}); "
                           "the backup role needs CREATEDB") from None

    def drop() -> None:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                     f"'{name}' AND pid <> pg_backend_pid()")
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            admin.dispose()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def prove(backup_file: Path, source_url: str, verifier: Verifier) -> tuple[bool, str, dict[str, Any]]:
    """Restore ``backup_file`` into a scratch database and run ``verifier`` there; never raises for a
    backup that does not restore (that is the finding, returned as ``ok=False``)."""
    with tempfile.TemporaryDirectory(prefix="nt8bridge-proof-") as tmp:
        drop: Callable[[], None] = lambda: None  # noqa: E731
        try:
            if parse_url(source_url).get_backend_name() == "sqlite":
                scratch = f"sqlite:///{Path(tmp) / 'scratch.sqlite'}"
            else:
                scratch, drop = _scratch_postgres(source_url)
            audit_dir = Path(tmp) / "audit"
            restore(backup_file, scratch, audit_dir=audit_dir)
            return verifier(scratch, audit_dir)
        except StorageError as exc:
            return False, f"restore failed: {exc}", {}
        finally:
            drop()


def _bundles(folder: Path) -> list[Path]:
    """The backup files in ``folder`` that have a manifest, oldest first."""
    out = []
    for m in folder.glob("*" + ".manifest.json"):
        db_file = m.with_name(m.name.removesuffix(".manifest.json"))
        if db_file.is_file():
            out.append(db_file)
    return sorted(out, key=lambda p: (manifest_path(p).stat().st_mtime_ns, p.name))


def _proven(folder: Path) -> set[str]:
    path = folder / PROOFS_FILE
    if not path.exists():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if row.get("ok"):
            names.add(row.get("backup"))
    return names


def apply_retention(folder: Path, keep: int, also_proven: str | None = None) -> list[str]:
    """Delete all but the newest ``keep`` bundles, never the newest proven one (``also_proven``: a bundle just
    proven, not yet in proofs.jsonl); returns the names deleted. ``keep`` 0: delete nothing."""
    if keep <= 0:
        return []
    bundles = _bundles(folder)
    proven = _proven(folder) | ({also_proven} if also_proven else set())
    keep_names = {p.name for p in bundles[-keep:]}
    newest_proven = next((p.name for p in reversed(bundles) if p.name in proven), None)
    if newest_proven:
        keep_names.add(newest_proven)
    deleted = []
    for p in bundles:
        if p.name in keep_names:
            continue
        manifest_path(p).unlink(missing_ok=True)  # first: a half-deleted bundle no longer counts as one
        shutil.rmtree(audit_dir_of(p), ignore_errors=True)
        p.unlink(missing_ok=True)
        deleted.append(p.name)
    return deleted


@dataclass
class ProvenBackups:
    """One scheduled job: back up ``url`` into ``folder``, prove it, keep ``keep``."""

    url: str
    folder: Path
    keep: int
    audit: AuditFiles | None
    verifier: Verifier
    on_proof: Callable[[Proof], None] | None = None  # e.g. record the outcome in the audit chain

    def run_once(self) -> Proof:
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        parsed = parse_url(self.url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        stem = Path(str(parsed.database)).stem if is_sqlite else str(parsed.database or "nt8bridge")
        # microseconds in the name: two runs in one second (a catch-up after a misfire) never collide
        suffix = ".sqlite" if is_sqlite else ".dump"
        dest = self.folder / f"{stem}-{stamp[:-1]}{int(now * 1e6) % 1_000_000:06d}Z{suffix}"
        try:
            backup_file = backup_bundle(self.url, dest, self.audit)
        except StorageError as exc:
            proof = Proof("", False, f"backup failed: {exc}", stamp, {})
        else:
            ok, reason, details = prove(backup_file, self.url, self.verifier)
            proof = Proof(backup_file.name, ok, reason, stamp, details)
        deleted = tuple(apply_retention(self.folder, self.keep, also_proven=proof.backup if proof.ok else None))
        proof = Proof(proof.backup, proof.ok, proof.reason, proof.at_utc, proof.details, deleted)
        with (self.folder / PROOFS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(proof)) + "\n")
        if proof.ok:
            log.info("backup %s of %s: PROVEN", proof.backup, safe_url(self.url))
        else:
            log.error("backup %s of %s: NOT PROVEN: %s", proof.backup or "(none)", safe_url(self.url), proof.reason)
        if self.on_proof is not None:
            self.on_proof(proof)
        return proof

    def serve(self, trigger: Any) -> None:
        """Run on ``trigger`` (an apscheduler trigger) until Ctrl+C; one run at a time (a slow backup is not
        overlapped by the next, it is coalesced)."""
        import datetime as dt

        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=dt.timezone.utc)
        scheduler.add_job(self.run_once, trigger, id="backup", max_instances=1, coalesce=True,
                          misfire_grace_time=3600)
        scheduler.start()
        job = scheduler.get_job("backup")
        log.warning("proven backups of %s into %s scheduled; next run %s", safe_url(self.url), self.folder,
                    job.next_run_time if job else "?")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            scheduler.shutdown(wait=True)
