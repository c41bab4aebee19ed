"""Backups that carry what verification needs, and their restore (SQLite and PostgreSQL).

A backup is a bundle of files side by side:

* ``NAME`` - the database copy (SQLite file, or ``pg_dump -Fc`` archive), from :func:`database.backup`;
* ``NAME.audit/`` - the audit journal, the signed checkpoints and the checkpoints' public key;
* ``NAME.manifest.json`` - size and SHA-256 of every file above, the source (no password), the engine
  and the audit head the checkpoints were cut at.

The manifest is what turns "a file" into "a backup that is proven": a restore refuses a bundle whose
bytes differ from it, before touching the target. Storage is the ground floor (it may not import
``bridge.audit``): the caller (the CLI) says where the audit files live, this module only copies them.

Checkpoints are cut at the audit head the database held when the backup began: the storage writer
commits behind the chain, so a checkpoint signed after that moment may name a record the snapshot
lacks, and verification of the restored copy would (rightly) call that a truncated tail. The full
journal is kept: records it holds beyond the snapshot are stored again when a sidecar next opens the
restored database (``bridge.audit.trail.open_chain``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import URL, Connection

from bridge.core.digest import sha256_file
from bridge.storage.database import (
    SQLITE_BUSY_TIMEOUT_S,
    StorageError,
    backup,
    parse_url,
    safe_url,
    with_connection,
)
from bridge.storage.schema import audit_chain

log = logging.getLogger("nt8bridge.storage")

MANIFEST_SUFFIX = ".manifest.json"
AUDIT_SUFFIX = ".audit"
PUBLIC_KEY_NAME = "checkpoints-public-key.pem"  # the bundle's copy of the key that signed its checkpoints
MANIFEST_FORMAT = 1

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PGDUMP_MAGIC = b"PGDMP"


@dataclass(frozen=True)
class AuditFiles:
    """Where a database's audit files live (from ``bridge.audit.trail.audit_paths``)."""

    journal: Path
    checkpoints: Path
    public_key: Path | None = None


@dataclass
class RestoreResult:
    target: str  # the URL restored into, without its password
    engine: str  # "sqlite" or "postgresql"
    replaced: bool  # the target held data and --force replaced it
    audit_files: list[str] = field(default_factory=list)  # audit files put in place
    audit_dir: str | None = None
    public_key: str | None = None  # the bundle's public key, installed in audit_dir, when it carried one


def manifest_path(backup_file: Path) -> Path:
    return backup_file.with_name(backup_file.name + MANIFEST_SUFFIX)


def audit_dir_of(backup_file: Path) -> Path:
    return backup_file.with_name(backup_file.name + AUDIT_SUFFIX)


def _audit_head(url: str) -> int:
    """The highest audit seq committed in ``url`` (0 when none, or no audit table yet)."""
    def head(conn: Connection) -> int:
        if not inspect(conn).has_table(audit_chain.name):
            return 0
        return int(conn.execute(select(func.max(audit_chain.c.seq))).scalar() or 0)
    return with_connection(url, "reading the audit head before the backup", head)


def _copy_checkpoints_upto(source: Path, target: Path, head: int) -> tuple[int, int]:
    """Copy the whole checkpoint lines with ``seq <= head``; returns (kept, left out). A torn last line
    (a crash mid-write) is left out like a checkpoint beyond the head."""
    kept = dropped = 0
    with source.open("rb") as src, target.open("wb") as dst:
        for line in src:
            try:
                seq = int(json.loads(line)["seq"]) if line.endswith(b"\n") else None
            except (ValueError, KeyError, TypeError):
                seq = None
            if seq is not None and seq <= head:
                dst.write(line)
                kept += 1
            else:
                dropped += 1
    return kept, dropped


def backup_bundle(url: str, dest: Path, audit: AuditFiles | None) -> Path:
    """Back up ``url`` to ``dest`` (a file, or a folder where a time-stamped name is chosen) with its audit
    files beside it and a manifest; returns the database copy's path.

    Raises
    ------
    StorageError
        As :func:`database.backup`, or when the audit files cannot be copied.
    """
    parsed = parse_url(url)
    head = _audit_head(url)  # before the snapshot: every record up to here is in it
    db_file = backup(url, dest)
    files: dict[str, Path] = {db_file.name: db_file}
    info: dict[str, object] = {"audit_head": head}
    folder = audit_dir_of(db_file)
    try:
        if audit is not None and (audit.journal.exists() or audit.checkpoints.exists()):
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            if audit.checkpoints.exists():
                kept, dropped = _copy_checkpoints_upto(audit.checkpoints, folder / audit.checkpoints.name, head)
                info.update(checkpoints=kept, checkpoints_after_snapshot=dropped)
            if audit.journal.exists():
                # the journal is append-only: a copy while the sidecar writes ends at most in a torn line,
                # which readers skip
                shutil.copyfile(audit.journal, folder / audit.journal.name)
            if audit.public_key is not None and audit.public_key.exists():
                shutil.copyfile(audit.public_key, folder / PUBLIC_KEY_NAME)
            files.update({f"{folder.name}/{p.name}": p for p in sorted(folder.iterdir())})
        manifest = {
            "format": MANIFEST_FORMAT,
            "engine": parsed.get_backend_name(),
            "source": safe_url(parsed),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **info,
            "files": {name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for name, p in files.items()},
        }
        partial = manifest_path(db_file).with_name(manifest_path(db_file).name + ".partial")
        partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, manifest_path(db_file))
    except OSError as exc:
        raise StorageError(f"backup of {safe_url(parsed)} written to {db_file}, but its audit files or manifest "
                           f"could not be written beside it ({exc}): free space or fix permissions, then back "
                           "up again") from exc
    log.info("backup bundle %s: audit head %d, %d files", db_file, head, len(files))
    return db_file


# --------------------------------------------------------------------------- checking a bundle


def check_bundle(backup_file: Path) -> dict | None:
    """Check the backup's files against its manifest; returns the manifest (None for a bare backup file
    written before manifests existed, whose content is then checked by the engine alone).

    Raises
    ------
    StorageError
        Naming the file that is missing, truncated or changed, or the manifest that is unreadable.
    """
    if not backup_file.is_file():
        raise StorageError(f"cannot restore from {backup_file}: no such file")
    mpath = manifest_path(backup_file)
    if not mpath.exists():
        log.warning("%s has no manifest (%s): its integrity is checked by the database engine only", backup_file,
                    mpath.name)
        return None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        entries = manifest["files"]
        if not isinstance(entries, dict) or backup_file.name not in entries:
            raise ValueError(f"it does not list {backup_file.name}")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StorageError(f"the backup manifest {mpath} is damaged ({exc}): the backup cannot be trusted; use "
                           "another backup") from None
    for name, want in entries.items():
        path = backup_file.parent / name
        if not path.is_file():
            raise StorageError(f"backup {backup_file} is incomplete: {path} is missing; use another backup")
        size = path.stat().st_size
        if size != want.get("bytes") or sha256_file(path) != want.get("sha256"):
            what = (f"{size} bytes instead of {want.get('bytes')}" if size != want.get("bytes")
                    else "its SHA-256 differs")
            raise StorageError(f"backup {backup_file} is damaged: {path} does not match its manifest ({what}); "
                               "use another backup")
    return manifest


def _engine_of_file(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head.startswith(_SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(_PGDUMP_MAGIC):
        return "postgresql"
    raise StorageError(f"{path} is neither an SQLite database nor a pg_dump custom-format archive (the files "
                       "`nt8bridge db backup` writes): it is damaged or not a backup")


# --------------------------------------------------------------------------- the target


def _tables_with_rows(url: str) -> list[str]:
    """The target's tables that hold rows (empty list: nothing to lose). A missing SQLite file has none."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists():
        return []
    def busy(conn: Connection) -> list[str]:
        return [name for name in inspect(conn).get_table_names()
                if conn.exec_driver_sql(f'SELECT 1 FROM "{name}" LIMIT 1').first() is not None]
    return with_connection(url, "looking at the restore target", busy)


def restore(backup_file: Path, to_url: str, *, force: bool = False, audit_dir: Path | None = None) -> RestoreResult:
    """Restore the backup ``backup_file`` into ``to_url``, and its audit files into ``audit_dir``.

    Refuses (StorageError, nothing changed) when the target database or ``audit_dir`` holds data, unless
    ``force``: then the target is replaced (SQLite: the file; PostgreSQL: the objects of the dump, in one
    transaction) and existing audit files are moved into ``audit_dir/replaced-<time>/``.

    Parameters
    ----------
    backup_file
        The database copy written by ``nt8bridge db backup`` (its manifest and ``.audit/`` beside it).
    to_url
        Target database: an SQLite file (need not exist), or an existing PostgreSQL database.
    force
        Replace a target that holds data.
    audit_dir
        Where the target's audit journal and checkpoints belong (``audit_paths(config, to_url)``); None: the
        audit files are not restored.
    """
    backup_file = Path(backup_file)
    manifest = check_bundle(backup_file)
    kind = _engine_of_file(backup_file)
    parsed = parse_url(to_url)
    target_kind = parsed.get_backend_name()
    if kind != target_kind:
        names = {"sqlite": "an SQLite", "postgresql": "a PostgreSQL"}
        raise StorageError(f"{backup_file} is {names[kind]} backup and {safe_url(parsed)} is "
                           f"{names.get(target_kind, target_kind)} database: a backup restores into the same engine "
                           "(to move between engines, replay the recordings)")
    bundle_audit = audit_dir_of(backup_file)
    audit_sources = sorted(p for p in bundle_audit.iterdir() if p.is_file()) if bundle_audit.is_dir() else []
    if manifest is not None:  # only files the manifest vouches for
        listed = set(manifest["files"])
        audit_sources = [p for p in audit_sources if f"{bundle_audit.name}/{p.name}" in listed]

    busy = _tables_with_rows(to_url)
    existing_audit = ([p for p in audit_dir.iterdir() if p.is_file() and p.suffix == ".jsonl"]
                      if audit_dir is not None and audit_dir.is_dir() else [])
    if (busy or existing_audit) and not force:
        names = ", ".join(busy[:4]) + (", ..." if len(busy) > 4 else "")
        what = (f"{len(busy)} table{'s' if len(busy) > 1 else ''} with rows ({names})" if busy
                else f"audit files in {audit_dir}")
        raise StorageError(f"refusing to restore into {safe_url(parsed)}: it already holds {what}; pass --force "
                           "to replace it")

    if kind == "sqlite":
        _restore_sqlite(backup_file, Path(str(parsed.database)))
    else:
        _restore_postgres(backup_file, parsed, clean=bool(busy))
    result = RestoreResult(target=safe_url(parsed), engine=kind, replaced=bool(busy))
    if audit_dir is not None and audit_sources:
        _place_audit_files(audit_sources, audit_dir, existing_audit, result)
    log.info("restored %s into %s (%s)", backup_file, result.target, "replaced" if result.replaced else "new")
    return result


def _place_audit_files(sources: list[Path], audit_dir: Path, existing: list[Path], result: RestoreResult) -> None:
    audit_dir.mkdir(parents=True, exist_ok=True)
    if existing:  # kept as evidence, never deleted
        aside = audit_dir / f"replaced-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.mkdir(exist_ok=True)
        for p in existing:
            p.replace(aside / p.name)
    for src in sources:
        shutil.copyfile(src, audit_dir / src.name)
        result.audit_files.append(src.name)
    result.audit_dir = str(audit_dir)
    if (audit_dir / PUBLIC_KEY_NAME).exists():
        result.public_key = str(audit_dir / PUBLIC_KEY_NAME)


def _restore_sqlite(source: Path, target: Path) -> None:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            (verdict,) = src.execute("PRAGMA integrity_check(1)").fetchone()
            if verdict != "ok":
                raise StorageError(f"backup {source} is damaged (SQLite integrity check: {verdict}); use another "
                                   "backup")
            if not target.parent.is_dir():
                raise StorageError(f"cannot restore into {target}: the folder {target.parent} does not exist")
            partial = target.with_name(target.name + ".restore-partial")
            partial.unlink(missing_ok=True)
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = WAL")  # as the sidecar runs it
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise StorageError(f"backup {source} is not a readable SQLite database ({exc}); use another backup") from None
    try:
        # A -wal left by the replaced database would be replayed onto the restored file: remove it first.
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        os.replace(partial, target)
    except OSError as exc:
        # Windows refuses to replace or delete a file another process has open; POSIX would let a running
        # sidecar go on writing into the unlinked old file, so it must be stopped either way
        partial.unlink(missing_ok=True)
        raise StorageError(f"cannot replace {target} ({exc}): stop the sidecar or program that has it open "
                           "(nt8bridge stop), then restore again") from None


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StorageError(f"cannot restore PostgreSQL: {name} is not on PATH. Install the PostgreSQL client tools "
                           "(Debian/Ubuntu: apt install postgresql-client; Windows: the 'Command Line Tools' of the "
                           "PostgreSQL installer, then add its bin folder to PATH)")
    return found


def _restore_postgres(source: Path, url: URL, *, clean: bool) -> None:
    pg_restore = _pg_tool("pg_restore")
    listing = subprocess.run([pg_restore, "--list", str(source)], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        detail = (listing.stderr.strip() or f"exit status {listing.returncode}").splitlines()[0]
        raise StorageError(f"backup {source} is not a readable pg_dump archive ({detail}); use another backup")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    libpq_url = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    # One transaction: a failure half-way leaves the target as it was. --no-owner: the restoring role owns.
    cmd = [pg_restore, "--no-password", "--no-owner", "--single-transaction", "--exit-on-error",
           f"--dbname={libpq_url}", str(source)]
    if clean:
        cmd[1:1] = ["--clean", "--if-exists"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise StorageError(f"pg_restore into {safe_url(url)} failed, nothing was changed: {detail}",
                           transient="could not connect" in detail or "connection" in detail)
