"""A parameter grid: dotted configuration keys and the values to try, expanded into parameter sets.

The file is TOML or JSON, one entry per key, e.g. ``"strategy.lookback_bars" = [10, 20, 40]``. Every value is
checked as the configuration file's would be (type, bounds, choices) before anything runs, so a typo costs an
error message, not an hour of runs. The sets are the cartesian product, in the file's key and value order:
that order is the tie-break when two sets score the same.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bridge.core.config import (SECTIONS, STRATEGY_NAMES, Config, ConfigError, check_config, check_value,
                                section_path)

__all__ = ["Grid", "GridError", "apply_params", "load_grid", "parse_grid", "study_config"]

# How a section is written in a dotted key (feeds.ib) -> its Config field (feeds_ib).
_SECTION_OF = {section_path(name): name for name in SECTIONS}


class GridError(ValueError):
    """A grid file that cannot be used; the message names the key and what to do."""


@dataclass(frozen=True)
class Grid:
    keys: tuple[str, ...]                         # dotted, in file order
    values: tuple[tuple[Any, ...], ...]           # per key, checked and converted

    @property
    def sets(self) -> list[dict[str, Any]]:
        """Every combination, the last key varying fastest."""
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*self.values)]

    @property
    def varying(self) -> tuple[str, ...]:
        """The keys with more than one value: the dimensions of the search."""
        return tuple(k for k, v in zip(self.keys, self.values) if len(v) > 1)


def _split(key: str) -> tuple[str, str]:
    section_text, _, field = key.rpartition(".")
    if not section_text or not field:
        raise GridError(f"grid key {key!r} is not SECTION.KEY (e.g. strategy.lookback_bars)")
    if section_text not in _SECTION_OF:
        raise GridError(f"grid key {key!r}: no section [{section_text}]; sections: {', '.join(_SECTION_OF)}")
    return _SECTION_OF[section_text], field


def parse_grid(data: dict[str, Any]) -> Grid:
    """A grid from the parsed file: keys checked against the configuration, every value against its field."""
    if not isinstance(data, dict) or not data:
        raise GridError("the grid is empty: give at least one key, e.g. {\"strategy.lookback_bars\": [10, 20, 40]}")
    flat = _flatten(data)
    keys, values = [], []
    for key, raw in flat.items():
        section, field = _split(key)
        if section in ("instruments", "risk_limits"):
            raise GridError(f"grid key {key!r}: [[{section}]] tables cannot be searched")
        options = raw if isinstance(raw, list) else [raw]  # a single value: held fixed for every set
        if not options:
            raise GridError(f"grid key {key!r} has an empty list: give at least one value")
        checked = []
        for value in options:
            try:
                checked.append(check_value(section, field, value))
            except ConfigError as exc:
                raise GridError(f"grid {exc}") from None
        if len(set(map(repr, checked))) != len(checked):
            raise GridError(f"grid key {key!r} repeats a value: each set would run twice")
        keys.append(key)
        values.append(tuple(checked))
    return Grid(tuple(keys), tuple(values))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"strategy": {"lookback_bars": [..]}}`` (TOML tables) as ``{"strategy.lookback_bars": [..]}``; dotted
    keys pass through. A table nested inside a section is a sub-section only where the configuration has one."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def load_grid(path: str | Path) -> Grid:
    """Read a grid file: ``.json`` as JSON, anything else as TOML (JSON is tried when TOML fails)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GridError(f"grid file {p} does not exist") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise GridError(f"grid file {p} is neither valid TOML nor JSON: {exc}") from None
    return parse_grid(data)


def apply_params(config: Config, params: dict[str, Any]) -> Config:
    """``config`` with each dotted key set (``dataclasses.replace`` on its section); the checks that involve
    several values (e.g. spread_exit_z below spread_entry_z) run on the result."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, field = _split(key)
        changes.setdefault(section, {})[field] = value
    out = replace(config, **{s: replace(getattr(config, s), **kv) for s, kv in changes.items()})
    try:
        check_config(out)
    except ConfigError as exc:
        raise GridError(f"the parameter set {params} is not a valid configuration: {exc}") from None
    return out


def study_config(config: Config, strategy: str, grid: Grid) -> Config:
    """The configuration every run of a study starts from: only ``strategy`` trades, one contract per bracket
    (so that the parameters, not the sizing, make the difference) unless the grid searches sizing itself, and
    no audit chain (nothing of a study is kept, and hashing every record costs a third of the run)."""
    name = strategy.strip().lower()
    if name not in STRATEGY_NAMES:
        raise GridError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGY_NAMES)}")
    if "strategy.names" in grid.keys:
        raise GridError("the grid sets strategy.names: the strategy is --strategy's; drop the key")
    out = replace(config, strategy=replace(config.strategy, names=name),
                  audit=replace(config.audit, enabled=False))
    if not any(k.startswith("sizing.") for k in grid.keys):
        out = replace(out, sizing=replace(out.sizing, mode="fixed", quantity=1))
    return out
