"""The audit chain when its journal's disk is full: no half line in the file, no record lost, one chain.

The full disk is simulated here by failing the journal's writes with ENOSPC after writing part of the
line, as a real file system does when the last free block is taken; tests/integration/
test_storage_faults.py does the same on a real, small, full file system.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

import bridge.audit.chain as chain_module
from bridge.audit.chain import AuditChain, AuditError, AuditJournal, read_checkpoints, verify_journal


class _FullDisk:
    """Stands in for the ``os`` module inside bridge/audit/chain.py: while ``full``, a write to the journal
    puts a few bytes down and then fails with ENOSPC, as a file system that just ran out of blocks."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.full = False
        self.failed_writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.full and os.path.realpath(f"/proc/self/fd/{fd}") == str(self.journal.resolve()):
            self.failed_writes += 1
            if len(data) > 10:
                os.write(fd, bytes(data[:7]))  # part of the line reached the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _FullDisk:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell the journal's writes from the others")
    fake = _FullDisk(tmp_path / "journal.jsonl")
    monkeypatch.setattr(chain_module, "os", fake)
    return fake


def _chain(tmp_path: Path, **kw: Any) -> AuditChain:
    kw.setdefault("fsync_interval_s", 0.02)
    return AuditChain(tmp_path / "journal.jsonl", tmp_path / "checkpoints.jsonl", tmp_path / "key.pem",
                      checkpoint_every=5, **kw)


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30  # only so that a broken chain cannot hang the suite
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def _whole_lines(path: Path) -> bool:
    data = path.read_bytes()
    return data.endswith(b"\n") or not data


@pytest.mark.parametrize("fsync_interval_s", [0.02, None])  # a background thread retries, or append does
def test_records_wait_in_memory_in_order_and_are_journaled_when_space_returns(
        tmp_path: Path, disk: _FullDisk, caplog: pytest.LogCaptureFixture, fsync_interval_s: float | None) -> None:
    caplog.set_level(logging.WARNING, logger="nt8bridge.audit")
    chain = _chain(tmp_path, fsync_interval_s=fsync_interval_s)
    for i in range(7):
        chain.append("decision", f"D{i}", 1, {"i": i})
    disk.full = True
    during = [chain.append("decision", f"D{i}", 1, {"i": i}) for i in range(7, 20)]
    assert chain.disk_full and chain.pending_records == 13 and chain.journaled_seq == 7
    assert chain.disk_full_since is not None and "ENOSPC" in (chain.disk_full_error or "")
    assert [r.seq for r in during] == list(range(8, 21)) and chain.head == (20, during[-1].hash)
    assert _whole_lines(disk.journal)  # the partial line was cut back
    assert len(AuditJournal.read(disk.journal)) == 7
    cps = read_checkpoints(tmp_path / "checkpoints.jsonl")
    assert all(cp["seq"] <= 7 for cp in cps)  # a checkpoint never covers a record that is only in memory
    assert any("AUDIT JOURNAL DISK FULL" in r.getMessage() for r in caplog.records)

    disk.full = False
    chain.append("decision", "D20", 1, {"i": 20})  # with no background thread, a later append writes them
    if fsync_interval_s is None:
        time.sleep(chain_module._PENDING_RETRY_S)
        chain.append("decision", "D21", 1, {"i": 21})
    _until(lambda: not chain.disk_full, "the waiting records are journaled")
    assert chain.disk_full_since is None
    assert any("writable again" in r.getMessage() for r in caplog.records)
    chain.close()
    result = verify_journal(disk.journal, tmp_path / "checkpoints.jsonl", chain.public_key)
    assert result.ok and not result.torn_tail, result.reason
    assert result.records == chain.head[0]
    assert [r.payload["i"] for r in AuditJournal.read(disk.journal)] == list(range(chain.head[0]))


def test_the_memory_bound_refuses_a_record_without_advancing_the_chain(tmp_path: Path, disk: _FullDisk) -> None:
    chain = _chain(tmp_path, max_pending_records=3)
    chain.append("k", "s", None, {"n": 0})
    disk.full = True
    for n in range(1, 4):
        chain.append("k", "s", None, {"n": n})
    with pytest.raises(AuditError, match="the most that is kept: this record is refused; free space"):
        chain.append("k", "s", None, {"n": 99})
    assert chain.head[0] == 4 and chain.pending_records == 3
    disk.full = False
    chain.append("k", "s", None, {"n": 4})
    _until(lambda: not chain.disk_full, "the waiting records are journaled")
    chain.close()
    assert [r.payload["n"] for r in AuditJournal.read(disk.journal)] == [0, 1, 2, 3, 4]
    assert verify_journal(disk.journal).ok


def test_closing_while_still_full_says_which_records_are_not_in_the_journal(tmp_path: Path, disk: _FullDisk) -> None:
    chain = _chain(tmp_path)
    chain.append("k", "s", None, {"n": 0})
    disk.full = True
    chain.append("k", "s", None, {"n": 1})
    chain.append("k", "s", None, {"n": 2})
    with pytest.raises(AuditError, match=r"2 records \(seq 2\.\.3\) are not in it"):
        chain.close()
    disk.full = False
    assert _whole_lines(disk.journal) and verify_journal(disk.journal).ok
    again = _chain(tmp_path)  # resumes from what the journal holds; bridge.audit.trail catches up the rest
    assert again.head[0] == 1
    again.close()


def test_a_write_error_other_than_a_full_disk_still_halts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = _chain(tmp_path)
    chain.append("k", "s", None, {"n": 0})

    class _Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def write(self, fd: int, data: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(chain_module, "os", _Broken())
    with pytest.raises(OSError):
        chain.append("k", "s", None, {"n": 1})
    monkeypatch.undo()
    with pytest.raises(AuditError, match="reopen the chain"):
        chain.append("k", "s", None, {"n": 1})
    chain.close()
