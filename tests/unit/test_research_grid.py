"""Parameter grids: parsing, checking against the configuration, expansion and application."""

from __future__ import annotations

import json
import tomllib

import pytest

from bridge.core.config import Config, build_config, to_toml
from bridge.research.grid import GridError, apply_params, load_grid, parse_grid, study_config


def test_a_toml_grid_expands_to_the_cartesian_product_in_file_order(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('"strategy.lookback_bars" = [10, 20, 40]\n[strategy]\nmomentum_stop_atr = [1, 2.5]\n')
    grid = load_grid(path)
    assert grid.keys == ("strategy.lookback_bars", "strategy.momentum_stop_atr")
    assert grid.values[1] == (1.0, 2.5) and isinstance(grid.values[1][0], float)  # an int for a float field
    assert [tuple(s.values()) for s in grid.sets] == [(10, 1.0), (10, 2.5), (20, 1.0), (20, 2.5), (40, 1.0), (40, 2.5)]
    assert grid.varying == grid.keys


def test_a_json_grid_and_a_fixed_value(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"strategy.lookback_bars": [10, 20], "portfolio.regime_filter": False}))
    grid = load_grid(path)
    assert len(grid.sets) == 2 and grid.varying == ("strategy.lookback_bars",)
    assert all(s["portfolio.regime_filter"] is False for s in grid.sets)


@pytest.mark.parametrize("data, words", [
    ({"strategy.momentum_lookback": [10]}, ["strategy.momentum_lookback", "unknown key", "lookback_bars"]),
    ({"strategee.lookback_bars": [10]}, ["no section [strategee]", "strategy"]),
    ({"strategy.lookback_bars": ["ten"]}, ["strategy.lookback_bars", "expected int", "'ten'"]),
    ({"strategy.lookback_bars": [1]}, ["must be >= 2"]),
    ({"sizing.mode": ["kelly", "martingale"]}, ["not one of kelly, fixed"]),
    ({"strategy.lookback_bars": []}, ["empty list"]),
    ({"strategy.lookback_bars": [10, 10]}, ["repeats a value"]),
    ({"lookback_bars": [10]}, ["SECTION.KEY"]),
    ({}, ["empty"]),
])
def test_bad_grids_say_what_is_wrong(data, words):
    with pytest.raises(GridError) as info:
        parse_grid(data)
    for w in words:
        assert w in str(info.value)


def test_a_set_is_applied_with_replace_and_checked_as_a_whole():
    grid = parse_grid({"strategy.lookback_bars": [10, 30], "sizing.quantity": [2]})
    config = apply_params(Config(), grid.sets[1])
    assert config.strategy.lookback_bars == 30 and config.sizing.quantity == 2
    assert config.strategy.atr_bars == Config().strategy.atr_bars
    bad = parse_grid({"strategy.spread_exit_z": [3.0]})
    with pytest.raises(GridError, match="spread_exit_z must be below spread_entry_z"):
        apply_params(Config(), bad.sets[0])


def test_study_config_trades_one_strategy_one_contract_unless_the_grid_sizes():
    grid = parse_grid({"strategy.lookback_bars": [10, 30]})
    config = study_config(Config(), "Momentum", grid)
    assert config.strategy.strategy_names() == ("momentum",)
    assert (config.sizing.mode, config.sizing.quantity) == ("fixed", 1)
    sized = study_config(Config(), "reversion", parse_grid({"sizing.kelly_fraction": [0.1, 0.2]}))
    assert sized.sizing.mode == Config().sizing.mode
    with pytest.raises(GridError, match="not one of"):
        study_config(Config(), "breakout", grid)
    with pytest.raises(GridError, match="strategy.names"):
        study_config(Config(), "momentum", parse_grid({"strategy.names": ["momentum"]}))


def test_a_config_survives_the_toml_text_a_task_carries():
    config = study_config(Config(), "momentum", parse_grid({"strategy.lookback_bars": [10]}))
    assert build_config(tomllib.loads(to_toml(config)), env={}) == config
