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

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bridge.audit.chain import AuditChain, AuditJournal, VerifyResult, load_public_key, read_checkpoints, verify_rows
from bridge.core.config import Config, user_config_path
from bridge.storage.database import create_engine_for, default_db_url
from bridge.storage.schema import audit_chain

log = logging.getLogger("nt8bridge.audit")


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


def open_chain(config: Config, db_url: str, sink) -> AuditChain:
    """The sidecar's chain, resumed from its journal; records the database lacks are written again."""
    paths = audit_paths(config, db_url)
    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    paths.key.parent.mkdir(parents=True, exist_ok=True)
    ac = config.audit
    chain = AuditChain(paths.journal, paths.checkpoints, paths.key, checkpoint_every=ac.checkpoint_every,
                       fsync_interval_s=ac.fsync_interval_ms / 1000.0)
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(audit_chain.c.seq).order_by(audit_chain.c.seq.desc()).limit(1)).scalar()
    finally:
        engine.dispose()
    stored = stored or 0
    missing = [r for r in AuditJournal.read(paths.journal) if r.seq > stored] if paths.journal.exists() else []
    for r in missing:
        sink.write("audit_chain", (r.seq, r.ts_us, r.kind, r.subject_id, r.session_id, r.payload_json(),
                                   r.prev_hash, r.hash))
    if missing:
        log.warning("audit: %d records of the journal were not in the database (a crash before they were "
                    "committed): stored them now (seq %d..%d)", len(missing), missing[0].seq, missing[-1].seq)
    log.info("audit chain at seq %d, journal %s, checkpoints %s", chain.head[0], paths.journal, paths.checkpoints)
    return chain


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
