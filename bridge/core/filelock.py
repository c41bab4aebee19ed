"""One writer process per file (the audit journal, the storage spool): an exclusive, non-blocking lock on the open file.

POSIX: ``flock`` on the whole file (advisory; readers are unaffected). Windows: ``msvcrt.locking``
on one byte. A Windows byte-range lock is mandatory: no other handle may read the bytes it covers,
not even one of the same process. The journal is read while it is locked (the chain reads its tail
through a second handle when it resumes, ``nt8bridge audit verify`` reads it whole), so the locked
byte lies far beyond any journal's end, never on data (SQLite locks a byte past its data for the
same reason). A lock beyond the end of a file is allowed (LockFileEx), and the Universal CRT's
``_locking`` locks at the 64-bit file position (ucrt/lowio/locking.cpp: ``_lseeki64_nolock``).
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # Windows: msvcrt instead
    fcntl = None  # type: ignore[assignment]

__all__ = ["WINDOWS_LOCK_OFFSET", "lock", "lock_kind", "unlock"]

# 1 TiB: no journal reaches it, and it is within every NTFS volume's file-size range
WINDOWS_LOCK_OFFSET = 1 << 40


def lock_kind() -> str:
    """How this platform locks a journal: ``"msvcrt"`` (Windows), ``"flock"`` (POSIX) or ``"none"``."""
    if os.name == "nt":
        return "msvcrt"
    return "flock" if fcntl is not None else "none"


def lock(fd: int) -> None:
    """Take the journal's lock without waiting; OSError when another open file holds it."""
    kind = lock_kind()
    if kind == "msvcrt":
        _windows_region(fd, release=False)
    elif kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def unlock(fd: int) -> None:
    """Release the lock before the file is closed (Windows asks for it; POSIX drops it at close anyway)."""
    kind = lock_kind()
    if kind == "msvcrt":
        _windows_region(fd, release=True)
    elif kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_UN)


def _windows_region(fd: int, *, release: bool) -> None:
    """Lock (not waiting) or unlock the one byte at WINDOWS_LOCK_OFFSET; the file position is put back."""
    import msvcrt

    where = os.lseek(fd, 0, os.SEEK_CUR)
    os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_UNLCK if release else msvcrt.LK_NBLCK, 1)
    finally:
        os.lseek(fd, where, os.SEEK_SET)
