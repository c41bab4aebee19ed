"""One writer process per audit journal (bridge/core/filelock.py).

The POSIX lock is tested for real across two processes. The Windows lock cannot run here: its test
replaces ``msvcrt`` with a recorder and proves only that the Windows branch is the one taken when the
platform says Windows, that it asks for a non-blocking lock of one byte far past the journal's data
(so readers of the journal are never blocked), puts the file position back, unlocks before closing,
and turns a refusal into the same error as POSIX. Whether Windows then refuses a second writer is
for a Windows run to show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from bridge.core import filelock
from bridge.audit.chain import AuditError, AuditJournal
from tests.conftest import REPO_ROOT

HOLDER = textwrap.dedent("""
    import sys
    from bridge.audit.chain import AuditJournal
    journal = AuditJournal(sys.argv[1], fsync_interval_s=None)
    journal.write(b'{"seq": 1}\\n')
    print("holding", flush=True)
    sys.stdin.readline()  # hold the journal until the test says so
    journal.close()
""")


@pytest.mark.skipif(filelock.lock_kind() != "flock", reason="the POSIX lock (flock) is what this test runs for real")
def test_a_second_process_cannot_open_a_journal_another_process_writes(tmp_path):
    path = tmp_path / "journal.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(AuditError, match=f"audit journal {path} is open in another writer"):
            AuditJournal(path, fsync_interval_s=None)
        assert path.read_bytes() == b'{"seq": 1}\n'  # a reader is not locked out
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
    with AuditJournal(path, fsync_interval_s=None) as journal:  # the holder is gone: the lock went with it
        journal.write(b'{"seq": 2}\n')
    assert path.read_bytes().count(b"\n") == 2


class FakeMsvcrt:
    """Records each msvcrt.locking call with the file position it was made at."""

    LK_UNLCK, LK_NBLCK = 0, 2

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        self.calls.append((os.lseek(fd, 0, os.SEEK_CUR), mode, nbytes))
        if self.refuse and mode == self.LK_NBLCK:
            raise PermissionError(13, "Permission denied")


def on_windows(monkeypatch, fake: FakeMsvcrt) -> None:
    monkeypatch.setattr(filelock, "os", SimpleNamespace(name="nt", lseek=os.lseek, SEEK_CUR=os.SEEK_CUR,
                                                        SEEK_SET=os.SEEK_SET))
    monkeypatch.setitem(sys.modules, "msvcrt", fake)


def test_on_windows_the_journal_locks_one_byte_past_its_data_and_unlocks_it_before_closing(tmp_path, monkeypatch):
    fake = FakeMsvcrt()
    on_windows(monkeypatch, fake)
    assert filelock.lock_kind() == "msvcrt"
    path = tmp_path / "journal.jsonl"
    journal = AuditJournal(path, fsync_interval_s=None)
    assert fake.calls == [(filelock.WINDOWS_LOCK_OFFSET, FakeMsvcrt.LK_NBLCK, 1)]
    assert filelock.WINDOWS_LOCK_OFFSET > 1 << 32  # beyond any journal, and beyond 32-bit offsets
    assert os.lseek(journal._fd, 0, os.SEEK_CUR) == 0  # the file position was put back
    journal.write(b'{"seq": 1}\n')
    journal.close()
    assert fake.calls[-1] == (filelock.WINDOWS_LOCK_OFFSET, FakeMsvcrt.LK_UNLCK, 1)
    assert path.read_bytes() == b'{"seq": 1}\n'


def test_on_windows_a_refused_lock_is_the_same_error_as_on_posix(tmp_path, monkeypatch):
    on_windows(monkeypatch, FakeMsvcrt(refuse=True))
    path = tmp_path / "journal.jsonl"
    with pytest.raises(AuditError, match=f"audit journal {path} is open in another writer"):
        AuditJournal(path, fsync_interval_s=None)
