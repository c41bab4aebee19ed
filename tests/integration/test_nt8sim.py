"""The real NinjaScript strategy in the NT8 simulator under Mono, against the real sidecar.

Each playback starts ``nt8bridge serve`` in a child process on a fresh SQLite file, runs the
compiled strategy through ``bridge.nt8.simulator.run_nt8sim`` and then reads back what the sidecar stored.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bridge.core.config import load_config
from bridge.transport.sidecar import SidecarProcess, master_for
from bridge.storage.database import create_engine_for
from bridge.storage.queries import execution_ids, session_counts, sessions_of_instance
from bridge.storage.schema import metadata
from tests.conftest import PLUMBING_CONFIG
from tests.integration.test_playback_digest import PINNED

ES_FILE = "nt8/ES 06-18.Last.txt.gz"
CONFIG = load_config(PLUMBING_CONFIG)


def play(files, tmp_path: Path, name: str, **kwargs):
    from bridge.nt8.simulator import run_nt8sim

    db = f"sqlite:///{tmp_path / (name + '.sqlite')}"
    proc = SidecarProcess(db, PLUMBING_CONFIG)
    endpoint = proc.start()
    try:
        result = run_nt8sim([Path(f) for f in files], endpoint, CONFIG, master_for(CONFIG), **kwargs)
    finally:
        code = proc.stop()
    assert code == 0, proc.tail()
    return result, db


def legs_by_bracket(orders):
    """{bracket id: {role letter(s): [order, ...]}} from the strategy's order names nb:<id>:<role>."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for o in orders:
        _, bracket, role = o["name"].split(":")
        out[bracket][role[0]].append(o)
    return out


def assert_brackets_sound(result, max_position: int = 5):
    """Never both exits of one OCO pair filled beyond the entry; never over the position cap."""
    for bracket, legs in legs_by_bracket(result.orders).items():
        entry_filled = sum(o["filled"] for o in legs.get("E", []))
        by_oco = defaultdict(int)
        for o in legs.get("S", []) + legs.get("T", []):
            by_oco[o["oco"]] += o["filled"]
        for oco, filled in by_oco.items():
            assert filled <= entry_filled, f"{bracket} {oco}: exits filled {filled} > entry {entry_filled}"
        exits = sum(o["filled"] for o in legs.get("S", []) + legs.get("T", []) + legs.get("X", []))
        assert exits <= entry_filled or bracket.startswith("flatten"), f"{bracket}: overfilled"
    for f in result.fills:
        assert abs(f["position_after"]) <= max_position


@pytest.fixture(scope="module")
def es_runs(shared_data, nt8, tmp_path_factory):
    """The acceptance playback, twice, each against a fresh sidecar and database."""
    tmp = tmp_path_factory.mktemp("es")
    return [play([shared_data / ES_FILE], tmp, f"run{k}") for k in range(2)]


@pytest.fixture(scope="module")
def es_windowed(shared_data, nt8, tmp_path_factory):
    """The same playback with up to 256 messages in flight between waits."""
    return play([shared_data / ES_FILE], tmp_path_factory.mktemp("es256"), "window256", window=256)


def test_es_playback_submits_brackets_that_the_simulator_fills(es_runs):
    result, _ = es_runs[0]
    assert result.strategy_error is None
    assert result.trades == 74_907  # every trade of the file reached the strategy
    assert result.brackets >= 3
    entries = [o for o in result.orders if o["name"].endswith(":E")]
    assert all(o["state"] == "Filled" for o in entries[:-1])
    assert len(result.fills) >= 2 * len(entries) - 1  # each closed bracket: an entry fill and an exit fill
    assert_brackets_sound(result)
    assert "connected" in result.chart_text[0] and "last:" in result.chart_text[0]


def test_two_runs_give_identical_orders_and_fills(es_runs):
    (a, _), (b, _) = es_runs

    def shape(r):
        orders = [(o["ordinal"], o["name"].rsplit(":", 1)[1], o["action"], o["type"], o["quantity"], o["filled"],
                   o["limit_price"], o["stop_price"], o["state"], o["submitted_at_event"]) for o in r.orders]
        fills = [(f["event_index"], f["action"], f["price"], f["quantity"], f["position_after"]) for f in r.fills]
        return orders, fills

    assert shape(a) == shape(b)
    assert a.digest == b.digest
    assert a.realized_pnl == b.realized_pnl
    # repeatable, and what the reference playback has always traded (pinned with the CLI's default window
    # of 256; a window changes throughput, not trading: see the next test)
    assert {"digest": a.digest, "brackets": a.brackets, "fills": len(a.fills),
            "realized_pnl": a.realized_pnl["ES 06-18"]} == PINNED["nt8sim"]


def test_a_lockstep_window_reads_the_answers_at_the_same_decision_points(es_runs, es_windowed):
    """The strategy waits at every bar close (when the sidecar decides) and on every tick while an
    order is live, so on bar-driven decisions a window changes throughput, not trading."""
    (exact, _), (windowed, db) = es_runs[0], es_windowed
    assert windowed.strategy_error is None
    assert [(f["event_index"], f["price"], f["quantity"]) for f in windowed.fills] == \
        [(f["event_index"], f["price"], f["quantity"]) for f in exact.fills]
    assert windowed.digest == exact.digest
    sessions = sessions_of_instance(db, windowed.instance_id)
    assert session_counts(db, sessions[0]).ticks == windowed.market_data_events


def test_every_fill_is_a_stored_execution_and_every_tick_is_stored(es_runs):
    result, db = es_runs[0]
    sessions = sessions_of_instance(db, result.instance_id)
    assert len(sessions) == 1
    assert sorted(execution_ids(db, sessions)) == sorted(f["execution_id"] for f in result.fills)
    counts = session_counts(db, sessions[0])
    assert counts.end_reason == "BYE"
    # ES 06-18 is clean (bench/quality_report.py: nothing refused), so every tick sent is stored
    assert counts.ticks == result.market_data_events
    assert counts.decisions == result.brackets


def test_positions_and_pnl_add_up_from_the_fills(es_runs):
    result, _ = es_runs[0]
    point_value = 50.0
    position, average, realized = 0, 0.0, 0.0
    for f in result.fills:
        signed = f["quantity"] if f["action"] in ("Buy", "BuyToCover") else -f["quantity"]
        if position == 0 or (position > 0) == (signed > 0):
            average = (average * abs(position) + f["price"] * abs(signed)) / abs(position + signed)
        else:
            closed = min(abs(position), abs(signed))
            realized += closed * (f["price"] - average) * (1 if position > 0 else -1) * point_value
        position += signed
        assert position == f["position_after"]
    assert position == result.final_position["ES 06-18"]
    assert realized == pytest.approx(result.realized_pnl["ES 06-18"], abs=0.01)
    assert sum(f["commission"] for f in result.fills) == pytest.approx(result.commission, abs=0.01)


def test_two_instruments_es_with_nq(nt8, tmp_path):
    """Synthetic ES and NQ ticks (calibrated to the real minute data), merged in time order; NQ is
    an extra series added in Configure, as a trader would with AddDataSeries."""
    from bridge.data.nt8files import Nt8Format, write_nt8
    from bridge.data.synthetic import generate_session

    start = datetime(2024, 3, 12, 13, 30, tzinfo=timezone.utc)
    frames = generate_session(["ES 03-24", "NQ 03-24"], start, 90, seed=11)
    files = []
    for name, df in frames.items():
        path = tmp_path / f"{name}.Last.txt"
        write_nt8(df, path, Nt8Format.TICK_REPLAY)
        files.append(path)
    result, db = play(files, tmp_path, "two")
    assert result.strategy_error is None
    assert result.instruments == ["ES 03-24", "NQ 03-24"]
    assert result.trades == sum(len(df) for df in frames.values())
    sessions = sessions_of_instance(db, result.instance_id)
    engine = create_engine_for(db)
    ticks = metadata.tables["ticks"]
    with engine.connect() as conn:
        per_instrument = dict(conn.execute(select(ticks.c.instrument, func.count())
                                           .where(ticks.c.session_id == sessions[0])
                                           .group_by(ticks.c.instrument)).all())
    engine.dispose()
    assert set(per_instrument) == {"ES 03-24", "NQ 03-24"}  # HELLO declared both; both streams stored
    assert sum(per_instrument.values()) + sum(session_counts(db, sessions[0]).quality_events_by_reason.values()) \
        >= result.market_data_events
    assert_brackets_sound(result)


def test_the_strategy_survives_broker_faults(shared_data, nt8, tmp_path):
    """Rejected submissions, order updates that never arrive and executions reported before their
    order update: brackets stay sound, nothing crashes, every fill is still reported."""
    from bridge.nt8.simulator import FaultSpec

    faults = FaultSpec(seed=3, reject_rate=0.15, drop_order_update_rate=0.3, execution_first_rate=0.5)
    result, db = play([shared_data / ES_FILE], tmp_path, "faults", faults=faults)
    assert result.strategy_error is None
    assert result.counters["orders_rejected"] > 0
    assert result.counters["order_updates_dropped"] > 0
    assert result.counters["executions_first"] > 0
    assert_brackets_sound(result)
    # every entry that filled got its protection, or the bracket was closed at market
    legs = legs_by_bracket(result.orders)
    for bracket, roles in legs.items():
        if any(o["filled"] for o in roles.get("E", [])) and not bracket.startswith("flatten"):
            assert roles.get("S") or roles.get("X"), f"{bracket} filled but was never protected"
    sessions = sessions_of_instance(db, result.instance_id)
    assert sorted(execution_ids(db, sessions)) == sorted(f["execution_id"] for f in result.fills)


def test_free_running_with_order_latency(shared_data, nt8, tmp_path):
    """Free-running, the simulator plays far faster than the sidecar ingests; whatever it sent is either
    stored or counted by the link as dropped, nothing vanishes: the strategy waits for the session before
    playing (no tick is queued before WELCOME and discarded as stale), and the link waits for the sidecar
    to acknowledge everything before BYE."""
    from bridge.data.nt8files import read_nt8

    result, db = play([shared_data / ES_FILE], tmp_path, "free", lockstep=False, latency_ms=50)
    assert result.strategy_error is None
    assert not result.lockstep
    assert result.trades == 74_907
    assert_brackets_sound(result)
    link = result.counters
    assert "link_sent" in link, result.prints[-5:]  # the link's stop line reached the report
    assert link["link_downs"] == 0 and link["link_protocol_errors"] == 0, result.prints[-10:]
    assert link["link_dropped_stale"] == 0, result.prints[:5]  # connected before the first tick
    assert link["link_dropped_order_events"] == 0  # the queue never dropped an order, execution or position report
    sessions = sessions_of_instance(db, result.instance_id)
    assert len(sessions) == 1
    counts = session_counts(db, sessions[0])
    assert counts.end_reason == "BYE", result.prints[-10:]
    assert counts.quality_events_by_reason == {}  # ES 06-18 is clean: nothing refused
    # market data sent: every TICK, and a BAR at each bar close (every minute bar but the last, still open)
    minutes = {-(-ts // 60_000_000_000) for ts in read_nt8(shared_data / ES_FILE)["ts_ns"].tolist()}
    bars_sent = len(minutes) - 1
    engine = create_engine_for(db)
    bars = metadata.tables["bars"]
    with engine.connect() as conn:
        nt8_bars = conn.execute(select(func.count()).select_from(bars)
                                .where(bars.c.session_id == sessions[0], bars.c.source == "nt8")).scalar_one()
    engine.dispose()
    # what the link dropped (queue full) or discarded (stale) is market data only, per the assertion above
    assert counts.ticks + nt8_bars + link["link_dropped"] + link["link_dropped_stale"] \
        == result.market_data_events + bars_sent, (counts.ticks, nt8_bars, link)
    if link["link_dropped"] == 0:
        assert counts.ticks == result.market_data_events
    assert sorted(execution_ids(db, sessions)) == sorted(f["execution_id"] for f in result.fills)


@pytest.mark.parametrize("behaviour", ["Flatten", "CancelEntries"])
def test_sidecar_lost_mid_playback_applies_the_configured_behaviour(shared_data, nt8, tmp_path, behaviour):
    """The sidecar is killed while a position is open: in lockstep the next message times out
    (the heartbeat timeout), the link reports the loss, and the strategy applies OnSidecarLost."""
    from bridge.nt8.simulator import run_nt8sim

    reference, _ = play([shared_data / ES_FILE], tmp_path, f"ref-{behaviour}", max_events=40_000)
    entry_fills = [f for f in reference.fills if f["order_name"].endswith(":E")]
    assert entry_fills, "the reference run needs an open position to kill the sidecar under"
    kill_at = entry_fills[0]["event_index"] + 1

    db = f"sqlite:///{tmp_path / ('lost-' + behaviour + '.sqlite')}"
    proc = SidecarProcess(db, PLUMBING_CONFIG)
    endpoint = proc.start()
    killed = []

    def progress(done: int, total: int) -> None:
        if done >= kill_at and not killed:
            os.kill(proc.proc.pid, signal.SIGKILL)
            killed.append(done)

    try:
        result = run_nt8sim([shared_data / ES_FILE], endpoint, CONFIG, master_for(CONFIG), max_events=kill_at + 2_000,
                            parameters={"HeartbeatMs": 250, "HeartbeatTimeoutMs": 1000, "OnSidecarLost": behaviour},
                            progress=progress, progress_every=1)
    finally:
        proc.stop()
    assert killed, (kill_at, result.events, result.strategy_error)
    assert result.strategy_error is None
    assert any("sidecar lost" in p for p in result.prints), result.prints[-10:]
    if behaviour == "Flatten":
        assert result.final_position["ES 06-18"] == 0
        assert any(o["name"].endswith(":F") for o in result.orders)
    else:
        # entries are cancelled, the open position keeps its stop and target
        assert not any(o["name"].endswith(":F") for o in result.orders)
        working = [o for o in result.orders if o["state"] == "Working"]
        assert {o["name"].rsplit(":", 1)[1][0] for o in working} <= {"S", "T"}


def test_times_reach_the_wire_in_utc_whatever_nt8s_display_zone(shared_data, nt8, tmp_path):
    """NT8 hands out times in the zone of Tools > Options > General; the strategy must convert."""
    stored = {}
    for zone in ("UTC", "America/Chicago"):
        result, db = play([shared_data / ES_FILE], tmp_path, zone.replace("/", "-"), timezone=zone, max_events=3_000)
        assert result.strategy_error is None
        sid = sessions_of_instance(db, result.instance_id)[0]
        engine = create_engine_for(db)
        ticks, bars = metadata.tables["ticks"], metadata.tables["bars"]
        with engine.connect() as conn:
            stored[zone] = (
                conn.execute(select(ticks.c.ts_exchange_ns).where(ticks.c.session_id == sid).order_by(ticks.c.id)).scalars().all(),
                conn.execute(select(bars.c.ts_close_ns, bars.c.source).where(bars.c.session_id == sid).order_by(bars.c.id)).all(),
            )
        engine.dispose()
    assert stored["UTC"] == stored["America/Chicago"]
    from bridge.data.nt8files import read_nt8
    first = read_nt8(shared_data / ES_FILE).iloc[:3_000]
    assert stored["UTC"][0] == first["ts_ns"].tolist()  # the file's own UTC stamps, tick for tick
    nt8_bars = [ts for ts, source in stored["UTC"][1] if source == "nt8"]
    assert nt8_bars and all(ts % 60_000_000_000 == 0 for ts in nt8_bars)  # minute bars end on the minute, in UTC


def test_real_minute_bars_of_two_instruments(shared_data, nt8, tmp_path):
    """NT8 minute exports of ES and NQ (real, Dec-2023 contracts), merged: the strategy streams
    NT8's bars, the sidecar decides on them, the simulator fills on each bar's open-extremes-close."""
    files = [shared_data / "nt8/ES 12-23.Last.txt", shared_data / "nt8/NQ 12-23.Last.txt"]
    result, db = play(files, tmp_path, "minutes", max_events=16_000)
    assert result.strategy_error is None
    assert result.bars == 16_000 and result.trades == 0
    assert result.brackets >= 1 and result.fills
    assert_brackets_sound(result)
    sessions = sessions_of_instance(db, result.instance_id)
    engine = create_engine_for(db)
    bars = metadata.tables["bars"]
    with engine.connect() as conn:
        stored = dict(conn.execute(select(bars.c.instrument, func.count())
                                   .where(bars.c.session_id == sessions[0], bars.c.source == "nt8")
                                   .group_by(bars.c.instrument)).all())
    engine.dispose()
    # NT8 reports a bar when the next one starts: all but the last of each instrument, less refusals
    counts = session_counts(db, sessions[0])
    refused = sum(counts.quality_events_by_reason.values())
    assert set(stored) == {"ES 12-23", "NQ 12-23"}
    assert sum(stored.values()) + refused == result.bars - 2
    assert sorted(execution_ids(db, sessions)) == sorted(f["execution_id"] for f in result.fills)


def test_free_running_at_a_playback_speed_lets_the_sidecar_trade(shared_data, nt8, tmp_path):
    """At full speed a free-running playback is over before the sidecar's decisions come back; at a
    speed (N times real time, like NT8's Playback) they land while the data plays, with latency."""
    import time as _time

    # the first 40,000 trades of ES 06-18 span about 80 minutes of market time (the strategy's features
    # need 31 minutes to warm up)
    started = _time.perf_counter()
    result, db = play([shared_data / ES_FILE], tmp_path, "paced", lockstep=False, latency_ms=50, speed=600.0,
                      max_events=40_000)
    wall = _time.perf_counter() - started
    assert result.strategy_error is None
    assert wall >= 4.0  # paced: 80 minutes at 600x is about 8 s, not the fraction of a second of full speed
    entries = [o for o in result.orders if o["name"].endswith(":E")]
    assert entries and any(o["filled"] for o in entries), "the sidecar's brackets should be filled during the data"
    assert_brackets_sound(result)
    sessions = sessions_of_instance(db, result.instance_id)
    assert sorted(execution_ids(db, sessions)) == sorted(f["execution_id"] for f in result.fills)


def test_remote_mode_the_strategy_with_the_shared_secret_file_trades_and_with_another_is_refused(shared_data, nt8,
                                                                                                 tmp_path):
    """Remote mode end to end in C#: the strategy's 'Shared secret file' property, read in StartLink, makes
    its link authenticate every message both ways (docs/security.md). The same playback trades exactly as
    on loopback; with a file holding another secret the sidecar refuses the session and nothing trades."""
    from bridge.core.config import load_config as _load
    from bridge.nt8.simulator import run_nt8sim
    from bridge.transport.control import send_command
    from bridge.transport.security import new_secret_file

    secret_file = new_secret_file(tmp_path / "secret.hex")
    config_path = tmp_path / "remote.toml"
    config_path.write_text(PLUMBING_CONFIG.read_text() + f'\n[security]\nsecret_file = "{secret_file.as_posix()}"\n')
    assert _load(config_path).security.secret_file  # the sidecar below really is in remote mode
    reference, _ = play([shared_data / ES_FILE], tmp_path, "loopback", max_events=40_000)
    proc = SidecarProcess(f"sqlite:///{tmp_path / 'remote.sqlite'}", config_path)
    endpoint = proc.start()
    try:
        result = run_nt8sim([shared_data / ES_FILE], endpoint, CONFIG, master_for(CONFIG), max_events=40_000,
                            parameters={"SharedSecretFile": str(secret_file)})
        wrong = tmp_path / "other.hex"
        new_secret_file(wrong)
        refused = run_nt8sim([shared_data / ES_FILE], endpoint, CONFIG, master_for(CONFIG), max_events=1_000,
                             parameters={"SharedSecretFile": str(wrong)})
        status = send_command(proc.control_endpoint, "status")
    finally:
        assert proc.stop() == 0, proc.tail()
    assert result.strategy_error is None
    assert result.brackets >= 1 and result.fills, "the remote playback should trade"
    assert (result.digest, result.brackets, len(result.fills)) == (reference.digest, reference.brackets,
                                                                    len(reference.fills))
    assert result.counters["link_auth_failures"] == 0 and result.counters["link_protocol_errors"] == 0
    # the wrong secret: the strategy stops on the link's error (a playback never pretends to run), nothing trades
    assert refused.strategy_error and "different shared secrets" in refused.strategy_error
    assert not refused.orders and not refused.fills
    assert status["security"]["remote"] and status["security"]["refused"]["data"] == {"AUTH_BAD_MAC": 1}
