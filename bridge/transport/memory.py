"""Giving memory freed after a burst back to the operating system.

A burst of messages (a peer sending faster than the sidecar handles them, hostile or a playback far
ahead) waits in libzmq's queues until the loop reads it; handled, it is freed. glibc keeps freed
memory in its arenas for reuse, libzmq's I/O thread's arena as well as Python's, so without help the
sidecar's resident size stays at the burst's high-water mark for the rest of its life, though
nothing holds it. ``malloc_trim(0)`` hands the free pages of every arena back (glibc 2.8 and later).

The server asks :meth:`MemoryTrimmer.maybe_trim` only when its socket had nothing to read. It looks
at the resident size at most every ``interval_s`` and trims when that is more than ``slack_bytes``
above the floor: the smallest resident size seen at start or after a trim. A trim that finds little
to release (what is resident is in use: more sessions, longer histories) doubles the time to the
next look, up to ``max_interval_s``, so a sidecar that legitimately grew does not trim in vain every
few seconds; one that releases a lot keeps looking every ``interval_s`` (a burst may still be ending).
A trim that finds little costs a fraction of a millisecond, one after a burst of a few hundred MB
about 20 ms. Where there is no glibc (Windows, macOS, musl) or no /proc, nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int | str = "self") -> int | None:
    """The resident set size of a process from /proc (Linux); None where there is none."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _glibc_malloc_trim() -> Callable[[], object] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only: musl has none
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryTrimmer:
    """Trims glibc's arenas when the resident size is more than ``slack_bytes`` above its floor."""

    def __init__(self, slack_bytes: int = 16 << 20, interval_s: float = 5.0, max_interval_s: float = 300.0,
                 rss: Callable[[], int | None] = resident_bytes,
                 trim: Callable[[], object] | None = None) -> None:
        self.slack_bytes = slack_bytes
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self._rss = rss
        self._trim = trim if trim is not None else _glibc_malloc_trim()  # None: glibc's, where there is one
        self._interval = interval_s
        self._next_check = 0.0
        self.floor = rss()  # the smallest resident size seen at start or after a trim
        self.last_rss = self.floor
        self.trims = 0
        self.released_bytes = 0

    @property
    def enabled(self) -> bool:
        return self._trim is not None and self.floor is not None

    def maybe_trim(self, now: float) -> int | None:
        """At most every look's interval (monotonic ``now``): trim if the resident size is more than the
        slack above the floor; returns the bytes released, None when it did not trim."""
        if now < self._next_check or not self.enabled:
            return None
        before = self._rss()
        if before is None or self.floor is None:
            self._next_check = now + self._interval
            return None
        self.last_rss = before
        if before - self.floor <= self.slack_bytes:
            self.floor = min(self.floor, before)
            self._interval = self.interval_s
            self._next_check = now + self._interval
            return None
        self._trim()
        after = self._rss()
        after = before if after is None else after
        released = max(0, before - after)
        self.floor = min(self.floor, after)
        self.last_rss = after
        if released < self.slack_bytes // 4:
            self._interval = min(self._interval * 2, self.max_interval_s)  # what stays resident is in use
        else:
            self._interval = self.interval_s
        self._next_check = now + self._interval
        self.trims += 1
        self.released_bytes += released
        return released
