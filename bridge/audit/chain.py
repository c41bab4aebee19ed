"""A tamper-evident, append-only audit chain: hash-chained records, a JSON-lines journal, signed checkpoints.

Self-contained: no database access (the caller hands each returned ``AuditRecord`` to the storage
writer). See ``../shared/reference/compliance.md``, "Tamper-evident audit log".

The chain
---------
Record ``i`` has ``hash_i = sha256(bytes.fromhex(hash_{i-1}) + canonical_bytes(body_i)).hexdigest()``,
with ``hash_0 = GENESIS_HASH = "00" * 32`` and ``body_i`` the record without its two hashes:
``{seq, ts_us, kind, subject_id, session_id, payload}``. ``seq`` runs 1, 2, 3, ... without gaps, so
``verify`` names the first record that was changed, deleted, inserted or moved. A chain alone does
not stop someone who rewrites it from a point on and recomputes every later hash; what catches that
is a *checkpoint*: the head ``{seq, hash, ts_us}`` signed with Ed25519, appended to a file outside
the database (copy it off the host: a checkpoint proves nothing about changes made before it was
copied, and an attacker holding the key file can forge new ones). A checkpoint beyond the last
record also reveals a truncated tail.

Canonical bytes
---------------
``canonical_bytes`` is JSON with sorted keys, separators ``(",", ":")``, ``ensure_ascii=False``,
UTF-8. Deterministic across runs and Python versions: key order never depends on insertion or
hash-seed order; ints print as decimal digits; floats print with ``float.__repr__``, the shortest
string that round-trips to the same double (Python >= 3.1 on every platform with IEEE doubles), so
``canonical_bytes(json.loads(canonical_bytes(x))) == canonical_bytes(x)`` and a record read back
from the journal or the database hashes the same as when it was written (``1.0`` stays ``1.0``,
``1`` stays ``1``). JSON has no NaN or infinity: they become ``null`` first, recursively (the C
encoder runs first with ``allow_nan=False``; only if it refuses is the value walked and cleaned, so
the common case pays nothing). Keys must be ``str`` (an ``int`` key would be sorted as an int when
written but as a string when read back, so it is refused with TypeError rather than producing a
record that no longer verifies); ``bytes`` and any other non-JSON type raise TypeError; tuples
serialise as lists (equal bytes, so equal hashes, but a record read back holds a list).

Durability (the journal)
------------------------
``AuditJournal`` is a JSON-lines file opened with ``os.open(O_WRONLY | O_APPEND | O_CREAT, 0o600)``
and written with one ``os.write`` per record, no Python buffering:

* SIGKILL, a crash or ``os._exit`` of the process: every record whose ``append`` returned is in the
  kernel's page cache and survives (it is the kernel's data now, not the process's).
* Power loss or a kernel crash: the page cache is lost. A background thread fsyncs the file every
  ``fsync_interval_s`` (default 0.2 s) when there were writes, so at most the records appended in
  the last ``fsync_interval_s`` (plus the duration of one fsync) can be lost; ``close`` fsyncs;
  ``fsync_interval_s=0`` fsyncs inside every append (durable on return, at the cost of one fsync
  per record); ``None`` starts no thread (fsync only at checkpoints and on close). A record cut by
  power loss leaves a torn last line (a prefix, or zeros on some file systems); ``read`` and
  ``verify_journal`` report it (``torn_tail``) instead of failing, and ``AuditChain`` moves it to
  ``<journal>.torn-<us>`` and truncates the journal to its last whole record when it reopens.
* Checkpoints are written only after the journal is fsynced up to the checkpointed record, and are
  fsynced themselves, so a surviving checkpoint never points past the surviving journal.
* The database may be ahead of the journal after a power loss (it commits with its own fsync):
  ``AuditChain.catch_up(records)`` re-appends such records (checked against the chain) before
  new ones are written. A journal found behind its last checkpoint refuses appends until then.

Disk full
---------
A journal write that fails for lack of room (ENOSPC, EDQUOT, EFBIG) does not break the chain:

* the file is cut back to the end of its last whole line (``AuditJournal.write``), so it never holds
  half a record (if even the cut fails, the chain halts as below and the next open moves the partial
  line aside);
* the record is chained as usual and returned (the caller hands it to the database writer), and its
  line waits in memory; later records queue behind it, in seq order, so the journal stays one chain,
  never forked, with no gap;
* the waiting lines are written, oldest first, as soon as the disk takes them: tried every 0.5 s by
  the journal's background thread (inside ``append`` when there is none), and at ``close``;
* ``disk_full``, ``disk_full_since``, ``pending_records`` tell the owner (the sidecar refuses new
  entries meanwhile and raises an alert: ``bridge.transport.storage_health``);
* checkpoints only ever cover records that are in the journal; a checkpoint that does not fit is cut
  back and tried later, with one log line;
* the bound: at most ``max_pending_records`` (100,000) records or ``max_pending_bytes`` (64 MB) wait;
  beyond it ``append`` raises AuditError without advancing the chain (that event is refused, not
  half recorded). ``close`` with records still waiting raises AuditError naming them: they are in
  the database if the writer could store them, and the journal catches up from there at the next
  start (``bridge.audit.trail.open_chain``). An fsync that fails (even with ENOSPC) still halts:
  after a failed fsync the kernel may have dropped the pages, so what the file holds is unknown.

Threads
-------
One writer thread is expected (the hot path). ``append`` takes an uncontended lock (~0.1 us), so
several threads are safe too, and the order of seq is the order of the file. The journal's
background thread fsyncs, writes checkpoints (signing ~50 us and two fsyncs stay off the hot path)
and retries the lines that wait for room. Any other failure there (EIO on fsync, an unwritable
checkpoint file) makes every later ``append`` raise AuditError: the audit trail fails closed. One
process per journal: the file is locked (``bridge.core.filelock``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import operator
import os
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.core import filelock


__all__ = [
    "GENESIS_HASH",
    "AuditChain",
    "AuditError",
    "AuditJournal",
    "AuditRecord",
    "JournalCorruptError",
    "JournalRecords",
    "VerifyResult",
    "canonical_bytes",
    "key_id_of",
    "load_public_key",
    "read_checkpoints",
    "sign_checkpoint",
    "verify",
    "verify_journal",
    "verify_rows",
]

log = logging.getLogger("nt8bridge.audit")

GENESIS_HASH = "00" * 32
_GENESIS_RAW = bytes(32)
_sha256 = hashlib.sha256

MAX_PENDING_RECORDS = 100_000
"""Records kept in memory while the journal's disk is full (with MAX_PENDING_BYTES, whichever comes first)."""
MAX_PENDING_BYTES = 64 << 20
_PENDING_RETRY_S = 0.5  # how often a full journal is tried again
_DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None)


def _is_disk_full(exc: OSError) -> bool:
    """No room: the file system is full, a quota is reached, or the file is too large."""
    return exc.errno in _DISK_FULL_ERRNOS

# --------------------------------------------------------------------------- canonical JSON


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable (audit payloads are JSON values)")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            check_circular=False, default=_default)
_encode_str: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring


def _make_fast_encoder() -> Callable[[Any], str]:
    """The C encoder built once (``json.dumps`` builds one per call: a third of its cost).

    Same object json.JSONEncoder.iterencode would build, with the same settings, so the same
    bytes; falls back to ``JSONEncoder.encode`` where the C accelerator is absent or differs."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - no C accelerator (PyPy, odd builds)
        return _ENCODER.encode
    try:
        c_encode = make(None, _default, _encode_str, None, ":", ",", True, False, False)
    except TypeError:  # pragma: no cover - a Python whose signature changed
        return _ENCODER.encode

    def encode(obj: Any) -> str:
        return "".join(c_encode(obj, 0))

    probe = {"b": [1, 2.5, -0.0, 1e22, None, True, "é\"\\\n"], "a": {"z": 1, "y": "x"}}
    if encode(probe) != _ENCODER.encode(probe):  # pragma: no cover - guard against a changed accelerator
        return _ENCODER.encode
    return encode


_encode = _make_fast_encoder()
# the containers json serialises that the key check descends into (other dict subclasses are not checked)
_CONTAINERS = frozenset({dict, list, tuple, OrderedDict, defaultdict, Counter})
_join = "".join


def _check_dict_keys(obj: dict[Any, Any]) -> None:
    """TypeError if obj or a container inside it has a non-str key. On the hot path: str.join is the
    cheapest C-level "all keys are str" test (0.3 us for a dozen keys); values are scanned once."""
    try:
        _join(obj)
    except TypeError:
        bad = next(k for k in obj if not isinstance(k, str))
        raise TypeError(f"audit JSON keys must be str, not {type(bad).__name__} ({bad!r})") from None
    for v in obj.values():
        if type(v) in _CONTAINERS:
            if isinstance(v, dict):
                _check_dict_keys(v)
            else:
                _check_list_keys(v)


def _check_list_keys(obj: list[Any] | tuple[Any, ...]) -> None:
    for v in obj:
        if type(v) in _CONTAINERS:
            if isinstance(v, dict):
                _check_dict_keys(v)
            else:
                _check_list_keys(v)


def _check_keys(obj: Any) -> None:
    """TypeError if a dict anywhere in obj has a non-str key."""
    if isinstance(obj, dict):
        _check_dict_keys(obj)
    elif isinstance(obj, (list, tuple)):
        _check_list_keys(obj)


def _finite(obj: Any) -> Any:
    """A copy of obj with every NaN or infinity (recursively) replaced by None."""
    if isinstance(obj, float):
        return obj if obj - obj == 0.0 else None  # inf - inf and nan - nan are nan
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_text(obj: Any) -> str:
    """canonical_bytes as str."""
    _check_keys(obj)
    try:
        return _encode(obj)
    except ValueError:  # a NaN or infinity somewhere (the C encoder refuses them): clean and retry
        return _encode(_finite(obj))


def canonical_bytes(record: Any) -> bytes:
    """The fixed serialisation hashed by the chain (see the module docstring).

    JSON, sorted keys, separators ``(",", ":")``, ``ensure_ascii=False``, UTF-8; NaN and +-inf become
    null, recursively; ints as ints; floats by their shortest round-trip repr; nested dicts and
    lists allowed. TypeError for bytes, non-str keys and any other non-JSON value."""
    return _json_text(record).encode("utf-8")


def _scalar_json(value: Any) -> str:
    """canonical JSON of one top-level body field (fast for the expected str / int / None)."""
    t = type(value)
    if t is str:
        return _encode_str(value)
    if t is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _json_text(value)


def _body_text(seq: Any, ts_us: Any, kind: Any, subject_id: Any, session_id: Any, payload_json: str) -> str:
    """canonical_bytes(body) as str, assembled from the fields (keys in sorted order) with the payload
    already serialised: equal to ``_json_text({... "payload": payload ...})`` (a test holds them equal)."""
    return ('{"kind":' + _scalar_json(kind) + ',"payload":' + payload_json + ',"seq":' + _scalar_json(seq)
            + ',"session_id":' + _scalar_json(session_id) + ',"subject_id":' + _scalar_json(subject_id)
            + ',"ts_us":' + _scalar_json(ts_us) + "}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


# --------------------------------------------------------------------------- the record


class AuditError(RuntimeError):
    """The audit chain cannot guarantee its trail (journal in use, write or fsync failure, behind a checkpoint)."""


class JournalCorruptError(ValueError):
    """A journal line other than the last one is not a record (the last one may be torn)."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One link of the chain. ``hash = sha256(bytes.fromhex(prev_hash) + canonical_bytes(body())).hexdigest()``."""

    seq: int
    ts_us: int  # UTC microseconds since the Unix epoch
    kind: str
    subject_id: str
    session_id: int | None
    payload: dict[str, Any]
    prev_hash: str  # hex; GENESIS_HASH for seq 1
    hash: str  # hex

    def body(self) -> dict[str, Any]:
        """The hashed fields: everything except ``prev_hash`` and ``hash``."""
        return {"seq": self.seq, "ts_us": self.ts_us, "kind": self.kind, "subject_id": self.subject_id,
                "session_id": self.session_id, "payload": self.payload}

    def compute_hash(self) -> str:
        """What ``hash`` should be, given ``prev_hash`` and the body."""
        return _sha256(bytes.fromhex(self.prev_hash) + canonical_bytes(self.body())).hexdigest()

    def payload_json(self) -> str:
        """The payload as canonical JSON text (what the ``audit_chain.payload`` column holds)."""
        return _json_text(self.payload)

    def to_dict(self) -> dict[str, Any]:
        """All fields, as in a journal line."""
        return {"seq": self.seq, "ts_us": self.ts_us, "kind": self.kind, "subject_id": self.subject_id,
                "session_id": self.session_id, "payload": self.payload, "prev_hash": self.prev_hash,
                "hash": self.hash}

    def to_line(self) -> bytes:
        """The journal line: canonical JSON of all fields, newline-terminated."""
        return canonical_bytes(self.to_dict()) + b"\n"

    def as_row(self) -> dict[str, Any]:
        """Column values for ``bridge.storage.audit_table.audit_chain_table`` (payload as canonical JSON text)."""
        row = self.to_dict()
        row["payload"] = self.payload_json()
        return row

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditRecord:
        """From a parsed journal line (KeyError when a field is missing)."""
        return cls(d["seq"], d["ts_us"], d["kind"], d["subject_id"], d["session_id"], d["payload"],
                   d["prev_hash"], d["hash"])


_RECORD_KEYS = frozenset(AuditRecord.__dataclass_fields__)


def _record_maker() -> Callable[..., AuditRecord]:
    """A constructor for the hot path: fills the slots through their descriptors (0.7 us instead of
    the frozen dataclass __init__'s 2.5 us: it calls object.__setattr__ once per field). Same object."""
    new = object.__new__
    setters = [AuditRecord.__dict__[name].__set__ for name in AuditRecord.__dataclass_fields__]
    s0, s1, s2, s3, s4, s5, s6, s7 = setters

    def make(seq: int, ts_us: int, kind: str, subject_id: str, session_id: int | None, payload: dict[str, Any],
             prev_hash: str, hash_hex: str) -> AuditRecord:
        r = new(AuditRecord)
        s0(r, seq), s1(r, ts_us), s2(r, kind), s3(r, subject_id)
        s4(r, session_id), s5(r, payload), s6(r, prev_hash), s7(r, hash_hex)
        return r

    return make


_make_record = _record_maker()
_BODY_KEYS = _RECORD_KEYS - {"prev_hash", "hash"}


# --------------------------------------------------------------------------- the journal


class JournalRecords(list):  # type: ignore[type-arg]
    """``AuditJournal.read``'s answer: the records, plus what was found after the last whole one."""

    torn_tail: bool = False  # the last line was not a whole record (a write cut by power loss)
    torn_bytes: bytes = b""  # that line's bytes
    valid_length: int = 0  # byte length of the journal up to and including the last whole record


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """A line as a dict, or None when it is not a JSON object (torn by power loss, zeros, garbage)."""
    try:
        d = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return d if isinstance(d, dict) else None


def _record_dict(line: bytes, where: str) -> dict[str, Any] | None:
    """A journal line as a record dict; None when it is not a JSON object (a torn write, if it is
    the last line); JournalCorruptError for a JSON object that does not have exactly the record's fields
    (a write is never cut into a whole JSON object, so that is not a torn line)."""
    d = _parse_line(line)
    if d is not None and d.keys() != _RECORD_KEYS:
        raise JournalCorruptError(f"{where}: not a record (fields {sorted(d)})")
    return d


def _split_lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(end offset, line without newline, newline-terminated) for each line of data."""
    start, n = 0, len(data)
    while start < n:
        nl = data.find(b"\n", start)
        if nl < 0:
            yield n, data[start:], False
            return
        yield nl + 1, data[start:nl], True
        start = nl + 1


class AuditJournal:
    """An append-only JSON-lines file: one ``os.write`` per record, fsynced by a background thread.

    ``write(line)`` is the low-level append (the line must end with a newline); ``AuditChain`` builds
    the bytes. See the module docstring for what survives a SIGKILL and what a power loss.
    """

    def __init__(self, path: str | os.PathLike[str], fsync_interval_s: float | None = 0.2, *,
                 on_tick: Callable[[], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None, start: bool = True) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(self.path, flags, 0o600)
        try:
            filelock.lock(self._fd)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise AuditError(f"audit journal {self.path} is open in another writer") from None
        self.fsync_interval_s = fsync_interval_s
        self._sync_each = fsync_interval_s is not None and fsync_interval_s <= 0
        self._dirty = False
        self.failed: BaseException | None = None
        self.size = os.fstat(self._fd).st_size  # bytes up to the end of the last whole write
        self.torn = False  # a failed write could not be cut back: the file ends in a partial line
        self._on_tick = on_tick
        self._on_error = on_error
        self._closing = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start the background fsync thread (when ``fsync_interval_s`` > 0; done by __init__ unless start=False)."""
        if self._thread is None and self.fsync_interval_s is not None and self.fsync_interval_s > 0:
            self._thread = threading.Thread(target=self._run, name=f"audit-fsync:{self.path.name}", daemon=True)
            self._thread.start()

    # -- writing

    def write(self, line: bytes) -> None:
        """Append whole record lines. In the page cache (SIGKILL-safe) when this returns.

        A write that fails (a full disk, ENOSPC, often after writing part of the line) is cut back to
        the end of the last whole line before the OSError is raised, so the file never ends in half a
        record; if even that fails, ``torn`` is set (the next open moves the partial line aside)."""
        fd = self._fd
        if fd is None:
            raise AuditError(f"audit journal {self.path} is closed")
        before = self.size
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write (signal, nearly full disk): O_APPEND keeps it contiguous
                written += os.write(fd, line[written:])
        except OSError:
            try:
                os.ftruncate(fd, before)  # shrinking needs no space
            except OSError:
                self.torn = True
                log.exception("audit journal %s: a failed write could not be cut back to %d bytes", self.path, before)
            raise
        self.size = before + len(line)
        if self._sync_each:
            os.fsync(fd)
        else:
            self._dirty = True

    def fsync(self) -> None:
        """Flush the file to stable storage now."""
        fd = self._fd
        if fd is not None:
            self._dirty = False  # cleared before the fsync: a write racing with it sets it again
            os.fsync(fd)

    def wake(self) -> None:
        """Run the background tick now (used to request a checkpoint)."""
        self._wake.set()

    def truncate(self, length: int) -> None:
        """Cut the file to ``length`` bytes and fsync (only for removing a torn tail at open)."""
        assert self._fd is not None
        os.ftruncate(self._fd, length)
        os.fsync(self._fd)
        self.size = length

    def _run(self) -> None:
        interval = self.fsync_interval_s
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            closing = self._closing
            try:
                if self._dirty:
                    self.fsync()
                if self._on_tick is not None and not closing:
                    self._on_tick()
            except BaseException as exc:  # noqa: BLE001 - recorded and surfaced by the appender
                log.exception("audit journal %s: background fsync/checkpoint failed", self.path)
                self.failed = exc
                if self._on_error is not None:
                    self._on_error(exc)
                return
            if closing:
                return

    def stop_background(self) -> None:
        """Stop the background thread (after its last fsync)."""
        thread = self._thread
        if thread is not None:
            self._closing = True
            self._wake.set()
            thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the thread, fsync, close. Idempotent."""
        self.stop_background()
        fd = self._fd
        if fd is not None:
            try:
                os.fsync(fd)
                filelock.unlock(fd)
            finally:
                self._fd = None
                os.close(fd)

    def __enter__(self) -> AuditJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    @staticmethod
    def read(path: str | os.PathLike[str]) -> JournalRecords:
        """Every whole record of the journal, in file order. A last line that is not a whole record
        (torn by power loss) is reported in ``torn_tail`` / ``torn_bytes``, not raised; a bad line
        before the last raises JournalCorruptError. A complete last record missing only its
        newline counts as whole. Records are returned as written; ``verify`` checks them."""
        data = Path(path).read_bytes()
        out = JournalRecords()
        pending: tuple[int, bytes] | None = None  # a bad line: torn if it turns out to be the last
        for end, line, _terminated in _split_lines(data):
            if pending is not None:
                raise JournalCorruptError(f"{path}: line {len(out) + 1} (byte {pending[0]}) is not a record")
            d = _record_dict(line, f"{path}: line {len(out) + 1}")
            if d is None:
                pending = (out.valid_length, line)
                continue
            out.append(AuditRecord.from_dict(d))
            out.valid_length = end
        if pending is not None:
            out.torn_tail = True
            out.torn_bytes = data[pending[0]:]
        return out


def _tail_record(path: Path) -> tuple[dict[str, Any] | None, int, bytes, bool]:
    """The journal's last whole record without reading the whole file.

    Returns (record dict or None, valid length, torn bytes, the record lacks its newline)."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return None, 0, b"", False
    chunk = 1 << 16
    with path.open("rb") as f:
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start)
            # the lines wholly inside the chunk (the first is partial unless the chunk starts the file)
            lines = list(_split_lines(data))
            if start > 0:
                lines = lines[1:]
            if start > 0 and len(lines) < 2:
                chunk *= 4
                continue
            if not lines:
                return None, 0, data, False
            end, line, terminated = lines[-1]
            d = _record_dict(line, f"{path}: last line")
            if d is not None:
                return d, start + end, b"", not terminated
            torn_from = start + end - len(line) - (1 if terminated else 0)
            torn = data[torn_from - start:]
            if len(lines) == 1:
                if start == 0:
                    return None, 0, torn, False
                chunk *= 4
                continue
            end2, line2, _ = lines[-2]
            d = _record_dict(line2, f"{path}: line before the last")
            if d is None:
                raise JournalCorruptError(f"{path}: the last two lines are not records (not a torn tail)")
            return d, start + end2, torn, False


# --------------------------------------------------------------------------- keys and checkpoints


def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519  # cryptography: only for checkpoints

    return ed25519


def _raw_public(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if isinstance(public_key, (bytes, bytearray)):
        data = bytes(public_key)
        if data.lstrip().startswith(b"-----BEGIN"):
            public_key = serialization.load_pem_public_key(data)
        elif len(data) == 32:
            return data
        else:
            raise ValueError("public key: expected 32 raw bytes or PEM")
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[no-any-return]


def key_id_of(public_key: Any) -> str:
    """First 16 hex chars of sha256(raw 32-byte Ed25519 public key); accepts raw, PEM or a key object."""
    return _sha256(_raw_public(public_key)).hexdigest()[:16]


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The raw 32-byte public key from a ``.pub`` file (PEM, as written by AuditChain, or raw)."""
    return _raw_public(Path(path).read_bytes())


def _load_or_create_key(key_path: Path) -> Any:
    """The Ed25519 private key at key_path (PEM or 32 raw bytes), created 0o600 on first use; the
    public key (PEM) is (re)written to ``<key_path>.pub``."""
    ed = _ed25519()
    from cryptography.hazmat.primitives import serialization

    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        key = ed.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        except FileExistsError:  # created meanwhile by another process: use that one
            return _load_or_create_key(key_path)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, ed.Ed25519PrivateKey):
                raise ValueError(f"{key_path}: not an Ed25519 private key")
        elif len(data) == 32:
            key = ed.Ed25519PrivateKey.from_private_bytes(data)
        else:
            raise ValueError(f"{key_path}: expected an Ed25519 private key (PEM or 32 raw bytes)")
        if hasattr(os, "getuid") and key_path.stat().st_mode & 0o077:
            log.warning("audit signing key %s is readable by group/others; chmod 600 it", key_path)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path = Path(str(key_path) + ".pub")
    if not pub_path.exists() or pub_path.read_bytes() != pub_pem:
        tmp = pub_path.with_name(pub_path.name + ".tmp")
        tmp.write_bytes(pub_pem)
        os.replace(tmp, pub_path)
    return key


def _checkpoint_message(seq: int, hash_hex: str, ts_us: int) -> bytes:
    return canonical_bytes({"seq": seq, "hash": hash_hex, "ts_us": ts_us})


def sign_checkpoint(private_key: Any, seq: int, hash_hex: str, ts_us: int) -> dict[str, Any]:
    """A checkpoint dict ``{seq, hash, ts_us, key_id, signature}``: Ed25519 over
    ``canonical_bytes({seq, hash, ts_us})``, signature in hex."""
    signature = private_key.sign(_checkpoint_message(seq, hash_hex, ts_us)).hex()
    return {"seq": seq, "hash": hash_hex, "ts_us": ts_us, "key_id": key_id_of(private_key.public_key()),
            "signature": signature}


def _read_checkpoint_file(path: Path) -> tuple[list[dict[str, Any]], int, bytes]:
    """(checkpoints, byte length up to the last whole one, torn last line or b"")."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, b""
    out: list[dict[str, Any]] = []
    valid = 0
    lines = list(_split_lines(data))
    for i, (end, line, _term) in enumerate(lines):
        d = _parse_line(line)
        if d is None:
            if i == len(lines) - 1:
                return out, valid, data[valid:]
            raise JournalCorruptError(f"{path}: checkpoint line {i + 1} is not JSON")
        out.append(d)
        valid = end
    return out, valid, b""


def read_checkpoints(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The checkpoint file's lines as dicts (a torn last line is skipped; a missing file is empty)."""
    checkpoints, _valid, torn = _read_checkpoint_file(Path(path))
    if torn:
        log.warning("%s: torn last checkpoint line ignored", path)
    return checkpoints


def _move_torn_tail(path: Path, torn: bytes) -> Path:
    """Save a torn last line next to its file (``<name>.torn-<us>``, fsynced) before it is cut off."""
    aside = path.with_name(f"{path.name}.torn-{time.time_ns() // 1000}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        os.write(fd, torn)
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("%s: torn last line (%d bytes, a write cut by a crash or power loss) moved to %s",
                path, len(torn), aside)
    return aside


# --------------------------------------------------------------------------- the chain


class AuditChain:
    """Appends hash-chained records to a journal and signs periodic checkpoints.

    On open it resumes from the journal's last record (head seq and hash), so the chain continues
    across restarts. ``append`` returns the record for the caller to hand to the database writer.
    Checkpoints: every ``checkpoint_every`` records or ``checkpoint_interval_s`` seconds (when the
    head moved) and on close, written by the journal's background thread (synchronously, inside
    ``append``, when ``fsync_interval_s`` is None or 0).
    """

    def __init__(self, journal_path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str],
                 key_path: str | os.PathLike[str], checkpoint_every: int = 1000,
                 checkpoint_interval_s: float = 60, *, fsync_interval_s: float | None = 0.2,
                 max_pending_records: int = MAX_PENDING_RECORDS, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        # Disk full: records whose journal line could not be written wait here, in order, and are
        # written (before any newer one) when space returns; see "Disk full" in the module docstring.
        self.max_pending_records = max_pending_records
        self.max_pending_bytes = max_pending_bytes
        self._pending: deque[tuple[int, str, bytes]] = deque()  # (seq, hash, journal line)
        self._pending_bytes = 0
        self.disk_full_since: float | None = None  # Unix seconds; None while the journal is writable
        self.disk_full_error: str | None = None
        self.disk_full_episodes = 0
        self._pending_next_try = 0.0
        self._cp_disk_full = False
        self.journal_path = Path(journal_path)
        self.checkpoint_path = Path(checkpoint_path)
        self.key_path = Path(key_path)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self._key = _load_or_create_key(self.key_path)
        self.key_id = key_id_of(self._key.public_key())
        self._lock = threading.Lock()
        self._halt: str | None = None  # why appends are refused (set from any thread)
        self.torn_tail_moved_to: Path | None = None

        self._behind: str | None = None  # set while the journal is behind its last checkpoint
        self._cp_lock = threading.Lock()
        self._journal = AuditJournal(self.journal_path, fsync_interval_s, on_tick=self._tick,
                                     on_error=self._on_background_error, start=False)
        try:
            self._resume()
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
            self._cp_fd: int | None = os.open(self.checkpoint_path, flags, 0o600)
        except BaseException:
            self._journal.close()
            raise
        self._cp_seq = self._last_cp[0] if self._last_cp else 0
        self._cp_time = time.monotonic()
        self._cp_next_seq = self._seq + checkpoint_every
        self._cp_next_time = self._cp_time + checkpoint_interval_s
        self._cp_requested = False
        self._sync_checkpoints = fsync_interval_s is None or fsync_interval_s <= 0
        if self._behind is None and self._seq > self._cp_seq:
            # records a previous process wrote after its last checkpoint (it crashed or was killed)
            self._checkpoint_head()
        self._journal.start()  # after the resume, which may have truncated a torn tail

    # -- open

    def _resume(self) -> None:
        head, valid_length, torn, needs_newline = _tail_record(self.journal_path)
        if torn:
            self.torn_tail_moved_to = _move_torn_tail(self.journal_path, torn)
            self._journal.truncate(valid_length)
        if needs_newline:
            self._journal.write(b"\n")
            self._journal.fsync()
        if head is None:
            self._seq, self._hash = 0, GENESIS_HASH
        else:
            rec = AuditRecord.from_dict(head)
            if not isinstance(rec.seq, int) or not isinstance(rec.hash, str) or rec.compute_hash() != rec.hash:
                raise AuditError(f"{self.journal_path}: the last record (seq {rec.seq!r}) does not verify; "
                                 "run verify_journal before appending")
            self._seq, self._hash = rec.seq, rec.hash
        self._hash_raw = bytes.fromhex(self._hash)
        self._head = (self._seq, self._hash)
        self._journaled = self._head  # the last record whose line is in the journal
        cps, valid_length, torn = _read_checkpoint_file(self.checkpoint_path)
        if torn:  # a checkpoint cut by power loss: the next one must start on a line of its own
            _move_torn_tail(self.checkpoint_path, torn)
            fd = os.open(self.checkpoint_path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
            try:
                os.ftruncate(fd, valid_length)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._last_cp: tuple[int, str] | None = (cps[-1]["seq"], cps[-1]["hash"]) if cps else None
        self._check_behind()

    def _check_behind(self) -> None:
        cp = self._last_cp
        if cp is None:
            return
        if cp[0] > self._seq:
            self._behind = (f"journal {self.journal_path} ends at seq {self._seq} but a checkpoint covers seq "
                            f"{cp[0]}: records were lost or removed; catch_up() with them (e.g. from the database)")
        elif cp[0] == self._seq and cp[1] != self._hash:
            raise AuditError(f"{self.journal_path}: record {cp[0]} differs from its signed checkpoint")
        else:
            self._behind = None

    # -- the hot path

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record (0 and GENESIS_HASH when empty)."""
        return self._head

    @property
    def disk_full(self) -> bool:
        """Records are waiting in memory for room in the journal (appends go on, in order)."""
        return bool(self._pending)

    @property
    def pending_records(self) -> int:
        """Records chained but not yet in the journal (the disk was full)."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def journaled_seq(self) -> int:
        """seq of the last record whose line is in the journal."""
        return self._journaled[0]

    def append(self, kind: str, subject_id: str, session_id: int | None, payload: dict[str, Any],
               ts_us: int | None = None) -> AuditRecord:
        """Chain one record, write its journal line, return it. TypeError for bad field types or a
        payload that is not JSON (see canonical_bytes); AuditError when the trail is broken.

        The record holds the caller's payload dict itself (no copy, on the hot path): do not mutate
        it afterwards, or that in-memory record no longer matches its hash (the journal line does)."""
        if ts_us is None:
            ts_us = time.time_ns() // 1000
        elif type(ts_us) is not int:
            ts_us = _as_int("ts_us", ts_us)
        if type(kind) is not str or type(subject_id) is not str:
            raise TypeError("kind and subject_id must be str")
        if session_id is None:
            sid = "null"
        else:
            if type(session_id) is not int:
                session_id = _as_int("session_id", session_id)
            sid = str(session_id)
        if not isinstance(payload, dict):
            raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
        _check_dict_keys(payload)
        try:
            pj = _encode(payload)
        except ValueError:
            payload = _finite(payload)
            pj = _encode(payload)
        # canonical JSON assembled by hand, keys in sorted order (hash, kind, payload, prev_hash, seq,
        # session_id, subject_id, ts_us); ints are exact ints here, so f-strings print them as json does
        head = f'"kind":{_encode_str(kind)},"payload":{pj}'
        sj = _encode_str(subject_id)
        with self._lock:
            if self._halt is not None or self._behind is not None:
                raise AuditError(self._halt or self._behind)
            pending = self._pending
            if pending and (len(pending) >= self.max_pending_records or self._pending_bytes >= self.max_pending_bytes):
                self._retry_pending()
                if pending and (len(pending) >= self.max_pending_records
                                or self._pending_bytes >= self.max_pending_bytes):
                    raise AuditError(self._over_bound())
            seq = self._seq + 1
            prev = self._hash
            tail = f',"seq":{seq},"session_id":{sid},"subject_id":{sj},"ts_us":{ts_us}}}'
            digest = _sha256(self._hash_raw + f"{{{head}{tail}".encode()).digest()
            h = digest.hex()
            line = f'{{"hash":"{h}",{head},"prev_hash":"{prev}"{tail}\n'.encode()
            if pending:
                # behind a full disk: in memory, after the records already waiting (the chain is one line)
                pending.append((seq, h, line))
                self._pending_bytes += len(line)
                if self._sync_checkpoints and time.monotonic() >= self._pending_next_try:
                    self._retry_pending()  # no background thread to do it
            else:
                try:
                    self._journal.write(line)
                except OSError as exc:
                    if not _is_disk_full(exc) or self._journal.torn:
                        self._halt = f"audit journal write failed ({exc!r}); reopen the chain"
                        raise
                    self._enter_disk_full(exc, seq, h, line)  # the file was cut back to its last whole line
                except BaseException as exc:
                    # a failed or partial write may have left half a line: no further appends until reopened
                    self._halt = f"audit journal write failed ({exc!r}); reopen the chain"
                    raise
                else:
                    self._journaled = (seq, h)
            self._seq, self._hash, self._hash_raw = seq, h, digest
            self._head = (seq, h)
            if seq >= self._cp_next_seq:
                self._cp_next_seq = seq + self.checkpoint_every
                self._request_checkpoint()
            elif self._sync_checkpoints and time.monotonic() >= self._cp_next_time:
                self._request_checkpoint()
        return _make_record(seq, ts_us, kind, subject_id, session_id, payload, prev, h)

    def catch_up(self, records: Iterable[AuditRecord]) -> int:
        """Re-append records the journal lost (e.g. read back from the database after a power loss).

        Records at or below the head are skipped; the others must continue the chain exactly
        (seq, prev_hash and hash checked): ValueError otherwise. Returns how many were appended."""
        n = 0
        with self._lock:
            if self._halt is not None:
                raise AuditError(self._halt)
            if self._pending:
                raise AuditError(f"{len(self._pending)} records wait for room in the journal; catch_up after they "
                                 "are written")
            for r in records:
                if r.seq <= self._seq:
                    continue
                if r.seq != self._seq + 1 or r.prev_hash != self._hash or r.compute_hash() != r.hash:
                    raise ValueError(f"record {r.seq} does not continue the chain at seq {self._seq}")
                self._journal.write(r.to_line())
                self._seq, self._hash, self._hash_raw = r.seq, r.hash, bytes.fromhex(r.hash)
                self._head = self._journaled = (r.seq, r.hash)
                n += 1
            self._journal.fsync()
            if self._behind is not None:
                self._check_behind()
                if self._behind is None:
                    log.info("audit chain %s caught up to seq %d", self.journal_path, self._seq)
        return n

    # -- disk full

    def _enter_disk_full(self, exc: OSError, seq: int, h: str, line: bytes) -> None:
        """The journal's disk is full: keep ``line`` in memory, first of the records that wait (under the lock)."""
        self._pending.append((seq, h, line))
        self._pending_bytes += len(line)
        self.disk_full_since = time.time()
        self.disk_full_error = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
        self.disk_full_episodes += 1
        self._pending_next_try = time.monotonic() + _PENDING_RETRY_S
        log.error("AUDIT JOURNAL DISK FULL: %s cannot be written (%s) from seq %d; records are kept in memory, in "
                  "order (at most %d records or %d MB), and written when space returns: free space on that disk",
                  self.journal_path, self.disk_full_error, seq, self.max_pending_records,
                  self.max_pending_bytes >> 20)

    def _retry_pending(self) -> None:
        """Write the records waiting for room, oldest first, as far as the disk allows (under the lock)."""
        pending = self._pending
        self._pending_next_try = time.monotonic() + _PENDING_RETRY_S
        journal = self._journal
        while pending:
            chunk, n, size = [], 0, 0
            for _seq, _h, line in pending:  # a few hundred KB per write: a short write wastes little
                chunk.append(line)
                n += 1
                size += len(line)
                if size >= 256 << 10:
                    break
            try:
                journal.write(b"".join(chunk))
            except OSError as exc:
                if not _is_disk_full(exc) or journal.torn:
                    self._halt = f"audit journal write failed ({exc!r}); reopen the chain"
                    log.error("audit journal %s: %s; appends refused until the chain is reopened", self.journal_path,
                              self._halt)
                return  # still full: cut back to the last whole line by the journal; try again later
            for _ in range(n):
                seq, h, _line = pending.popleft()
            self._pending_bytes -= size
            self._journaled = (seq, h)
        took = time.time() - (self.disk_full_since or time.time())
        log.warning("audit journal %s is writable again after %.1fs: the records kept in memory are written, up to "
                    "seq %d", self.journal_path, took, self._journaled[0])
        self.disk_full_since = None
        self.disk_full_error = None
        if self._sync_checkpoints:
            self._journal.fsync()

    def _over_bound(self) -> str:
        took = time.time() - (self.disk_full_since or time.time())
        return (f"audit journal {self.journal_path}: the disk has been full for {took:.0f}s and {len(self._pending)} "
                f"records ({self._pending_bytes >> 20} MB) wait in memory, the most that is kept: this record is "
                "refused; free space on that disk")

    # -- checkpoints

    def _request_checkpoint(self) -> None:
        if self._sync_checkpoints:
            self._checkpoint_head()
        else:
            self._cp_requested = True
            self._journal.wake()

    def _tick(self) -> None:
        """Background thread: write what waits for room in the journal; checkpoint when requested, or when
        the interval passed with new records."""
        if self._pending and time.monotonic() >= self._pending_next_try:
            with self._lock:
                self._retry_pending()
        seq = self._journaled[0]
        if seq > self._cp_seq and (self._cp_requested or seq - self._cp_seq >= self.checkpoint_every
                                   or time.monotonic() - self._cp_time >= self.checkpoint_interval_s):
            self._cp_requested = False
            self._checkpoint_head()

    def _checkpoint_head(self) -> None:
        with self._cp_lock:  # the background thread and close()/checkpoint() may both get here
            seq, h = self._journaled  # read once: a consistent pair; never a record still waiting in memory
            fd = self._cp_fd
            if seq <= self._cp_seq or fd is None:
                return
            self._journal.fsync()  # the checkpointed record (and all before it) are durable first
            cp = sign_checkpoint(self._key, seq, h, time.time_ns() // 1000)
            line = canonical_bytes(cp) + b"\n"
            before = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                while written < len(line):
                    written += os.write(fd, line[written:])
            except OSError as exc:
                if not _is_disk_full(exc):
                    raise
                os.ftruncate(fd, before)  # never half a checkpoint; the next one is tried later
                if not self._cp_disk_full:
                    self._cp_disk_full = True
                    log.error("audit checkpoint file %s: the disk is full (%s); the checkpoint of seq %d is skipped "
                              "and retried later: free space on that disk", self.checkpoint_path, exc, seq)
                self._cp_time = time.monotonic()
                self._cp_next_time = self._cp_time + self.checkpoint_interval_s
                return
            os.fsync(fd)
            if self._cp_disk_full:
                self._cp_disk_full = False
                log.warning("audit checkpoint file %s is writable again (checkpoint of seq %d written)",
                            self.checkpoint_path, seq)
            self._cp_seq, self._cp_time = seq, time.monotonic()
            self._cp_next_time = self._cp_time + self.checkpoint_interval_s
            self._last_cp = (seq, h)

    def checkpoint(self) -> None:
        """Write a checkpoint of the current head now (no-op when the head is already checkpointed)."""
        with self._lock:
            self._checkpoint_head()

    def _on_background_error(self, exc: BaseException) -> None:
        self._halt = f"audit journal background fsync/checkpoint failed: {exc!r}"

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key that verifies this chain's checkpoints."""
        return _raw_public(self._key.public_key())

    def close(self) -> None:
        """Stop the background thread, write a final checkpoint, fsync and close. Idempotent."""
        if self._cp_fd is None:
            return
        unwritten: tuple[int, int, int] | None = None
        try:
            self._journal.stop_background()
            if self._halt is None and self._behind is None:
                with self._lock:
                    if self._pending:
                        self._retry_pending()
                    if self._pending:
                        unwritten = (len(self._pending), self._pending[0][0], self._pending[-1][0])
                    self._checkpoint_head()
        finally:
            fd, self._cp_fd = self._cp_fd, None
            try:
                self._journal.close()
            finally:
                os.close(fd)
        if self._journal.failed is not None:
            raise AuditError(f"audit journal background work failed: {self._journal.failed!r}")
        if unwritten is not None:
            raise AuditError(f"audit journal {self.journal_path}: the disk is still full; {unwritten[0]} records (seq "
                             f"{unwritten[1]}..{unwritten[2]}) are not in it. They were handed to the database "
                             "writer: free space and start again, and the journal catches up from the database")

    def __enter__(self) -> AuditChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyResult:
    """Outcome of ``verify``. ``first_bad_seq`` is the first chain position (seq) that is not backed by
    the right record (a changed, missing, inserted or moved record, or the first seq missing from a
    truncated tail); None when ok or when only a checkpoint's signature is bad. ``records`` counts
    the records that verified before the first failure (all of them when ok)."""

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    checkpoints_verified: int
    torn_tail: bool = False  # verify_journal: the journal's last line was torn and ignored


def _prepare_checkpoints(checkpoints: list[dict[str, Any]], public_key: Any) -> tuple[list[tuple[int, str]], str | None]:
    """Check each checkpoint's form, key and signature; return [(seq, hash)] sorted, or a failure reason."""
    expected_kid = None
    pub = None
    if public_key is not None:
        raw = _raw_public(public_key)
        expected_kid = _sha256(raw).hexdigest()[:16]
        pub = _ed25519().Ed25519PublicKey.from_public_bytes(raw)
    out: list[tuple[int, str]] = []
    for i, cp in enumerate(checkpoints, 1):
        try:
            seq, h, ts_us, kid, sig = cp["seq"], cp["hash"], cp["ts_us"], cp["key_id"], cp["signature"]
        except (KeyError, TypeError):
            return [], f"checkpoint {i}: malformed ({cp!r})"
        if type(seq) is not int or seq < 1 or not isinstance(h, str) or type(ts_us) is not int:
            return [], f"checkpoint {i}: malformed ({cp!r})"
        if pub is not None:
            if kid != expected_kid:
                return [], f"checkpoint {i} (seq {seq}): signed by key {kid}, not by the given public key {expected_kid}"
            try:
                pub.verify(bytes.fromhex(sig), _checkpoint_message(seq, h, ts_us))
            except Exception:  # InvalidSignature, or a signature that is not hex
                return [], f"checkpoint {i} (seq {seq}): signature does not verify"
        out.append((seq, h))
    out.sort()
    return out, None


# (seq, prev_hash, hash, body): body is the canonical body bytes to hash; None when the row is not a
# record (the reason is then in the hash slot); _HASH_CHECKED when the producer already found
# sha256(bytes.fromhex(prev_hash) + body) == hash (the stream still checks seq and prev_hash)
_HASH_CHECKED: Any = object()
_Row = tuple[Any, Any, Any, Any]


def _verify_stream(items: Iterable[_Row], checkpoints: list[dict[str, Any]] | None, public_key: Any,
                   torn_tail: Callable[[], bool] = lambda: False) -> VerifyResult:
    cps, problem = _prepare_checkpoints(checkpoints or [], public_key)
    if problem is not None:
        return VerifyResult(False, 0, None, problem, 0)
    n_cp = len(cps)
    ci = 0
    next_cp = cps[0][0] if cps else 0
    verified_cp = 0
    expected = 1
    prev_hex, prev_raw = GENESIS_HASH, _GENESIS_RAW
    sha = _sha256

    def fail(reason: str) -> VerifyResult:
        return VerifyResult(False, expected - 1, expected, reason, verified_cp, torn_tail())

    for seq, prev_hash, h, body in items:
        if body is None:
            return fail(f"record {expected}: {h}")
        if seq != expected:
            if type(seq) is int and seq > expected:
                return fail(f"record {expected}: missing (found seq {seq} in its place)")
            return fail(f"record {expected}: found seq {seq!r} in its place (duplicate or out of order)")
        if prev_hash != prev_hex:
            before = "the genesis hash" if expected == 1 else f"the hash of record {expected - 1}"
            return fail(f"record {expected}: prev_hash does not match {before} (a record deleted, inserted or changed)")
        if body is _HASH_CHECKED:
            digest = bytes.fromhex(h)
        else:
            digest = sha(prev_raw + body).digest()
            if digest.hex() != h:
                return fail(f"record {expected}: hash does not match its contents")
        while expected == next_cp:
            if cps[ci][1] != h:
                return fail(f"record {expected}: hash differs from the signed checkpoint at seq {expected} "
                            "(the chain was rewritten at or before this record)")
            verified_cp += 1
            ci += 1
            next_cp = cps[ci][0] if ci < n_cp else 0
        prev_hex, prev_raw = h, digest
        expected += 1
    last = expected - 1
    if ci < n_cp:
        return VerifyResult(False, last, last + 1,
                            f"log ends at seq {last} but a signed checkpoint covers seq {cps[-1][0]}: "
                            f"records {last + 1}..{cps[-1][0]} missing (tail truncated)", verified_cp, torn_tail())
    reason = f"{last} records verified"
    if cps:
        reason += f"; {verified_cp} checkpoints verified" + (
            "" if public_key is not None else " (hashes only: no public key, signatures NOT checked)")
    if torn_tail():
        reason += "; torn last line ignored"
    return VerifyResult(True, last, None, reason, verified_cp, torn_tail())


def _rows_of_tuples(rows: Iterable[tuple[Any, ...]]) -> Iterator[_Row]:
    body_text, payload_text = _body_text, _json_text
    for seq, ts_us, kind, subject_id, session_id, payload, prev_hash, h in rows:
        try:
            pj = payload if type(payload) is str else payload_text(payload)
            body = body_text(seq, ts_us, kind, subject_id, session_id, pj).encode("utf-8")
        except (TypeError, ValueError) as exc:
            yield seq, prev_hash, f"not serialisable ({exc})", None
            continue
        yield seq, prev_hash, h, body


def verify_rows(rows: Iterable[tuple[Any, ...]], checkpoints: list[dict[str, Any]] | None = None,
                public_key: Any = None) -> VerifyResult:
    """``verify`` over tuples ``(seq, ts_us, kind, subject_id, session_id, payload, prev_hash, hash)``
    (the ``audit_chain`` column order), streamed. ``payload`` is a dict, or the canonical JSON text
    stored in the database: text is hashed as it is, so any byte change in it is reported."""
    return _verify_stream(_rows_of_tuples(rows), checkpoints, public_key)


def verify(records: Iterable[AuditRecord], checkpoints: list[dict[str, Any]] | None = None,
           public_key: Any = None) -> VerifyResult:
    """Recompute the chain from genesis over the records in the order given.

    Detects a changed field or payload (hash mismatch), a deleted, inserted or reordered record
    (seq or prev_hash mismatch), a checkpoint whose hash differs from the record at its seq, a
    truncated tail (a checkpoint beyond the last record), and, with ``public_key`` (raw 32 bytes,
    PEM, or a key object), a checkpoint not signed by that key. Stops at and names the first bad
    record. Without ``public_key`` checkpoints are matched by hash only."""
    return verify_rows(((r.seq, r.ts_us, r.kind, r.subject_id, r.session_id, r.payload, r.prev_hash, r.hash)
                        for r in records), checkpoints, public_key)


def verify_journal(journal_path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str] | None = None,
                   public_key: Any = None) -> VerifyResult:
    """``verify`` straight from a journal file, streamed, without building record objects.

    A torn last line is ignored and reported (``torn_tail``); any other line that is not a whole
    record fails verification at its position.

    Fast path (no JSON parsing, ~4x faster): a line as the chain writes it is
    ``{"hash":"H",`` + X + ``,"prev_hash":"P"`` + Y + newline, where ``{`` + X + Y is the canonical
    body (the top-level ``,"prev_hash":"`` is the last one in the line: the fields after it are
    numbers, null or a string, and a JSON string cannot hold an unescaped quote). If
    ``sha256(P + body) == H``, the line is, byte for byte, what was hashed at append time. Any line
    that does not pass is re-checked by content (parsed and re-serialised canonically), so a line
    re-encoded without a change of content still verifies and a changed one is named."""
    checkpoints = read_checkpoints(checkpoint_path) if checkpoint_path is not None else None
    state = {"torn": False}
    encode = _encode
    sha = _sha256
    fromhex = bytes.fromhex
    checked = _HASH_CHECKED

    def rows() -> Iterator[_Row]:
        with open(journal_path, "rb") as f:
            it = iter(f)
            for line in it:
                if line[:9] == b'{"hash":"' and line[73:75] == b'",' and line[-2:] == b"}\n":
                    i = line.rfind(b',"prev_hash":"')
                    if i > 75 and line[i + 78:i + 86] == b'","seq":':
                        tail = line[i + 79:-1]
                        h = line[9:73].decode("ascii", "replace")
                        p = line[i + 14:i + 78].decode("ascii", "replace")
                        try:
                            ok = sha(fromhex(p) + b"{" + line[75:i] + tail).hexdigest() == h
                            seq = int(tail[7:tail.index(b",", 7)]) if ok else None
                        except ValueError:
                            ok = False
                        if ok:
                            yield seq, p, h, checked
                            continue
                try:
                    d = json.loads(line)
                except ValueError:
                    d = None
                if type(d) is not dict:
                    if next(it, None) is None:  # the last line: a write torn by a crash or power loss
                        state["torn"] = True
                        return
                    yield None, None, "journal line is not JSON", None
                    return
                try:
                    h = d.pop("hash")
                    p = d.pop("prev_hash")
                    if d.keys() != _BODY_KEYS:  # a missing or an extra field
                        raise KeyError(sorted(d))
                    yield d["seq"], p, h, encode(d).encode("utf-8")
                except (ValueError, KeyError, TypeError) as exc:
                    yield d.get("seq"), None, f"journal line is not a well-formed record ({exc!r})", None
                    return

    return _verify_stream(rows(), checkpoints, public_key, lambda: state["torn"])
