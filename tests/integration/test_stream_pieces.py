"""Files larger than memory: ``iter_stream`` reads NT8 exports and Parquet files in pieces, merged in time order,
and the research engine trades the pieces exactly as it trades the whole stream (the pinned digest)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from bridge.core.config import load_config
from bridge.data.nt8files import DataFileError, iter_nt8, read_nt8
from bridge.nt8.playback import PlaybackError, iter_stream, load_stream
from bridge.research.inprocess import run_research
from tests.conftest import PLUMBING_CONFIG
from tests.integration.test_playback_digest import PINNED

ES = "nt8/ES 06-18.Last.txt.gz"
FIELDS = ("instrument", "ts_ns", "price", "bid", "ask", "size", "is_bar", "open", "high", "low")


def _joined(pieces):
    return {f: np.concatenate([getattr(p, f) for p in pieces]) for f in FIELDS}


def _same(a: dict, whole) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(a[f], getattr(whole, f), err_msg=f)


@pytest.mark.shared_data
@pytest.mark.parametrize("files", [[ES], ["nt8/ES 12-23.Last.txt", "nt8/NQ 12-23.Last.txt"]])
def test_pieces_join_into_the_whole_stream_and_stay_small(shared_data, files):
    paths = [shared_data / f for f in files]
    whole = load_stream(paths)
    pieces = list(iter_stream(paths, chunk_bytes=150_000))
    assert len(pieces) > 5
    _same(_joined(pieces), whole)
    assert all(p.names == whole.names for p in pieces)
    # a piece holds at most about chunk_bytes of text of each file (~35 bytes a tick, ~45 a bar line)
    assert max(len(p) for p in pieces) < len(files) * 150_000 // 20


@pytest.mark.shared_data
def test_the_research_engine_trades_the_pieces_as_the_whole(shared_data):
    config = load_config(PLUMBING_CONFIG)
    result = run_research(iter_stream([shared_data / ES], chunk_bytes=100_000), config)
    pinned = PINNED["research"]
    assert (result.digest, result.brackets, result.fills) == (pinned["digest"], pinned["brackets"], pinned["fills"])
    assert result.ticks_read == 74_907


@pytest.mark.shared_data
def test_parquet_files_stream_in_row_groups_with_the_same_trades(shared_data, tmp_path):
    df = read_nt8(shared_data / ES)
    path = tmp_path / "ES 06-18.Last.parquet"
    df.to_parquet(path, row_group_size=10_000, index=False)
    _same(_joined(list(iter_stream([path], chunk_bytes=200_000))), load_stream([shared_data / ES]))
    result = run_research(iter_stream([path], chunk_bytes=200_000), load_config(PLUMBING_CONFIG))
    assert result.digest == PINNED["research"]["digest"]


def test_a_file_out_of_time_order_is_named(tmp_path):
    path = tmp_path / "ES 06-18.Last.txt"
    path.write_text("20180507 133001 0000000;2670.5;1\n20180507 133000 0000000;2671;2\n")
    with pytest.raises(PlaybackError, match="not in time order"):
        list(iter_stream([path]))


def test_a_bad_line_deep_in_a_piece_is_named_by_its_line_in_the_file(tmp_path):
    path = tmp_path / "ES 06-18.Last.txt.gz"
    lines = [f"20180507 13{m:02d}00 0000000;2670.5;1\n" for m in range(60)]
    lines[41] = "20180507 134100 0000000;not a price;1\n"
    path.write_bytes(gzip.compress("".join(lines).encode()))
    with pytest.raises(DataFileError, match="line 42"):
        list(iter_nt8(path, chunk_bytes=256))
    lines[41] = "20180507 134100 0000000;2671.25;3\n"
    path.write_bytes(gzip.compress("".join(lines).encode()))
    pieces = list(iter_nt8(path, chunk_bytes=256))
    assert len(pieces) > 5
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), read_nt8(path), check_like=True)


@pytest.mark.shared_data
def test_playback_command_streams_with_chunk_mb(shared_data, tmp_path):
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "--config", str(PLUMBING_CONFIG), "playback",
                           "--engine", "research", "--chunk-mb", "0.1", "--json", "--quiet",
                           "--data", str(shared_data / ES), "--db", f"sqlite:///{tmp_path / 'pb.sqlite'}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["digest"] == PINNED["research"]["digest"] and summary["instruments"] == ["ES 06-18"]
    assert summary["ticks_reconciled"]
