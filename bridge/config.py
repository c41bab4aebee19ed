"""The sidecar's configuration: one TOML file, validated at start, with environment overrides.

Each section is a frozen dataclass; every field's metadata carries its help text and the values it
allows, so validation, ``nt8bridge config show`` and the docs all read one definition.

Precedence, lowest first: embedded defaults, the TOML file (``--config FILE``, else
``$NT8BRIDGE_CONFIG``, else ``config.toml`` in the user's config folder when present), then
environment variables ``NT8BRIDGE_<SECTION>__<KEY>`` (e.g. ``NT8BRIDGE_SERVER__BIND``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Invalid configuration; the message lists every problem as ``section.key: what is wrong``."""


def _opt(default: Any, help: str, *, min: float | None = None, max: float | None = None,
         choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "min": min, "max": max, "choices": choices})


@dataclass(frozen=True)
class ServerConfig:
    bind: str = _opt("tcp://127.0.0.1:5555", "ZeroMQ endpoint the ROUTER socket binds (loopback by default)")
    heartbeat_ms: int = _opt(1000, "interval between heartbeats sent to each NT8 session", min=50, max=60_000)
    heartbeat_timeout_ms: int = _opt(5000, "a session that sends nothing for this long is marked LOST",
                                     min=100, max=600_000)
    max_message_bytes: int = _opt(65536, "largest accepted message (header + body); larger is answered "
                                  "PROTOCOL_OVERSIZE", min=256, max=1_048_576)


@dataclass(frozen=True)
class StorageConfig:
    url: str = _opt("", "SQLAlchemy URL; empty means an SQLite file in the user's data folder")
    batch_rows: int = _opt(2000, "rows per committed batch", min=1, max=1_000_000)
    queue_batches: int = _opt(64, "batches queued before the hot path waits (counted as backpressure)",
                              min=1, max=100_000)
    flush_interval_ms: int = _opt(250, "partial batches are handed to the writer at least this often",
                                  min=10, max=60_000)
    store_ticks: bool = _opt(True, "store every accepted tick (turn off only to save disk)")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _opt(True, "serve Prometheus metrics over HTTP")
    host: str = _opt("127.0.0.1", "address of the metrics endpoint (loopback by default)")
    port: int = _opt(9108, "port of the metrics endpoint (0 picks a free one)", min=0, max=65535)


@dataclass(frozen=True)
class QualityConfig:
    jump_min_ticks: int = _opt(20, "a trade this many ticks from the last accepted one may be a jump; "
                               "below it never is", min=1, max=100_000)
    jump_sigma: float = _opt(12.0, "a jump is also this many recent standard deviations of tick moves",
                             min=1.0, max=1000.0)
    jump_halflife_ticks: int = _opt(200, "half-life, in trades, of the recent-move estimate", min=2,
                                    max=1_000_000)
    jump_gap_scale_s: float = _opt(60.0, "after a gap of g seconds the jump limit grows by sqrt(1 + g / "
                                   "this)", min=0.001, max=86_400.0)
    jump_confirm_ticks: int = _opt(3, "this many consecutive trades at a new level make it the new "
                                   "reference (a real gap, not a bad print)", min=1, max=1000)
    check_session_hours: bool = _opt(True, "refuse ticks outside the instrument's trading hours (off: hours "
                                     "are ignored everywhere, risk and stale-feed watchdog included)")
    reject_locked_quotes: bool = _opt(False, "refuse bid/ask updates with bid == ask (crossed ones are "
                                      "always refused)")
    stale_after_s: float = _opt(30.0, "no tick for this long while the market is open is a stale feed",
                                min=0.1, max=86_400.0)


@dataclass(frozen=True)
class BarsConfig:
    period_s: int = _opt(60, "length of the time bars built from ticks", min=1, max=86_400)
    history: int = _opt(500, "closed bars kept in memory per instrument", min=10, max=100_000)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = _opt("breakout", "reference strategy", choices=("breakout", "none"))
    lookback_bars: int = _opt(20, "breakout: bars in the channel that a close must break", min=2, max=10_000)
    atr_bars: int = _opt(14, "breakout: bars in the average true range", min=2, max=10_000)
    stop_atr: float = _opt(1.5, "breakout: stop distance in ATRs", min=0.1, max=100.0)
    target_atr: float = _opt(3.0, "breakout: target distance in ATRs", min=0.1, max=100.0)
    no_entry_before_close_min: int = _opt(15, "no new entries this many minutes before the session "
                                          "closes", min=0, max=1440)


@dataclass(frozen=True)
class SizingConfig:
    quantity: int = _opt(1, "contracts per bracket (Kelly sizing replaces this in a later issue)",
                         min=1, max=10_000)


@dataclass(frozen=True)
class RiskConfig:
    max_order_quantity: int = _opt(5, "largest quantity of one order", min=0, max=100_000)
    max_position: int = _opt(5, "largest absolute position per instrument, counting working entries",
                             min=0, max=100_000)
    stale_data_s: float = _opt(10.0, "no new orders when the last tick is older than this (event time)",
                               min=0.1, max=86_400.0)


@dataclass(frozen=True)
class FillModelConfig:
    slippage_ticks: int = _opt(1, "market and stop fills: this many ticks worse than the reference "
                               "price (the opposite quote, else the trade that triggered)", min=0, max=1000)
    commission_per_contract: float = _opt(2.09, "commission per contract per side, in the instrument's "
                                          "currency", min=0.0, max=1000.0)
    fill_limit_on_touch: bool = _opt(False, "fill limits when price touches them (NT8's "
                                     "IsFillLimitOnTouch); otherwise only when it trades through")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    bars: BarsConfig = field(default_factory=BarsConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    fill_model: FillModelConfig = field(default_factory=FillModelConfig)
    instruments: tuple[dict[str, Any], ...] = ()  # [[instruments]] declared beyond the built-in master


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else globals()[f.type]
                             for f in dataclasses.fields(Config) if f.name != "instruments"}


def user_config_path() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "nt8bridge" / "config.toml"


def _coerce(section: str, f: dataclasses.Field, value: Any, errors: list[str]) -> Any:
    """Check one value against its field's type and bounds; strings from the environment are parsed."""
    where = f"{section}.{f.name}"
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            value = {"true": True, "false": False}[text] if kind is bool else kind(text)
        except (KeyError, ValueError):
            errors.append(f"{where}: expected {kind.__name__}, got {value!r}")
            return None
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, str))
    if not ok:
        errors.append(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return None
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        errors.append(f"{where}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta.get("min") is not None and value < meta["min"]:
        errors.append(f"{where}: must be >= {meta['min']} (got {value})")
    if meta.get("max") is not None and value > meta["max"]:
        errors.append(f"{where}: must be <= {meta['max']} (got {value})")
    return float(value) if kind is float else value


def build_config(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    """Validate a parsed TOML document plus environment overrides into a Config."""
    env = dict(os.environ) if env is None else env
    errors: list[str] = []
    unknown = sorted(set(data) - set(SECTIONS) - {"instruments"})
    for key in unknown:
        errors.append(f"{key}: unknown section; allowed: {', '.join(list(SECTIONS) + ['instruments'])}")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = dict(data.get(name, {}))
        if not isinstance(raw, dict):
            errors.append(f"{name}: must be a table")
            raw = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        prefix = f"NT8BRIDGE_{name.upper()}__"
        for var, value in env.items():
            if var.startswith(prefix):
                raw[var[len(prefix):].lower()] = value
        values = {}
        for key, value in raw.items():
            if key not in fields:
                errors.append(f"{name}.{key}: unknown key; allowed: {', '.join(fields)}")
                continue
            coerced = _coerce(name, fields[key], value, errors)
            if coerced is not None:
                values[key] = coerced
        sections[name] = cls(**values)
    instruments = data.get("instruments", [])
    if not isinstance(instruments, list) or not all(isinstance(i, dict) for i in instruments):
        errors.append("instruments: must be an array of tables ([[instruments]])")
        instruments = []
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return Config(**sections, instruments=tuple(instruments))


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Load and validate; ``path=None`` looks for $NT8BRIDGE_CONFIG, then the user's config file."""
    env = dict(os.environ) if env is None else env
    if path is None:
        path = env.get("NT8BRIDGE_CONFIG") or (user_config_path() if user_config_path().exists() else None)
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist; create it or drop --config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    return build_config(data, env)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def to_toml(config: Config) -> str:
    """The effective configuration as commented TOML (what ``nt8bridge config show`` prints)."""
    lines: list[str] = []
    for name in SECTIONS:
        section = getattr(config, name)
        lines.append(f"[{name}]")
        for f in dataclasses.fields(section):
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    for inst in config.instruments:
        lines.append("[[instruments]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in inst.items())
        lines.append("")
    return "\n".join(lines)
