"""The orders and fills of the reference playback, pinned to the digests recorded before the package
layout changed. Run-to-run tests prove repeatability; these prove that nothing since then (a
refactor, a dependency upgrade) changed what the bridge trades. A deliberate change of behaviour
updates the digest here, in the same commit that explains it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PLUMBING_CONFIG

ES_FILE = "nt8/ES 06-18.Last.txt.gz"

# `nt8bridge --config tests/plumbing.toml playback --data "ES 06-18.Last.txt.gz" [--engine research|nt8sim]`
PINNED = {
    "python": {"digest": "e41fc28756934ab6a0f15e9b901bad57a87efb275850d5a7dd923b36be263544",
               "brackets": 9, "fills": 17, "realized_pnl": -587.5},
    # the sidecar's decision path in this process (bridge/research/inprocess.py): the Python engine's orders and fills
    "research": {"digest": "e41fc28756934ab6a0f15e9b901bad57a87efb275850d5a7dd923b36be263544",
                 "brackets": 9, "fills": 17, "realized_pnl": -587.5},
    "nt8sim": {"digest": "cd938ff8fe6a196778c0e4de63bc35e220b3d839b4db834d82c8dca2ecf08614",
               "brackets": 9, "fills": 17, "realized_pnl": -637.5},
}


@pytest.mark.shared_data
@pytest.mark.parametrize("engine", sorted(PINNED))
def test_reference_playback_matches_the_pinned_digest(engine, shared_data, tmp_path):
    if engine == "nt8sim" and shutil.which("mcs") is None:
        pytest.skip("Mono's mcs is not installed (apt-get install mono-devel; .ci/run installs it)")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--config", str(PLUMBING_CONFIG), "playback", "--json", "--quiet",
         "--engine", engine, "--data", str(shared_data / ES_FILE), "--db", f"sqlite:///{tmp_path / 'pb.sqlite'}"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    pinned = PINNED[engine]
    got = {"digest": summary["digest"], "brackets": summary["brackets"], "fills": summary["fills"],
           "realized_pnl": summary["realized_pnl"]["ES 06-18"]}
    assert got == pinned
    if engine != "nt8sim":  # what the sidecar stored of the session adds up with what was played
        assert summary["ticks_reconciled"] and summary["stored"]["session_end"] == "BYE"
        assert summary["stored"]["executions"] == summary["fills"] and summary["stored"]["audit_records"] > 0
