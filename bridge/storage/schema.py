"""The recording schema: every table the sidecar writes, as SQLAlchemy Core ``Table`` objects.

Conventions
-----------
* Times are int64 nanoseconds since the Unix epoch (UTC) in ``BigInteger`` columns named ``*_ns``:
  one integer type on SQLite and PostgreSQL, no time-zone ambiguity, no precision loss.
* Prices and money are ``Double`` (IEEE 754 double on both back ends).
* Text identifiers are ``String`` (unbounded VARCHAR); free text and JSON documents are ``Text``.
  JSON columns hold text the caller has already serialised, so the writer does no JSON work.
* Surrogate ``id`` columns autoincrement; they are INTEGER on SQLite so that they alias the rowid
  (a BIGINT primary key there would not autoincrement) and BIGINT (``BIGSERIAL``) on PostgreSQL.

Nullability and NaN
-------------------
A column is NOT NULL unless its value can legitimately be absent: NT8 does not always send it
(``exchange``, ``nt8_order_id`` before NT8 assigns one, ``commission``), it does not apply
(``bid``/``ask`` on a last-trade tick, ``limit_price`` of a market order, ``avg_price`` when flat),
or it arrives later (``sessions.ended_ns``). The inputs use NaN for a missing price, so the writer
stores NaN as NULL in every ``Double`` column. In a NOT NULL column that makes the row fail its
constraint and land in ``storage_rejects`` instead of silently storing NaN; SQLite does the same
by itself (it binds NaN as NULL), so both back ends agree.

Changing this module means writing a new Alembic migration in ``migrations/versions``;
``tests/unit/test_storage_schema.py`` fails while the two disagree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeEngine

from bridge.storage.audit_table import audit_chain_table

# Deterministic constraint names, so later migrations can refer to them on both back ends.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def id_type() -> TypeEngine[int]:
    """Type of the surrogate ``id`` primary keys: BIGINT, but INTEGER on SQLite (rowid alias)."""
    return BigInteger().with_variant(Integer(), "sqlite")


def _id() -> Column[int]:
    return Column("id", id_type(), primary_key=True, autoincrement=True)


def _ns(name: str, nullable: bool = False) -> Column[int]:
    return Column(name, BigInteger, nullable=nullable)


def _price(name: str, nullable: bool = False) -> Column[float]:
    return Column(name, Double, nullable=nullable)


def _text(name: str, nullable: bool = False) -> Column[str]:
    return Column(name, String, nullable=nullable)


def _session_id() -> Column[int]:
    return Column("session_id", BigInteger, nullable=False)


def _seq(nullable: bool = False) -> Column[int]:
    # The bridge's message sequence number within the session, for ordering and gap analysis.
    return Column("seq", BigInteger, nullable=nullable)


instruments = Table(
    "instruments",
    metadata,
    Column("name", String, primary_key=True),  # NT8's full name, e.g. "ES 06-18"
    _text("root"),
    _price("tick_size"),
    _price("point_value"),
    _text("currency", nullable=True),
    _text("exchange", nullable=True),
    _ns("first_seen_ns"),
)

sessions = Table(
    "sessions",
    metadata,
    # Chosen by the sidecar, not by the database: rows arrive from the hot path with it set.
    Column("session_id", BigInteger, primary_key=True, autoincrement=False),
    _text("instance_id"),
    _text("account", nullable=True),
    _text("peer", nullable=True),
    Column("protocol_version", Integer, nullable=False),
    _ns("started_ns"),
    _ns("ended_ns", nullable=True),
    _text("end_reason", nullable=True),
    _ns("clock_offset_ns", nullable=True),
    # A reconnecting instance's sessions (recovery, playback reports); the console's history window.
    Index("ix_sessions_instance_id_started_ns", "instance_id", "started_ns"),
    Index("ix_sessions_started_ns", "started_ns"),
    Index("ix_sessions_ended_ns", "ended_ns"),
)

ticks = Table(
    "ticks",
    metadata,
    _id(),
    _session_id(),
    _seq(),
    _text("instrument"),
    Column("kind", SmallInteger, nullable=False),  # 0 last, 1 bid, 2 ask
    _price("price"),
    Column("size", BigInteger, nullable=False),
    _price("bid", nullable=True),
    _price("ask", nullable=True),
    _ns("ts_exchange_ns"),
    _ns("ts_receive_ns"),
    _ns("ts_sidecar_ns"),
    Index("ix_ticks_session_id_instrument_ts_exchange_ns", "session_id", "instrument", "ts_exchange_ns"),
)

bars = Table(
    "bars",
    metadata,
    _id(),
    _session_id(),
    _text("instrument"),
    Column("period_s", Integer, nullable=False),
    _ns("ts_open_ns"),
    _ns("ts_close_ns"),
    _price("open"),
    _price("high"),
    _price("low"),
    _price("close"),
    Column("volume", BigInteger, nullable=False),
    Column("tick_count", Integer, nullable=True),  # NT8-built bars do not always carry it
    _text("source"),  # 'ticks' (built here) or 'nt8' (received)
    Index("ix_bars_session_id", "session_id"),
)

quality_events = Table(
    "quality_events",
    metadata,
    _id(),
    _session_id(),
    _seq(nullable=True),  # events raised by the sidecar itself have no message seq
    _text("instrument", nullable=True),
    _text("reason"),
    Column("detail", Text, nullable=True),
    _ns("ts_event_ns"),
    _ns("ts_sidecar_ns"),
    Column("payload", Text, nullable=True),  # JSON
    Index("ix_quality_events_session_id_reason", "session_id", "reason"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String, primary_key=True),
    _session_id(),
    _text("instrument"),
    _text("strategy"),
    _ns("ts_event_ns"),
    _ns("ts_sidecar_ns"),
    _text("outcome"),
    Column("rationale", Text, nullable=True),
    Column("inputs", Text, nullable=True),  # JSON
    # A session's decisions, newest first (the console's recent denials, per-session counts).
    Index("ix_decisions_session_id_ts_sidecar_ns", "session_id", "ts_sidecar_ns"),
)

orders = Table(
    "orders",
    metadata,
    Column("client_order_id", String, primary_key=True),
    _session_id(),
    _text("decision_id", nullable=True),  # NULL for orders not born from a recorded decision
    _text("instrument"),
    _text("side"),
    Column("quantity", Integer, nullable=False),
    _text("entry_type"),
    _price("entry_price", nullable=True),  # NULL for market entries
    _price("stop_price", nullable=True),
    _price("target_price", nullable=True),
    _text("time_in_force"),
    _text("algorithm_id", nullable=True),
    _ns("ts_created_ns"),
    # A session's orders, newest first (recovery on HELLO, the console's orders); a decision's orders.
    Index("ix_orders_session_id_ts_created_ns", "session_id", "ts_created_ns"),
    Index("ix_orders_decision_id", "decision_id"),
)

order_updates = Table(
    "order_updates",
    metadata,
    _id(),
    _session_id(),
    _seq(),
    _text("client_order_id"),
    _text("role"),  # entry, stop, target
    _text("nt8_order_id", nullable=True),  # unknown until NT8 accepts the order
    _text("state"),
    Column("quantity", Integer, nullable=False),
    Column("filled", Integer, nullable=False),
    _price("limit_price", nullable=True),
    _price("stop_price", nullable=True),
    _price("avg_fill_price", nullable=True),
    _ns("ts_event_ns"),
    Column("error_code", Integer, nullable=True),
    Column("comment", Text, nullable=True),
    # An order's updates (its last state); a session's, for counts.
    Index("ix_order_updates_client_order_id", "client_order_id"),
    Index("ix_order_updates_session_id", "session_id"),
)

executions = Table(
    "executions",
    metadata,
    _id(),
    _session_id(),
    _seq(),
    _text("execution_id"),
    _text("client_order_id", nullable=True),  # NULL for fills of orders placed outside the bridge
    _text("role", nullable=True),
    _text("nt8_order_id", nullable=True),
    _text("instrument"),
    _text("side"),
    _price("price"),
    Column("quantity", Integer, nullable=False),
    _price("commission", nullable=True),
    _ns("ts_event_ns"),
    # NT8 replays executions after a reconnect; this makes the replay idempotent.
    UniqueConstraint("session_id", "execution_id"),  # also the index of a session's executions
    Index("ix_executions_client_order_id", "client_order_id"),  # an order's fills
)

positions = Table(
    "positions",
    metadata,
    _id(),
    _session_id(),
    _seq(),
    _text("instrument"),
    _text("market_position"),
    Column("quantity", Integer, nullable=False),
    _price("avg_price", nullable=True),  # meaningless when flat
    _ns("ts_event_ns"),
    # The latest row of each session and instrument: max(id) per group, read from the index alone on SQLite.
    Index("ix_positions_session_id_instrument", "session_id", "instrument"),
)

account_values = Table(
    "account_values",
    metadata,
    _id(),
    _session_id(),
    _seq(),
    _text("account"),
    # NT8 reports each account item separately, so any of them can be missing from a snapshot.
    _price("cash_value", nullable=True),
    _price("realized_pnl", nullable=True),
    _price("unrealized_pnl", nullable=True),
    _price("buying_power", nullable=True),
    _ns("ts_event_ns"),
    Index("ix_account_values_session_id_account", "session_id", "account"),  # the latest per session and account
)

audit_log = Table(
    "audit_log",
    metadata,
    _id(),
    Column("session_id", BigInteger, nullable=True),  # NULL for events outside a session
    _ns("ts_sidecar_ns"),
    _text("kind"),
    _text("subject_id", nullable=True),
    Column("payload", Text, nullable=True),  # JSON
    # No longer written, but read for older sessions: their counts, the console's recent operator acts.
    Index("ix_audit_log_session_id", "session_id"),
    Index("ix_audit_log_kind_ts_sidecar_ns", "kind", "ts_sidecar_ns"),
)

# The tamper-evident audit chain (bridge/audit/chain.py): append-only, rows rejected on UPDATE/DELETE by
# triggers (migration 0002). Replaces audit_log, which stays for sessions recorded before it.
audit_chain = audit_chain_table(metadata)
Index("ix_audit_chain_session_id", audit_chain.c.session_id)
Index("ix_audit_chain_kind_subject_id", audit_chain.c.kind, audit_chain.c.subject_id)  # a decision's record
Index("ix_audit_chain_kind_ts_us", audit_chain.c.kind, audit_chain.c.ts_us)  # recent records of some kinds

storage_rejects = Table(
    "storage_rejects",
    metadata,
    _id(),
    _text("table_name"),
    Column("error", Text, nullable=False),
    Column("row_json", Text, nullable=False),
    _ns("ts_ns"),
)


# --------------------------------------------------------------------------- ML models (migration 0003)
# The files of a model directory are the source of truth for its artifacts (ml/registry.py); these
# rows make the registry's list, promotions and rollbacks auditable and queryable.

models = Table(
    "models",
    metadata,
    Column("model_id", String, primary_key=True),  # e.g. "ens-20231120-ab12cd34"
    _ns("created_ns"),
    _text("status"),  # challenger, champion, retired
    _text("feature_set_version"),
    Column("feature_names", Text, nullable=False),  # JSON list
    Column("label_config", Text, nullable=False),  # JSON
    _ns("train_start_ns"),
    _ns("train_end_ns"),
    _text("data_sha256"),
    _text("code_version"),
    Column("metrics", Text, nullable=False),  # JSON
    _ns("expires_ns", nullable=True),  # NULL: never expires
    Column("path", Text, nullable=False),
    Column("metadata_json", Text, nullable=False),  # the whole model.json as registered
)

model_events = Table(
    "model_events",
    metadata,
    _id(),
    _text("model_id"),
    _text("event"),  # register, promote, retire, rollback, expire
    _text("operator"),
    Column("reason", Text, nullable=True),
    _ns("ts_ns"),
    _text("previous_champion", nullable=True),
    Index("ix_model_events_model_id", "model_id"),
)

drift_alerts = Table(
    "drift_alerts",
    metadata,
    _id(),
    _text("model_id"),
    _text("feature"),  # a feature name, or "*" for the overall alert
    _text("metric"),  # psi, ks, wasserstein_norm, drifted_features, di
    _price("value"),
    _price("threshold"),
    _ns("ts_ns"),
    _ns("window_start_ns"),
    _ns("window_end_ns"),
    Column("n_rows", Integer, nullable=False),
    Index("ix_drift_alerts_model_id_ts_ns", "model_id", "ts_ns"),
)



# --------------------------------------------------------------------------- leadership (migration 0004)
# Which sidecar of a hot-standby pair leads. The lock itself is a PostgreSQL advisory lock held on a
# connection of the leader's (bridge/transport/leadership.py); this row only says who took it last,
# under which epoch, and where NT8 should connect: a standby names the leader when it refuses a HELLO,
# and the epoch orders the leaders in the audit trail.

leadership = Table(
    "leadership",
    metadata,
    Column("cluster", String, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    _text("node"),  # host:pid of the leader
    _text("endpoint"),  # the endpoint NT8 connects to
    _ns("since_ns"),
)


# --------------------------------------------------------------------------- writer progress (migration 0005)
# How far each run of the storage writer has committed (bridge/storage/writer.py): one row per run, moved
# forward in the same transaction as the rows, so replaying the writer's spool after a crash skips what
# was committed just before it and no row is stored twice.

storage_progress = Table(
    "storage_progress",
    metadata,
    Column("stream_id", String, primary_key=True),  # one writer's run (a random id chosen at its start)
    Column("last_seq", BigInteger, nullable=False),  # its queue items up to this one are committed
    _ns("updated_ns"),
)


def _row_columns(table: Table) -> tuple[str, ...]:
    # Autoincrement ids are assigned by the database, so the hot path never supplies them.
    return tuple(c.name for c in table.columns if not (c.primary_key and c.autoincrement is True))


COLUMNS: dict[str, tuple[str, ...]] = {name: _row_columns(t) for name, t in metadata.tables.items()}
"""Per table, the order of the values in the row tuples handed to ``StorageWriter.write``."""

IGNORE_DUPLICATES: frozenset[str] = frozenset({"instruments", "orders", "executions", "audit_chain"})
"""Tables whose rows may be re-sent (instrument announcements, order re-submission after a
reconnect, NT8's execution replay, audit records replayed from the journal after a crash): a row whose
key already exists is skipped, not rejected."""

