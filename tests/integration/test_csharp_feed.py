"""The simulator's C# data-file reader (ninjascript/Simulator/Engine/DataFiles.cs) under Mono through
pythonnet, against the Python reader it twins (bridge/data/nt8files.py) and load_stream's merge
(bridge/nt8/playback.py): the same files give the same events, bit for bit, the same lines are refused,
and whatever is wrong with a file comes out as a FeedException naming the file and the line."""

from __future__ import annotations

import gzip
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from bridge.data.nt8files import DataFileError, instrument_from_filename, read_nt8
from bridge.nt8.playback import PlaybackError, load_stream
from tests.conftest import SHARED_DATA

# read_nt8 on a volume like "1e19" (refused) has numpy warn about the cast; not this module's concern
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

EPOCH_TICKS = 621355968000000000  # DateTime(1970, 1, 1).Ticks
COLUMNS = ("ts_ns", "price", "bid", "ask", "volume", "open", "high", "low", "is_bar")


@pytest.fixture(scope="session")
def sim(nt8):
    """The simulator assembly's namespace (DataFiles.cs is part of it), loaded once per session."""
    import Nt8Bridge.Simulator as simulator  # noqa: N813 (a .NET namespace)

    return simulator


def _array(net_array, dtype) -> np.ndarray:
    """A .NET primitive array as numpy, copied in one block through the buffer protocol."""
    if len(net_array) == 0:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(memoryview(net_array), dtype=dtype).copy()


def cs_columns(sim, events) -> dict[str, np.ndarray]:
    c = sim.FeedColumns.From(events)
    return {
        "ts_ns": (_array(c.Time, np.int64) - EPOCH_TICKS) * 100,
        "instrument": _array(c.Instrument, np.int32),
        "price": _array(c.Price, np.float64),
        "bid": _array(c.Bid, np.float64),
        "ask": _array(c.Ask, np.float64),
        "volume": _array(c.Volume, np.int64),
        "open": _array(c.Open, np.float64),
        "high": _array(c.High, np.float64),
        "low": _array(c.Low, np.float64),
        "is_bar": _array(c.IsBar, np.uint8).astype(bool),
    }


def py_columns(path: Path, *, on_error: str = "raise") -> tuple[dict[str, np.ndarray], object]:
    """read_nt8's frame as events, the way load_stream turns a file into them (file order kept)."""
    df = read_nt8(path, on_error=on_error)
    n = len(df)
    nan = np.full(n, np.nan)
    if df.attrs["format"] == "minute":
        cols = {"price": df["close"].to_numpy(float), "bid": nan, "ask": nan, "open": df["open"].to_numpy(float),
                "high": df["high"].to_numpy(float), "low": df["low"].to_numpy(float), "is_bar": np.ones(n, bool)}
    else:
        cols = {"price": df["price"].to_numpy(float), "bid": df["bid"].to_numpy(float),
                "ask": df["ask"].to_numpy(float), "open": nan, "high": nan, "low": nan, "is_bar": np.zeros(n, bool)}
    cols["ts_ns"] = df["ts_ns"].to_numpy(np.int64)
    cols["volume"] = df["volume"].to_numpy(np.int64)
    return cols, df


def assert_same_events(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    for name in COLUMNS:
        # assert_array_equal: exact, NaN equal to NaN
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{what}: column {name}")


def python_outcome(path: Path):
    """("ok", columns) or ("error", line number named by the message, or 0)."""
    try:
        fmt = read_nt8(path).attrs["format"]
        if fmt == "day":  # load_stream refuses day bars before reading them
            raise PlaybackError(f"{path}: day bars are too coarse to play back")
        return "ok", py_columns(path)[0]
    except (DataFileError, PlaybackError) as exc:
        m = re.search(r": line (\d+):", str(exc))
        return "error", int(m.group(1)) if m else 0


def csharp_outcome(sim, path: Path):
    try:
        feed = sim.Feed.Read(str(path), 0)
    except sim.FeedException as exc:
        assert str(path) in exc.Message, exc.Message
        if exc.Line:
            assert f"line {exc.Line}:" in exc.Message, exc.Message
        return "error", int(exc.Line)
    return "ok", cs_columns(sim, feed.Events)


# collected without the folder too: the shared_data fixture then skips each test with its reason
FILE_NAMES = sorted(p.name for p in (SHARED_DATA / "nt8").glob("*")) or ["(no data)"]


# --------------------------------------------------------------------------- the real files

@pytest.mark.shared_data
@pytest.mark.parametrize("name", FILE_NAMES)
def test_csharp_reads_every_real_file_like_the_python_reader(sim, shared_data, name):
    """Every file of ../shared/data/nt8: the same events (times, prices, bid/ask, volumes, bar fields)
    as read_nt8, the same format and instrument; a file Python refuses (the vendor's .csv) is refused
    with a FeedException naming the same line."""
    path = shared_data / "nt8" / name
    try:
        want, df = py_columns(path)
    except DataFileError as exc:
        assert csharp_outcome(sim, path) == ("error", int(re.search(r": line (\d+):", str(exc)).group(1)))
        return
    feed = sim.Feed.Read(str(path), 3)
    assert str(feed.Format) == {"tick": "Ticks", "tick_replay": "TickReplay", "minute": "Minute"}[df.attrs["format"]]
    assert feed.InstrumentName == instrument_from_filename(path)
    assert feed.Path == str(path)
    assert feed.SkippedLines == 0
    got = cs_columns(sim, feed.Events)
    assert (got["instrument"] == 3).all()
    assert_same_events(got, want, name)


@pytest.mark.shared_data
@pytest.mark.parametrize("names", [
    # ES and MES have identical minute stamps: the file order breaks the ties
    ("ES 12-23.Last.txt", "MES 12-23.Last.txt", "ES 06-18.Last.txt.gz"),
    ("MES 12-23.Last.txt", "ES 12-23.Last.txt", "NQ 12-23.Last.txt", "MYM 12-23.Last.txt"),
], ids=["ES-MES-ESticks", "MES-ES-NQ-MYM"])
def test_csharp_merge_orders_events_like_load_stream(sim, shared_data, names):
    from System.Collections.Generic import List

    paths = [shared_data / "nt8" / n for n in names]
    stream = load_stream(paths)
    feeds = List[sim.Feed]()
    for p in paths:
        feeds.Add(sim.Feed.Read(str(p), stream.names.index(instrument_from_filename(p))))
    got = cs_columns(sim, sim.Feed.Merge(feeds))
    want = {"ts_ns": stream.ts_ns, "price": stream.price, "bid": stream.bid, "ask": stream.ask, "volume": stream.size,
            "open": stream.open, "high": stream.high, "low": stream.low, "is_bar": stream.is_bar}
    assert_same_events(got, want, " + ".join(names))
    np.testing.assert_array_equal(got["instrument"], stream.instrument)


def test_csharp_merge_is_stable_and_sorts_a_file_that_goes_back_in_time(sim, tmp_path):
    """Ties keep file order then line order; a file whose times go backwards is sorted like
    load_stream's stable argsort does (Feed.Read itself keeps the file's order, as read_nt8)."""
    from System.Collections.Generic import List

    rng = random.Random(7)
    paths = []
    for k, name in enumerate(("ES 12-23.Last.txt", "NQ 12-23.Last.txt", "ES 03-24.Last.txt")):
        lines = []
        for i in range(3000):
            sec = rng.randrange(0, 40)  # few distinct stamps: many ties within and across files
            lines.append(f"20231010 1000{sec:02d} {rng.randrange(0, 3) * 1000:07d};{4000 + k + i * 0.25};{i + 1}")
        if k != 1:
            lines.sort(key=lambda line: line[:23])  # files 0 and 2 in order, file 1 not
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    stream = load_stream(paths)
    feeds = List[sim.Feed]()
    for p in paths:
        feeds.Add(sim.Feed.Read(str(p), stream.names.index(instrument_from_filename(p))))
    unsorted = cs_columns(sim, feeds[1].Events)
    assert (np.diff(unsorted["ts_ns"]) < 0).any()
    np.testing.assert_array_equal(unsorted["price"], py_columns(paths[1])[0]["price"])
    got = cs_columns(sim, sim.Feed.Merge(feeds))
    np.testing.assert_array_equal(got["ts_ns"], stream.ts_ns)
    np.testing.assert_array_equal(got["price"], stream.price)  # prices are unique: the order is exact
    np.testing.assert_array_equal(got["instrument"], stream.instrument)
    assert len(sim.Feed.Merge(List[sim.Feed]())) == 0


# --------------------------------------------------------------------------- the Python reader's rules

GOOD = "20231010 060100;4372.25;4372.5;4370.75;4371;1086\n"


def _minute(field: str, k: int) -> str:
    f = ["20231010 060200", "4370.75", "4371.25", "4370.5", "4370.5", "248"]
    f[k] = field
    return ";".join(f) + "\n"


EDGE_CASES: dict[str, bytes] = {
    # accepted, with the values pandas' C parser gives
    **{f"price {v!r}": (GOOD + _minute(v, 1)).encode() for v in (
        " 4370.75", "4370.75 ", "\t4370.75", "4370.75\x0b", "+4370.75", "4370.", ".75", "1e3", "1E+3", "1.e3",
        "00004370.75", "-1", "0", "-0", "1e-400", "4370.750000000000000000001", "123456789012345678901234",
        "0.1000000000000000055511151231257827", "9007199254740993", "1.7976931348623157e308",
        "2.2250738585072014e-308", "4.9e-324")},
    **{f"volume {v!r}": (GOOD + _minute(v, 5)).encode() for v in (
        "5.0", "-3", "1e3", " 5", "5 ", "+5", "0", "9223372036854775807", "-9223372036854775808")},
    **{f"stamp {v!r}": (GOOD + _minute(v, 0)).encode() for v in (
        "20240229 000000", "22611231 235959", "16780101 000000")},
    "high below low, zero and negative prices":
        (GOOD + "20231010 060200;5;1;9;0;10\n20231010 060300;-5;-1;-9;-2;0\n").encode(),
    "time going backwards": (GOOD + "20231010 050200;5;6;4;5;10\n").encode(),
    "blank lines": (GOOD + "\n" + _minute("1", 1) + "   \n\t\n\x0c\n" + _minute("2", 1)).encode(),
    "crlf": (GOOD + _minute("1", 1)).replace("\n", "\r\n").encode(),
    "cr only": (GOOD + _minute("1", 1)).replace("\n", "\r").encode(),
    "stray cr line": (GOOD + "\r\n" + _minute("1", 1)).encode(),
    "no final line break": (GOOD + _minute("1", 1))[:-1].encode(),
    "bom": b"\xef\xbb\xbf" + (GOOD + _minute("1", 1)).encode(),
    "ticks with and without fraction": b"20231010 060100;4372.25;3\n20231010 060100 5000000;4372.5;1\n\n",
    "tick replay":
        b"20131007 080000 4640000;167.41;167.40;167.42;100\r\n20131007 080000 4650000;167.41;167.41;167.41;1400\r\n",
    "first line garbage": ("hello world\n" + GOOD).encode(),
    # refused: the same first bad line
    **{f"bad price {v!r}": (GOOD + _minute(v, 1)).encode() for v in (
        "0x10", "4,370", "1_000", "", "nan", "NaN", "inf", "Infinity", "1e400", '"4370"', "4370.75.1", "1e", "e3",
        "-", "+", ". ", "1d3", "4370 .75", "- 5", "1e+", ".e3", "4370.7x", "NA", "null", "\x004370")},
    **{f"bad volume {v!r}": (GOOD + _minute(v, 5)).encode() for v in (
        "5.5", "99999999999999999999", "0x5", "1_0", "", "1e19", "x")},
    **{f"bad stamp {v!r}": (GOOD + _minute(v, 0)).encode() for v in (
        " 20231010 060200", "20231010 060200 ", "20231010  060200", "20231010 246000", "20231010 235960",
        "20230229 000000", "20231310 000000", "20231000 000000", "16771231 235959", "22620101 000000",
        "20231010 060200 1234567", "2023101a 060200", '"20231010 060200"')},
    "a ';' too many": (GOOD + _minute("1", 1)[:-1] + ";\n").encode(),
    "a field missing": (GOOD + "20231010 060200;1;2;3;4\n").encode(),
    "header line": ("date;open;high;low;close;volume\n" + GOOD).encode(),
    "comment line": (GOOD + "# comment\n" + _minute("1", 1)).encode(),
    "two bad lines": (GOOD + _minute("x", 1) + _minute("y", 2) + _minute("1", 1)).encode(),
    "tick replay stamp without fraction": b"20231010 060100 0000000;1;2;3;4\n20231010 060100;1;2;3;4\n",
    "19 garbage lines then data": b"x\n" * 19 + GOOD.encode(),
    # refused before any line is parsed
    "20 garbage lines then data": b"x\n" * 20 + GOOD.encode(),
    "day bars": b"20231010;1;2;3;4;5\n20231011;1;2;3;4;5\n",
    "empty": b"",
    "only blank lines": b"\n  \n\r\n\n",
}


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=[re.sub(r"[^\w'.+-]+", "_", c) for c in EDGE_CASES])
def test_csharp_follows_the_python_reader_line_by_line(sim, tmp_path, case):
    """The same events for what read_nt8 accepts (whitespace, signs, exponents, integral float volumes,
    blank lines, CRLF/CR/BOM, prices NT8 would never write); a FeedException naming the same first bad
    line for what it refuses; the same lines dropped with skipBadLines as with on_error="skip"."""
    path = tmp_path / "X 12-23.Last.txt"
    path.write_bytes(EDGE_CASES[case])
    py, cs = python_outcome(path), csharp_outcome(sim, path)
    assert cs[0] == py[0], (py, cs)
    if py[0] == "error":
        assert cs[1] == py[1]
    else:
        assert_same_events(cs[1], py[1], case)
    if py[0] == "error" and py[1] > 0 and "day" not in case:
        try:
            want, df = py_columns(path, on_error="skip")
        except DataFileError:
            return  # refused before any line (no layout in the first 20 lines)
        feed = sim.Feed.Read(str(path), 0, None, True)
        assert feed.SkippedLines == len(df.attrs["bad_rows"])
        assert feed.FirstSkipped.startswith(f"{path}: line {df.attrs['bad_rows'][0][0]}: ")
        assert_same_events(cs_columns(sim, feed.Events), want, case + " (skipped)")


@pytest.mark.parametrize("content, line, python_says", [
    # a '\r' inside a line ends it (as in pandas' fast path and Python's text mode), so the line is short
    (GOOD + "20231010 060200;1;2\r;3;4;5\n", 2, "internal error: 2 lines but 3 parsed rows"),
    # read_nt8's slow path counts '\n' only, so it calls a CR-only file one bad line 1 with 11 fields
    (GOOD.replace("\n", "\r") + _minute("x", 1).replace("\n", "\r"), 2, "line 1: expected 6"),
], ids=["cr inside a line", "cr only with a bad line"])
def test_csharp_names_the_line_where_the_python_reader_cannot(sim, tmp_path, content, line, python_says):
    """Where read_nt8 itself goes wrong, the C# reader still names the right line (left alone in Python)."""
    path = tmp_path / "X 12-23.Last.txt"
    path.write_bytes(content.encode())
    with pytest.raises(DataFileError, match=python_says):
        read_nt8(path)
    assert csharp_outcome(sim, path) == ("error", line)


def test_csharp_refuses_bytes_that_are_not_utf8_in_a_bad_line(sim, tmp_path):
    """A Latin-1 byte in a price: read_nt8 lets a UnicodeDecodeError escape (left alone); C# names the line."""
    path = tmp_path / "X 12-23.Last.txt"
    path.write_bytes(GOOD.encode() + _minute("1\xe9", 1).encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        read_nt8(path)
    assert csharp_outcome(sim, path) == ("error", 2)


@pytest.mark.parametrize("ending", ["\r\n", "\r", "\n"], ids=["crlf", "cr", "lf"])
def test_csharp_splits_lines_across_its_1_mb_reads(sim, tmp_path, ending):
    """The reader takes the file in 1 MB reads: a line break is placed exactly on that boundary (a "\r\n"
    cut between its two bytes), and a 2.5 MB line forces the buffer to grow; lines and line numbers
    stay those of read_nt8."""
    first = "20231010 060100;4372.2500000;1"  # 30 bytes + ending: puts a break on byte 2^20 - 1
    rest = [f"20231010 06{i // 60 % 60:02d}{i % 60:02d};{4372.25 + i % 9};{i % 7 + 1}" for i in range(38835 + 5000)]
    text = ending.join([first, *rest]) + ending
    if ending == "\r\n":
        assert text.encode()[(1 << 20) - 1: (1 << 20) + 1] == b"\r\n"
    path = tmp_path / "ES 12-23.Last.txt"
    path.write_bytes(text.encode())
    py, cs = python_outcome(path), csharp_outcome(sim, path)
    assert py[0] == cs[0] == "ok"
    assert_same_events(cs[1], py[1], ending)
    if ending == "\n":
        path.write_bytes((ending.join([first, *rest[:100], "9" * 2_500_000, *rest[100:]]) + ending).encode())
        assert python_outcome(path) == csharp_outcome(sim, path) == ("error", 102)


def test_csharp_agrees_with_python_on_randomly_damaged_files(sim, tmp_path):
    """300 files in the three layouts, each with 1-4 random bytes replaced, inserted or deleted
    (separators, signs, exponents, blanks, line breaks, NUL): each time the same events, or the same
    first bad line. Left out: a lone '\r' and non-UTF-8 bytes, where read_nt8 itself goes wrong (tests
    above)."""
    rng = random.Random(2024)
    sources = [
        "".join(f"20231010 06{i // 60 % 60:02d}{i % 60:02d};{4372.25 + i % 5};{4373 + i % 3};{4370.5 - i % 2};4371.75;"
                f"{i % 90 + 1}\r\n" for i in range(400)).encode(),
        "".join(f"20131007 0800{i % 60:02d} {i * 1000:07d};167.41;167.40;167.42;{i % 9 + 1}\n"
                for i in range(400)).encode(),
        "".join(f"20180507 1330{i % 60:02d};{2670 + i % 4 * 0.25};{i % 3 + 1}\r\n" for i in range(400)).encode(),
    ]
    alphabet = b";.e-+ \t\r\n0123456789xE\x00"
    path = tmp_path / "X 12-23.Last.txt"
    checked = 0
    for _ in range(300):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            at, byte, op = rng.randrange(len(data)), alphabet[rng.randrange(len(alphabet))], rng.randrange(3)
            if op == 0:
                data[at] = byte
            elif op == 1:
                data.insert(at, byte)
            else:
                del data[at]
        if bytes(data).replace(b"\r\n", b"").count(b"\r"):
            continue
        path.write_bytes(bytes(data))
        py, cs = python_outcome(path), csharp_outcome(sim, path)
        assert cs[0] == py[0], (bytes(data), py, cs)
        if py[0] == "error":
            assert cs[1] == py[1], bytes(data)
        else:
            assert_same_events(cs[1], py[1], repr(bytes(data)))
        checked += 1
    assert checked > 150


def test_csharp_parses_prices_to_the_same_doubles(sim, tmp_path):
    """Prices in every spelling a writer may produce (fixed decimals, shortest repr, 15-17 significant
    digits, exponents) and in ones no exporter writes (up to 40 digits, exponents from -345 to 308,
    subnormals, exact midpoints between two doubles written out in 1000+ digits) read to the very same
    doubles as pandas gives: correctly rounded, ties to even."""
    from decimal import Decimal, localcontext

    rng = random.Random(11)
    values = [rng.uniform(0, 5000) for _ in range(20000)]
    values += [rng.random() * 10.0 ** rng.randint(-12, 12) for _ in range(20000)]
    spellings = (repr, "{:.2f}".format, "{:.6f}".format, "{:.15g}".format, "{:.17g}".format, "{:.5e}".format,
                 "{:.17e}".format)
    texts = [spellings[i % len(spellings)](v) for i, v in enumerate(values)]
    for _ in range(20000):
        digits = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(0, 39)))
        texts.append(f"{digits}e{rng.randint(-345, 268)}")
    with localcontext() as ctx:
        ctx.prec = 1200
        for _ in range(1000):
            x = rng.uniform(1, 2) * 2.0 ** rng.randint(-1074, 1000)
            mid = (Decimal(x) + Decimal(math.nextafter(x, math.inf))) / 2
            texts.append(format(mid, "f") if abs(mid.adjusted()) < 30 else format(mid, "e"))
    texts = [t for t in texts if math.isfinite(float(t))]
    lines = [f"20231010 06{i // 60 % 60:02d}{i % 60:02d};{t};1" for i, t in enumerate(texts)]
    path = tmp_path / "P.Last.txt"
    path.write_text("\n".join(lines) + "\n")
    got = cs_columns(sim, sim.Feed.Read(str(path), 0).Events)
    want = py_columns(path)[0]
    bad = np.flatnonzero(got["price"] != want["price"])
    assert len(bad) == 0, [(texts[i][:60], got["price"][i], want["price"][i]) for i in bad[:5]]


def test_csharp_names_instruments_like_the_python_reader(sim):
    names = ["ES 06-18.Last.txt.gz", "SPY.Last.txt", "ES 12-23.Bid.txt", "es 12-23.last.TXT.GZ", "NQ 12-23.txt",
             "foo.csv.gz", "a.b.Last", "weird.Last.txt.bak", "X.Ask.gz", "Last.txt", ".Last.txt", "data.gz.txt",
             "MES 12-23.Last.txt", "/some/dir/MYM 12-23.Last.txt", "CL 01-24.Last.csv"]
    for name in names:
        assert sim.Feed.InstrumentFromFileName(name) == instrument_from_filename(name), name


def test_csharp_takes_the_instrument_name_it_is_given(sim, tmp_path):
    path = tmp_path / "export.txt"
    path.write_text(GOOD)
    assert sim.Feed.Read(str(path), 0).InstrumentName == "export"
    assert sim.Feed.Read(str(path), 0, "ES 12-23").InstrumentName == "ES 12-23"


# --------------------------------------------------------------------------- damaged files

def _gzip(text: bytes) -> bytes:
    return gzip.compress(text, compresslevel=6, mtime=0)


GZ_TEXT = b"".join(f"20180507 1330{i // 1000 % 60:02d} {i % 1000 * 1000:07d};{2670 + i % 8 * 0.25};{i % 5 + 1}\n"
                   .encode() for i in range(60000))


def test_csharp_reads_multi_member_and_zero_padded_gzip_like_python(sim, tmp_path):
    """Concatenated gzip members (cat a.gz b.gz) and zero padding after the data: all of it is read,
    as gzip.decompress does (GZipStream alone would stop after the first member)."""
    half = GZ_TEXT.index(b"\n", len(GZ_TEXT) // 2) + 1
    for name, data in (("members", _gzip(GZ_TEXT[:half]) + _gzip(GZ_TEXT[half:])),
                       ("padded", _gzip(GZ_TEXT) + b"\0" * 100),
                       ("same member twice", _gzip(GZ_TEXT) * 2),
                       ("empty member first", _gzip(b"") + _gzip(GZ_TEXT))):
        path = tmp_path / f"ES 06-18 {name}.Last.txt.gz"
        path.write_bytes(data)
        py, cs = python_outcome(path), csharp_outcome(sim, path)
        assert py[0] == cs[0] == "ok", (name, py, cs)
        assert_same_events(cs[1], py[1], name)
    assert len(cs[1]["ts_ns"]) == 60000


BAD_PRICE_TEXT = GZ_TEXT.replace(b";2670.5;", b";2670.x;", 1)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("damage", [
    "cut to 2 bytes", "cut to 12 bytes", "cut in half", "cut at 90%", "trailer cut", "last byte cut",
    "flipped byte early", "flipped byte late", "crc wrong", "size wrong", "garbage after", "letter in a price",
    "empty", "blank", "missing", "folder", "not an export", "day bars", "renamed gzip"])
def test_csharp_refuses_a_damaged_file_with_a_feed_exception(sim, tmp_path, damage):
    """Whatever is wrong comes out as a FeedException (never another .NET exception) whose message names
    the file and, when the problem is in a line, that line; Python refuses the same files."""
    good = _gzip(GZ_TEXT)
    n = len(good)
    path = tmp_path / "ES 06-18.Last.txt.gz"
    content = {
        "cut to 2 bytes": good[:2], "cut to 12 bytes": good[:12], "cut in half": good[: n // 2],
        "cut at 90%": good[: n * 9 // 10], "trailer cut": good[:-8], "last byte cut": good[:-1],
        "flipped byte early": _flip(good, 40), "flipped byte late": _flip(good, n - 30),
        "crc wrong": _flip(good, n - 6), "size wrong": _flip(good, n - 2), "garbage after": good + b"garbage",
        "letter in a price": _gzip(BAD_PRICE_TEXT),
        "empty": b"", "blank": _gzip(b"\n\n"),
        "not an export": b"nt8_time_utc,price,size\n20131010 200229,165.59,250629\n",
        "day bars": b"20231010;1;2;3;4;5\n", "renamed gzip": None,
    }.get(damage)
    if damage == "folder":
        path.mkdir()
    elif damage == "renamed gzip":  # a gzip magic number on a plain-text name still reads as gzip, and here it breaks
        path = tmp_path / "ES 06-18.Last.txt"
        path.write_bytes(good[: n // 3])
    elif damage != "missing":
        path.write_bytes(content)
    with pytest.raises(sim.FeedException) as info:
        sim.Feed.Read(str(path), 0)
    exc = info.value
    assert type(exc) is sim.FeedException  # noqa: E721 - exactly FeedException, no other .NET type
    message = str(exc.Message)
    assert exc.FilePath == str(path)
    assert message.startswith(f"{path}: "), message
    in_a_line = damage not in ("empty", "blank", "missing", "folder", "day bars")
    assert (exc.Line > 0) == in_a_line, message
    if in_a_line:
        assert f": line {exc.Line}: " in message
    if damage == "letter in a price":
        assert exc.Line == BAD_PRICE_TEXT[: BAD_PRICE_TEXT.index(b";2670.x;")].count(b"\n") + 1
        assert "'2670.x'" in message
    if damage.startswith("cut") or damage in ("trailer cut", "last byte cut", "crc wrong", "size wrong"):
        assert "truncated or damaged" in message
    if damage not in ("missing", "folder"):
        assert python_outcome(path)[0] == "error"


def test_csharp_skips_bad_lines_when_asked_and_counts_them(sim, tmp_path):
    text = GZ_TEXT.replace(b";2670.5;", b";2670.x;", 3)
    path = tmp_path / "ES 06-18.Last.txt.gz"
    path.write_bytes(_gzip(text))
    with pytest.raises(sim.FeedException) as info:
        sim.Feed.Read(str(path), 0)
    assert "and 2 more bad lines follow" in str(info.value.Message)
    feed = sim.Feed.Read(str(path), 0, None, True)
    want, df = py_columns(path, on_error="skip")
    assert feed.SkippedLines == len(df.attrs["bad_rows"]) == 3
    assert_same_events(cs_columns(sim, feed.Events), want, "skipped")
