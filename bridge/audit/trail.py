"""Where the sidecar's audit chain lives, how it resumes after a crash, and how a database is verified.

The chain (``bridge/audit/chain.py``) is journaled to a file before each record reaches the database
writer, so a killed process loses nothing that was appended; at start the records of the journal
that the database lacks are stored again (idempotent by ``seq``). Signed checkpoints go to a file
beside the journal, to be copied off the host.

Paths: ``audit.dir`` (default: ``<sqlite file>.audit/`` beside an SQLite database, else
``<user data>/nt8bridge/audit/<database>``) holds ``journal.jsonl`` and ``checkpoints.jsonl``;
the signing key is ``audit.key_path`` (default ``<user config>/nt8bridge/audit-ed25519.pem``) with
its public half in ``.pub`` beside it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bridge.audit.chain import (
    AuditChain,
    AuditJournal,
    AuditRecord,
    VerifyResult,
    load_public_key,
    read_checkpoints,
    verify_rows,
)
from bridge.core.config import Config, user_config_path
from bridge.storage.database import create_engine_for, default_db_url
from bridge.storage.schema import audit_chain

log = logging.getLogger("nt8bridge.audit")

BACKLOG_WAIT_S = 120.0  # how long open_chain waits for the storage writer to replay a spool left by a dead run


@dataclass(frozen=True)
class AuditPaths:
    journal: Path
    checkpoints: Path
    key: Path

    @property
    def public_key(self) -> Path:
        return Path(str(self.key) + ".pub")


def audit_paths(config: Config, db_url: str) -> AuditPaths:
    ac = config.audit
    if ac.dir:
        folder = Path(ac.dir)
    else:
        url = make_url(db_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            folder = Path(url.database + ".audit")
        else:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{url.host or 'local'}_{url.port or ''}_{url.database or ''}")
            folder = Path(default_db_url().removeprefix("sqlite:///")).parent / "audit" / name
    key = Path(ac.key_path) if ac.key_path else user_config_path().parent / "audit-ed25519.pem"
    return AuditPaths(folder / "journal.jsonl", folder / "checkpoints.jsonl", key)


def _open_journal_chain(config: Config, paths: AuditPaths) -> AuditChain:
    """The chain resumed from this sidecar's journal at ``paths`` (folders made where missing)."""
    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    paths.key.parent.mkdir(parents=True, exist_ok=True)
    ac = config.audit
    return AuditChain(paths.journal, paths.checkpoints, paths.key, checkpoint_every=ac.checkpoint_every,
                      fsync_interval_s=ac.fsync_interval_ms / 1000.0)


def journal_chain(config: Config, folder: Path) -> AuditChain:
    """A chain with no database behind it, journaled in ``folder`` with checkpoints signed by a key of its own
    there (a research run's: every record hashed, journaled and checkpointed as the sidecar's are, nothing
    stored)."""
    return _open_journal_chain(config, AuditPaths(folder / "journal.jsonl", folder / "checkpoints.jsonl",
                                                  folder / "key.pem"))


def _record_of(row) -> AuditRecord:
    """An ``audit_chain`` row (its payload stored as JSON text) as the record it was made from."""
    return AuditRecord.from_dict({**row, "payload": json.loads(row["payload"])})


def _store(sink, records: list[AuditRecord]) -> None:
    """Hand journaled records the database lacks to the storage writer."""
    for r in records:
        sink.write("audit_chain", (r.seq, r.ts_us, r.kind, r.subject_id, r.session_id, r.payload_json(),
                                   r.prev_hash, r.hash))


def open_chain(config: Config, db_url: str, sink) -> AuditChain:
    """The sidecar's chain, resumed from its journal; records the database lacks are written again, and
    records the journal lacks (the database is ahead: a power loss, or a process that died while the
    journal's disk was full and records waited in memory) are journaled again first, so the chain goes
    on from the true head and never forks."""
    paths = audit_paths(config, db_url)
    _store_backlog_first(sink)
    chain = _open_journal_chain(config, paths)
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(audit_chain.c.seq).order_by(audit_chain.c.seq.desc()).limit(1)).scalar()
            if stored is not None and stored > chain.head[0]:
                rows = conn.execute(select(audit_chain).where(audit_chain.c.seq > chain.head[0])
                                    .order_by(audit_chain.c.seq)).mappings().all()
                ahead = [_record_of(row) for row in rows]
                n = chain.catch_up(ahead)
                log.warning("audit: the database held %d records the journal %s lacked (seq %d..%d): journaled "
                            "them again, the chain goes on from seq %d", n, paths.journal, ahead[0].seq,
                            ahead[-1].seq, chain.head[0])
    except BaseException:
        chain.close()
        raise
    finally:
        engine.dispose()
    stored = stored or 0
    missing = [r for r in AuditJournal.read(paths.journal) if r.seq > stored] if paths.journal.exists() else []
    _store(sink, missing)
    if missing:
        log.warning("audit: %d records of the journal were not in the database (a crash before they were "
                    "committed): stored them now (seq %d..%d)", len(missing), missing[0].seq, missing[-1].seq)
    log.info("audit chain at seq %d, journal %s, checkpoints %s", chain.head[0], paths.journal, paths.checkpoints)
    return chain


def _store_backlog_first(sink) -> None:
    """Before the database's head is read: a storage writer that starts with a backlog (a spool left by a
    run that died while the database was away) may hold audit records the database and the journal both
    lack; it is given the time to store them, so the chain resumes from them instead of forking."""
    if getattr(sink, "state", "ok") == "ok":
        return
    from bridge.storage.database import StorageError

    try:
        sink.sync(timeout=BACKLOG_WAIT_S)
    except StorageError as exc:
        log.warning("audit: the storage backlog is not stored yet (%s); the chain resumes from its journal", exc)


def open_chain_on_database_head(config: Config, db_url: str, sink) -> AuditChain:
    """The chain of a sidecar that has just become the leader of a hot-standby pair: continued from the
    database's head, which the other sidecar was extending while this one stood by.

    The database holds the pair's one chain; each sidecar's journal is its local copy. A journal that
    already ends on the database's head is kept. Any other (behind, because the other sidecar led
    meanwhile; or ahead, holding records that this sidecar journaled when it last led and that never
    reached the database before it died) is moved aside into ``superseded/`` with its checkpoints,
    kept as evidence, and a new journal starts with the database's head record as its anchor: the
    next record chains onto it, in constant time however long the chain."""
    import time

    paths = audit_paths(config, db_url)
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(audit_chain).order_by(audit_chain.c.seq.desc()).limit(1)).mappings().first()
    finally:
        engine.dispose()
    head = None if row is None else _record_of(row)
    chain = _open_journal_chain(config, paths)
    local = chain.head
    head_seq = head.seq if head else 0
    if local == ((head.seq, head.hash) if head else (0, local[1])):
        return chain
    if local[0] > head_seq:
        # this sidecar led last and died before the database had its last records: if its journal
        # extends the database's chain, those records are stored now and the chain goes on from them
        records = AuditJournal.read(paths.journal)
        at_head = next((r for r in records if r.seq == head_seq), None)
        if head is None or (at_head is not None and at_head.hash == head.hash):
            missing = [r for r in records if r.seq > head_seq]
            _store(sink, missing)
            log.warning("audit: %d records of the journal were not in the database (this sidecar led last and "
                        "stopped before they were committed): stored them now (seq %d..%d)", len(missing),
                        head_seq + 1, local[0])
            return chain
    chain.close()
    aside = paths.journal.parent / "superseded" / time.strftime("%Y%m%dT%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    for path in (paths.journal, paths.checkpoints):
        if path.exists():
            path.replace(aside / path.name)
    if head is not None:
        paths.journal.write_bytes(head.to_line())
    if local[0] > (head.seq if head else 0):
        log.warning("audit: this sidecar's journal ended at seq %d, beyond the database's head %d: records it "
                    "journaled when it last led never reached the database; kept in %s", local[0],
                    head.seq if head else 0, aside)
    else:
        log.info("audit: journal resumed on the database's head (seq %d); the previous journal is in %s",
                 head.seq if head else 0, aside)
    return _open_journal_chain(config, paths)


def verify_database(db_url: str, checkpoints: Path | None = None, public_key: Path | None = None) -> VerifyResult:
    """Recompute the chain stored in ``audit_chain`` (and the signed checkpoints, when given)."""
    cps = read_checkpoints(checkpoints) if checkpoints is not None and checkpoints.exists() else None
    key = load_public_key(public_key) if public_key is not None and public_key.exists() else None
    engine = create_engine_for(db_url)
    cols = [audit_chain.c[name] for name in ("seq", "ts_us", "kind", "subject_id", "session_id", "payload",
                                             "prev_hash", "hash")]
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=10_000).execute(
                select(*cols).order_by(audit_chain.c.seq))
            return verify_rows((tuple(r) for r in rows), cps, key)
    finally:
        engine.dispose()
