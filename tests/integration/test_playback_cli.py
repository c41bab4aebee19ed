"""End to end, the way a user runs it: `nt8bridge ...` in a child process, a real sidecar, SQLite."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bridge.nt8.client import Nt8Client
from bridge.protocol import messages as m
from tests.conftest import PLUMBING_CONFIG

CLI = [sys.executable, "-m", "bridge.cli"]


def nt8bridge(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
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
