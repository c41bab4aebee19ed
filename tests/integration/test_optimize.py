"""`nt8bridge optimize` on real ES and NQ minute bars: walk-forward over the research engine, the overfitting
statistics, the report, and the same numbers from local processes as from this process.

The span is one week and the windows short (train 2 days, test 1 day), because every run replays the bars
through the whole decision path: 19 runs of a 2 x 2 grid are about 145,000 bar events per study."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from tests.integration.ray_support import needs_ray

CLI = [sys.executable, "-m", "bridge.cli"]
GRID = '[strategy]\nlookback_bars = [10, 40]\nmomentum_stop_atr = [1.0, 2.0]\n'
# Plumbing settings (tests/plumbing.toml): no regime switch, so momentum trades whenever a channel breaks; the
# regime model never fits on two days (its least history is above them), which keeps the runs short.
CONFIG = '[portfolio]\nregime_filter = false\nregime_min_history = 5000\n'


def optimize(shared_data, tmp_path, out: str, *extra: str) -> subprocess.CompletedProcess:
    nt8 = shared_data / "nt8"
    (tmp_path / "grid.toml").write_text(GRID)
    (tmp_path / "config.toml").write_text(CONFIG)
    return subprocess.run([*CLI, "--config", str(tmp_path / "config.toml"), "optimize", "--strategy", "momentum",
                           "--grid", str(tmp_path / "grid.toml"), "--train", "2d", "--test", "1d",
                           "--data", str(nt8 / "ES 12-23.Last.txt"), str(nt8 / "NQ 12-23.Last.txt"),
                           "--from", "2023-10-16", "--to", "2023-10-21", "--out", str(tmp_path / out), "--quiet",
                           *extra], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def studies(shared_data, tmp_path_factory):
    """The same study in local processes and in this process."""
    tmp = tmp_path_factory.mktemp("optimize")
    out = {}
    for name, processes in (("processes", "2"), ("sequential", "1")):
        proc = optimize(shared_data, tmp, name, "--processes", processes)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = (tmp / name, proc.stdout)
    return out


def load(folder):
    return json.loads((folder / "optimize.json").read_text())


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_report_has_the_curve_the_windows_and_the_heat_maps(studies):
    folder, stdout = studies["processes"]
    page = (folder / "report.html").read_text()
    assert page.count('class="heatmap"') == 2  # mean training Sharpe and times chosen, lookback x stop
    assert 'aria-label="out-of-sample equity"' in page and "<polyline" in page
    assert "Deflated Sharpe ratio" in page and "Probability of backtest overfitting" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert f"report: {folder / 'report.html'}" in stdout.replace("\n", "")


@pytest.mark.shared_data
@pytest.mark.slow
def test_statistics_windows_and_choices(studies):
    s = load(studies["processes"][0])
    assert s["instruments"] == ["ES 12-23", "NQ 12-23"]
    assert len(s["param_sets"]) == 4 and len(s["windows"]) == 3
    assert 0.0 <= s["dsr"]["value"] <= 1.0 and s["dsr"]["trials"] == 4
    assert 0.0 <= s["pbo"]["value"] <= 1.0 and s["pbo"]["combinations"] >= 2
    previous_end = None
    for w in s["windows"]:
        assert w["train_to"] <= w["test_from"] < w["test_to"], "a test window overlaps its training window"
        assert previous_end is None or w["test_from"] >= previous_end, "test windows overlap each other"
        previous_end = w["test_to"]
        scores = [x if x is not None else -math.inf for x in w["train_sharpe"]]
        best = max(scores)
        assert math.isfinite(best), "every window should have a set with a defined training Sharpe ratio"
        assert w["chosen"] == scores.index(best)  # the training best, first in grid order among equals
        assert w["chosen_params"] == s["param_sets"][w["chosen"]]
        assert sum(w["train_trades"]) > 0
    assert s["stability"]["keys"] == ["strategy.lookback_bars", "strategy.momentum_stop_atr"]
    assert sum(map(sum, s["stability"]["chosen"])) == 3


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_oos_returns_file_is_the_stitched_test_windows(studies):
    folder, _ = studies["processes"]
    s = load(folder)
    returns = pd.read_csv(folder / "oos_returns.csv", index_col=0, parse_dates=True)["return"]  # as quantstats reads it
    assert len(returns) == s["oos"]["days"] == 3
    assert str(returns.index[0].date()) == s["windows"][0]["test_from"][:10]
    assert (1 + returns).prod() - 1 == pytest.approx(s["oos"]["return"], abs=1e-6)
    assert sum(w["test"]["net_pnl"] for w in s["windows"]) == pytest.approx(s["oos"]["net_pnl"], abs=0.01)


@pytest.mark.shared_data
@pytest.mark.slow
def test_processes_and_this_process_give_the_same_numbers(studies):
    a, b = load(studies["processes"][0]), load(studies["sequential"][0])
    assert (a.pop("timing")["executor"], b.pop("timing")["executor"]) == ("processes:2", "sequential")
    assert a == b


@needs_ray
@pytest.mark.shared_data
@pytest.mark.slow
def test_a_local_ray_cluster_gives_the_same_numbers(studies, shared_data, tmp_path, ray_head):
    proc = optimize(shared_data, tmp_path, "ray", "--ray", ray_head)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load(tmp_path / "ray"), load(studies["sequential"][0])
    assert (a.pop("timing")["executor"], b.pop("timing")["executor"]) == (f"ray:{ray_head}", "sequential")
    assert a == b


@pytest.mark.shared_data
def test_a_misspelt_grid_key_is_one_line_naming_the_keys(shared_data, tmp_path):
    (tmp_path / "grid.toml").write_text('"strategy.momentum_lookback" = [10, 20]\n')
    proc = subprocess.run([*CLI, "optimize", "--strategy", "momentum", "--grid", str(tmp_path / "grid.toml"),
                           "--train", "2d", "--test", "1d", "--data", str(shared_data / "nt8" / "ES 12-23.Last.txt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "strategy.momentum_lookback" in proc.stderr
    assert "lookback_bars" in proc.stderr
