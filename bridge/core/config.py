"""The sidecar's configuration: one TOML file, validated at start, with environment overrides.

Each section is a frozen dataclass; every field's metadata carries its help text and the values it
allows, so validation, ``nt8bridge config show`` and the docs all read one definition.

Precedence, lowest first: embedded defaults, the TOML file (``--config FILE``, else
``$NT8BRIDGE_CONFIG``, else ``config.toml`` in the user's config folder when present), then
environment variables ``NT8BRIDGE_<SECTION>__<KEY>`` (e.g. ``NT8BRIDGE_SERVER__BIND``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
    control_bind: str = _opt("tcp://127.0.0.1:5556", "ZeroMQ endpoint of the control channel (nt8bridge kill / "
                             "enable); empty disables it")
    events_bind: str = _opt("tcp://127.0.0.1:5557", "ZeroMQ PUB endpoint of the live event stream that the console "
                            "and the alerts read (it never makes the decision path wait: a slow reader loses "
                            "events, counted); empty disables it")
    heartbeat_ms: int = _opt(1000, "interval between heartbeats sent to each NT8 session", min=50, max=60_000)
    heartbeat_timeout_ms: int = _opt(5000, "a session that sends nothing for this long is marked LOST",
                                     min=100, max=600_000)
    stop_drain_ms: int = _opt(10_000, "on a clean stop (Ctrl+C, SIGTERM), keep handling what the sessions already "
                              "sent for up to this long before ending them", min=0, max=600_000)
    max_message_bytes: int = _opt(65536, "largest accepted message (header + body); larger is answered "
                                  "PROTOCOL_OVERSIZE", min=256, max=1_048_576)
    max_sessions: int = _opt(64, "most NT8 sessions open at once; a HELLO beyond it is refused with "
                             "SESSION_LIMIT_REACHED until a session ends (each session holds its strategies, "
                             "features and risk state in memory)", min=1, max=10_000)
    max_sessions_per_peer: int = _opt(32, "most sessions open at once from one peer address (its IP; the connection "
                                      "when there is none): every NT8 chart on the sidecar's own machine comes from "
                                      "127.0.0.1, so this is also how many charts one NT8 host may connect (max_sessions "
                                      "still applies)", min=1, max=10_000)


@dataclass(frozen=True)
class SecurityConfig:
    """Remote mode (docs/security.md). Only paths live here, never a secret or a key: the whole
    configuration is written into the audit trail at every start."""

    secret_file: str = _opt("", "file holding the shared secret that authenticates every message with NT8 (HMAC-SHA256; "
                            "create it with `nt8bridge secret new FILE`); empty: no authentication, and the sidecar "
                            "refuses to listen anywhere but on loopback")
    allow: str = _opt("", "peers that may open sessions: IP addresses or networks (CIDR), comma separated, e.g. "
                      "10.1.2.3, 192.168.7.0/24; empty: any peer (that holds the secret)")
    hello_window_s: float = _opt(30.0, "a HELLO, or a signed control request, is accepted once, and only when its "
                                 "send time is within this many seconds of the sidecar's clock (keep both clocks on "
                                 "NTP)", min=1.0, max=3600.0)
    operators_file: str = _opt("", "TOML file of the operators' keys ([operators] NAME = \"HEX\"; `nt8bridge operator "
                               "new`); set: every control request must be signed with its operator's own key, and an "
                               "override's approver with another; empty: unsigned, and the control channel must stay "
                               "on loopback")


@dataclass(frozen=True)
class StorageConfig:
    url: str = _opt("", "SQLAlchemy URL; empty means an SQLite file in the user's data folder")
    batch_rows: int = _opt(2000, "rows per committed batch", min=1, max=1_000_000)
    queue_batches: int = _opt(64, "batches queued before the hot path waits (counted as backpressure)",
                              min=1, max=100_000)
    flush_interval_ms: int = _opt(250, "partial batches are handed to the writer at least this often",
                                  min=10, max=60_000)
    store_ticks: bool = _opt(True, "store every accepted tick (turn off only to save disk)")
    spool_path: str = _opt("", "file that holds the rows while the database is unreachable, replayed in order when "
                           "it is back; empty: <file>.spool beside an SQLite database, else storage.spool beside "
                           "the audit journal")
    on_outage: str = _opt("continue", "while the database is unreachable (rows go to the spool): 'continue' "
                          "trading, or 'reducing': refuse new orders that would increase a position until the "
                          "backlog is stored", choices=("continue", "reducing"))


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = _opt(True, "chain every decision, order, fill, kill and limit change (bridge/audit/chain.py); off "
                         "only for throwaway runs")
    dir: str = _opt("", "folder of the journal and the signed checkpoints; empty: next to an SQLite database "
                    "(<file>.audit/), else the user's data folder")
    key_path: str = _opt("", "Ed25519 private key that signs checkpoints (created at first use, mode 600); empty: "
                         "audit-ed25519.pem in the user's config folder")
    checkpoint_every: int = _opt(1000, "records between signed checkpoints of the chain head", min=1,
                                 max=10_000_000)
    fsync_interval_ms: int = _opt(200, "the journal is fsynced at least this often: what a power loss can lose "
                                  "(a killed process loses nothing)", min=0, max=60_000)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _opt(True, "serve Prometheus metrics over HTTP")
    host: str = _opt("127.0.0.1", "address of the metrics endpoint (loopback by default)")
    port: int = _opt(9108, "port of the metrics endpoint (0 picks a free one)", min=0, max=65535)


@dataclass(frozen=True)
class ConsoleConfig:
    """The operator console (docs/console.md). Paths only, never a secret: the configuration is an audit record."""

    bind: str = _opt("127.0.0.1:8080", "HOST:PORT the console's web server listens on; anything but loopback needs "
                     "users_file (or token_file) and tls_cert/tls_key")
    token_file: str = _opt("", "file holding a bearer token that scripts send as 'Authorization: Bearer TOKEN' "
                           "(create it with `nt8bridge secret new FILE`)")
    users_file: str = _opt("", "TOML file of the console's users ([users] NAME = \"pbkdf2_sha256$...\"; "
                           "`nt8bridge console user NAME --file FILE` adds one); empty with no token_file: no "
                           "login, allowed on loopback only")
    tls_cert: str = _opt("", "PEM certificate (chain) the console serves HTTPS with; needed off loopback")
    tls_key: str = _opt("", "PEM private key of tls_cert")
    history_days: float = _opt(1.0, "how far back the blotter, P&L and equity views read storage", min=0.01,
                               max=3650.0)
    below_normal_priority: bool = _opt(True, "run the console's web server below normal priority, so that on the "
                                       "sidecar's own machine it never takes the CPU the decision path needs")


@dataclass(frozen=True)
class AlertsConfig:
    """The notifier (`nt8bridge alerts`, docs/console.md). Paths only, never a secret."""

    webhooks_file: str = _opt("", "file naming where alerts are posted, one FORMAT=URL a line, FORMAT one of slack, "
                              "teams, generic (JSON), e.g. slack=https://hooks.slack.com/services/... (a file: the "
                              "URLs are credentials); empty: no webhooks")
    smtp_host: str = _opt("", "SMTP server for e-mailed alerts; empty: no e-mail")
    smtp_port: int = _opt(587, "SMTP port", min=1, max=65535)
    smtp_starttls: bool = _opt(True, "upgrade the SMTP connection with STARTTLS before logging in")
    smtp_user: str = _opt("", "SMTP login; empty: no login")
    smtp_password_file: str = _opt("", "file holding the SMTP password")
    mail_from: str = _opt("nt8bridge@localhost", "sender of alert e-mails")
    mail_to: str = _opt("", "recipients of alert e-mails, comma separated")
    dedup_s: float = _opt(300.0, "the same alert (kind and subject) is sent once in this many seconds; repeats are "
                          "counted and summarised", min=0.0, max=86_400.0)
    rate_per_min: float = _opt(20.0, "most alerts sent per minute per destination (token bucket); the rest are "
                               "summarised in one message when the bucket refills", min=0.1, max=10_000.0)
    stale_feed_s: float = _opt(30.0, "alert when an instrument of a live session has had no tick for this long "
                               "during its trading hours", min=1.0, max=86_400.0)
    audit_verify_min: float = _opt(60.0, "verify the audit chain in storage this often and alert when it breaks",
                                   min=1.0, max=10_080.0)
    metrics_port: int = _opt(9109, "port of the notifier's own Prometheus endpoint (0 picks a free one, -1 none)",
                             min=-1, max=65535)


@dataclass(frozen=True)
class FeedsConfig:
    """Market data beside NT8's stream and which feed to believe (docs/feeds.md)."""

    enabled: str = _opt("", "feeds to run beside NT8's own stream, comma separated: ib, alpha_vantage; empty: NT8 only")
    stale_after_s: float = _opt(5.0, "a feed with no value for this long (while its market is open) is stale",
                                min=0.1, max=86_400.0)
    divergence_ticks: float = _opt(8.0, "a feed whose price differs from the reference by more than this many ticks "
                                   "(for an ETF stand-in: after its rolling ratio) is diverging", min=0.5,
                                   max=100_000.0)
    switch_after_s: float = _opt(2.0, "the reference moves to another feed only after its own feed has been "
                                 "unhealthy this long, and back only after it has been healthy this long "
                                 "(hysteresis: no flapping)", min=0.0, max=3600.0)
    on_nt8_down: str = _opt("reducing", "when NT8's own feed is stale or down: 'reducing' (only orders that reduce a "
                            "position) or 'continue'", choices=("reducing", "continue"))


@dataclass(frozen=True)
class IbFeedConfig:
    """Interactive Brokers through TWS or IB Gateway ([feeds.ib])."""

    host: str = _opt("127.0.0.1", "TWS / IB Gateway host")
    port: int = _opt(4002, "its API port (IB Gateway paper 4002, live 4001; TWS paper 7497, live 7496)", min=1,
                     max=65535)
    client_id: int = _opt(17, "API client id, unique among the programs connected to the same TWS", min=0,
                          max=2**31 - 1)
    market_data_type: str = _opt("live", "what IB should send when the account has no live subscription: live, "
                                 "frozen, delayed, delayed_frozen", choices=("live", "frozen", "delayed",
                                                                              "delayed_frozen"))
    tick_by_tick_lines: int = _opt(3, "tick-by-tick subscriptions at most (IB allows few per account: the rest "
                                   "get reqMktData)", min=0, max=100)
    roots: str = _opt("ES,NQ,YM,RTY", "instrument roots to subscribe (front month from the instrument master)")
    connect_timeout_s: float = _opt(10.0, "how long a connection attempt may take", min=0.5, max=600.0)


@dataclass(frozen=True)
class AlphaVantageConfig:
    """Alpha Vantage over HTTP ([feeds.alpha_vantage]): ETF stand-ins of the index futures."""

    api_key: str = _opt("", "API key; better in $NT8BRIDGE_FEEDS_ALPHA_VANTAGE__API_KEY than in this file. Never "
                        "logged, and left out of the configuration's audit record")
    base_url: str = _opt("https://www.alphavantage.co/query", "the API's URL (a local server in tests)")
    requests_per_day: int = _opt(25, "request budget per UTC day (the free tier: 25)", min=1, max=10_000_000)
    requests_per_s: float = _opt(1.0, "request rate at most (the free tier: 1 a second)", min=0.001, max=1000.0)
    poll_s: float = _opt(3600.0, "how often each symbol is asked (the budget wins when the two disagree)",
                         min=1.0, max=86_400.0)
    symbols: str = _opt("ES=SPY,NQ=QQQ,YM=DIA,RTY=IWM", "ROOT=ETF stand-ins, comma separated")
    timeout_s: float = _opt(10.0, "HTTP timeout per request", min=0.1, max=600.0)


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


STRATEGY_NAMES = ("momentum", "reversion", "spread", "ml")


@dataclass(frozen=True)
class StrategyConfig:
    names: str = _opt("momentum", "strategies to run, comma separated: momentum, reversion, spread, ml; or none")
    lookback_bars: int = _opt(20, "momentum: bars in the channel that a close must break", min=2, max=10_000)
    atr_bars: int = _opt(14, "bars in the average true range", min=2, max=10_000)
    band_bars: int = _opt(30, "bars in the mean/standard-deviation band", min=3, max=10_000)
    er_bars: int = _opt(30, "bars in the efficiency ratio (trend strength)", min=2, max=10_000)
    vol_bars: int = _opt(30, "log returns in the realized volatility", min=3, max=10_000)
    no_entry_before_close_min: int = _opt(15, "no new entries this many minutes before the session "
                                          "closes", min=0, max=1440)
    momentum_stop_atr: float = _opt(1.5, "momentum: stop distance in ATRs", min=0.1, max=100.0)
    momentum_target_atr: float = _opt(3.0, "momentum: target distance in ATRs", min=0.1, max=100.0)
    momentum_win_prior: float = _opt(0.36, "momentum: prior win probability of a bracket (from an earlier "
                                     "window; the track record updates it)", min=0.0, max=1.0)
    momentum_time_limit_min: float = _opt(120.0, "momentum: close a trade still open after this long (0: "
                                          "never)", min=0.0, max=10_000.0)
    reversion_entry_z: float = _opt(2.0, "reversion: band z-score that counts as stretched", min=0.5, max=10.0)
    reversion_min_vwap_atr: float = _opt(1.0, "reversion: least distance from the session VWAP, in ATRs, on "
                                         "the same side", min=0.0, max=100.0)
    reversion_max_efficiency: float = _opt(0.3, "reversion: no fades while the efficiency ratio is above this "
                                           "(trending)", min=0.0, max=1.0)
    reversion_stop_atr: float = _opt(2.0, "reversion: stop distance beyond the close, in ATRs", min=0.1, max=100.0)
    reversion_win_prior: float = _opt(0.55, "reversion: prior win probability of a fade", min=0.0, max=1.0)
    reversion_time_limit_min: float = _opt(60.0, "reversion: close a fade still open after this long (0: never)",
                                           min=0.0, max=10_000.0)
    spread_pairs: str = _opt("ES/NQ,ES/YM,ES/RTY,MES/MNQ,MES/MYM,MES/M2K", "spread: pairs of roots, base first")
    spread_window: int = _opt(240, "spread: bars in the hedge ratio and z-score window", min=20, max=100_000)
    spread_entry_z: float = _opt(2.0, "spread: |z| that opens a trade", min=0.1, max=20.0)
    spread_exit_z: float = _opt(0.5, "spread: |z| at which the spread has reverted (exit)", min=0.0, max=20.0)
    spread_stop_z: float = _opt(2.0, "spread: stop when |z| rises this much past its value at entry", min=0.1,
                                max=50.0)
    spread_max_ratio: int = _opt(3, "spread: most contracts of the base leg in the integer ratio", min=1, max=20)
    spread_leg_stop_atr: float = _opt(6.0, "spread: protective stop and target of each leg, in ATRs", min=0.5,
                                      max=1000.0)
    spread_win_prior: float = _opt(0.6, "spread: prior probability that a spread reverts before its stop",
                                   min=0.0, max=1.0)
    spread_time_limit_min: float = _opt(240.0, "spread: close both legs after this long (0: never)", min=0.0,
                                        max=100_000.0)
    ml_model: str = _opt("", "ml: registered model id to trade, or 'champion' for the promoted one (empty: the "
                         "ml strategy has no model and does not trade)")
    ml_registry: str = _opt("", "ml: the model registry folder (empty: 'models' in the user's data folder)")
    ml_margin: float = _opt(0.03, "ml: trade when the win probability beats break-even (1/2) by this much",
                            min=0.0, max=0.5)
    ml_shadow: str = _opt("", "ml: a challenger to run in shadow beside the model that trades (a model id, or "
                          "'latest': the newest challenger registered after the champion; empty: none)")
    ml_di_quantile: float = _opt(0.995, "ml: withhold predictions whose dissimilarity index (distance to the "
                                 "training rows) is above this quantile of the training rows' own (0: no guard)",
                                 min=0.0, max=1.0)

    def strategy_names(self) -> tuple[str, ...]:
        names = tuple(n.strip().lower() for n in self.names.split(",") if n.strip())
        return () if names == ("none",) else names


@dataclass(frozen=True)
class SizingConfig:
    mode: str = _opt("kelly", "kelly: fractional Kelly from each signal's win probability; fixed: "
                     "sizing.quantity contracts", choices=("kelly", "fixed"))
    quantity: int = _opt(1, "fixed mode: contracts per bracket (per unit of a spread)", min=1, max=10_000)
    equity: float = _opt(500_000.0, "account equity for sizing until NT8 reports the account's cash value",
                         min=1.0, max=1e12)
    kelly_fraction: float = _opt(0.25, "multiplier on the Kelly fraction (a quarter keeps 44% of the growth, "
                                 "halving the account 0.8% likely)", min=0.01, max=1.0)
    shrinkage: float = _opt(0.5, "edge shrunk toward break-even for estimation error (0: as estimated, 1: no "
                            "edge)", min=0.0, max=1.0)
    prior_strength: float = _opt(30.0, "weight, in trades, of a strategy's stated win probability against its "
                                 "own track record", min=0.0, max=1e6)
    max_contracts: int = _opt(10, "hard cap per instrument (position counting working entries)", min=0,
                              max=100_000)
    max_strategy_contracts: int = _opt(10, "hard cap per strategy and instrument", min=0, max=100_000)
    commission_per_contract: float = _opt(2.09, "cost per contract per side for sizing, currency", min=0.0,
                                          max=1000.0)
    slippage_ticks: float = _opt(1.0, "expected slippage per side for sizing, in ticks", min=0.0, max=1000.0)


@dataclass(frozen=True)
class PortfolioConfig:
    start_trading: str = _opt("", "no entries before this UTC time (ISO 8601; earlier data only warms up "
                              "features and regimes); empty: trade from the start")
    regime_filter: bool = _opt(True, "let the regime detector switch strategies on or off and shift allocation")
    regime_refit_bars: int = _opt(390, "bars between refits of the regime model", min=10, max=1_000_000)
    regime_min_history: int = _opt(500, "bars before the regime model replaces the rules", min=30,
                                   max=1_000_000)
    correlation_bars: int = _opt(390, "bars in the rolling correlation and beta window", min=20, max=1_000_000)
    benchmark: str = _opt("ES", "root whose contracts measure beta-weighted exposure")
    max_beta_exposure: float = _opt(20.0, "largest |beta-weighted net exposure| in benchmark contracts; new "
                                    "entries that raise it beyond are cut", min=0.0, max=1e6)
    hedge_root: str = _opt("", "root of the hedge instrument (e.g. ES or MES); empty: no hedge orders")
    hedge_threshold: float = _opt(3.0, "hedge when |beta-weighted exposure| exceeds this many benchmark "
                                  "contracts", min=0.0, max=1e6)
    reconcile_grace_s: float = _opt(2.0, "a position NT8 reports that differs from the sidecar's ledger for this "
                                    "long (event time) is a reconciliation break", min=0.0, max=3600.0)
    leg_timeout_s: float = _opt(30.0, "spread: a leg still unfilled this long after its partner filled is "
                                "cancelled and the partner closed", min=0.0, max=86_400.0)


@dataclass(frozen=True)
class RiskConfig:
    """Desk-wide limits (scope ``*``); ``[[risk_limits]]`` tables add limits per instrument, strategy or
    account. A value of 0 for an optional limit means "not set"."""

    max_order_quantity: int = _opt(5, "largest quantity of one order", min=0, max=100_000)
    max_position: int = _opt(5, "largest absolute net position per instrument, counting working entries",
                             min=0, max=100_000)
    max_order_notional: float = _opt(20_000_000.0, "largest notional of one order (quantity x price x point "
                                     "value)", min=0.0, max=1e12)
    collar_ticks: float = _opt(400.0, "entry, stop and target prices within this many ticks of the last trade",
                               min=1.0, max=1e6)
    stale_data_s: float = _opt(10.0, "no new orders when the last tick is older than this (event time)",
                               min=0.1, max=86_400.0)
    max_orders_per_s: int = _opt(20, "new orders per second (event time), desk-wide", min=1, max=100_000)
    max_changes_per_s: int = _opt(50, "order changes per second", min=1, max=100_000)
    max_cancels_per_s: int = _opt(50, "cancels per second (beyond it the desk halts; cancels still go)",
                                  min=1, max=100_000)
    max_executions_per_window: int = _opt(0, "repeated-execution throttle: this many automated fills within "
                                          "execution_window_s halt trading until an operator enables it (0: off)",
                                          min=0, max=1_000_000)
    execution_window_s: float = _opt(60.0, "window of the repeated-execution throttle", min=1.0, max=86_400.0)
    max_daily_loss: float = _opt(0.0, "daily loss (realized) beyond which only risk-reducing orders pass (0: off)",
                                 min=0.0, max=1e12)
    self_trade_prevention: bool = _opt(True, "never let one strategy's order trade against another's working "
                                       "order on the same account")


@dataclass(frozen=True)
class FillModelConfig:
    slippage_ticks: int = _opt(1, "market and stop fills: this many ticks worse than the reference "
                               "price (the opposite quote, else the trade that triggered)", min=0, max=1000)
    commission_per_contract: float = _opt(2.09, "commission per contract per side, in the instrument's "
                                          "currency", min=0.0, max=1000.0)
    fill_limit_on_touch: bool = _opt(False, "fill limits when price touches them (NT8's "
                                     "IsFillLimitOnTouch); otherwise only when it trades through")


@dataclass(frozen=True)
class HaConfig:
    enabled: bool = _opt(False, "run as one of a hot-standby pair: the sidecar that holds the cluster's lock in "
                         "PostgreSQL leads and serves NT8, the other refuses sessions (SESSION_STANDBY) until the "
                         "leader is gone; needs storage.url on PostgreSQL, shared by both")
    cluster: str = _opt("default", "name of the pair: sidecars with the same name and database compete for one lock")
    advertise: str = _opt("", "the endpoint NT8 should connect to for this sidecar, told to the other one and to "
                          "refused NT8 sessions (empty: the bound endpoint)")
    poll_ms: int = _opt(200, "how often a standby tries the lock and a leader checks that it still holds it",
                        min=20, max=10_000)
    lease_ms: int = _opt(2000, "a leader that cannot confirm its lock for this long steps down (its database "
                         "connection is lost); PostgreSQL releases the lock of a silent leader after 1.5 times "
                         "this, so two sidecars never lead at once", min=200, max=600_000)


@dataclass(frozen=True)
class RecoveryConfig:
    lookback_h: float = _opt(24.0, "when NT8 (re)connects, brackets its strategy instance opened in the last "
                             "this many hours and that are still open are resumed from storage", min=0.0,
                             max=24.0 * 14)
    flatten: bool = _opt(False, "after a restart or a failover, flatten what was resumed instead of managing it "
                         "on (NT8 keeps its stops and targets either way)")


@dataclass(frozen=True)
class AnalyticsConfig:
    """The ClickHouse analytics store (bridge/analytics, docs/storage.md). chdb has no Windows build: on a
    Windows desk point url at a ClickHouse server or leave it empty."""

    url: str = _opt("", "chdb:///PATH (embedded ClickHouse on disk; Linux and macOS) or clickhouse://HOST:PORT/DB "
                    "(a server's HTTP port); empty: analytics off")
    batch_rows: int = _opt(50_000, "rows per insert (ClickHouse wants few, large inserts: 10k-100k)",
                           min=1_000, max=1_000_000)
    flush_s: float = _opt(5.0, "the sidecar's live feed sends a table's rows at least this often (else once "
                          "batch_rows have gathered)", min=0.1, max=3600)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    ha: HaConfig = field(default_factory=HaConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)
    feeds_ib: IbFeedConfig = field(default_factory=IbFeedConfig)
    feeds_alpha_vantage: AlphaVantageConfig = field(default_factory=AlphaVantageConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    bars: BarsConfig = field(default_factory=BarsConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)
    portfolio: PortfolioConfig = field(default_factory=PortfolioConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    fill_model: FillModelConfig = field(default_factory=FillModelConfig)
    instruments: tuple[dict[str, Any], ...] = ()  # [[instruments]] declared beyond the built-in master
    risk_limits: tuple[dict[str, Any], ...] = ()  # [[risk_limits]]: scope = "instrument:ES" ... and limits


SECTIONS: dict[str, type] = {f.name: f.type if isinstance(f.type, type) else globals()[f.type]
                             for f in dataclasses.fields(Config) if f.name not in ("instruments", "risk_limits")}
# sections written as a sub-table of another: Config.feeds_ib is [feeds.ib] in the file
NESTED = {"feeds_ib": ("feeds", "ib"), "feeds_alpha_vantage": ("feeds", "alpha_vantage")}
# keys never written into `config show` or the configuration's audit record
SECRET_KEYS = {("feeds_alpha_vantage", "api_key")}


def section_path(name: str) -> str:
    """How a section is written in TOML: ``feeds.ib`` for Config.feeds_ib."""
    return ".".join(NESTED.get(name, (name,)))


def user_config_path() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "nt8bridge" / "config.toml"


def user_data_dir() -> Path:
    """The user's nt8bridge data folder (database, audit journal, models, log): ``%LOCALAPPDATA%\\nt8bridge``
    on Windows, ``$XDG_DATA_HOME/nt8bridge`` (else ``~/.local/share/nt8bridge``) elsewhere. Not created here."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        # The XDG spec says relative values are invalid and must be ignored.
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "nt8bridge"


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
    top = [n for n in SECTIONS if n not in NESTED]
    unknown = sorted(set(data) - set(top) - {"instruments", "risk_limits"})
    for key in unknown:
        errors.append(f"{key}: unknown section; allowed: {', '.join(top + ['instruments', 'risk_limits'])}")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        where = section_path(name)
        raw: Any = data
        for part in where.split("."):
            raw = raw.get(part, {}) if isinstance(raw, dict) else {}
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a table")
            raw = {}
        raw = dict(raw)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        subtables = {path[1] for sec, path in NESTED.items() if path[0] == name}
        for sub in subtables:
            raw.pop(sub, None)  # [feeds.ib] inside [feeds]: its own section
        prefix = f"NT8BRIDGE_{name.upper()}__"
        for var, value in env.items():
            if var.startswith(prefix):
                raw[var[len(prefix):].lower()] = value
        values = {}
        for key, value in raw.items():
            if key not in fields:
                allowed = list(fields) + [f"[{where}.{sub}]" for sub in sorted(subtables)]
                errors.append(f"{where}.{key}: unknown key; allowed: {', '.join(allowed)}")
                continue
            coerced = _coerce(where, fields[key], value, errors)
            if coerced is not None:
                values[key] = coerced
        sections[name] = cls(**values)
    instruments = data.get("instruments", [])
    if not isinstance(instruments, list) or not all(isinstance(i, dict) for i in instruments):
        errors.append("instruments: must be an array of tables ([[instruments]])")
        instruments = []
    risk_limits = data.get("risk_limits", [])
    if not isinstance(risk_limits, list) or not all(isinstance(i, dict) for i in risk_limits):
        errors.append("risk_limits: must be an array of tables ([[risk_limits]] with scope = ...)")
        risk_limits = []
    for k, entry in enumerate(risk_limits):
        from bridge.core.limits import Limits, Scope
        entry = dict(entry)
        scope = entry.pop("scope", None)
        try:
            Scope.parse(scope)
            Limits(**entry)
        except (TypeError, ValueError) as exc:
            errors.append(f"risk_limits[{k}] (scope {scope!r}): {exc}")
    errors.extend(_cross_checks(sections))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return Config(**sections, instruments=tuple(instruments), risk_limits=tuple(risk_limits))


def check_value(section: str, key: str, value: Any) -> Any:
    """One value for ``[section] key`` checked as the file's would be (type, bounds, choices), for callers that
    set values outside a file (a parameter grid); ``section`` is a ``Config`` field name. Returns the value as the
    field holds it (an int for a float field becomes a float); ConfigError says what is wrong."""
    cls = SECTIONS.get(section)
    if cls is None:
        raise ConfigError(f"{section}: unknown section; allowed: {', '.join(section_path(n) for n in SECTIONS)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ConfigError(f"{section_path(section)}.{key}: unknown key; allowed: {', '.join(fields)}")
    errors: list[str] = []
    coerced = _coerce(section_path(section), fields[key], value, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return coerced


def check_config(config: Config) -> None:
    """The checks that involve more than one value (``build_config`` runs them on a file), on a Config changed in
    code; ConfigError lists what is wrong."""
    errors = _cross_checks({name: getattr(config, name) for name in SECTIONS})
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def _cross_checks(sections: dict[str, Any]) -> list[str]:
    """Checks that involve more than one value's bounds."""
    errors = []
    strategy = sections.get("strategy")
    if strategy is not None:
        names = strategy.strategy_names()
        for name in names:
            if name not in STRATEGY_NAMES:
                errors.append(f"strategy.names: {name!r} is not one of {', '.join(STRATEGY_NAMES)} (or none)")
        for pair in strategy.spread_pairs.split(","):
            if pair.strip() and len(pair.split("/")) != 2:
                errors.append(f"strategy.spread_pairs: {pair.strip()!r} is not BASE/OTHER (e.g. ES/NQ)")
        if not strategy.spread_exit_z < strategy.spread_entry_z:
            errors.append("strategy: spread_exit_z must be below spread_entry_z")
    security = sections.get("security")
    if security is not None:
        for entry in split_allow(security.allow):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                errors.append(f"security.allow: {entry!r} is not an IP address or network (e.g. 10.1.2.3 or "
                              "192.168.7.0/24)")
    portfolio = sections.get("portfolio")
    if portfolio is not None and portfolio.start_trading:
        try:
            parse_utc(portfolio.start_trading)
        except ValueError:
            errors.append(f"portfolio.start_trading: {portfolio.start_trading!r} is not an ISO 8601 time "
                          "(e.g. 2023-11-01T00:00:00)")
    return errors


def split_allow(text: str) -> list[str]:
    """The entries of ``security.allow``: comma (or space) separated, blanks dropped."""
    return [e for e in text.replace(",", " ").split() if e]


def parse_utc(text: str) -> int:
    """ISO 8601 text to UTC epoch nanoseconds; a time without an offset is UTC."""
    from datetime import datetime, timezone
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


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
        lines.append(f"[{section_path(name)}]")
        for f in dataclasses.fields(section):
            lines.append(f"# {f.metadata['help']}")
            value = getattr(section, f.name)
            if (name, f.name) in SECRET_KEYS and value:
                lines.append(f"# {f.name} is set (not shown)")
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    for name in ("instruments", "risk_limits"):
        for entry in getattr(config, name):
            lines.append(f"[[{name}]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
            lines.append("")
    return "\n".join(lines)
