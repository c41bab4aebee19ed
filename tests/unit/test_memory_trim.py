"""Giving memory freed after a burst back to the OS (bridge/transport/memory.py)."""

from __future__ import annotations

import os
import sys

import pytest

from bridge.transport.memory import MemoryTrimmer, _glibc_malloc_trim, resident_bytes

MB = 1 << 20


class FakeProcess:
    def __init__(self, rss: int) -> None:
        self.rss = rss
        self.trims = 0
        self.after_trim = rss

    def trim(self) -> None:
        self.trims += 1
        self.rss = self.after_trim


def test_trims_when_the_resident_size_is_beyond_the_slack_over_its_floor_and_at_most_every_interval():
    p = FakeProcess(200 * MB)
    t = MemoryTrimmer(slack_bytes=32 * MB, interval_s=5.0, rss=lambda: p.rss, trim=p.trim)
    p.rss = 220 * MB  # within the slack
    assert t.maybe_trim(100.0) is None and p.trims == 0
    p.rss, p.after_trim = 600 * MB, 230 * MB  # a burst, freed
    assert t.maybe_trim(102.0) is None and p.trims == 0  # looked at most every 5 s
    assert t.maybe_trim(105.0) == 370 * MB and p.trims == 1
    assert t.floor == 200 * MB and t.trims == 1 and t.released_bytes == 370 * MB
    p.rss, p.after_trim = 245 * MB, 205 * MB  # 45 MB over the floor, though only 15 MB over the last trim
    assert t.maybe_trim(110.0) == 40 * MB and p.trims == 2


def test_a_trim_midway_through_a_burst_does_not_raise_the_floor():
    """Trimmed while a burst is still queued, the resident size stays high; once the burst is handled and
    freed it must be trimmed again, measured from where the sidecar was before the burst."""
    p = FakeProcess(200 * MB)
    t = MemoryTrimmer(slack_bytes=32 * MB, interval_s=5.0, rss=lambda: p.rss, trim=p.trim)
    p.rss, p.after_trim = 500 * MB, 450 * MB  # still holding most of the burst
    assert t.maybe_trim(10.0) == 50 * MB
    p.rss, p.after_trim = 450 * MB, 210 * MB  # handled and freed, still resident
    assert t.maybe_trim(15.0) == 240 * MB and p.rss == 210 * MB


def test_a_trim_that_releases_little_looks_less_often_until_one_releases_again():
    p = FakeProcess(200 * MB)
    t = MemoryTrimmer(slack_bytes=32 * MB, interval_s=5.0, max_interval_s=20.0, rss=lambda: p.rss, trim=p.trim)
    p.rss = p.after_trim = 300 * MB  # all of it in use: trimming releases nothing
    looks = [now for now in range(100) if t.maybe_trim(float(now)) is not None]
    assert looks == [0, 10, 30, 50, 70, 90]  # 10, 20, then at most every 20 s
    p.after_trim = 200 * MB  # now there is something to give back
    assert t.maybe_trim(110.0) == 100 * MB
    p.rss = p.after_trim = 300 * MB
    assert t.maybe_trim(115.0) == 0  # back to every 5 s after a trim that released


def test_a_smaller_resident_size_lowers_the_floor():
    p = FakeProcess(300 * MB)
    t = MemoryTrimmer(slack_bytes=32 * MB, interval_s=1.0, rss=lambda: p.rss, trim=p.trim)
    p.rss = 200 * MB  # the allocator gave memory back by itself
    assert t.maybe_trim(10.0) is None and t.floor == 200 * MB
    p.rss = 240 * MB  # 40 MB above what it came down to: trimmed
    assert t.maybe_trim(11.0) is not None and p.trims == 1


def test_without_a_resident_size_or_a_trim_it_does_nothing():
    calls = []
    assert not MemoryTrimmer(rss=lambda: None, trim=lambda: calls.append(1)).enabled
    t = MemoryTrimmer(rss=lambda: None, trim=lambda: calls.append(1))
    assert t.maybe_trim(1e9) is None and calls == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_resident_bytes_reads_proc():
    assert resident_bytes() > 1 * MB
    assert resident_bytes(os.getpid()) > 1 * MB
    assert resident_bytes(2 ** 22 + 12345) is None  # no such process


@pytest.mark.skipif(_glibc_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_glibc_gives_back_what_a_fragmented_burst_left_freed():
    """Many small allocations freed but for one in fifty: the heap cannot shrink from its top, the free
    pages between the survivors stay resident until trimmed."""
    _glibc_malloc_trim()()  # start from a heap whose free pages are given back already
    before = resident_bytes()
    burst = [bytearray(4000) for _ in range(40_000)]  # ~160 MB through malloc (too big for pymalloc)
    survivors = burst[::50]
    del burst
    grown = resident_bytes() - before
    assert grown > 100 * MB, "the freed burst should still be resident (glibc keeps it)"
    t = MemoryTrimmer(slack_bytes=32 * MB, interval_s=0.0)
    t.floor = before
    released = t.maybe_trim(0.0)
    assert released is not None and released > grown // 2
    assert len(survivors) == 800
