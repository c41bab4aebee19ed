"""The ClickHouse analytics store with the real embedded engine (chdb): schema, load, idempotent retry,
``analytics bars`` against bars built here, independently, with pandas from the same file, VWAP and volume
profile against pandas.

The same tests run against a ClickHouse server when NT8BRIDGE_TEST_CLICKHOUSE_URL names one
(clickhouse://HOST:8123; each test gets a database of its own, dropped after). None can be installed from the
registries this project reaches (Debian's clickhouse-server is 18.16, older than these codecs and settings),
so that half skips here and says so."""

from __future__ import annotations

import json
import os
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("chdb", reason="the analytics extra (chdb) is not installed; it has no Windows build")

from bridge.analytics.load import load_nt8_file, source_of  # noqa: E402
from bridge.analytics.queries import bars  # noqa: E402
from bridge.analytics.rollups import ROLLUP_TABLES  # noqa: E402
from bridge.analytics.schema import TABLES  # noqa: E402
from bridge.analytics.store import AnalyticsError, open_store  # noqa: E402
from bridge.cli.main import main  # noqa: E402
from bridge.core.config import ConfigError, build_config  # noqa: E402

ES = "ES 06-18.Last.txt.gz"
SERVER_URL = os.environ.get("NT8BRIDGE_TEST_CLICKHOUSE_URL", "").rstrip("/")


@pytest.fixture(params=["chdb", "server"])
def analytics_url(request, tmp_path):
    if request.param == "chdb":
        yield f"chdb://{tmp_path / 'ch'}"
        return
    if not SERVER_URL:
        pytest.skip("no ClickHouse server: set NT8BRIDGE_TEST_CLICKHOUSE_URL=clickhouse://HOST:8123 to run the "
                    "server half (none is installable from the registries reached here)")
    db = f"nt8bridge_test_{uuid.uuid4().hex[:12]}"
    yield f"{SERVER_URL}/{db}"
    with open_store(f"{SERVER_URL}/{db}", create=False) as s:
        s.engine.command(f"DROP DATABASE IF EXISTS `{db}`")


@pytest.fixture
def store(analytics_url):
    s = open_store(analytics_url, batch_rows=10_000)
    yield s
    s.close()


def test_schema_has_every_table_with_its_codecs_key_and_partitions(store):
    tables = store.query_df(f"SELECT name, engine, sorting_key, partition_key FROM system.tables "
                            f"WHERE database = '{store.database}' ORDER BY name")
    views = {f"{t}_mv" for t in ROLLUP_TABLES}
    assert sorted(tables["name"]) == sorted([*TABLES, *ROLLUP_TABLES, *views])
    base = tables[tables["name"].isin(list(TABLES))]
    assert set(base["engine"]) == {"MergeTree"}
    assert set(base["sorting_key"]) == {"instrument, ts"}
    assert set(base["partition_key"]) == {"toYYYYMM(ts)"}
    rollups = tables[tables["name"].isin(ROLLUP_TABLES)]
    assert set(rollups["engine"]) == {"AggregatingMergeTree"}
    assert set(tables.loc[tables["name"].isin(views), "engine"]) == {"MaterializedView"}
    cols = store.query_df(f"SELECT name, type, compression_codec FROM system.columns "
                          f"WHERE database = '{store.database}' AND table = 'ticks'").set_index("name")
    assert cols.loc["ts", "type"] == "DateTime64(9, 'UTC')"
    assert "DoubleDelta" in cols.loc["ts", "compression_codec"] and "ZSTD" in cols.loc["ts", "compression_codec"]
    assert "Gorilla" in cols.loc["price", "compression_codec"]
    assert cols.loc["instrument", "type"] == "LowCardinality(String)"
    store.ensure_schema()  # a second time: nothing to do, no error


def _one_row(table) -> pd.DataFrame:
    """One row of every column a table has (but source), each of its type."""
    row = {}
    for name, typ in table.columns:
        if name == "source":
            continue
        if name == "ts":
            row[name] = np.array([1_700_000_000_123_456_789], dtype=np.int64)
        elif "String" in typ:
            row[name] = [f"{name}-1"]
        elif "Float" in typ:
            row[name] = [2.5]
        elif "Nullable(" in typ:
            row[name] = pd.array([None], dtype="Int64")  # an absent error code, tick count, latency
        else:
            row[name] = np.array([3], dtype=np.int64)
    return pd.DataFrame(row)


def test_every_table_takes_its_rows_and_a_retry_of_each_inserts_nothing(store):
    for name, table in TABLES.items():
        df = _one_row(table)
        store.insert(name, df, source="writer:run-1")
        store.insert(name, df, source="writer:run-1")
        assert store.count(name) == 1, name
        back = store.query_df(f"SELECT toUnixTimestamp64Nano(ts) AS ns, * FROM {store.database}.{name}")
        assert int(back["ns"][0]) == 1_700_000_000_123_456_789, name  # nanoseconds kept to the last digit
        assert back["instrument"][0] == "instrument-1" and back["source"][0] == "writer:run-1"


def _ticks(n: int, start_ns: int = 1_525_700_000 * 10**9) -> pd.DataFrame:
    return pd.DataFrame({"instrument": ["ES 06-18"] * n, "session_id": 0,
                         "ts": start_ns + np.arange(n, dtype=np.int64) * 10**6,
                         "seq": np.arange(n, dtype=np.uint64), "price": 2700 + np.arange(n) % 7 * 0.25,
                         "volume": np.ones(n, dtype=np.uint64)})


def test_a_retried_batch_inserts_nothing_twice(store):
    df = _ticks(25_000)  # three batches of 10k, 10k, 5k
    assert store.insert("ticks", df, source="writer:run-1") == 25_000
    assert store.count("ticks") == 25_000
    # the crash-and-retry case: the last batch again, then the whole run again
    store.insert("ticks", df, source="writer:run-1")
    assert store.count("ticks") == 25_000
    # the same rows from another source are other rows: deduplication is by what the batch is, not its bytes
    store.insert("ticks", df.iloc[:10_000], source="writer:run-2")
    assert store.count("ticks") == 35_000


def test_load_of_the_es_file_and_reload_skips(store, shared_data):
    path = shared_data / "nt8" / ES
    lines = pd.read_csv(path, sep=";", header=None)
    first = load_nt8_file(store, path)
    assert [(r.table, r.rows, r.sent, r.skipped) for r in first] == [("ticks", len(lines), len(lines), False)]
    again = load_nt8_file(store, path)
    assert again[0].skipped and again[0].sent == 0
    assert store.count("ticks") == len(lines)
    got = store.query_df(f"SELECT sum(volume) AS v, min(price) AS lo, max(price) AS hi FROM {store.database}.ticks")
    assert int(got["v"][0]) == int(lines[2].sum())
    assert got["lo"][0] == lines[1].min() and got["hi"][0] == lines[1].max()


def _pandas_bars(path, minutes: int) -> pd.DataFrame:
    """5-minute bars written from scratch: pandas' own parser and resampler, NT8's end-of-bar stamp."""
    raw = pd.read_csv(path, sep=";", header=None, names=["stamp", "price", "volume"], dtype={"stamp": str})
    ts = pd.to_datetime(raw["stamp"].str[:15], format="%Y%m%d %H%M%S", utc=True) + pd.to_timedelta(
        raw["stamp"].str[16:].astype(np.int64) * 100, unit="ns")
    df = pd.DataFrame({"price": raw["price"].to_numpy(), "volume": raw["volume"].to_numpy()},
                      index=pd.DatetimeIndex(ts))
    r = df.resample(f"{minutes}min", label="right", closed="left")
    out = pd.DataFrame({"open": r["price"].first(), "high": r["price"].max(), "low": r["price"].min(),
                        "close": r["price"].last(), "volume": r["volume"].sum()}).dropna()
    return out


def test_analytics_bars_equal_bars_built_independently(analytics_url, shared_data, capsys):
    path = shared_data / "nt8" / ES
    url = analytics_url
    assert main(["analytics", "load", "--data", str(path), "--url", url]) == 0
    capsys.readouterr()
    assert main(["analytics", "bars", "--instrument", "ES", "--resolution", "5m", "--json", "--url", url]) == 0
    got = pd.DataFrame(json.loads(capsys.readouterr().out))
    want = _pandas_bars(path, 5)
    assert len(got) == len(want) > 10
    assert (got["instrument"] == "ES 06-18").all()
    np.testing.assert_array_equal(got["ts_ns"].to_numpy(), want.index.as_unit("ns").asi8)
    for c in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy(), err_msg=c)
    np.testing.assert_array_equal(got["volume"].to_numpy(), want["volume"].to_numpy().astype(np.int64))
    # --from/--to cut on bar starts: the window's bars are the full set's bars of that window
    start, end = want.index[3] - pd.Timedelta(minutes=5), want.index[7]
    assert main(["analytics", "bars", "--instrument", "ES 06-18", "--resolution", "5m", "--csv", "--url", url,
                 "--from", start.isoformat(), "--to", end.isoformat()]) == 0
    window = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    np.testing.assert_array_equal(window["ts_ns"].to_numpy(), want.index[3:8].as_unit("ns").asi8)


def test_bad_input_gets_a_clear_error(tmp_path, store, capsys):
    with pytest.raises(AnalyticsError, match="scheme"):
        open_store("sqlite:///x.db")
    with pytest.raises(AnalyticsError, match="analytics are off"):
        open_store("")
    with pytest.raises(AnalyticsError, match="resolution"):
        bars(store, "ES", "5x")
    bad = tmp_path / "ES 06-18.Last.txt"
    bad.write_text("20180507 133000 0015330;2670.5;1\nnot a tick line\n20180507 133001 0015330;2671;2\n")
    res = load_nt8_file(store, bad)
    assert res[0].rows == 2 and res[0].bad_rows == 1
    assert main(["analytics", "bars", "--instrument", "ES", "--url", "", "--json"]) == 2
    assert "analytics are off" in capsys.readouterr().err


def test_config_section():
    assert build_config({}).analytics.url == ""
    cfg = build_config({"analytics": {"url": "chdb:///var/lib/nt8bridge/ch", "batch_rows": 20_000}})
    assert cfg.analytics.batch_rows == 20_000
    with pytest.raises(ConfigError, match="analytics.batch_rows"):
        build_config({"analytics": {"batch_rows": 10}})


@pytest.mark.skipif(sys.platform == "win32", reason="chdb has no Windows build")
def test_a_second_embedded_store_in_one_process_is_refused_clearly(tmp_path):
    with open_store(f"chdb://{tmp_path / 'one'}"), pytest.raises(AnalyticsError, match="cannot open the embedded store"):
        open_store(f"chdb://{tmp_path / 'other'}")


@pytest.mark.skipif(sys.platform == "win32", reason="chdb has no Windows build")
def test_chdb_is_refused_by_name_on_windows(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(AnalyticsError, match="no Windows build"):
        open_store(f"chdb://{tmp_path / 'w'}")


# --- VWAP and volume profile by session ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def spy(tmp_path_factory, shared_data):
    """SPY's five days of trades (1.9M rows, real sizes) loaded once, and the same file read by pandas alone."""
    from bridge.analytics.queries import vwap  # noqa: F401 - fail here, not in every test, if it does not import
    path = shared_data / "nt8" / "SPY.Last.txt.gz"
    url = f"chdb://{tmp_path_factory.mktemp('spy') / 'ch'}"
    with open_store(url) as s:  # closed between tests: chdb holds one folder per process at a time
        results = load_nt8_file(s, path)
    assert {(r.table, r.rows) for r in results} == {("ticks", 1_887_460), ("quotes", 1_887_460)}
    raw = pd.read_csv(path, sep=";", header=None, names=["stamp", "price", "bid", "ask", "volume"],
                      dtype={"stamp": str})
    ts = pd.to_datetime(raw["stamp"].str[:15], format="%Y%m%d %H%M%S", utc=True) + pd.to_timedelta(
        raw["stamp"].str[16:].astype(np.int64) * 100, unit="ns")
    raw["session"] = ts.dt.tz_convert("America/New_York").dt.date.astype(str)
    return url, raw


def test_vwap_per_session_equals_pandas(spy):
    from bridge.analytics.queries import vwap
    url, raw = spy
    with open_store(url) as store:
        got = vwap(store, "SPY", tz="America/New_York", session_start_h=0)
    g = raw.assign(pv=raw["price"] * raw["volume"]).groupby("session")
    want = pd.DataFrame({"vwap": g["pv"].sum() / g["volume"].sum(), "volume": g["volume"].sum(),
                         "high": g["price"].max(), "low": g["price"].min()})
    assert list(got["session"].astype(str)) == list(want.index) and len(want) == 5
    np.testing.assert_allclose(got["vwap"], want["vwap"], rtol=1e-12)  # sums in another order: last bits only
    np.testing.assert_array_equal(got["volume"], want["volume"])
    np.testing.assert_array_equal(got["high"], want["high"])
    np.testing.assert_array_equal(got["low"], want["low"])


@pytest.mark.parametrize("bucket", [None, 0.5])
def test_volume_profile_per_session_equals_pandas(spy, bucket):
    from bridge.analytics.queries import volume_profile
    url, raw = spy
    with open_store(url) as store:
        got = volume_profile(store, "SPY", bucket=bucket, tz="America/New_York", session_start_h=0)
    level = raw["price"] if bucket is None else np.floor(np.round(raw["price"] / bucket, 6)) * bucket
    want = raw.assign(level=level).groupby(["session", "level"])["volume"].sum().reset_index()
    assert len(got) == len(want)
    assert list(got["session"].astype(str)) == list(want["session"])
    np.testing.assert_allclose(got["price"], want["level"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got["volume"], want["volume"])
    # point of control: one per session, the (lowest) price of the session's largest volume
    poc = want.loc[want.groupby("session")["volume"].idxmax()]
    np.testing.assert_allclose(got.loc[got["poc"], "price"], poc["level"], atol=1e-9)


def test_cme_sessions_start_at_17_chicago(store):
    from bridge.analytics.queries import vwap
    # 2023-10-10 is a Tuesday; Chicago is UTC-5 in October: 16:59 CT = 21:59 UTC, 17:00 CT = 22:00 UTC
    stamps = pd.to_datetime(["2023-10-10 21:59:00", "2023-10-10 22:00:00", "2023-10-11 20:59:59"], utc=True)
    df = pd.DataFrame({"instrument": ["ES 12-23"] * 3, "session_id": 0, "ts": stamps.as_unit("ns").asi8,
                       "seq": np.arange(3, dtype=np.uint64), "price": [1.0, 2.0, 4.0],
                       "volume": np.array([1, 1, 1], dtype=np.uint64)})
    store.insert("ticks", df, source="test")
    got = vwap(store, "ES")
    assert list(got["session"].astype(str)) == ["2023-10-10", "2023-10-11"]
    assert list(got["vwap"]) == [1.0, 3.0]
    assert list(vwap(store, "ES", session_start_h=0)["session"].astype(str)) == ["2023-10-10", "2023-10-11"]
    assert list(vwap(store, "ES", session_start_h=0)["vwap"]) == [1.5, 4.0]


def test_vwap_and_profile_commands(analytics_url, shared_data, capsys):
    url = analytics_url
    assert main(["analytics", "load", "--data", str(shared_data / "nt8" / ES), "--url", url]) == 0
    capsys.readouterr()
    assert main(["analytics", "vwap", "--instrument", "ES", "--json", "--url", url]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["session"] for r in rows] == ["2018-05-07"] and rows[0]["volume"] == 74_907
    assert main(["analytics", "profile", "--instrument", "ES", "--bucket", "1", "--csv", "--url", url]) == 0
    prof = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert prof["volume"].sum() == 74_907 and prof["poc"].sum() == 1
    assert main(["analytics", "vwap", "--instrument", "ES", "--tz", "Mars/Base", "--url", url]) == 2
    assert "not an IANA zone" in capsys.readouterr().err


def test_ticks_sharing_a_stamp_open_and_close_the_bar_in_source_order(store):
    # three trades in one nanosecond, sent out of order: seq, not arrival, says which was first and last
    t = 1_700_000_000 * 10**9
    df = pd.DataFrame({"instrument": ["ES 12-23"] * 4, "session_id": 0,
                       "ts": np.array([t, t, t, t + 10**9], dtype=np.int64),
                       "seq": np.array([2, 0, 1, 3], dtype=np.uint64), "price": [3.0, 1.0, 2.0, 2.5],
                       "volume": np.ones(4, dtype=np.uint64)})
    store.insert("ticks", df, source="test")
    got = bars(store, "ES", "1m")
    assert len(got) == 1
    assert (got["open"][0], got["close"][0], got["high"][0], got["low"][0]) == (1.0, 2.5, 3.0, 1.0)


# --- minute rollups ------------------------------------------------------------------------------------------

def test_rollups_answer_as_the_ticks_do_and_a_retry_does_not_count_twice(store, shared_data):
    from bridge.analytics.queries import volume_profile, vwap
    path = shared_data / "nt8" / ES
    load_nt8_file(store, path)
    store.insert("ticks", store.query_df(  # the whole file again under its own source: the retry case
        f"SELECT instrument, toUnixTimestamp64Nano(ts) AS ts, session_id, seq, price, volume FROM {store.database}.ticks "
        f"ORDER BY seq"), source=source_of(path))
    assert store.count("ticks") == 74_907
    ticks_in_rollups = store.query_df(f"SELECT sum(ticks) AS n FROM {store.database}.ticks_1m")["n"][0]
    assert int(ticks_in_rollups) == 74_907
    first = int(store.query_df(f"SELECT toUnixTimestamp64Nano(min(ts)) AS t FROM {store.database}.ticks")["t"][0])
    minute = 60 * 10**9
    lo = (first // minute + 3) * minute  # minute-aligned: rollups; one nanosecond later: the ticks
    hi = lo + 120 * minute
    for res in ("1m", "5m", "1h"):
        fast = bars(store, "ES", res, lo, hi)
        slow = bars(store, "ES", res, lo + 1, hi)  # the same ticks (none in that first nanosecond)
        assert len(fast) > 0
        pd.testing.assert_frame_equal(fast, slow, check_dtype=False, obj=res)
    fast, slow = vwap(store, "ES", lo, hi), vwap(store, "ES", lo + 1, hi)
    np.testing.assert_allclose(fast["vwap"], slow["vwap"], rtol=1e-12)
    assert list(fast["volume"]) == list(slow["volume"]) and list(fast["first_ns"]) == list(slow["first_ns"])
    pd.testing.assert_frame_equal(volume_profile(store, "ES", lo, hi, bucket=1.0),
                                  volume_profile(store, "ES", lo + 1, hi, bucket=1.0), check_dtype=False)


def test_rollups_created_beside_stored_ticks_are_filled_from_them(tmp_path):
    url = f"chdb://{tmp_path / 'ch'}"
    with open_store(url) as s:
        s.insert("ticks", _ticks(30_000), source="old")
        for t in ROLLUP_TABLES:  # a store from before the rollups existed
            s.engine.command(f"DROP TABLE {s.database}.{t}_mv")
            s.engine.command(f"DROP TABLE {s.database}.{t}")
    with open_store(url) as s:
        assert int(s.query_df(f"SELECT sum(ticks) AS n FROM {s.database}.ticks_1m")["n"][0]) == 30_000
        assert int(s.query_df(f"SELECT sum(volume) AS n FROM {s.database}.ticks_1m_price")["n"][0]) == 30_000
        s.insert("ticks", _ticks(1_000, start_ns=1_600_000_000 * 10**9), source="new")
        assert int(s.query_df(f"SELECT sum(ticks) AS n FROM {s.database}.ticks_1m")["n"][0]) == 31_000


# --- cluster DDL ---------------------------------------------------------------------------------------------

def test_cluster_ddl_parses_and_shards_every_table_by_instrument(capsys):
    import chdb

    from bridge.analytics.cluster import cluster_ddl
    from bridge.analytics.store import quote
    ddl = cluster_ddl("nt8bridge", "desk")
    for sql in ddl:  # ClickHouse's own parser: a syntax error raises
        chdb.query(f"SELECT formatQuery({quote(sql)})", "CSV")
    with pytest.raises(Exception, match="Syntax error"):
        chdb.query(f"SELECT formatQuery({quote(ddl[1].replace('ORDER BY', 'ORDER'))})", "CSV")
    every = [*TABLES, *ROLLUP_TABLES]
    for name in every:
        local = next(s for s in ddl if f".`{name}_local` ON CLUSTER" in s or f".{name}_local ON CLUSTER" in s)
        assert "ENGINE = Replicated" in local and "replicated_deduplication_window" in local, name
        dist = next(s for s in ddl if f".`{name}` ON CLUSTER `desk` AS" in s)
        assert f"Distributed(`desk`, `nt8bridge`, `{name}_local`, cityHash64(instrument))" in dist
    assert all("ON CLUSTER `desk`" in s for s in ddl)
    assert main(["analytics", "ddl", "--cluster", "desk"]) == 0
    assert capsys.readouterr().out.count("ON CLUSTER `desk`") == len(ddl)
