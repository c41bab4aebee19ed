"""`nt8bridge backtest` on real ES and NQ minute bars: walk-forward, through the real sidecar."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "bridge.cli"]


def trimmed(src, dst, first_day: str, last_day: str):
    """The real file's bars from first_day to last_day (yyyyMMdd), as the same NT8 export format."""
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        fout.writelines(line for line in fin if first_day <= line[:8] <= last_day)
    return dst


@pytest.mark.shared_data
@pytest.mark.slow
def test_walk_forward_backtest_of_three_strategies_on_es_and_nq(shared_data, tmp_path):
    es = trimmed(shared_data / "nt8" / "ES 12-23.Last.txt", tmp_path / "ES 12-23.Last.txt", "20231010", "20231020")
    nq = trimmed(shared_data / "nt8" / "NQ 12-23.Last.txt", tmp_path / "NQ 12-23.Last.txt", "20231010", "20231020")
    db = tmp_path / "bt.sqlite"
    proc = subprocess.run([*CLI, "backtest", "--data", str(es), str(nq), "--strategies", "momentum,reversion,spread",
                           "--split", "2023-10-17", "--json", "--quiet", "--trades", "--db", f"sqlite:///{db}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["instruments"] == ["ES 12-23", "NQ 12-23"]

    # walk-forward: the calibration window ends where the test starts, and its record sets the priors
    cal = report["calibration"]
    assert cal["to"] == report["test"]["from"] == "2023-10-17T00:00:00Z"
    assert cal["priors"]["spread"]["bets"] > 0, "the spread strategy should trade ES against NQ in a week of data"
    for name, p in cal["priors"].items():
        k = 30.0  # sizing.prior_strength default
        assert math.isclose(p["calibrated_prior"], (p["stated_prior"] * k + p["wins"]) / (k + p["bets"]))
        assert report["test"]["priors_used"][name] == pytest.approx(p["calibrated_prior"])

    # the test window's figures add up from its own trades, all entered after the split
    trades = report["trades"]
    summary = report["test"]["summary"]
    assert all(t["entry"] >= "2023-10-17" for t in trades)
    assert summary["total"]["trades"] == len(trades)
    assert summary["total"]["net_pnl"] == pytest.approx(sum(t["net_pnl"] for t in trades), abs=0.01)
    per_strategy = {k: v["trades"] for k, v in summary.items() if k != "total"}
    assert sum(per_strategy.values()) == len(trades)
    for key in ("sharpe", "sortino", "max_drawdown", "cagr", "win_rate", "exposure"):
        assert key in summary["total"]

    # every fill of the test playback is an execution the sidecar stored, and every emitted decision
    # carries its sizing arithmetic
    with sqlite3.connect(db) as conn:
        sid = report["test"]["session_id"]
        stored = conn.execute("select count(*) from executions where session_id = ?", (sid,)).fetchone()[0]
        emitted = conn.execute("select inputs from decisions where session_id = ? and outcome = 'EMITTED'",
                               (sid,)).fetchall()
        regimes = conn.execute("select subject_id, payload from audit_chain where session_id = ? and kind = 'regime'",
                               (sid,)).fetchall()
    assert stored == report["test"]["fills"]
    for (inputs,) in emitted:
        sizing = json.loads(inputs)["sizing"]
        assert sizing["mode"] == "kelly" and "explain" in sizing and sizing["contracts"] >= 1
    # regime changes are logged with their evidence, per instrument
    assert {name for name, _ in regimes} == {"ES 12-23", "NQ 12-23"}
    for _, payload in regimes:
        p = json.loads(payload)
        assert p["volatility"] in ("LOW", "NORMAL", "HIGH") and p["trend"] in ("TRENDING", "RANGING")
        assert "realized_vol" in p["evidence"] and p["method"] in ("gmm", "rules")
    assert {json.loads(p)["method"] for _, p in regimes} == {"gmm", "rules"}  # rules until enough history


def test_an_unknown_strategy_is_named(tmp_path):
    proc = subprocess.run([*CLI, "backtest", "--data", str(tmp_path / "x.txt"), "--strategies", "momentum,martingale"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "'martingale' is not one of momentum, reversion, spread, ml" in proc.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_ml_strategy_without_a_model_does_not_trade_and_the_report_says_why(shared_data, tmp_path):
    es = trimmed(shared_data / "nt8" / "ES 12-23.Last.txt", tmp_path / "ES 12-23.Last.txt", "20231010", "20231012")
    db = tmp_path / "bt.sqlite"
    proc = subprocess.run([*CLI, "backtest", "--data", str(es), "--strategies", "ml", "--split", "2023-10-11",
                           "--json", "--quiet", "--trades", "--db", f"sqlite:///{db}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["strategy_status"]["ml"].startswith("no model")
    assert report["trades"] == [] and report["test"]["brackets"] == 0
    assert report["test"]["summary"]["total"]["trades"] == 0
    with sqlite3.connect(db) as conn:   # and the session's audit chain records the state, once per session
        rows = conn.execute("select payload from audit_chain where kind = 'strategy_status' and subject_id = 'ml@0.2.0'"
                            ).fetchall()
    assert len(rows) == 2 and all("no model" in json.loads(p)["status"] for (p,) in rows)


@pytest.mark.shared_data
def test_research_engine_backtest_equals_the_sidecar_process_and_writes_files_empyrical_reads(shared_data, tmp_path):
    """The default engine runs the decision path in this process: the same trades as a sidecar process over ZeroMQ;
    its returns.csv gives the report's Sharpe, Sortino and drawdown by empyrical's own formulas."""
    import numpy as np
    import pandas as pd

    es = trimmed(shared_data / "nt8" / "ES 12-23.Last.txt", tmp_path / "ES 12-23.Last.txt", "20231010", "20231013")
    nq = trimmed(shared_data / "nt8" / "NQ 12-23.Last.txt", tmp_path / "NQ 12-23.Last.txt", "20231010", "20231013")
    reports = {}
    for engine in ("research", "playback"):
        out = tmp_path / engine
        proc = subprocess.run([*CLI, "backtest", "--data", str(es), str(nq), "--strategies", "momentum,reversion,spread",
                               "--engine", engine, "--out", str(out), "--equity", "100000", "--json", "--quiet", "--trades",
                               "--db", f"sqlite:///{tmp_path / (engine + '.sqlite')}"],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[engine] = json.loads(proc.stdout)
    research, playback = reports["research"], reports["playback"]
    assert research["engine"] == "research" and playback["engine"] == "playback"
    assert research["trades"] == playback["trades"] and len(research["trades"]) > 0
    assert research["test"]["summary"] == playback["test"]["summary"]

    files = research["files_written"]
    r = pd.read_csv(files["returns"], index_col=0, parse_dates=True)["return"]
    equity = pd.read_csv(files["equity"], index_col=0, parse_dates=True)["equity"]
    trades = pd.read_csv(files["trades"])
    total = research["test"]["summary"]["total"]
    assert len(trades) == total["trades"] and trades["net_pnl"].sum() == pytest.approx(total["net_pnl"], abs=0.01)
    # empyrical's definitions: annualised with 252 days, sample std (ddof=1) for Sharpe, downside deviation
    # sqrt(mean(min(r, 0)^2)) for Sortino, drawdown from the running peak of the compounded returns with the
    # starting value in it (negative there, a positive fraction in the report)
    sharpe = r.mean() / r.std(ddof=1) * np.sqrt(252)
    sortino = r.mean() * 252 / (np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) * np.sqrt(252))
    wealth = np.concatenate(([1.0], (1 + r).cumprod().to_numpy()))
    max_dd = -(wealth / np.maximum.accumulate(wealth) - 1).min()
    assert total["sharpe"] == pytest.approx(sharpe, abs=1e-6)
    assert total["sortino"] == pytest.approx(sortino, abs=1e-6)
    assert total["max_drawdown"] == pytest.approx(max_dd, abs=1e-6)
    assert equity.iloc[-1] == pytest.approx(100_000 + total["net_pnl"], abs=0.01)  # --equity 100000
