"""End to end, the way a user runs it: `nt8bridge ...` in a child process, a real sidecar, SQLite."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bridge.core.config import build_config
from bridge.core.instruments import InstrumentMaster
from bridge.nt8.client import Nt8Client
from bridge.protocol import messages as m
from tests.conftest import PLUMBING_CONFIG
from tests.integration.test_playback_digest import PINNED

CLI = [sys.executable, "-m", "bridge.cli"]


def nt8bridge(*args: str, check: bool = True, timeout: float = 900,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"nt8bridge {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def playback_json(*args: str) -> dict:
    return json.loads(nt8bridge("--config", str(PLUMBING_CONFIG), "playback", "--json", "--quiet", *args).stdout)


def rows(db: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.shared_data
@pytest.mark.slow
def test_es_tick_playback_is_complete_reconciled_and_repeatable(shared_data, tmp_path):
    data = str(shared_data / "nt8" / "ES 06-18.Last.txt.gz")
    db = tmp_path / "pb.sqlite"
    first = playback_json("--data", data, "--db", f"sqlite:///{db}")
    second = playback_json("--data", data, "--db", f"sqlite:///{db}")
    assert first["ticks_read"] == 74_907
    assert first["stored"]["ticks"] == first["ticks_read"] - first["ticks_rejected"]
    assert first["ticks_reconciled"] is True
    assert first["brackets"] > 0 and first["fills"] > 0
    assert first["digest"] == second["digest"]
    assert (first["brackets"], first["fills"], first["realized_pnl"]) == \
        (second["brackets"], second["fills"], second["realized_pnl"])
    # repeatable, and what the reference playback has always traded
    assert {"digest": first["digest"], "brackets": first["brackets"], "fills": first["fills"],
            "realized_pnl": first["realized_pnl"]["ES 06-18"]} == PINNED["python"]
    sid = first["session_id"]
    # every fill the client made is an execution the sidecar stored
    assert rows(db, "select count(*) from executions where session_id = ?", sid)[0][0] == first["fills"]
    # and no bracket had both its stop and its target filled
    both = rows(db, """select client_order_id from executions where session_id = ? and role in ('STOP','TARGET')
                       group by client_order_id having count(distinct role) > 1""", sid)
    assert both == []
    # each decision that sent an order is recorded before the order, with its risk checks
    decisions = rows(db, "select outcome, inputs from decisions where session_id = ?", sid)
    assert len(decisions) == first["decisions"] >= first["brackets"]
    assert all('"risk":[' in inputs for _, inputs in decisions)
    assert rows(db, "select end_reason from sessions where session_id = ?", sid) == [("BYE",)]


@pytest.mark.shared_data
def test_es_tick_playback_under_the_default_sizing_records_why_it_sends_nothing(shared_data, tmp_path):
    """No --config: fractional Kelly and the regime filter, as a user gets them. The docs say the reference
    strategy has no edge after costs, so Kelly sizes it to zero and nothing is sent; every signal must
    still be a stored NO_TRADE decision that says why, with the numbers to check it."""
    # no config file of the machine's user and no NT8BRIDGE_* override may stand in for the defaults
    env = {k: v for k, v in os.environ.items() if not k.startswith("NT8BRIDGE_")}
    env["XDG_CONFIG_HOME"] = env["APPDATA"] = str(tmp_path / "no-user-config")
    db = tmp_path / "kelly.sqlite"
    data = str(shared_data / "nt8" / "ES 06-18.Last.txt.gz")
    summary = json.loads(nt8bridge("playback", "--json", "--quiet", "--data", data, "--db", f"sqlite:///{db}",
                                   env=env).stdout)
    sid = summary["session_id"]
    defaults = build_config({}, {})

    # the sidecar ran the product's defaults, as the configuration it audited at start shows (before any
    # session, so the fresh database holds exactly one)
    [(payload,)] = rows(db, "select payload from audit_chain where kind = 'config'")
    recorded = tomllib.loads(json.loads(payload)["toml"])
    for section in ("strategy", "sizing", "portfolio", "risk"):
        assert recorded[section] == dataclasses.asdict(getattr(defaults, section)), section
    assert recorded["sizing"]["mode"] == "kelly" and recorded["portfolio"]["regime_filter"] is True

    # nothing sent, nothing filled: the digest is that of no orders and no fills
    assert summary["brackets"] == summary["fills"] == 0 and summary["realized_pnl"] == {}
    assert summary["digest"] == hashlib.sha256().hexdigest()
    assert rows(db, "select count(*) from orders where session_id = ?", sid) == [(0,)]
    assert rows(db, "select count(*) from executions where session_id = ?", sid) == [(0,)]
    # and still every tick stored, and a clean end
    assert summary["ticks_read"] == 74_907 and summary["ticks_rejected"] == 0
    assert rows(db, "select count(*) from ticks where session_id = ?", sid) == [(summary["ticks_read"],)]
    assert rows(db, "select end_reason from sessions where session_id = ?", sid) == [("BYE",)]

    decisions = rows(db, "select decision_id, strategy, outcome, rationale, inputs from decisions where session_id = ?",
                     sid)
    assert len(decisions) == summary["decisions"] > 0
    # each decision is in the audit chain too
    chained = rows(db, "select subject_id from audit_chain where session_id = ? and kind = 'decision'", sid)
    assert sorted(d for (d,) in chained) == sorted(d[0] for d in decisions)

    es = InstrumentMaster.default().resolve("ES 06-18")
    sizing_cfg = defaults.sizing
    cost = 2.0 * (sizing_cfg.commission_per_contract + sizing_cfg.slippage_ticks * es.tick_size * es.point_value)
    no_edge, regime_off = [], []
    for decision_id, strategy, outcome, rationale, inputs in decisions:
        assert strategy.startswith("momentum@") and outcome == "NO_TRADE", (decision_id, outcome)
        record = json.loads(inputs)
        assert "risk" not in record  # a signal sized to nothing never reaches the risk stage
        signal, sizing = record["signal"], record["sizing"]
        if rationale.startswith("switched off by regime: "):
            # momentum is a trend strategy: its regime multiplier was 0, so it was never sized
            assert sizing["regime_weight"] == 0.0 and "trend 0.00" in sizing["regime"], decision_id
            regime_off.append(decision_id)
            continue
        assert rationale.startswith("sized to zero: "), (decision_id, rationale)
        # Kelly's arithmetic, recomputed from the recorded signal and the default costs: no edge after costs
        assert sizing["mode"] == "kelly" and sizing["regime_weight"] > 0.0
        assert sizing["kelly_multiplier"] == sizing_cfg.kelly_fraction and sizing["equity"] == sizing_cfg.equity
        # no trade in the session yet, so the win probability is the strategy's stated one
        assert (sizing["track_wins"], sizing["track_losses"]) == (0, 0)
        assert sizing["p"] == sizing["stated_p"] == signal["win_probability"] == defaults.strategy.momentum_win_prior
        entry = sizing["entry_ref"]
        risk = abs(entry - signal["stop"]) * es.point_value + cost
        reward = abs(signal["target"] - entry) * es.point_value - cost
        assert sizing["risk_per_contract"] == pytest.approx(risk)
        assert sizing["reward_per_contract"] == pytest.approx(reward)
        assert sizing["payoff_ratio"] == pytest.approx(reward / risk)
        break_even = 1.0 / (1.0 + reward / risk)
        assert sizing["p"] <= break_even and f"break-even {break_even:.3f}" in rationale
        assert sizing["kelly_f"] == sizing["shrunk_f"] == sizing["applied_f"] == 0.0
        assert sizing["uncapped_contracts"] == sizing["contracts"] == 0
        no_edge.append(decision_id)
    # both defaults did their part on this session: the regime filter and Kelly each stopped signals
    assert no_edge and regime_off


@pytest.mark.shared_data
@pytest.mark.slow
def test_full_spy_tick_replay_playback_stores_every_accepted_tick(shared_data, tmp_path):
    db = tmp_path / "spy.sqlite"
    summary = playback_json("--data", str(shared_data / "nt8" / "SPY.Last.txt.gz"), "--db", f"sqlite:///{db}")
    assert summary["ticks_read"] == 1_887_460
    assert summary["ticks_rejected"] == sum(summary["ticks_rejected_by_reason"].values()) > 0
    assert set(summary["ticks_rejected_by_reason"]) <= {
        "QUALITY_PRICE_JUMP", "QUALITY_BAD_SIZE", "QUALITY_OUTSIDE_SESSION", "QUALITY_CROSSED_QUOTE"}
    assert summary["stored"]["ticks"] == summary["ticks_read"] - summary["ticks_rejected"]
    refused_events = sum(n for reason, n in summary["stored"]["quality_events_by_reason"].items()
                         if reason in summary["ticks_rejected_by_reason"])
    assert refused_events == summary["ticks_rejected"]  # each refusal stored with its reason


@pytest.mark.shared_data
def test_minute_bar_playback_with_two_instruments(shared_data, tmp_path):
    db = tmp_path / "bars.sqlite"
    summary = playback_json("--data", str(shared_data / "nt8" / "ES 12-23.Last.txt"),
                            str(shared_data / "nt8" / "NQ 12-23.Last.txt"), "--db", f"sqlite:///{db}")
    assert summary["instruments"] == ["ES 12-23", "NQ 12-23"]
    assert summary["bars_read"] == 40_720 + 40_696
    refused = sum(summary["bars_rejected_by_reason"].values())
    assert set(summary["bars_rejected_by_reason"]) == {"QUALITY_OUTSIDE_SESSION"}
    assert summary["stored"]["bars"] == summary["bars_read"] - refused
    assert summary["brackets"] > 0


def test_demo_runs_end_to_end_on_a_generated_session(tmp_path):
    db = tmp_path / "demo.sqlite"
    out = nt8bridge("demo", "--minutes", "120", "--json", "--quiet", "--db", f"sqlite:///{db}",
                    "--out", str(tmp_path / "gen")).stdout
    summary = json.loads(out)
    assert summary["ticks_read"] > 10_000
    assert summary["ticks_reconciled"] is True
    assert summary["brackets"] > 0 and summary["fills"] > 0  # the demo shows orders and fills end to end
    assert (tmp_path / "gen" / f"{summary['instruments'][0]}.Last.txt").exists()


def test_serve_flushes_everything_on_sigterm(tmp_path):
    db = tmp_path / "serve.sqlite"
    ready = tmp_path / "endpoint"
    proc = subprocess.Popen([*CLI, "serve", "--bind", "tcp://127.0.0.1:*", "--db", f"sqlite:///{db}",
                             "--ready-file", str(ready), "--no-metrics"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the sidecar did not start"
            time.sleep(0.02)
        t0 = int(datetime(2018, 5, 8, 14, 30, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
        client = Nt8Client(ready.read_text(), instance_id="sigterm", account="a", lockstep=False,
                           instruments=[m.InstrumentDecl("ES 06-18", 0.25, 50.0)])
        welcome = client.connect()
        for i in range(5000):
            client.send(m.Tick(0, 0, 2670.0 + 0.25 * (i % 3), 1, float("nan"), float("nan"), t0 + i * 1000, t0))
        assert client.flush(), "the sidecar did not acknowledge the ticks"
        proc.send_signal(signal.SIGTERM)  # no BYE: the sidecar is stopped under a live session
        assert proc.wait(60) == 0
        client.close(reason=None)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rows(db, "select count(*) from ticks where session_id = ?", welcome.session_id)[0][0] == 5000
    assert rows(db, "select end_reason from sessions where session_id = ?", welcome.session_id) == \
        [("SIDECAR_SHUTDOWN",)]


def test_bad_data_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "ES 06-18.Last.txt"
    bad.write_text("20180507 133000 0015330;2670.5;1\n20180507 133000 00153;abc;1\n")
    proc = nt8bridge("playback", "--data", str(bad), "--db", f"sqlite:///{tmp_path}/x.sqlite", check=False)
    assert proc.returncode == 2
    assert "line 2" in proc.stderr and "Traceback" not in proc.stderr
    missing = nt8bridge("playback", "--data", str(tmp_path / "nope.txt"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_unknown_instrument_tells_what_to_do(tmp_path):
    f = tmp_path / "XYZ 06-18.Last.txt"
    f.write_text("20180507 133000 0015330;10.5;1\n")
    proc = nt8bridge("playback", "--data", str(f), check=False)
    assert proc.returncode == 2 and "[[instruments]]" in proc.stderr


def test_config_show_and_validation(tmp_path):
    shown = nt8bridge("config", "show").stdout
    assert "[server]" in shown and 'bind = "tcp://127.0.0.1:5555"' in shown
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nheartbeat_ms = 5\nbogus = 1\n")
    proc = nt8bridge("--config", str(bad), "config", "show", check=False)
    assert proc.returncode == 2
    assert "server.heartbeat_ms: must be >= 50" in proc.stderr and "server.bogus: unknown key" in proc.stderr


def test_data_inspect_and_db_commands(tmp_path, shared_data):
    info = json.loads(nt8bridge("data", "inspect", str(shared_data / "nt8" / "ES 06-18.Last.txt.gz"), "--json").stdout)
    assert info["rows"] == 74_907 and info["format"] == "tick"
    url = f"sqlite:///{tmp_path}/db.sqlite"
    assert "is at revision" in nt8bridge("db", "upgrade", "--db", url).stdout
    out = nt8bridge("db", "backup", "--db", url, "--to", str(tmp_path / "copy.sqlite")).stdout
    assert "backup" in out and (tmp_path / "copy.sqlite").exists()


@pytest.mark.shared_data
def test_playback_against_a_running_sidecar(shared_data, tmp_path):
    from bridge.transport.sidecar import SidecarProcess
    with SidecarProcess(f"sqlite:///{tmp_path}/ext.sqlite", PLUMBING_CONFIG) as sidecar:
        summary = playback_json("--data", str(shared_data / "nt8" / "ES 06-18.Last.txt.gz"),
                                "--sidecar", sidecar.endpoint)
    assert summary["ticks_read"] == 74_907 and summary["brackets"] > 0
    assert "stored" not in summary  # another process owns that sidecar's storage
