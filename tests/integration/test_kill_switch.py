"""The kill switch on a running playback: every session flattened, nothing new until a named operator enables."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from bridge.core.config import load_config
from bridge.transport.control import ControlError, send_command
from bridge.nt8.playback import load_stream, run_playback
from bridge.transport.sidecar import SidecarProcess, master_for
from tests.conftest import PLUMBING_CONFIG

CLI = [sys.executable, "-m", "bridge.cli"]


def position_before(result, index: int) -> dict[int, int]:
    """Signed position per instrument from the fills on events before ``index``."""
    pos: dict[int, int] = {}
    for _, f in result.fills_detail:
        if f.tick_index // 4 < index:
            pos[f.instrument_id] = pos.get(f.instrument_id, 0) + (1 if f.side == "BUY" else -1) * f.quantity
    return pos


@pytest.mark.shared_data
@pytest.mark.slow
def test_kill_flattens_every_session_and_refuses_orders_until_enabled(shared_data, tmp_path):
    config = load_config(PLUMBING_CONFIG)
    master = master_for(config)
    streams = {"ticks": load_stream([shared_data / "nt8" / "ES 06-18.Last.txt.gz"]),
               "bars": load_stream([shared_data / "nt8" / "NQ 12-23.Last.txt"])}
    db = tmp_path / "kill.sqlite"
    done = {name: 0 for name in streams}
    marks: dict[str, float] = {}
    lock = threading.Lock()
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG) as proc:
        control = proc.control_endpoint
        assert control

        def progress(name: str, n: int) -> None:
            with lock:
                done[name] = n
                # kill once both sessions are well under way; enable a while later
                if "kill" not in marks and done["ticks"] >= 16_384 and done["bars"] >= 16_384:
                    marks["kill"] = time.time_ns()
                    out = subprocess.run([*CLI, "kill", "--control", control, "--reason", "test kill",
                                          "--operator", "alice"], capture_output=True, text=True, timeout=60)
                    marks["kill_output"] = out.stdout + out.stderr
                    marks["kill_done"] = time.time_ns()
                elif "kill" in marks and "enable" not in marks and done["ticks"] >= 49_152:
                    marks["enable"] = time.time_ns()
                    subprocess.run([*CLI, "enable", "--control", control, "--operator", "bob", "--reason", "checked"],
                                   check=True, capture_output=True, timeout=60)

        def play(name: str) -> None:
            try:
                results[name] = run_playback(streams[name], proc.endpoint, config, master, window=64,
                                             instance_id=f"kill-{name}", progress=lambda n: progress(name, n))
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=play, args=(name,)) for name in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        # an enable needs a named operator, on the wire too
        with pytest.raises(ControlError, match="named operator"):
            send_command(control, "enable", operator=" ")
        status = send_command(control, "status")
    assert not errors, errors
    assert "kill" in marks and "enable" in marks, done
    assert "2 NT8 sessions told to flatten" in marks["kill_output"], marks["kill_output"]
    assert status["state"] == "ACTIVE"

    for name, result in results.items():
        flattens = [i for i, kind in result.commands if kind == "FLATTEN"]
        assert flattens, f"{name}: the session never received the kill's FLATTEN"
        killed_at = flattens[0]
        later = [i for i, kind in result.commands if kind == "BRACKET" and i > killed_at]
        # after the FLATTEN the position is closed before any new bracket (flat at the next bracket, or at the end)
        upto = later[0] if later else len(streams[name]) + 1
        assert all(v == 0 for v in position_before(result, upto).values()), (name, position_before(result, upto))

    with sqlite3.connect(db) as conn:
        decisions = conn.execute("select ts_sidecar_ns, outcome from decisions").fetchall()
        audits = conn.execute("select kind, subject_id, payload from audit_chain where kind in ('kill', 'enable')"
                              ).fetchall()
    between = [o for ts, o in decisions if marks["kill_done"] <= ts <= marks["enable"]]
    assert between and not any(o == "EMITTED" for o in between)  # nothing new left while halted
    assert any(o.startswith("DENIED:RISK_KILL_SWITCH") for o in between)
    assert any(o == "EMITTED" for ts, o in decisions if ts > marks["enable"] + 2_000_000_000), "trading resumed"
    assert {(k, s) for k, s, _ in audits} == {("kill", "alice"), ("enable", "bob")}
    kill = json.loads([p for k, _, p in audits if k == "kill"][0])
    assert kill["reason"] == "test kill" and kill["sessions_flattened"] == 2
    verify = subprocess.run([*CLI, "audit", "verify", "--db", f"sqlite:///{db}"], capture_output=True, text=True,
                            timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
