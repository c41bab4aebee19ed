"""Versioned model artifacts on disk and in the database; one champion, any number of challengers.

A model is a directory ``<root>/<model_id>/`` holding ``model.json`` (its metadata, with the
SHA-256 of every other file), ``members/*.onnx``, ``meta.onnx``, ``reference.npz`` (the drift
reference, :class:`ml.drift.DriftReference`) and ``report.html``. The files are the source of
truth for artifacts and status: the sidecar can load the champion with no database at all. The
database rows (tables ``models`` and ``model_events``, migration 0003) make the list, promotions
and rollbacks auditable and queryable; a model directory without its row still lists (with a
warning saying how to add the row: :meth:`Registry.sync`).

Champion history is kept on disk too, in ``<root>/champions.jsonl`` (one line per change, with the
champion it replaced), so :meth:`Registry.rollback` works without the database.

Not safe for two processes changing the same registry at once (promote, rollback): one operator
tool does that; the sidecar only reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from bridge.core.digest import sha256_file  # a registry function too: artifacts are checked by it

log = logging.getLogger("nt8bridge.ml.registry")

T = TypeVar("T")

STATUSES = ("challenger", "champion", "retired")
MODEL_JSON = "model.json"
HISTORY = "champions.jsonl"
REQUIRED_METADATA = ("feature_names", "feature_set_version", "label_config", "train_start_ns", "train_end_ns",
                     "data_sha256", "code_version", "metrics")
_HOW_TO_LIST = "list the registered models with Registry(root).list()"


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says what to do."""


class UnknownModel(RegistryError, KeyError):
    """No model with that id in the registry."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class ArtifactError(RegistryError):
    """A model file is missing or its content differs from what was registered."""


class ModelExpired(RegistryError):
    """The model is past its ``expires_ns``."""


@dataclass(frozen=True)
class ModelRecord:
    """One registered model, as its ``model.json`` describes it."""

    model_id: str
    created_ns: int
    status: str
    feature_names: tuple[str, ...]
    feature_set_version: str
    label_config: dict[str, Any]
    train_start_ns: int
    train_end_ns: int
    data_sha256: str
    code_version: str
    metrics: dict[str, Any]
    expires_ns: int | None
    path: Path
    artifacts: dict[str, str] = field(default_factory=dict)
    """Relative file path -> SHA-256 of every artifact but ``model.json``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Metadata keys beyond the ones above (e.g. the resolved share of labels)."""
    in_db: bool | None = None
    """Whether the database has its row (None: no database configured)."""

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` document."""
        doc = asdict(self)
        doc.pop("path")
        doc.pop("in_db")
        doc["feature_names"] = list(self.feature_names)
        extra = doc.pop("extra")
        return {**extra, **doc}

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path, in_db: bool | None = None) -> ModelRecord:
        """Read a ``model.json`` document."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("path", "extra", "in_db")}
        extra = {k: v for k, v in doc.items() if k not in known}
        return cls(
            model_id=str(doc["model_id"]), created_ns=int(doc["created_ns"]), status=str(doc["status"]),
            feature_names=tuple(doc["feature_names"]), feature_set_version=str(doc["feature_set_version"]),
            label_config=dict(doc["label_config"]), train_start_ns=int(doc["train_start_ns"]),
            train_end_ns=int(doc["train_end_ns"]), data_sha256=str(doc["data_sha256"]),
            code_version=str(doc["code_version"]), metrics=dict(doc["metrics"]),
            expires_ns=None if doc.get("expires_ns") is None else int(doc["expires_ns"]), path=path,
            artifacts=dict(doc.get("artifacts", {})), extra=extra, in_db=in_db,
        )


def make_model_id(data_sha256: str, created_ns: int, kind: str = "ens") -> str:
    """``ens-YYYYMMDD-xxxxxxxx``: the UTC creation day and 8 hex digits of hash(data hash, time)."""
    day = dt.datetime.fromtimestamp(created_ns / 1e9, tz=dt.timezone.utc).strftime("%Y%m%d")
    tail = hashlib.sha256(f"{data_sha256}:{created_ns}".encode()).hexdigest()[:8]
    return f"{kind}-{day}-{tail}"


def iso_ns(ns: int) -> str:
    """UTC ISO-8601 of nanoseconds since the epoch, to the second."""
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


class Registry:
    """The model registry under ``root``, optionally mirrored in a database.

    Parameters
    ----------
    root
        Folder holding one sub-folder per model (created if missing).
    db_url
        Recording database (``bridge.storage.database`` URLs); upgraded to the newest schema on
        opening. None: disk only (list, load and rollback work; nothing is audited in a database).
    """

    def __init__(self, root: Path, db_url: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url
        self._engine: Engine | None = None
        if db_url is not None:
            from bridge.storage.database import create_engine_for, upgrade

            upgrade(db_url)
            self._engine = create_engine_for(db_url)

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()

    # ------------------------------------------------------------------ register

    def register(self, staging_dir: Path, metadata: dict[str, Any], now_ns: int | None = None) -> ModelRecord:
        """Copy a trained model's files into the registry as a challenger.

        Parameters
        ----------
        staging_dir
            Folder with the artifacts (``members/*.onnx``, ``meta.onnx``, ``reference.npz``,
            ``report.html``, ...); left untouched. A ``model.json`` in it is replaced.
        metadata
            :data:`REQUIRED_METADATA` plus optional ``expires_ns`` and any other JSON values.
        now_ns
            Registration time (default: now).

        Returns
        -------
        ModelRecord

        Raises
        ------
        RegistryError
            If metadata is missing, the staging folder is empty, or the id is taken.
        """
        staging_dir = Path(staging_dir)
        missing = [k for k in REQUIRED_METADATA if k not in metadata]
        if missing:
            raise RegistryError(f"cannot register {staging_dir}: metadata lacks {missing}; "
                                f"give all of {list(REQUIRED_METADATA)}")
        files = sorted(p for p in staging_dir.rglob("*") if p.is_file() and p.name != MODEL_JSON)
        if not files:
            raise RegistryError(f"cannot register {staging_dir}: it holds no artifact files (is it the right folder?)")
        created_ns = time.time_ns() if now_ns is None else int(now_ns)
        model_id = make_model_id(str(metadata["data_sha256"]), created_ns)
        final = self.root / model_id
        if final.exists():
            raise RegistryError(f"model {model_id} already exists in {self.root}; register again a moment later")
        doc = {**metadata, "model_id": model_id, "created_ns": created_ns, "status": "challenger",
               "expires_ns": metadata.get("expires_ns"),
               "artifacts": {p.relative_to(staging_dir).as_posix(): sha256_file(p) for p in files}}
        record = ModelRecord.from_json(doc, final)
        # Build the copy next to its final place, then rename: a crash leaves a .partial folder,
        # never a half-copied model under a real id.
        partial = self.root / f".{model_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staging_dir, partial, ignore=shutil.ignore_patterns(MODEL_JSON))
        _write_json_atomic(partial / MODEL_JSON, record.to_json())
        os.replace(partial, final)
        self._db_insert_model(record)
        self._db_event(model_id, "register", "registry", None, created_ns)
        log.info("registered model %s (%d files) in %s", model_id, len(files), final)
        return record

    # ------------------------------------------------------------------ read

    def list(self) -> list[ModelRecord]:
        """Every model on disk, oldest first.

        Models whose database row is missing are listed all the same (``in_db=False``) and named
        in a warning; rows without a folder are named in a warning too.
        """
        in_db = self._db_ids()
        records = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and (folder / MODEL_JSON).is_file():
                flag = None if in_db is None else folder.name in in_db
                records.append(self._read(folder, flag))
        records.sort(key=lambda r: (r.created_ns, r.model_id))
        if in_db is not None:
            on_disk = {r.model_id for r in records}
            not_in_db = sorted(on_disk - in_db)
            if not_in_db:
                log.warning("models on disk without a database row: %s (listed from disk; Registry.sync() adds "
                            "the rows)", ", ".join(not_in_db))
            not_on_disk = sorted(in_db - on_disk)
            if not_on_disk:
                log.warning("database rows without a model folder in %s: %s (not listed; restore the folders "
                            "from a backup)", self.root, ", ".join(not_on_disk))
        return records

    def get(self, model_id: str) -> ModelRecord:
        """The model's record.

        Raises
        ------
        UnknownModel
            If there is no such model folder.
        """
        folder = self.root / model_id
        if not (folder / MODEL_JSON).is_file():
            raise UnknownModel(f"no model {model_id!r} in {self.root}; {_HOW_TO_LIST}")
        ids = self._db_ids()
        return self._read(folder, None if ids is None else model_id in ids)

    def champion(self) -> ModelRecord | None:
        """The current champion, or None when none was promoted."""
        history = self._history()
        if not history:
            return None
        return self.get(history[-1]["model_id"])

    def _read(self, folder: Path, in_db: bool | None) -> ModelRecord:
        try:
            doc = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
            return ModelRecord.from_json(doc, folder, in_db)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{folder / MODEL_JSON} cannot be read ({exc}): restore the folder from a backup "
                                "or remove it and register the model again") from exc

    # ------------------------------------------------------------------ checks

    def load_checked(self, model_id: str | None = None, now_ns: int | None = None) -> ModelRecord:
        """The model (the champion by default), after checking its files and its expiry.

        Parameters
        ----------
        model_id
            None for the champion.
        now_ns
            The time expiry is judged at (default: now).

        Returns
        -------
        ModelRecord

        Raises
        ------
        RegistryError
            No champion.
        UnknownModel
            No such model.
        ArtifactError
            A file is missing or altered (named in the message).
        ModelExpired
            Past ``expires_ns``; an ``expire`` event is recorded.
        """
        if model_id is None:
            record = self.champion()
            if record is None:
                raise RegistryError(f"no champion in {self.root}: promote one with "
                                    "Registry.promote(model_id, operator, reason)")
        else:
            record = self.get(model_id)
        self.verify(record)
        now_ns = time.time_ns() if now_ns is None else int(now_ns)
        if record.expires_ns is not None and now_ns >= record.expires_ns:
            self._db_event(record.model_id, "expire", "registry", f"checked at {iso_ns(now_ns)}", now_ns)
            raise ModelExpired(f"model {record.model_id} expired at {iso_ns(record.expires_ns)} "
                               f"({(now_ns - record.expires_ns) / 3.6e12:.1f} h ago): retrain it, or promote "
                               "another model")
        return record

    def verify(self, record: ModelRecord) -> None:
        """Check every artifact's SHA-256 against ``model.json``.

        Raises
        ------
        ArtifactError
            Naming every missing or altered file.
        """
        problems = []
        for rel, expected in sorted(record.artifacts.items()):
            path = record.path / rel
            if not path.is_file():
                problems.append(f"file {path} is missing")
                continue
            actual = sha256_file(path)
            if actual != expected:
                problems.append(f"file {path} is corrupted or was changed (SHA-256 {actual[:12]}..., "
                                f"registered {expected[:12]}...)")
        if problems:
            raise ArtifactError(f"model {record.model_id}: {'; '.join(problems)}. Restore the folder from a backup, "
                                "or retrain and register a new model")

    # ------------------------------------------------------------------ champion changes

    def promote(self, model_id: str, operator: str, reason: str, now_ns: int | None = None) -> ModelRecord:
        """Make ``model_id`` the champion; the old champion is retired.

        Parameters
        ----------
        model_id
            A registered model whose files verify and that has not expired.
        operator
            Who decides (recorded); required.
        reason
            Why (recorded); required.
        now_ns
            Event time (default: now).

        Returns
        -------
        ModelRecord
            The new champion.
        """
        operator, reason = _named(operator, reason, "promote")
        now_ns = time.time_ns() if now_ns is None else int(now_ns)
        record = self.load_checked(model_id, now_ns)
        old = self.champion()
        if old is not None and old.model_id == model_id:
            raise RegistryError(f"model {model_id} is already the champion")
        self._change_champion(record, old, "promote", operator, reason, now_ns)
        return self.get(model_id)

    def rollback(self, operator: str, reason: str, now_ns: int | None = None) -> ModelRecord:
        """Bring back the champion the current one replaced; the current one is retired.

        Returns
        -------
        ModelRecord
            The restored champion.

        Raises
        ------
        RegistryError
            If there is no champion or it replaced none.
        """
        operator, reason = _named(operator, reason, "roll back")
        now_ns = time.time_ns() if now_ns is None else int(now_ns)
        history = self._history()
        if not history:
            raise RegistryError("nothing to roll back: there is no champion")
        previous = history[-1].get("previous")
        if previous is None:
            raise RegistryError(f"cannot roll back: champion {history[-1]['model_id']} did not replace another "
                                "model; promote a model instead")
        record = self.get(previous)
        self.verify(record)  # an expired previous champion may come back: it is the known-good one
        self._change_champion(record, self.get(history[-1]["model_id"]), "rollback", operator, reason, now_ns)
        return self.get(previous)

    def _change_champion(self, new: ModelRecord, old: ModelRecord | None, event: str, operator: str,
                         reason: str, now_ns: int) -> None:
        # What the restored champion had replaced, so that a second rollback goes further back.
        if event == "rollback":
            earlier = [h for h in self._history() if h["model_id"] == new.model_id]
            previous = earlier[-1].get("previous") if earlier else None
        else:
            previous = old.model_id if old else None
        if old is not None:
            self._set_status(old, "retired")
        self._set_status(new, "champion")
        line = {"model_id": new.model_id, "previous": previous, "event": event, "operator": operator,
                "reason": reason, "ts_ns": now_ns}
        with open(self.root / HISTORY, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        replaced = old.model_id if old else None
        if old is not None:
            self._db_event(old.model_id, "retire", operator, reason, now_ns, replaced)
        self._db_event(new.model_id, event, operator, reason, now_ns, replaced)
        log.warning("%s: %s is the champion (was %s), by %s: %s", event, new.model_id, replaced, operator, reason)

    def _set_status(self, record: ModelRecord, status: str) -> None:
        doc = json.loads((record.path / MODEL_JSON).read_text(encoding="utf-8"))
        doc["status"] = status
        _write_json_atomic(record.path / MODEL_JSON, doc)
        if self._engine is not None:
            from bridge.storage.schema import models

            self._write(lambda conn: conn.execute(
                models.update().where(models.c.model_id == record.model_id).values(status=status)),
                f"setting the status of {record.model_id}")

    def _history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ------------------------------------------------------------------ database

    def sync(self) -> list[str]:
        """Insert the database rows of models that are on disk but not in the database.

        Returns
        -------
        list[str]
            The ids added.
        """
        ids = self._db_ids()
        if ids is None:
            raise RegistryError("no database configured: open the registry with db_url=... to sync")
        added = []
        for record in self.list():
            if record.model_id not in ids:
                self._db_insert_model(record)
                self._db_event(record.model_id, "register", "registry", "sync: row added from disk", time.time_ns())
                added.append(record.model_id)
        return added

    def events(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Rows of ``model_events`` (all, or one model's), oldest first."""
        if self._engine is None:
            raise RegistryError("no database configured: events are recorded only with db_url=...")
        from bridge.storage.schema import model_events

        query = model_events.select().order_by(model_events.c.id)
        if model_id is not None:
            query = query.where(model_events.c.model_id == model_id)
        return self._read_db(lambda conn: [dict(row._mapping) for row in conn.execute(query)], "reading model events")

    def _db_ids(self) -> set[str] | None:
        if self._engine is None:
            return None
        from bridge.storage.schema import models

        return self._read_db(
            lambda conn: {row[0] for row in conn.execute(models.select().with_only_columns(models.c.model_id))},
            "listing models")

    def _db_insert_model(self, record: ModelRecord) -> None:
        if self._engine is None:
            return
        from bridge.storage.schema import models

        doc = record.to_json()
        row = {"model_id": record.model_id, "created_ns": record.created_ns, "status": record.status,
               "feature_set_version": record.feature_set_version,
               "feature_names": json.dumps(list(record.feature_names)),
               "label_config": json.dumps(record.label_config, sort_keys=True),
               "train_start_ns": record.train_start_ns, "train_end_ns": record.train_end_ns,
               "data_sha256": record.data_sha256, "code_version": record.code_version,
               "metrics": json.dumps(record.metrics, sort_keys=True), "expires_ns": record.expires_ns,
               "path": str(record.path), "metadata_json": json.dumps(doc, sort_keys=True)}
        self._write(lambda conn: conn.execute(models.insert(), [row]),
                    f"recording model {record.model_id} (its folder is in place; Registry.sync() adds the row later)")

    def _db_event(self, model_id: str, event: str, operator: str, reason: str | None, ts_ns: int,
                  previous_champion: str | None = None) -> None:
        if self._engine is None:
            return
        from bridge.storage.schema import model_events

        row = {"model_id": model_id, "event": event, "operator": operator, "reason": reason, "ts_ns": ts_ns,
               "previous_champion": previous_champion}
        self._write(lambda conn: conn.execute(model_events.insert(), [row]), f"recording the {event} of {model_id}")

    def _write(self, work: Callable[[Connection], object], doing: str) -> None:
        from bridge.storage.database import as_storage_error

        assert self._engine is not None and self.db_url is not None
        try:
            with self._engine.begin() as conn:
                work(conn)
        except Exception as exc:  # translated into a message that says what to do, original chained
            raise as_storage_error(self.db_url, exc, doing) from exc

    def _read_db(self, work: Callable[[Connection], T], doing: str) -> T:
        from bridge.storage.database import as_storage_error

        assert self._engine is not None and self.db_url is not None
        try:
            with self._engine.connect() as conn:
                return work(conn)
        except Exception as exc:  # translated, original chained
            raise as_storage_error(self.db_url, exc, doing) from exc


def _named(operator: str, reason: str, doing: str) -> tuple[str, str]:
    operator = (operator or "").strip()
    reason = (reason or "").strip()
    if not operator:
        raise RegistryError(f"cannot {doing} without a named operator: give the name of the person deciding")
    if not reason:
        raise RegistryError(f"cannot {doing} without a reason: say why (it is recorded in model_events)")
    return operator, reason
