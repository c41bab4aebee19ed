"""The storage spool file: framed, checksummed records; torn and damaged files; plain-data pickling."""

from __future__ import annotations

import enum
import logging
import pickle
from pathlib import Path

import pytest

from bridge.storage.database import StorageError
from bridge.storage.spool import HEAD_SIZE, Spool, SpoolInUse, decode, encode, open_spool

DB = "sqlite:////somewhere/rec.sqlite"


def _records(n: int, start: int = 0) -> list[tuple[int, bytes]]:
    return [(i + 1, encode(("stream", i, "b", {"ticks": [(i, float(i), "x" * i)]}))) for i in range(start, start + n)]


def _read_all(spool: Spool) -> list[object]:
    out = []
    while not spool.drained:
        for r in spool.read(max_rows=3):
            out.append(decode(r.payload))
            spool.consumed(r)
    return out


def test_records_come_back_in_order_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, DB)
    spool.append(_records(4))
    spool.append(_records(3, start=4))
    assert spool.pending_records == 7 and spool.pending_rows == sum(range(1, 8))
    spool.close()
    assert path.exists()  # not empty: kept for the next writer
    again = Spool(path, DB)
    assert again.resumed_rows == sum(range(1, 8)) and again.moved_aside == []
    assert [d[1] for d in _read_all(again)] == list(range(7))  # type: ignore[index]
    assert again.pending_rows == 0 and again.drained
    again.reset()
    assert path.stat().st_size == 0
    again.append(_records(1))  # a new header, then the record
    assert [d[1] for d in _read_all(again)] == [0]  # type: ignore[index]
    again.reset()
    again.close()
    assert not path.exists()  # empty: removed


@pytest.mark.parametrize("tail", [b"partial", b"\0" * 40, "half a frame"])
def test_a_torn_tail_is_moved_aside_and_never_replayed(tmp_path: Path, tail: bytes | str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, DB)
    spool.append(_records(3))
    spool.close()
    if tail == "half a frame":  # a record cut by power loss: its header and part of its payload
        spool = Spool(path, DB)
        size = path.stat().st_size
        spool.append(_records(1, start=3))
        spool.close()
        whole = path.read_bytes()
        path.write_bytes(whole[:size + HEAD_SIZE + 5])
        tail = whole[size:size + HEAD_SIZE + 5]
    else:
        with path.open("ab") as f:
            f.write(tail)
    caplog.set_level(logging.WARNING, logger="nt8bridge.storage")
    spool = Spool(path, DB)
    assert [d[1] for d in _read_all(spool)] == [0, 1, 2]  # type: ignore[index]
    [aside] = spool.moved_aside
    assert aside.name.startswith("s.spool.torn-") and aside.read_bytes() == tail
    assert any("torn last record" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)
    spool.close()


def test_damage_in_the_middle_keeps_the_whole_records_around_it(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, DB)
    spool.append(_records(2))
    middle = path.stat().st_size
    spool.append(_records(1, start=2))
    spool.append(_records(2, start=3))
    spool.close()
    data = bytearray(path.read_bytes())
    data[middle + HEAD_SIZE + 3] ^= 0xFF  # a bit flipped in the payload of the third record
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="nt8bridge.storage")
    spool = Spool(path, DB)
    assert [d[1] for d in _read_all(spool)] == [0, 1, 3, 4]  # type: ignore[index]
    [aside] = spool.moved_aside
    assert aside.name.startswith("s.spool.damaged-")
    assert any("damaged, not just torn" in r.getMessage() for r in caplog.records)
    spool.close()
    assert not path.with_name("s.spool.rewrite").exists()


def test_a_spool_of_another_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, DB)
    spool.append(_records(1))
    spool.close()
    with pytest.raises(StorageError, match="holds rows for 'sqlite:////somewhere/rec.sqlite', not for"):
        Spool(path, "postgresql+psycopg://u@h:5432/other")
    assert Spool(path, DB).pending_records == 1  # still there, for the database it belongs to


def test_one_writer_per_spool_and_the_next_free_one_for_a_second(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.spool"
    first = Spool(path, DB)
    with pytest.raises(SpoolInUse, match="in use by another"):
        Spool(path, DB)
    caplog.set_level(logging.WARNING, logger="nt8bridge.storage")
    second = open_spool(path, DB)
    assert second.path == tmp_path / "s.spool.1"
    assert any("this one uses" in r.getMessage() for r in caplog.records)
    second.close()
    first.close()


class _Kind(enum.IntEnum):
    LAST = 0


class _Odd:
    def __str__(self) -> str:
        return "odd"


def test_records_are_plain_data_both_ways() -> None:
    row = (_Kind.LAST, 1.5, float("nan"), None, "é", b"\x00", True, _Odd())
    back = decode(encode({"ticks": [row]}))["ticks"][0]
    assert type(back[0]) is int and back[0] == 0
    assert back[1] == 1.5 and back[2] != back[2] and back[3:7] == (None, "é", b"\x00", True)
    assert back[7] == "odd"
    # a tampered spool cannot make the reader import or call anything
    evil = pickle.dumps(Path("/etc/passwd"))
    with pytest.raises(pickle.UnpicklingError, match="may not refer to"):
        decode(evil)
