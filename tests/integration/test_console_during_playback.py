"""`curl` of the console's /api/v1/positions while a playback of real ES ticks runs through a real sidecar:
the `nt8bridge console` process, fed by the sidecar's event stream and its SQLite file, answers what storage
holds at that moment, and its live view agrees with it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the console needs the console extra: pip install nt8bridge[console]")

from bridge.core.config import load_config  # noqa: E402
from bridge.nt8.playback import load_stream, run_playback  # noqa: E402
from bridge.transport.sidecar import SidecarProcess, child_creationflags, interrupt_signal, master_for  # noqa: E402
from tests.conftest import PLUMBING_CONFIG  # noqa: E402
from tests.integration.test_console_api import clean_env  # noqa: E402
from tests.integration.test_server import wait_until  # noqa: E402

CLI = [sys.executable, "-m", "bridge.cli"]
SIGN = {"LONG": 1, "SHORT": -1, "FLAT": 0}


def get_json(url: str) -> dict:
    """What an operator's script gets: curl where the machine has it, else the same GET from Python."""
    curl = shutil.which("curl")
    if curl:
        out = subprocess.run([curl, "--silent", "--show-error", "--fail", "--max-time", "30", url],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def stored_positions(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("""select session_id, instrument, market_position, quantity, avg_price from positions
                               where id in (select max(id) from positions group by session_id, instrument)
                               order by session_id, instrument""").fetchall()


def held(live: dict) -> dict[str, int]:
    """The sidecar's ledger (the live view, from its snapshots) per instrument, over its strategies."""
    out: dict[str, int] = {}
    for p in live["positions"]:
        out[p["instrument"]] = out.get(p["instrument"], 0) + p["quantity"]
    return {k: v for k, v in out.items() if v}


def reported(stored: list[tuple]) -> dict[str, int]:
    """What NT8 last reported per instrument, as stored."""
    return {instrument: SIGN[side] * qty for (_, instrument, side, qty, _) in stored if qty}


def shown(positions: list[dict]) -> list[tuple]:
    return [(p["session_id"], p["instrument"], p["market_position"], p["quantity"], p["avg_price"]) for p in positions]


@pytest.mark.shared_data
@pytest.mark.slow
def test_curl_of_positions_during_a_playback_equals_storage(shared_data, tmp_path):
    config = load_config(PLUMBING_CONFIG)
    stream = load_stream([shared_data / "nt8" / "ES 06-18.Last.txt.gz"])
    db = tmp_path / "live.sqlite"
    ready, log = tmp_path / "url", tmp_path / "console.log"
    checks: list[dict] = []
    with SidecarProcess(f"sqlite:///{db}", PLUMBING_CONFIG) as sidecar:
        cmd = [*CLI, "--config", str(PLUMBING_CONFIG), "console", "--bind", "127.0.0.1:0", "--ready-file", str(ready),
               "--db", f"sqlite:///{db}", "--sidecar", sidecar.control_endpoint, "--events", sidecar.events_endpoint]
        with open(log, "wb") as out:
            console = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(tmp_path),
                                       creationflags=child_creationflags())
        try:
            wait_until(lambda: ready.exists() or console.poll() is not None, "the console listens", timeout_s=60)
            assert console.poll() is None, log.read_text()
            url = ready.read_text(encoding="utf-8")
            wait_until(lambda: get_json(url + "api/v1/status")["sidecar_up"], "the console sees the sidecar")
            # progress is reported every 16,384 ticks or so: check at the first report past each fifth
            marks = [len(stream) * k // 5 for k in (1, 2, 3, 4)]

            def check(n: int) -> None:
                # the playback waits here, every message acknowledged and its session open: what the sidecar
                # stored reaches the file within a flush interval, and the console must show just that
                if not marks or n < marks[0] or n >= len(stream):
                    return
                while marks and marks[0] <= n:
                    marks.pop(0)
                got: dict = {}

                def agree() -> bool:
                    got["stored"] = stored_positions(db)
                    got["api"] = get_json(url + "api/v1/positions")
                    got["live"] = get_json(url + "api/v1/positions?source=live")
                    return (shown(got["api"]["positions"]) == got["stored"]
                            and held(got["live"]) == reported(got["stored"]))
                try:
                    wait_until(agree, f"the console's positions equal storage at tick {n} of {len(stream)}")
                except AssertionError:
                    assert shown(got["api"]["positions"]) == got["stored"], n
                    assert held(got["live"]) == reported(got["stored"]), (n, got["live"])
                    raise
                checks.append({"tick": n, **got})
            result = run_playback(stream, sidecar.endpoint, config, master_for(config), window=64, progress=check)
        finally:
            console.send_signal(interrupt_signal())
            try:
                assert console.wait(60) == 0, log.read_text()
            finally:
                if console.poll() is None:
                    console.kill()
    assert result.brackets > 0 and result.fills > 0
    assert len(checks) >= 3, [c["tick"] for c in checks]
    assert "Traceback" not in log.read_text()
    for c in checks:
        assert c["api"]["source"] == "stored"
        assert c["live"]["source"] == "live"
    # mid-session, the playback was holding something at one of the marks at least (else the check is idle)
    assert any(held(c["live"]) for c in checks), "never in a position at the marks: pick other marks"
    assert any(c["stored"] for c in checks), "nothing stored at the marks: the comparison was of two empty lists"
