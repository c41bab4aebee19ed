"""NT8 text readers and writers, on the team's real files and on hand-made corrupt ones."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.data.nt8files import (
    BAR_COLUMNS,
    TICK_COLUMNS,
    DataFileError,
    Nt8Format,
    detect_format,
    inspect_file,
    instrument_from_filename,
    read_nt8,
    ticks_to_minute_bars,
    write_nt8,
)

# file name -> (format, rows) from ../shared/data/README.md
REAL_FILES = {
    "ES 12-23.Last.txt": (Nt8Format.MINUTE, 40_720),
    "NQ 12-23.Last.txt": (Nt8Format.MINUTE, 40_696),
    "MES 12-23.Last.txt": (Nt8Format.MINUTE, 40_672),
    "MYM 12-23.Last.txt": (Nt8Format.MINUTE, 39_352),
    "ES 06-18.Last.txt.gz": (Nt8Format.TICK, 74_907),
    "SPY.Last.txt.gz": (Nt8Format.TICK_REPLAY, 1_887_460),
}


def utc_ns(text: str) -> int:
    return pd.Timestamp(text, tz="UTC").value


def text_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode().splitlines()


@pytest.fixture(scope="module")
def spy(shared_data: Path) -> tuple[pd.DataFrame, float]:
    """The SPY tick-replay file, loaded once, with its load time."""
    start = time.perf_counter()
    df = read_nt8(shared_data / "nt8" / "SPY.Last.txt.gz")
    return df, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Real files
# ----------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_the_readme_lists_every_real_file(shared_data: Path) -> None:
    on_disk = {p.name for p in (shared_data / "nt8").iterdir() if ".Last." in p.name}
    assert on_disk == set(REAL_FILES)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [n for n in REAL_FILES if not n.startswith("SPY")])
def test_real_file_loads(shared_data: Path, name: str) -> None:
    fmt, rows = REAL_FILES[name]
    path = shared_data / "nt8" / name
    assert detect_format(path) is fmt
    df = read_nt8(path)
    assert len(df) == rows
    expected_columns = TICK_COLUMNS if fmt is Nt8Format.TICK else BAR_COLUMNS
    assert tuple(df.columns) == expected_columns
    assert df["ts_ns"].dtype == np.int64 and df["volume"].dtype == np.int64
    assert all(df[c].dtype == np.float64 for c in expected_columns[1:-1])
    # These exports are in time order: no stamp goes backwards.
    assert (np.diff(df["ts_ns"].to_numpy()) >= 0).all()
    assert df.attrs["format"] == fmt.value and df.attrs["bad_rows"] == []
    assert df.attrs["instrument"] == instrument_from_filename(name)


@pytest.mark.shared_data
def test_es_minute_first_row_exact(shared_data: Path) -> None:
    # First line of the file: 20231010 060100;4372.25;4372.5;4370.75;4371;1086 (CRLF)
    df = read_nt8(shared_data / "nt8" / "ES 12-23.Last.txt")
    first = df.iloc[0]
    assert first["ts_ns"] == utc_ns("2023-10-10 06:01:00")
    assert (first["open"], first["high"], first["low"], first["close"], first["volume"]) == (
        4372.25,
        4372.5,
        4370.75,
        4371.0,
        1086,
    )
    assert df.iloc[-1]["ts_ns"] == utc_ns("2023-11-20 19:44:00")


@pytest.mark.shared_data
def test_tick_stamps_match_an_independent_parser(shared_data: Path) -> None:
    """Byte arithmetic gives exactly what pandas.to_datetime gives, 100 ns digits included."""
    path = shared_data / "nt8" / "ES 06-18.Last.txt.gz"
    df = read_nt8(path)
    raw = pd.read_csv(path, sep=";", header=None, dtype={0: str})
    reference = pd.to_datetime(raw[0], format="%Y%m%d %H%M%S %f").astype("int64").to_numpy()
    np.testing.assert_array_equal(df["ts_ns"].to_numpy(), reference)
    assert df["ts_ns"].iloc[0] == utc_ns("2018-05-07 13:30:00.0015330")
    np.testing.assert_array_equal(df["price"].to_numpy(), raw[1].to_numpy(dtype=float))
    assert df["bid"].isna().all() and df["ask"].isna().all()


@pytest.mark.shared_data
def test_spy_loads_fast_and_right(spy: tuple[pd.DataFrame, float]) -> None:
    df, seconds = spy
    assert len(df) == 1_887_460
    assert tuple(df.columns) == TICK_COLUMNS
    assert df.attrs["format"] == Nt8Format.TICK_REPLAY.value
    # ~2 s here; a per-row Python parser takes over a minute. Loose bound for a busy CI box.
    assert seconds < 12, f"SPY took {seconds:.1f} s"
    assert (np.diff(df["ts_ns"].to_numpy()) >= 0).all()
    first = df.iloc[0]
    assert first["ts_ns"] == utc_ns("2013-10-07 08:00:00.464")
    assert (first["price"], first["bid"], first["ask"], first["volume"]) == (167.41, 167.41, 167.41, 100)
    assert df["bid"].notna().all() and (df["bid"] <= df["ask"]).all()


@pytest.mark.shared_data
def test_spy_suspicious_prints_are_in_the_file(spy: tuple[pd.DataFrame, float], shared_data: Path) -> None:
    df, _ = spy
    suspicious = pd.read_csv(shared_data / "nt8" / "SPY.suspicious.csv", dtype={"nt8_time_utc": str})
    suspicious["ts_ns"] = pd.to_datetime(suspicious["nt8_time_utc"], format="%Y%m%d %H%M%S %f").astype("int64")
    found = suspicious.merge(df, left_on=["ts_ns", "size"], right_on=["ts_ns", "volume"], suffixes=("_csv", ""))
    assert len(found) == 10
    assert (found["price"] == found["price_csv"]).all()
    # Stale prints: more than 3 USD below the quote in force, so a size cap cannot catch them.
    assert (found["bid"] - found["price"] > 3.0).all()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["ES 12-23.Last.txt", "ES 06-18.Last.txt.gz", "MYM 12-23.Last.txt"])
def test_real_file_rewrites_to_the_same_text(shared_data: Path, tmp_path: Path, name: str) -> None:
    """write_nt8 reproduces NT8's own text line for line (it writes LF where NT8 wrote CRLF)."""
    src = shared_data / "nt8" / name
    fmt, _ = REAL_FILES[name]
    df = read_nt8(src)
    out = tmp_path / name
    write_nt8(df, out, fmt)
    assert text_lines(out) == text_lines(src)
    pd.testing.assert_frame_equal(read_nt8(out), df)


# ----------------------------------------------------------------------------------------------
# Layouts, detection and names
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("20180507 133000;2670.5;3\n", Nt8Format.TICK),
        ("20180507 133000 0015330;2670.5;3\n", Nt8Format.TICK),
        ("20131007 080000 4640000;167.41;167.4;167.42;100\n", Nt8Format.TICK_REPLAY),
        ("20231010 060100;4372.25;4372.5;4370.75;4371;1086\r\n", Nt8Format.MINUTE),
        ("20231010;4372.25;4372.5;4370.75;4371;1086\n", Nt8Format.DAY),
    ],
)
def test_detect_format(tmp_path: Path, text: str, fmt: Nt8Format) -> None:
    path = tmp_path / "X.Last.txt"
    path.write_text("\n" + text)  # a leading blank line is skipped
    assert detect_format(path) is fmt
    gz = tmp_path / "renamed.txt"  # gzip recognised by content, not by name
    gz.write_bytes(gzip.compress(text.encode()))
    assert detect_format(gz) is fmt
    assert read_nt8(gz).attrs["format"] == fmt.value


def test_tick_layouts_read_alike(tmp_path: Path) -> None:
    path = tmp_path / "ES 06-18.Last.txt"
    path.write_text("20180507 133000;2670.5;3\n20180507 133000 0015330;2670.25;1\n")
    df = read_nt8(path)
    assert df["ts_ns"].tolist() == [utc_ns("2018-05-07 13:30:00"), utc_ns("2018-05-07 13:30:00") + 1_533_000]
    assert df["price"].tolist() == [2670.5, 2670.25] and df["volume"].tolist() == [3, 1]


def test_day_bars(tmp_path: Path) -> None:
    path = tmp_path / "ES 12-23.Last.txt"
    path.write_text("20231010;4372.25;4380;4360.5;4371;1086000\n20231011;4371;4390;4365;4388.75;999\n")
    df = read_nt8(path)
    assert tuple(df.columns) == BAR_COLUMNS
    assert df["ts_ns"].tolist() == [utc_ns("2023-10-10"), utc_ns("2023-10-11")]
    out = tmp_path / "copy.txt"
    write_nt8(df, out, Nt8Format.DAY)
    assert out.read_text() == path.read_text()


def test_detect_format_failures_name_the_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataFileError, match="no data lines"):
        detect_format(empty)
    junk = tmp_path / "junk.txt"
    junk.write_text("\nDate,Open,High\n1,2,3\n")
    with pytest.raises(DataFileError, match=r"junk\.txt: line 2: .*matches no NT8 layout; expected one of: yyyyMMdd"):
        detect_format(junk)


def test_detect_format_skips_a_bad_first_line_and_read_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "ES 12-23.Last.txt"
    path.write_text("Date;Open;High;Low;Close;Volume\n20231010 060100;1;2;0.5;1.5;10\n")
    assert detect_format(path) is Nt8Format.MINUTE
    with pytest.raises(DataFileError, match="line 1: bad timestamp layout 'Date'"):
        read_nt8(path)
    df = read_nt8(path, on_error="skip")
    assert len(df) == 1 and df.attrs["bad_rows"][0][0] == 1


@pytest.mark.parametrize(
    ("name", "instrument"),
    [
        ("ES 06-18.Last.txt.gz", "ES 06-18"),
        ("SPY.Last.txt.gz", "SPY"),
        ("/some/dir/NQ 12-23.Last.txt", "NQ 12-23"),
        ("ES 12-23.Bid.txt", "ES 12-23"),
        ("ES 12-23.ask.txt", "ES 12-23"),
        ("MES 12-23.txt", "MES 12-23"),
    ],
)
def test_instrument_from_filename(name: str, instrument: str) -> None:
    assert instrument_from_filename(name) == instrument


# ----------------------------------------------------------------------------------------------
# Corrupt files
# ----------------------------------------------------------------------------------------------

GOOD = "20231010 060100;4372.25;4372.5;4370.75;4371;1086"
CORRUPT_MINUTES = "\r\n".join(
    [
        GOOD,  # 1
        "",  # 2 blank: skipped, still counted
        "20231010 060200;4370.75;4371.25;4370.5;4370.5",  # 3 truncated: a field short
        "20231010 060300;4370.5;abc;4370.5;4370.75;191",  # 4 text in a price
        "20231310 060400;4370.5;4370.75;4370.5;4370.75;191",  # 5 month 13
        "20231010 250500;4370.5;4370.75;4370.5;4370.75;191",  # 6 hour 25
        "20231010 060600;4370.5;4370.75;4370.5;4370.75;1.5",  # 7 fractional volume
        "20231010 060700;4370.5;4370.75;4370.5;4370.75;19;7",  # 8 extra field
        "20231010 0608;4370.5;4370.75;4370.5;4370.75;19",  # 9 truncated stamp
        "20231010 060900;4370.5;4370.75;4370.5;nan;19",  # 10 NaN is not a price
        "20231010 061000;4370.5;4370.75;4370.5;4370.75;19",  # 11 good
        "20231010 0611",  # 12 truncated last line (a cut-off download)
    ]
)


def test_corrupt_file_raises_naming_file_and_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "ES 12-23.Last.txt"
    path.write_text(CORRUPT_MINUTES)
    with pytest.raises(DataFileError) as info:
        read_nt8(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3:" in message and "expected 6 ';'-separated fields" in message
    assert "yyyyMMdd HHmmss;open;high;low;close;volume" in message
    assert "8 more bad lines" in message  # 9 bad lines in all


def test_corrupt_file_skip_returns_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "ES 12-23.Last.txt"
    path.write_text(CORRUPT_MINUTES)
    df = read_nt8(path, on_error="skip")
    bad = {number: (text, reason) for number, text, reason in df.attrs["bad_rows"]}
    assert sorted(bad) == [3, 4, 5, 6, 7, 8, 9, 10, 12]
    assert "field 3 (high) is 'abc'" in bad[4][1]
    assert "impossible date '20231310 060400'" in bad[5][1]
    assert "impossible time of day" in bad[6][1]
    assert "integer volume" in bad[7][1]
    assert "found 7" in bad[8][1]
    assert "bad timestamp layout '20231010 0608'" in bad[9][1]
    assert "(close) is 'nan'" in bad[10][1]
    assert bad[4][0] == "20231010 060300;4370.5;abc;4370.5;4370.75;191"
    # The good rows are intact, with the right dtypes.
    assert df["ts_ns"].tolist() == [utc_ns("2023-10-10 06:01"), utc_ns("2023-10-10 06:10")]
    assert df["volume"].tolist() == [1086, 19] and df["volume"].dtype == np.int64
    assert tuple(df.columns) == BAR_COLUMNS


def test_corrupt_tick_replay_in_a_large_gzip(tmp_path: Path) -> None:
    """The slow path stays vectorised and exact on a big file with a few bad lines."""
    rng = np.random.default_rng(5)
    n = 50_000
    clean = pd.DataFrame(
        {
            "ts_ns": np.sort(utc_ns("2013-10-07 13:30") + rng.integers(0, 10**13, n) * 100),
            "price": np.round(rng.integers(16_000, 17_000, n) * 0.01, 2),
            "bid": np.round(rng.integers(16_000, 17_000, n) * 0.01, 2),
            "ask": np.round(rng.integers(16_000, 17_000, n) * 0.01, 2),
            "volume": rng.integers(1, 5000, n),
        }
    )
    path = tmp_path / "SPY.Last.txt.gz"
    write_nt8(clean, path, Nt8Format.TICK_REPLAY)
    lines = text_lines(path)
    broken = {
        10: "20131007 133000 1234567;167.41;167.40;167.42",
        20_000: "20131007 133000 12345;1;1;1;1",
        49_999: "x;1;1;1;1",
    }
    for index, text in broken.items():
        lines[index] = text
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    df = read_nt8(path, on_error="skip")
    assert [row[0] for row in df.attrs["bad_rows"]] == [i + 1 for i in sorted(broken)]
    keep = np.ones(n, dtype=bool)
    keep[list(broken)] = False
    pd.testing.assert_frame_equal(df, clean[keep].reset_index(drop=True), check_dtype=True)


def test_truncated_gzip_is_a_data_file_error(tmp_path: Path) -> None:
    payload = gzip.compress(("\n".join([GOOD] * 5000)).encode())
    path = tmp_path / "ES 12-23.Last.txt.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataFileError, match=r"ES 12-23\.Last\.txt\.gz: corrupt or truncated gzip"):
        read_nt8(path)


def test_read_rejects_unknown_on_error(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(GOOD + "\n")
    with pytest.raises(ValueError, match="on_error"):
        read_nt8(path, on_error="ignore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    fmt=st.sampled_from([Nt8Format.TICK, Nt8Format.TICK_REPLAY]),
    tick=st.sampled_from([0.25, 0.1, 1.0, 0.01]),
    start=st.integers(utc_ns("1990-01-01") // 100, utc_ns("2100-01-01") // 100),
    gaps=st.lists(st.integers(0, 10**12), min_size=1, max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_tick_round_trip_is_exact(
    tmp_path_factory: pytest.TempPathFactory, fmt: Nt8Format, tick: float, start: int, gaps: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n = len(gaps)
    places = {0.25: 2, 0.1: 1, 1.0: 0, 0.01: 2}[tick]
    ts = start * 100 + np.cumsum(gaps) * 100
    k = rng.integers(1, 2_000_000, n)
    df = pd.DataFrame(
        {
            "ts_ns": ts.astype(np.int64),
            "price": np.round(k * tick, places),
            "bid": np.round((k - 1) * tick, places) if fmt is Nt8Format.TICK_REPLAY else np.nan,
            "ask": np.round((k + 1) * tick, places) if fmt is Nt8Format.TICK_REPLAY else np.nan,
            "volume": rng.integers(0, 10**9, n).astype(np.int64),
        }
    )
    path = tmp_path_factory.mktemp("rt") / "X.Last.txt"
    write_nt8(df, path, fmt)
    back = read_nt8(path)
    pd.testing.assert_frame_equal(back, df)


def test_minute_round_trip_gz(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "ts_ns": [utc_ns("2023-10-10 06:01"), utc_ns("2023-10-10 06:02"), utc_ns("2024-02-29 23:59")],
            "open": [4372.25, 4370.75, 0.1],
            "high": [4372.5, 4371.25, 0.30000000000000004],
            "low": [4370.75, 4370.5, 0.1],
            "close": [4371.0, 4370.5, 0.2],
            "volume": [1086, 0, -1],
        }
    )
    path = tmp_path / "ES 12-23.Last.txt.gz"
    write_nt8(df, path, Nt8Format.MINUTE)
    assert text_lines(path)[0] == "20231010 060100;4372.25;4372.5;4370.75;4371;1086"
    pd.testing.assert_frame_equal(read_nt8(path), df)


def test_write_refuses_what_nt8_cannot_hold(tmp_path: Path) -> None:
    base = pd.DataFrame(
        {"ts_ns": [utc_ns("2023-10-10 06:01")], "price": [1.0], "bid": [np.nan], "ask": [np.nan], "volume": [1]}
    )
    with pytest.raises(ValueError, match="100 ns"):
        write_nt8(base.assign(ts_ns=base["ts_ns"] + 50), tmp_path / "a.txt", Nt8Format.TICK)
    with pytest.raises(ValueError, match="NaN"):
        write_nt8(base, tmp_path / "a.txt", Nt8Format.TICK_REPLAY)
    with pytest.raises(ValueError, match="missing columns"):
        write_nt8(base, tmp_path / "a.txt", Nt8Format.MINUTE)


# ----------------------------------------------------------------------------------------------
# Minute bars from ticks, and inspection
# ----------------------------------------------------------------------------------------------


def test_ticks_to_minute_bars_stamps_end_of_bar() -> None:
    t0 = utc_ns("2023-10-10 14:30")
    ticks = pd.DataFrame(
        {
            "ts_ns": [t0, t0 + 10**9, t0 + 59 * 10**9 + 999_999_900, t0 + 60 * 10**9, t0 + 185 * 10**9],
            "price": [10.0, 12.0, 9.0, 11.0, 13.0],
            "volume": [1, 2, 3, 4, 5],
        }
    )
    bars = ticks_to_minute_bars(ticks)
    assert bars["ts_ns"].tolist() == [t0 + 60 * 10**9, t0 + 120 * 10**9, t0 + 240 * 10**9]
    assert bars[["open", "high", "low", "close"]].values.tolist() == [
        [10, 12, 9, 9],
        [11, 11, 11, 11],
        [13, 13, 13, 13],
    ]
    assert bars["volume"].tolist() == [6, 4, 5]


@pytest.mark.shared_data
def test_inspect_real_minute_and_tick_files(shared_data: Path) -> None:
    es = inspect_file(shared_data / "nt8" / "ES 12-23.Last.txt")
    json.dumps(es)  # serialisable as is
    assert es["format"] == "minute" and es["instrument"] == "ES 12-23" and es["rows"] == 40_720
    assert es["first_ts"] == "2023-10-10T06:01:00+00:00" and es["last_ts"] == "2023-11-20T19:44:00+00:00"
    assert es["tick_size"] == 0.25 and es["declared_tick_size"] == 0.25 and es["off_grid_prices"] == 0
    assert (es["price_min"], es["price_max"]) == (4122.25, 4563.5)
    # 6 weeks of daily halts, 5 weekends and the flat weekend ghost bars between them.
    assert es["gaps_over_5min"] == 42
    assert es["out_of_order"] == 0 and es["zero_volume"] == 0
    assert 1370 <= es["bars_per_day_median"] <= 1380

    ticks = inspect_file(shared_data / "nt8" / "ES 06-18.Last.txt.gz")
    json.dumps(ticks)
    assert ticks["format"] == "tick" and ticks["rows"] == 74_907 and ticks["tick_size"] == 0.25
    assert ticks["ticks_per_minute_median"] == 293.5
    assert ticks["median_spread"] is None and ticks["gaps_over_5min"] == 0
    assert ticks["duplicate_timestamps"] == 24_675


def test_inspect_counts_quote_problems(tmp_path: Path) -> None:
    path = tmp_path / "SPY.Last.txt"
    path.write_text(
        "\n".join(
            [
                "20131007 133000 0000000;167.41;167.40;167.42;100",
                "20131007 133000 5000000;167.42;167.42;167.42;0",  # locked, zero volume
                "20131007 133001 0000000;167.415;167.43;167.41;200",  # crossed, sub-penny, outside
                "20131007 132959 0000000;167.41;167.40;167.41;-5",  # back in time, negative size
                "20131007 134500 0000000;167.50;167.49;167.50;300",  # 15-minute gap
            ]
        )
    )
    info = inspect_file(path)
    json.dumps(info)
    assert info["format"] == "tick_replay" and info["rows"] == 5
    assert (info["locked_quotes"], info["crossed_quotes"], info["trades_outside_quote"]) == (1, 1, 1)
    assert (info["zero_volume"], info["negative_volume"], info["out_of_order"]) == (1, 1, 1)
    assert info["gaps_over_5min"] == 1
    assert info["off_grid_prices"] == 1 and info["declared_tick_size"] == 0.01
    assert info["tick_size"] == 0.005
    assert info["median_spread"] == 0.01
