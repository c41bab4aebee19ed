"""The sidecar's own database into the analytics store (embedded chdb): ``analytics load --db`` of a real
recorded session, the live feed off the storage writer (in this process, and in a real sidecar), and the
``spreads`` and ``executions`` queries against pandas computed here from the same rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

pytest.importorskip("chdb", reason="the analytics extra (chdb) is not installed; it has no Windows build")

from bridge.analytics.feed import AnalyticsFeed  # noqa: E402
from bridge.analytics.load_db import load_database, source_for  # noqa: E402
from bridge.analytics.queries import executions, spreads  # noqa: E402
from bridge.analytics.store import AnalyticsError, open_store  # noqa: E402
from bridge.cli.main import main  # noqa: E402
from bridge.storage.database import create_engine_for  # noqa: E402
from bridge.storage.writer import StorageWriter  # noqa: E402
from bridge.transport.metrics import _analytics_metrics  # noqa: E402
from tests.conftest import PLUMBING_CONFIG  # noqa: E402
from tests.integration.test_audit_trail import record_playback  # noqa: E402
from tests.unit.test_storage_writer import sample_rows  # noqa: E402

TABLES = ("ticks", "bars", "quality_events", "decisions", "orders", "order_updates", "executions", "positions")


def storage_counts(db: Path | str) -> dict[str, int]:
    """Rows per analytics table as the database (a file, or a URL) holds them: trades are ticks, bid and ask
    updates quotes."""
    engine = create_engine_for(db if isinstance(db, str) else f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            n = lambda sql: conn.execute(text(sql)).scalar_one()  # noqa: E731
            out = {t: n(f"select count(*) from {t}") for t in TABLES}
            out["ticks"] = n("select count(*) from ticks where kind = 0")
            out["quotes"] = n("select count(*) from ticks where kind <> 0")
    finally:
        engine.dispose()
    return out


def store_counts(url: str) -> dict[str, int]:
    with open_store(url) as s:  # one chdb folder per process at a time: opened and closed here
        return {t: s.count(t) for t in (*TABLES, "quotes")}


@pytest.fixture(scope="module")
def recorded(shared_data, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("rec") / "rec.sqlite"
    record_playback(shared_data, f"sqlite:///{db}")
    return db


@pytest.mark.shared_data
def test_load_db_of_a_recorded_session_equals_storage_and_twice_inserts_nothing(recorded, tmp_path, capsys):
    url, db_url = f"chdb://{tmp_path / 'ch'}", f"sqlite:///{recorded}"
    want = storage_counts(recorded)
    assert want["ticks"] > 0 and want["executions"] > 0 and want["decisions"] > 0
    for _ in range(2):
        assert main(["analytics", "load", "--db", db_url, "--url", url, "--json"]) == 0
        assert store_counts(url) == want
    second = {r["table"]: r for r in json.loads(capsys.readouterr().out.split("]\n")[1] + "]")}
    assert sum(r["sent"] for r in second.values()) == 0
    assert all(r["sessions_skipped"] == 1 for t, r in second.items() if want[t])
    # a session the store holds in part (a feed that dropped rows) is replaced, not doubled
    with open_store(url) as s:
        s.delete("ticks", "rowNumberInAllBlocks() % 3 = 0 OR seq % 2 = 0")
        assert 0 < s.count("ticks") < want["ticks"]
        results = {r.table: r for r in load_database(s, db_url)}
        assert results["ticks"].sessions_repaired == 1 and results["ticks"].sent == want["ticks"]
        fills = s.query_df("SELECT role, price, expected_price, latency_ns, strategy, account, decision_id "
                           "FROM nt8bridge.executions ORDER BY ts")
    assert store_counts(url) == want
    # an entry's expected price is its decision's reference, its latency from the decision's stamp
    with sqlite3.connect(recorded) as conn:
        ref = pd.read_sql("select e.ts_event_ns - d.ts_event_ns as latency, d.inputs, o.stop_price, o.target_price, "
                          "e.role from executions e join orders o using (client_order_id) join decisions d "
                          "on d.decision_id = o.decision_id order by e.ts_event_ns", conn)
    for f, r in zip(fills.itertuples(), ref.itertuples()):
        assert f.role == r.role and f.strategy and f.account == "Playback101" and f.decision_id
        if r.role == "ENTRY":
            checks = {c["check"]: c["value"] for c in json.loads(r.inputs)["risk"]}
            assert f.expected_price == checks["reference_price"] and f.latency_ns == r.latency
        else:
            assert f.expected_price == (r.stop_price if r.role == "STOP" else r.target_price)
            assert pd.isna(f.latency_ns)


def test_open_sessions_wait_for_include_open(tmp_path, capsys):
    db = tmp_path / "rec.sqlite"
    db_url, url = f"sqlite:///{db}", f"chdb://{tmp_path / 'ch'}"
    with StorageWriter(db_url) as w:
        w.write("sessions", (7, "i", "Sim101", "peer", 1, 1, None, None, 0))  # no end recorded
        for r in sample_rows("ticks", 30):
            w.write("ticks", (7, *r[1:]))
    assert main(["analytics", "load", "--db", db_url, "--url", url]) == 0
    assert "1 still open (skipped; --include-open)" in capsys.readouterr().out
    assert main(["analytics", "load", "--db", db_url, "--url", url, "--include-open"]) == 0
    assert store_counts(url) == storage_counts(db)


def test_load_db_from_postgresql_twice_inserts_nothing_twice(pg_clean_url, tmp_path):
    url = f"chdb://{tmp_path / 'ch'}"
    with StorageWriter(pg_clean_url, batch_rows=500) as w:  # text keys (decisions, orders) and ids, COPY
        w.write("sessions", (1, "i", "Sim101", "peer", 1, 1, 2, "BYE", 0))
        for table, n in (("ticks", 2500), ("decisions", 700), ("orders", 700), ("executions", 900)):
            for r in sample_rows(table, n):
                w.write(table, (r[0], 1, *r[2:]) if table in ("decisions", "orders") else (1, *r[1:]))
    want = storage_counts(pg_clean_url)
    assert want["decisions"] == 700 and want["quotes"] > 0
    with open_store(url, batch_rows=1000) as s:
        first = load_database(s, pg_clean_url)
        second = load_database(s, pg_clean_url)
        got = {t: s.count(t) for t in (*TABLES, "quotes")}
        accounts = set(s.query_df("SELECT DISTINCT account FROM nt8bridge.orders")["account"])
    assert got == want and accounts == {"Sim101"}
    assert sum(r.sent for r in first) == sum(want.values()) and sum(r.sent for r in second) == 0


# --- the live feed ---------------------------------------------------------------------------------------------


def _record(db_url: str, feed: AnalyticsFeed | None, n: int = 3000) -> None:
    with StorageWriter(db_url, batch_rows=200, on_committed=feed.on_committed if feed else None) as w:
        w.write("sessions", (1, "i", "Sim101", "peer", 1, 1, 2, "BYE", 0))
        for r in sample_rows("ticks", n):
            w.write("ticks", (1 + r[0] % 3, *r[1:]))  # three sessions, trades and quotes
        for r in sample_rows("bars", 50):
            w.write("bars", (1, *r[1:]))


def test_live_feed_equals_storage_and_load_db_then_sends_nothing(tmp_path):
    db = tmp_path / "rec.sqlite"
    db_url, url = f"sqlite:///{db}", f"chdb://{tmp_path / 'ch'}"
    feed = AnalyticsFeed(lambda: open_store(url, batch_rows=1000), source_for(db_url), batch_rows=1000, flush_s=60)
    feed.start()
    _record(db_url, feed)
    feed.close()
    r = feed.report()
    assert r["rows_dropped"] == 0 and r["errors"] == 0 and r["rows_sent"] == 3050 and r["state"] == "closed"
    assert store_counts(url) == storage_counts(db)
    with open_store(url) as s:  # the feed's rows carry the database as their source: a load finds them complete
        assert sum(x.sent for x in load_database(s, db_url)) == 0
    metrics = {f.name: f.samples[0].value for f in _analytics_metrics(SimpleNamespace(analytics=feed))}
    assert metrics["nt8bridge_analytics_rows_sent"] == 3050 and metrics["nt8bridge_analytics_rows_dropped"] == 0
    assert metrics["nt8bridge_analytics_batches"] == r["batches"] > 0


def test_feed_retry_after_an_error_inserts_nothing_twice(tmp_path):
    db = tmp_path / "rec.sqlite"
    db_url, url = f"sqlite:///{db}", f"chdb://{tmp_path / 'ch'}"
    failed: list[str] = []

    def flaky_store():
        s = open_store(url, batch_rows=1000)
        real = s.engine.insert_df

        def insert_then_fail(database: str, table: Any, df: pd.DataFrame, token: str) -> None:
            real(database, table, df, token)
            if len(failed) < 2:  # the reply lost after ClickHouse took the batch (twice; 3 attempts)
                failed.append(token)
                raise AnalyticsError("connection reset")

        s.engine.insert_df = insert_then_fail  # type: ignore[method-assign]
        return s

    feed = AnalyticsFeed(flaky_store, source_for(db_url), batch_rows=1000, flush_s=60, retry_s=0.01)
    feed.start()
    _record(db_url, feed)
    feed.close()
    assert len(failed) == 2 and feed.report()["errors"] == 2 and feed.report()["rows_dropped"] == 0
    assert store_counts(url) == storage_counts(db)


def test_store_away_drops_to_a_counter_never_blocks_and_load_db_backfills(tmp_path, caplog):
    db = tmp_path / "rec.sqlite"
    db_url, url = f"sqlite:///{db}", f"chdb://{tmp_path / 'ch'}"

    def away():
        raise AnalyticsError("cannot reach the ClickHouse server at ch:8123")

    feed = AnalyticsFeed(away, source_for(db_url), batch_rows=1000, flush_s=60)
    feed.start()
    _record(db_url, feed)  # the writer commits everything: the feed never made it wait
    feed.close()
    r = feed.report()
    assert r["rows_sent"] == 0 and r["rows_dropped"] == 3050 and r["errors"] >= 1
    assert r["sessions_to_backfill"] == [1, 2, 3]
    assert "analytics load --db` backfills" in caplog.text
    with open_store(url) as s:
        load_database(s, db_url)
    assert store_counts(url) == storage_counts(db)


def test_a_full_queue_drops_rows_rather_than_wait(tmp_path):
    db = tmp_path / "rec.sqlite"
    db_url = f"sqlite:///{db}"
    release = __import__("threading").Event()

    def slow_store():
        release.wait(60)  # the store takes its time: the feed's queue of one fills
        raise AnalyticsError("too slow")

    feed = AnalyticsFeed(slow_store, source_for(db_url), batch_rows=1000, queue_items=1, flush_s=60)
    feed.start()
    _record(db_url, feed)
    release.set()
    feed.close()
    assert feed.report()["rows_dropped"] == 3050  # some by the full queue, the rest by the unreachable store
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from ticks").fetchone()[0] == 3000


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_sidecar_with_analytics_url_feeds_the_store_equal_to_storage(shared_data, tmp_path):
    db, ch = tmp_path / "rec.sqlite", tmp_path / "ch"
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text(Path(PLUMBING_CONFIG).read_text() + f'\n[analytics]\nurl = "chdb://{ch}"\nbatch_rows = 5000\n'
                   "flush_s = 0.5\n")
    record_playback(shared_data, f"sqlite:///{db}", cfg=cfg)
    # the sidecar has exited: its chdb folder is free
    want = storage_counts(db)
    assert store_counts(f"chdb://{ch}") == want and want["executions"] > 0


# --- queries against pandas ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """Quotes and fills of two instruments over two CME sessions, into one store, and the same rows here."""
    rng = np.random.default_rng(7)
    url = f"chdb://{tmp_path_factory.mktemp('q') / 'ch'}"
    t0 = pd.Timestamp("2023-10-10 20:00", tz="UTC").value  # 15:00 CT: sessions of the 10th and the 11th
    n = 4000
    ts = t0 + np.sort(rng.choice(30 * 3600 * 10**9 // 10**6, n, replace=False)).astype(np.int64) * 10**6
    inst = rng.choice(["ES 12-23", "NQ 12-23"], n)
    bid = 4300 + np.round(rng.normal(0, 2, n) * 4) / 4
    ask = bid + rng.choice([0.25, 0.5, 0.75, 1.0], n, p=[0.7, 0.15, 0.1, 0.05])
    ask[rng.random(n) < 0.03] = np.nan  # a side not known yet: left out
    quotes = pd.DataFrame({"instrument": inst, "ts": ts, "session_id": 1, "seq": np.arange(n, dtype=np.uint64),
                           "bid": bid, "ask": ask, "bid_size": pd.array([5] * n, dtype="UInt64"),
                           "ask_size": pd.array([None] * n, dtype="UInt64")})
    m = 600
    fts = t0 + np.sort(rng.choice(30 * 3600, m, replace=False)).astype(np.int64) * 10**9
    expected = 4300 + np.round(rng.normal(0, 5, m) * 4) / 4
    fills = pd.DataFrame({
        "instrument": rng.choice(["ES 12-23", "NQ 12-23", "ZZ"], m), "ts": fts, "session_id": 1,
        "seq": np.arange(m), "execution_id": [f"x{i}" for i in range(m)], "client_order_id": "c",
        "decision_id": "d", "strategy": rng.choice(["momentum", "meanrev"], m), "account": "Sim101",
        "role": rng.choice(["ENTRY", "STOP", "TARGET"], m), "side": rng.choice(["BUY", "SELL"], m),
        "quantity": rng.integers(1, 4, m), "price": expected + rng.integers(-3, 5, m) * 0.25,
        "commission": pd.array([2.09] * m, dtype="Float64"),
        "expected_price": pd.array(np.where(rng.random(m) < 0.1, np.nan, expected), dtype="Float64"),
        "latency_ns": pd.array(np.where(rng.random(m) < 0.3, None, rng.integers(10**5, 10**9, m)), dtype="Int64")})
    with open_store(url) as s:
        s.insert("quotes", quotes, source="test")
        s.insert("executions", fills, source="test")
    return url, quotes, fills


def _session(ts: pd.Series) -> pd.Series:
    local = pd.to_datetime(ts, utc=True).dt.tz_convert("America/Chicago")
    return (local + pd.Timedelta(hours=7)).dt.date  # 17:00 CT opens the next day's session


def test_spreads_per_session_and_hour_equal_pandas(market):
    url, q, _ = market
    with open_store(url) as s:
        by_session = spreads(s, "ES")
        by_hour = spreads(s, "ES", by="session,hour")
    q = q[q["instrument"].str.startswith("ES ") & q["ask"].notna()].copy()
    q["spread"], q["session"] = q["ask"] - q["bid"], _session(q["ts"])
    q["hour"] = pd.to_datetime(q["ts"], utc=True).dt.tz_convert("America/Chicago").dt.hour
    q = q.sort_values(["ts", "seq"])
    q["stood"] = q.groupby("session")["ts"].shift(-1).fillna(q["ts"]) - q["ts"]
    for got, keys in ((by_session, ["session"]), (by_hour, ["session", "hour"])):
        g = q.groupby(keys)
        want = pd.DataFrame({"quotes": g.size(), "mean_spread": g["spread"].mean(),
                             "median_spread": g["spread"].median(), "p95_spread": g["spread"].quantile(0.95),
                             "twa_spread": g.apply(lambda x: (x["spread"] * x["stood"]).sum() / x["stood"].sum()
                                                   if x["stood"].sum() else np.nan)}).reset_index()
        assert len(got) == len(want) > 1
        got = got.assign(session=pd.to_datetime(got["session"]).dt.date)
        for c in want.columns:
            if c in ("session", "hour", "quotes"):
                assert list(got[c]) == list(want[c]), c
            else:
                np.testing.assert_allclose(got[c].astype(float), want[c].astype(float), rtol=1e-9, err_msg=c)


@pytest.mark.parametrize("by", ["strategy,instrument", "strategy,instrument,hour", "role,side"])
def test_executions_equal_pandas(market, by):
    url, _, f = market
    ticks = {"ES 12-23": (0.25, 50.0), "NQ 12-23": (0.25, 20.0)}  # ZZ: unknown, no slippage in ticks or money
    with open_store(url) as s:
        got = executions(s, ticks, by=by)
    f = f.copy()
    keys = by.split(",")
    f["hour"] = pd.to_datetime(f["ts"], utc=True).dt.tz_convert("America/Chicago").dt.hour
    sign = np.where(f["side"] == "SELL", -1, 1)
    tick = f["instrument"].map({k: v[0] for k, v in ticks.items()})
    value = f["instrument"].map({k: v[0] * v[1] for k, v in ticks.items()})
    f["slip_ticks"] = sign * (f["price"] - f["expected_price"].astype(float)) / tick
    f["slip_money"] = f["slip_ticks"] * value * f["quantity"]
    f["lat"] = f["latency_ns"].astype(float) / 1e6
    g = f.groupby(keys)
    want = pd.DataFrame({"fills": g.size(), "volume": g["quantity"].sum(),
                         "slippage_ticks_mean": g["slip_ticks"].mean(),
                         "slippage_ticks_p95": g["slip_ticks"].quantile(0.95),
                         "slippage_money_mean": g["slip_money"].mean(),
                         "slippage_money_p95": g["slip_money"].quantile(0.95),
                         "latency_ms_mean": g["lat"].mean(), "latency_ms_p95": g["lat"].quantile(0.95)}).reset_index()
    assert len(got) == len(want) > 1
    for c in want.columns:
        if c in keys or c in ("fills", "volume"):
            assert list(got[c]) == list(want[c]), c
        else:
            np.testing.assert_allclose(got[c].astype(float), want[c].astype(float), rtol=1e-9, err_msg=c)
    if "instrument" in keys:
        zz = got[got["instrument"] == "ZZ"]
        assert len(zz) and zz["slippage_ticks_mean"].isna().all() and zz["fills"].sum() > 0


def test_spreads_and_executions_commands(market, capsys):
    url = market[0]
    assert main(["analytics", "spreads", "--instrument", "NQ", "--by", "hour", "--url", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {"hour", "quotes", "twa_spread"} <= set(rows[0])
    assert main(["analytics", "executions", "--by", "strategy,hour", "--instrument", "ES", "--url", url]) == 0
    assert "slippage_ticks_p95" in capsys.readouterr().out
    assert main(["analytics", "executions", "--by", "venue", "--url", url]) != 0
    assert "--by 'venue'" in capsys.readouterr().err
