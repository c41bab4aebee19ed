"""The walk-forward report's parameter stability and files, from a hand-made summary."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest

from bridge.research.report import render_html, stability, write_outputs


def summary(values: list[list], score) -> dict:
    keys = [f"strategy.k{i}" for i in range(len(values))]
    sets = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    windows = []
    for w in range(2):
        sharpes = [score(s, w) for s in sets]
        best = max(range(len(sets)), key=lambda n: (sharpes[n] if sharpes[n] is not None else -1e9, -n))
        windows.append({"index": w, "train_from": f"2023-10-1{w}T00:00:00Z", "train_to": f"2023-10-1{w + 2}T00:00:00Z",
                        "test_from": f"2023-10-1{w + 2}T00:00:00Z", "test_to": f"2023-10-1{w + 3}T00:00:00Z",
                        "train_sharpe": sharpes, "train_trades": [1] * len(sets), "chosen": best,
                        "chosen_params": sets[best],
                        "test": {"trades": 2, "net_pnl": -10.0, "return": -2e-5, "sharpe": None, "max_drawdown": 0.0,
                                 "open_at_end": 0}})
    n = len(sets)
    return {"strategy": "momentum", "instruments": ["ES 12-23"], "span": {"from": "2023-10-10T00:00:00Z",
            "to": "2023-10-20T00:00:00Z"}, "train": "2d", "test": "1d", "anchored": False, "equity": 500000.0,
            "grid": {"keys": keys, "values": values}, "param_sets": sets, "windows": windows,
            "oos": {"days": 2, "trades": 4, "net_pnl": -20.0, "return": -4e-5, "sharpe": None, "max_drawdown": 0.0},
            "full_period": {"sharpe": [0.5] * n, "net_pnl": [1.0] * n, "trades": [3] * n},
            "dsr": {"value": None, "trials": n, "observations": 2},
            "pbo": {"value": 0.25, "combinations": 70, "blocks": 8},
            "timing": {"executor": "sequential", "elapsed_s": 1.0, "tasks": 3}}


def test_two_keys_give_their_grid_and_counts_of_choices():
    s = summary([[10, 20], [1.0, 2.0, 3.0]], lambda p, w: p["strategy.k0"] / 10 + p["strategy.k1"] + w)
    st = stability(s)
    assert st["keys"] == ["strategy.k0", "strategy.k1"]
    assert st["mean_train_sharpe"] == [[2.5, 3.5, 4.5], [3.5, 4.5, 5.5]]  # averaged over the two windows
    assert st["chosen"] == [[0, 0, 0], [0, 0, 2]]


def test_more_keys_show_the_two_that_move_the_sharpe_most():
    s = summary([[1, 2], [5, 6], [7, 8]],
                lambda p, w: 10 * p["strategy.k0"] + 0.1 * p["strategy.k1"] + p["strategy.k2"])
    st = stability(s)
    assert st["keys"] == ["strategy.k0", "strategy.k2"]  # k1 barely matters
    assert sum(map(sum, st["chosen"])) == 2
    assert st["mean_train_sharpe"][1][1] == pytest.approx(10 * 2 + 5.5 * 0.1 + 8)  # averaged over k1 too


def test_an_undefined_training_sharpe_is_left_out_of_its_cell():
    s = summary([[10, 20], [1.0, 2.0]], lambda p, w: None if (w, p["strategy.k0"], p["strategy.k1"]) == (0, 20, 2.0)
                else float(w))
    assert stability(s)["mean_train_sharpe"] == [[0.5, 0.5], [0.5, 1.0]]


def test_one_key_is_a_strip_and_the_files_are_written(tmp_path):
    s = summary([[10, 20, 40]], lambda p, w: -abs(p["strategy.k0"] - 20))
    returns = pd.Series([-1e-5, -3e-5], index=pd.to_datetime(["2023-10-12", "2023-10-13"], utc=True), name="return")
    paths = write_outputs(s, returns, tmp_path / "out")
    assert s["stability"]["chosen"] == [[0, 2, 0]]
    page = paths["report"].read_text()
    assert page.count('class="heatmap"') == 2 and "not defined" in page  # the DSR is None here
    assert json.loads(paths["json"].read_text())["stability"] == s["stability"]
    back = pd.read_csv(paths["csv"], index_col=0, parse_dates=True)["return"]
    assert back.tolist() == returns.tolist() and str(back.index[0].date()) == "2023-10-12"
    assert "<svg" in render_html(s, returns.iloc[:0]) or "No out-of-sample days" in render_html(s, returns.iloc[:0])
