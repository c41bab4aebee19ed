"""Run-time limit changes and overrides through the control channel of a running sidecar, and the
compliance exports of what happened (``nt8bridge risk ...``, ``nt8bridge report day``)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
import subprocess
import sys

import pytest

from bridge.core.config import load_config
from bridge.nt8.playback import load_stream, run_playback
from bridge.transport.sidecar import SidecarProcess, master_for
from tests.conftest import PLUMBING_CONFIG

CLI = [sys.executable, "-m", "bridge.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.shared_data
@pytest.mark.slow
def test_limit_change_reaches_later_sessions_and_bad_commands_change_nothing(shared_data, tmp_path):
    config = load_config(PLUMBING_CONFIG)
    stream = load_stream([shared_data / "nt8" / "ES 06-18.Last.txt.gz"])
    db = tmp_path / "limits.sqlite"
    with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG) as proc:
        control = proc.control_endpoint
        # refused: unknown limit, an override approved by its own asker, an override without a duration
        bad = cli("risk", "set", "--control", control, "--scope", "instrument:ES", "--limit", "max_longs",
                  "--value", "0", "--operator", "carol", "--reason", "typo")
        assert bad.returncode == 2 and "unknown limit 'max_longs'" in bad.stderr, bad.stderr
        bad = cli("risk", "override", "--control", control, "--scope", "instrument:ES", "--limit", "max_short",
                  "--value", "0", "--who", "dave", "--why", "test", "--approved-by", "Dave", "--minutes", "10")
        assert bad.returncode == 2 and "second person" in bad.stderr, bad.stderr
        # accepted before any session exists: the playback's session must start with it
        ok = cli("risk", "set", "--control", control, "--scope", "instrument:ES", "--limit", "max_long",
                 "--value", "0", "--operator", "carol", "--reason", "no new longs today")
        assert ok.returncode == 0, ok.stderr
        ok = cli("risk", "override", "--control", control, "--scope", "*", "--limit", "max_order_quantity",
                 "--value", "3", "--who", "dave", "--why", "bigger clips", "--approved-by", "erin", "--minutes", "30")
        assert ok.returncode == 0, ok.stderr
        shown = cli("risk", "show", "--control", control)
        assert shown.returncode == 0, shown.stderr
        commands = json.loads(shown.stdout)["commands"]
        assert [(c["kind"], c["field"], c["value"]) for c in commands] == [
            ("set_limit", "max_long", 0), ("override", "max_order_quantity", 3)]
        result = run_playback(stream, proc.endpoint, config, master_for(config), window=64, instance_id="limits")
    assert result.ticks_read == 74_907 and result.brackets > 0

    with sqlite3.connect(db) as conn:
        decisions = [(o, json.loads(i)) for o, i in conn.execute("select outcome, inputs from decisions")]
        audits = conn.execute("select kind, subject_id, payload from audit_chain "
                              "where kind in ('limit_change', 'override', 'risk_event')").fetchall()
        config = conn.execute("select payload from audit_chain where kind = 'config'").fetchall()
    # the configuration in force at start is in the chain, with its hash
    assert len(config) == 1 and "[risk]" in json.loads(config[0][0])["toml"]
    buys = [(o, i) for o, i in decisions if i.get("signal", {}).get("side") == "BUY"]
    sells = [(o, i) for o, i in decisions if i.get("signal", {}).get("side") == "SELL"]
    assert buys and sells, "the data should give the strategy both long and short signals"
    assert all(o == "DENIED:RISK_MAX_LONG" for o, _ in buys), {o for o, _ in buys}
    assert any(o == "EMITTED" for o, _ in sells), "shorts were not limited"
    # the denial names the limit in force and its scope
    check = next(c for c in buys[0][1]["risk"] if c["check"] == "max_long")
    assert check["limit"] == 0 and check["scope"] == "instrument:ES" and not check["passed"]
    kinds = [(k, s) for k, s, _ in audits]
    assert ("limit_change", "carol") in kinds and ("override", "dave") in kinds
    replayed = [json.loads(p) for k, _, p in audits if k == "risk_event"]
    assert {e["event"] for e in replayed} >= {"LimitChange", "Override"}, replayed
    over = json.loads(next(p for k, _, p in audits if k == "override"))
    assert over["approved_by"] == "erin" and over["duration_s"] == 1800.0

    verify = cli("audit", "verify", "--db", f"sqlite:///{db}")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    today = dt.datetime.now(dt.timezone.utc).date()
    out = tmp_path / "compliance"
    report = cli("report", "day", "--db", f"sqlite:///{db}", "--day", str(today - dt.timedelta(days=1)),
                 "--end", str(today + dt.timedelta(days=2)), "--operator-id", "DESK7", "--out", str(out))
    assert report.returncode == 0, report.stderr
    names = sorted(p.name for p in out.iterdir())
    assert [n.split("-")[0] for n in names] == ["blotter", "breaches", "compliance", "positions", "reconciliation",
                                                "rts22", "rts22"]
    with open(next(out.glob("breaches-*.csv")), newline="") as f:
        breaches = list(csv.DictReader(f))
    text = json.dumps(breaches)
    assert "carol" in text and "erin" in text, breaches[:3]
    page = next(out.glob("compliance-*.html")).read_text()
    assert "intact" in page.lower() or "verified" in page.lower()
