"""The storage writer's local spool: an append-only file of framed, checksummed records.

While the database is unreachable the writer thread appends what the hot path hands over to this
file instead of holding it in memory, so the queue keeps draining and the hot path never waits on
an outage; when the database is back the file is replayed in order and emptied once every record
in it is committed (``bridge.storage.writer``).

The file
--------
A sequence of frames, each ``magic "NTSP" | kind (1 byte) | rows (u32) | length (u32) | crc32 (u32)``
(little endian, 17 bytes) followed by ``length`` bytes of payload; the CRC-32 covers the first 13
header bytes and the payload, so a damaged length is caught as surely as a damaged payload. The
first frame of a file is a header (kind ``H``, JSON: format and the identity of the database the
rows belong to), every other one an item (kind ``I``: one writer queue item, pickled as plain data).
Appends are one ``os.write`` of whole frames followed by ``fsync``: a record is durable when
``append`` returns.

What can go wrong, and what is done
-----------------------------------
* Power loss or a crash in the middle of an append leaves a torn last frame (a prefix, or zeros on
  some file systems). Opening the spool checks every frame: from the first bad one, the bytes are
  moved aside to ``<spool>.torn-<us>`` (kept for inspection, fsynced) and the file is cut back to
  its last whole frame, with a warning that says so; a half frame is never replayed. Whole frames
  found after a bad stretch (damage in the middle, not a torn tail) are kept: only the bad bytes
  are moved aside, and the warning says it was not a torn tail.
* A full disk (ENOSPC, EDQUOT, EFBIG) during an append: the file is truncated back to its last whole
  frame, so it is never left half written, and :class:`SpoolDiskFull` is raised; the caller keeps
  the records in memory and tries again later.
* Two sidecars on one spool: the file is locked (``flock`` on POSIX, ``msvcrt`` on Windows) while a
  writer holds it; a second one takes ``<spool>.1`` (up to ``.7``) instead, with a warning
  (``open_spool``): the two of a hot-standby pair on one host need not be configured apart, and a
  spool left by a killed one is replayed by whichever next takes it.
* A spool left by a run against another database: the header names the database; opening it for
  another one is refused with a message saying which, so rows are never replayed into the wrong
  database.

Pickle is used for its speed (a 2,000-row batch in about 0.6 ms, a third of JSON's time), restricted
both ways: values that are not plain data (None, bool, int, float, str, bytes, tuples, lists, dicts)
are written as plain ints, floats or strings (an ``IntEnum`` as its int; anything else as its
``str``), and reading refuses every global except the three builtins that rebuild those, so a
tampered spool cannot run code.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import mmap
import os
import pickle
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.core import filelock
from bridge.storage.database import StorageError


log = logging.getLogger("nt8bridge.storage")

__all__ = ["DISK_FULL_ERRNOS", "Spool", "SpoolDiskFull", "SpoolInUse", "SpoolRecord", "decode", "encode",
           "is_disk_full", "open_spool"]

MAGIC = b"NTSP"
_HEAD = struct.Struct("<4sBIII")  # magic, kind, rows, payload length, crc32 of (first 13 bytes + payload)
HEAD_SIZE = _HEAD.size
_KIND_HEADER = ord("H")
_KIND_ITEM = ord("I")
MAX_PAYLOAD = 1 << 30  # a length beyond this is damage, not a record
FORMAT = 1

DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None)
"""The errors that mean "no room": the file system is full, a quota is reached, or the file is too large."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the disk, a quota or a file-size limit is full."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


class SpoolInUse(StorageError):
    """Another process holds the spool file."""


class SpoolDiskFull(StorageError):
    """An append did not fit on the disk; the spool was cut back to its last whole record."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message, transient=True)
        self.errno = errno_


# --------------------------------------------------------------------------- plain-data pickling


class _PlainPickler(pickle.Pickler):
    """Writes subclasses of int, float and str as the plain type, and anything that is not plain
    data as its str(): a spool never needs an import to be read back."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, bool) or obj is int or obj is float or obj is str:  # the three rebuilders themselves
            return NotImplemented
        if isinstance(obj, int):
            return int, (int(obj),)
        if isinstance(obj, float):
            return float, (float(obj),)
        if isinstance(obj, str):
            return str, (str(obj),)
        if isinstance(obj, (bytes, bytearray, tuple, list, dict)) or obj is None:
            return NotImplemented
        return str, (str(obj),)


_ALLOWED_GLOBALS = frozenset({("builtins", "int"), ("builtins", "float"), ("builtins", "str")})


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a spool record may not refer to {module}.{name}")


def encode(obj: Any) -> bytes:
    """``obj`` (plain data) as the payload of a spool record."""
    buf = io.BytesIO()
    _PlainPickler(buf, protocol=5).dump(obj)
    return buf.getvalue()


def decode(payload: bytes) -> Any:
    """The object :func:`encode` wrote; refuses anything but plain data."""
    return _PlainUnpickler(io.BytesIO(payload)).load()


# --------------------------------------------------------------------------- frames


def _frame(kind: int, rows: int, payload: bytes) -> bytes:
    head = struct.pack("<4sBII", MAGIC, kind, rows, len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def _frame_at(data: Any, offset: int, end: int) -> tuple[int, int, int] | None:
    """(kind, rows, frame end) of a whole, valid frame at ``offset`` of ``data``; None when there is none."""
    if end - offset < HEAD_SIZE:
        return None
    magic, kind, rows, length, crc = _HEAD.unpack_from(data, offset)
    if magic != MAGIC or kind not in (_KIND_HEADER, _KIND_ITEM) or length > MAX_PAYLOAD:
        return None
    stop = offset + HEAD_SIZE + length
    if stop > end:
        return None
    body = data[offset + HEAD_SIZE:stop]
    if zlib.crc32(body, zlib.crc32(data[offset:offset + 13])) != crc:
        return None
    return kind, rows, stop


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One item read back: its payload, its row count, and the offset just past it."""

    payload: bytes
    rows: int
    end: int


# --------------------------------------------------------------------------- the spool


class Spool:
    """The spool file, opened (and locked) for one writer.

    Parameters
    ----------
    path
        The file; its folder is created when missing.
    identity
        The database the rows are for (a URL without its password): written in the header of a new
        file, and checked against the header of an existing one.

    Raises
    ------
    StorageError
        When another process holds the file, when it belongs to another database, or when it
        cannot be opened (with what to do).

    Notes
    -----
    Not thread-safe: the writer thread is its only user once opened. ``pending_rows`` and
    ``size`` may be read from any thread (each is one attribute read).
    """

    def __init__(self, path: str | os.PathLike[str], identity: str) -> None:
        self.path = Path(path)
        self.identity = identity
        self.moved_aside: list[Path] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the storage spool {self.path}: {exc.strerror}; make its folder "
                               "writable or set storage.spool_path elsewhere") from exc
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            raise SpoolInUse(f"the storage spool {self.path} is in use by another nt8bridge process; give this "
                             "one its own (storage.spool_path) or stop the other") from None
        self._fd: int | None = fd
        self.size = 0  # bytes of whole frames in the file
        self.read_offset = 0  # the first record not yet consumed
        self.pending_rows = 0  # rows in the records from read_offset on
        self.pending_records = 0
        try:
            self._open_existing()
        except BaseException:
            self.close(remove_if_empty=False)
            raise
        self.resumed_rows = self.pending_rows  # what a previous run left to replay
        self.resumed_end = self.size

    # ------------------------------------------------------------------ opening

    def _open_existing(self) -> None:
        good = self._scan_file(repair=True)
        if not good:
            return
        fd = self._fd
        assert fd is not None
        if good[0][0] != _KIND_HEADER:
            # the header is lost: the frames after it cannot be attributed to a database; keep them aside
            with open(self.path, "rb") as f:
                data = f.read()
            aside = self._set_aside(b"".join(data[s:e] for _k, s, e, _r in good), "headless")
            os.ftruncate(fd, 0)
            os.fsync(fd)
            log.error("storage spool %s had no header: its %d records were moved to %s and are not replayed (which "
                      "database they belong to is unknown)", self.path, len(good), aside)
            return
        with open(self.path, "rb") as f:
            f.seek(good[0][1] + HEAD_SIZE)
            header = self._header(f.read(good[0][2] - good[0][1] - HEAD_SIZE))
        if header.get("database") != self.identity:
            raise StorageError(
                f"the storage spool {self.path} holds rows for {header.get('database')!r}, not for "
                f"{self.identity!r}: start the sidecar with that database once so they are stored, or move "
                "the file aside (its rows would otherwise be lost)")
        items = good[1:]
        if any(kind != _KIND_ITEM for kind, _s, _e, _r in items):
            raise StorageError(f"the storage spool {self.path} has more than one header: it was not written by "
                               "nt8bridge; move it aside")
        self.size = good[-1][2]
        self.read_offset = good[0][2]
        self.pending_records = len(items)
        self.pending_rows = sum(rows for _kind, _start, _end, rows in items)

    def _scan_file(self, *, repair: bool) -> list[tuple[int, int, int, int]]:
        """The whole frames of the file; with ``repair``, bad bytes are moved aside first (then rescanned)."""
        fd = self._fd
        assert fd is not None
        size = os.fstat(fd).st_size
        if size == 0:
            return []
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as data:
            good, bad = _scan(data, size)
            if not bad:
                return good
            if not repair:
                raise StorageError(f"the storage spool {self.path} is still damaged after its repair; move it aside")
            tmp = self._move_aside(data, good, bad, size)
        if tmp is not None:
            self._swap_in(tmp)
        return self._scan_file(repair=False)

    def _header(self, payload: bytes) -> dict[str, Any]:
        try:
            header = json.loads(payload)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise StorageError(f"the storage spool {self.path} has a header this nt8bridge does not know "
                               f"({payload[:80]!r}): it was written by another version; move it aside")
        return header

    def _move_aside(self, data: Any, good: list[tuple[int, int, int, int]], bad: list[tuple[int, int]],
                    size: int) -> Path | None:
        """Save the bad bytes beside the spool. A torn tail is cut off here; for damage in the middle the
        whole frames are copied to a new file, returned for the caller to swap in once ``data`` is unmapped."""
        fd = self._fd
        assert fd is not None
        tail_only = len(bad) == 1 and bad[0][1] == size
        aside = self._set_aside(b"".join(data[s:e] for s, e in bad), "torn" if tail_only else "damaged")
        n_bad = sum(e - s for s, e in bad)
        if tail_only:
            os.ftruncate(fd, bad[0][0])
            os.fsync(fd)
            log.warning("storage spool %s: torn last record (%d bytes, a write cut by a crash or power loss) moved "
                        "to %s; the %d whole records before it are kept and will be replayed", self.path, n_bad,
                        aside, max(0, len(good) - 1))
            return None
        tmp = self.path.with_name(self.path.name + ".rewrite")
        with open(tmp, "wb") as out:
            for _kind, start, end, _rows in good:
                out.write(data[start:end])
            out.flush()
            os.fsync(out.fileno())
        log.error("storage spool %s was damaged, not just torn at its end: %d bad bytes in %d place(s) moved to %s; "
                  "the %d whole records are kept and will be replayed; the rows in the bad bytes are lost to the "
                  "database (check the disk)", self.path, n_bad, len(bad), aside, max(0, len(good) - 1))
        return tmp

    def _swap_in(self, tmp: Path) -> None:
        """Replace the spool with ``tmp`` and hold the lock on the new file."""
        fd = self._fd
        assert fd is not None
        # closed first: Windows cannot replace a file that is open
        _unlock(fd)
        os.close(fd)
        self._fd = None
        os.replace(tmp, self.path)
        new_fd = os.open(self.path, os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            _lock(new_fd)
        except OSError:
            os.close(new_fd)
            raise StorageError(f"the storage spool {self.path} was taken by another process while it was being "
                               "repaired; stop the other one") from None
        self._fd = new_fd

    def _set_aside(self, data: bytes, why: str) -> Path:
        aside = self.path.with_name(f"{self.path.name}.{why}-{time.time_ns() // 1000}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.moved_aside.append(aside)
        return aside

    # ------------------------------------------------------------------ writing

    def append(self, records: list[tuple[int, bytes]]) -> None:
        """Append ``(rows, payload)`` records, durably (written and fsynced) when this returns.

        Raises
        ------
        SpoolDiskFull
            When the disk (or a quota, or the file-size limit) is full: the file is cut back to its
            last whole record first, and nothing of this call is in it.
        StorageError
            For any other write failure (the same cut-back is attempted).
        """
        fd = self._fd
        if fd is None:
            raise StorageError(f"the storage spool {self.path} is closed")
        if not records:
            return
        parts = []
        first = 0  # where the first item starts: after the header of a new file
        if self.size == 0:
            header = {"format": FORMAT, "database": self.identity, "created_ns": time.time_ns()}
            parts.append(_frame(_KIND_HEADER, 0, json.dumps(header, sort_keys=True).encode()))
            first = len(parts[0])
        parts.extend(_frame(_KIND_ITEM, rows, payload) for rows, payload in records)
        data = b"".join(parts)
        before = self.size
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):  # a short write (nearly full disk, a signal): keep going, O_APPEND
                written += os.write(fd, view[written:])
            os.fsync(fd)
        except OSError as exc:
            self._cut_back(before)
            full = exc.errno in DISK_FULL_ERRNOS
            what = "the disk is full" if full else exc.strerror or type(exc).__name__
            message = (f"cannot append to the storage spool {self.path}: {what} ({len(records)} record(s) kept in "
                       "memory); free space on that disk" + ("" if full else " or check it"))
            if full:
                raise SpoolDiskFull(message, exc.errno) from exc
            raise StorageError(message, transient=True) from exc
        self.size = before + len(data)
        if first:
            self.read_offset = first
        self.pending_records += len(records)
        self.pending_rows += sum(rows for rows, _payload in records)

    def _cut_back(self, length: int) -> None:
        fd = self._fd
        assert fd is not None
        try:
            os.ftruncate(fd, length)  # shrinking needs no space
            os.fsync(fd)
        except OSError:  # pragma: no cover - cannot even truncate: the next open moves the torn bytes aside
            log.exception("storage spool %s: could not cut a failed append back to %d bytes; the torn bytes will "
                          "be moved aside when the spool is next opened", self.path, length)

    # ------------------------------------------------------------------ reading

    def read(self, max_rows: int, max_bytes: int = 64 << 20) -> list[SpoolRecord]:
        """The next records from ``read_offset`` (at least one when any is left), up to ``max_rows`` rows
        and ``max_bytes``; they stay pending until :meth:`consumed`."""
        fd = self._fd
        if fd is None:
            raise StorageError(f"the storage spool {self.path} is closed")
        out: list[SpoolRecord] = []
        offset, rows = self.read_offset, 0
        while offset < self.size and (not out or (rows < max_rows and offset - self.read_offset < max_bytes)):
            head = os.pread(fd, HEAD_SIZE, offset)
            magic, kind, n, length, crc = _HEAD.unpack(head)
            if magic != MAGIC or kind != _KIND_ITEM or offset + HEAD_SIZE + length > self.size:
                raise StorageError(f"the storage spool {self.path} changed under the writer at byte {offset}: "
                                   "another program wrote to it; stop the sidecar and move the file aside")
            payload = os.pread(fd, length, offset + HEAD_SIZE)
            if zlib.crc32(payload, zlib.crc32(head[:13])) != crc:
                raise StorageError(f"the storage spool {self.path} has a bad record at byte {offset} that was whole "
                                   "when written: the disk is failing, or another program wrote to it")
            offset += HEAD_SIZE + length
            rows += n
            out.append(SpoolRecord(payload, n, offset))
        return out

    def consumed(self, record: SpoolRecord) -> None:
        """``record`` (and every one before it) is committed: move past it."""
        self.read_offset = record.end
        self.pending_records -= 1
        self.pending_rows -= record.rows

    @property
    def drained(self) -> bool:
        """Every record written has been consumed."""
        return self.read_offset >= self.size

    def reset(self) -> None:
        """Empty the file (once every record in it is committed), durably."""
        fd = self._fd
        if fd is None:
            return
        os.ftruncate(fd, 0)
        os.fsync(fd)
        self.size = self.read_offset = self.pending_rows = self.pending_records = 0

    def close(self, *, remove_if_empty: bool = True) -> None:
        """Release the file; an empty spool is removed. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        remove = remove_if_empty and (self.size == 0 or self.drained)
        try:
            if remove:
                try:
                    # removed while still locked: no other process can have started using it meanwhile
                    self.path.unlink(missing_ok=True)
                    remove = False
                except OSError:  # Windows: an open file cannot be removed; done after closing it
                    pass
            _unlock(fd)
        finally:
            os.close(fd)
        if remove:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - another process took it meanwhile: it is theirs now
                pass


def open_spool(path: str | os.PathLike[str], identity: str, alternates: int = 7) -> Spool:
    """The spool at ``path``, or, when another process holds it, the first free of ``<path>.1`` ..
    ``<path>.<alternates>`` (with a warning). SpoolInUse when every one is taken."""
    path = Path(path)
    try:
        return Spool(path, identity)
    except SpoolInUse as exc:
        first = exc
    for i in range(1, alternates + 1):
        other = path.with_name(f"{path.name}.{i}")
        try:
            spool = Spool(other, identity)
        except SpoolInUse:
            continue
        log.warning("the storage spool %s is in use by another nt8bridge process (the other sidecar of a pair on this "
                    "host?): this one uses %s", path, other)
        return spool
    raise first


def _scan(data: Any, size: int) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int]]]:
    """Whole frames ``(kind, start, end, rows)`` and bad byte ranges ``(start, end)`` of a spool file.

    After a bad frame the next magic whose frame checks out is looked for, so that damage in the
    middle costs only the bad bytes; a torn tail is one bad range that ends at ``size``."""
    good: list[tuple[int, int, int, int]] = []
    bad: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        found = _frame_at(data, offset, size)
        if found is not None:
            kind, rows, end = found
            good.append((kind, offset, end, rows))
            offset = end
            continue
        start = offset
        probe = offset + 1
        while True:
            probe = data.find(MAGIC, probe)
            if probe < 0:
                offset = size
                break
            if _frame_at(data, probe, size) is not None:
                offset = probe
                break
            probe += 1
        bad.append((start, offset))
    return good, bad


def _lock(fd: int) -> None:
    """One writer per spool: the same exclusive lock as the audit journal's (bridge/core/filelock.py)."""
    filelock.lock(fd)


def _unlock(fd: int) -> None:
    try:
        filelock.unlock(fd)
    except OSError:  # pragma: no cover - closing the file drops the lock anyway
        pass
