"""Failover of the reference feed, end to end on real ES ticks: a real sidecar (``nt8bridge serve`` in a child
process) with ``feeds.enabled = "ib"``, its IB feed (the real ib_async client) connected to the fake TWS
(tests/fakes/tws.py) streaming the same recorded ES 06-18 session, and a lockstep playback of that session
standing in for NT8.

Phase 1, IB live: NT8's ticks pause mid-session while the fake TWS keeps streaming; the reference moves to ib
with one ``feed_switch`` audit record, trading goes REDUCING (``nt8_feed_down``), and when NT8's ticks resume
the reference comes back to nt8 with one record, and the hold is lifted.
Phase 2, the fake TWS serving delayed market data (the account loses its live permission; the IB feed
reconnects and gets market data type 3): NT8 pauses just before the tick that brings the session's first
entry (found first by running the sidecar's decision pipeline here on the same ticks); the reference moves
to ib, delayed; that tick then arrives and its entry is DENIED with RISK_FEED_DELAYED, no BRACKET; NT8
resumes and the reference returns to nt8.

Which clock: the sidecar judges staleness by its wall clock (a pause of the playback is a pause of NT8's
feed), and whether the market is open by the playback's data time (2018-05-07, a Monday session), so the
test passes on any day. The fake's prints are the playback's own, from where the playback paused: the two
feeds agree on the price as they would live. Waits wait for a state; their timeouts only keep a broken
sidecar from hanging the suite.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ib_async", reason="ib_async is not installed (pip install ib_async): the IB feed needs it")

from bridge.audit.recorder import Recorder  # noqa: E402
from bridge.core.config import Config, load_config  # noqa: E402
from bridge.core.instruments import InstrumentSpec  # noqa: E402
from bridge.core.timing import StageTimings  # noqa: E402
from bridge.engine.pipeline import STAGES, DecisionPipeline, SessionInstrument  # noqa: E402
from bridge.nt8.client import Nt8Client  # noqa: E402
from bridge.nt8.playback import TickStream, load_stream  # noqa: E402
from bridge.protocol.messages import Heartbeat, InstrumentDecl, SubmitBracket, Tick  # noqa: E402
from bridge.transport.control import send_command  # noqa: E402
from bridge.transport.sidecar import SidecarProcess, make_strategy_factory, master_for  # noqa: E402
from tests.conftest import PLUMBING_CONFIG  # noqa: E402
from tests.fakes.tws import FakeTws  # noqa: E402
from tests.fakes.tws_replay import ReplaySource  # noqa: E402

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

STALE_S = 3.0     # feeds.stale_after_s: a loaded machine may stall a playback for a second or two
SWITCH_S = 1.0    # feeds.switch_after_s


def until(condition: Callable[[], Any], what: str, timeout_s: float = 60.0, idle: Callable[[], None] | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}"
        if idle is not None:
            idle()
        time.sleep(0.05)


def tick_of(s: TickStream, k: int) -> Tick:
    return Tick(0, 0, float(s.price[k]), int(s.size[k]), float(s.bid[k]), float(s.ask[k]), int(s.ts_ns[k]),
                int(s.ts_ns[k]))


class Playback:
    """The ES session through the sidecar in lockstep, as NT8 would send it, with pauses on demand."""

    def __init__(self, endpoint: str, stream: TickStream, decl: InstrumentDecl, instance_id: str) -> None:
        self.stream = stream
        self.client = Nt8Client(endpoint, instance_id=instance_id, account="Playback101", instruments=[decl])
        self.client.connect()
        self.i = 0  # the next tick to send
        self.brackets: list[tuple[int, SubmitBracket]] = []  # (tick index, BRACKET)
        self._last_beat = time.monotonic()

    def play(self, end: int, window: int = 256) -> None:
        """Send ticks up to ``end`` (exclusive) as fast as the sidecar acknowledges them."""
        while self.i < end:
            upto = min(end, self.i + window)
            sent = [(self.client.send(tick_of(self.stream, k)), k) for k in range(self.i, upto)]
            replies = self.client.wait_acks(sent[-1][0])
            for seq, k in sent:
                self.brackets += [(k, r) for r in replies.get(seq, ()) if isinstance(r, SubmitBracket)]
            self.i = upto

    def trickle(self, condition: Callable[[], Any], what: str, limit: int) -> Any:
        """One tick every 50 ms (NT8 stays fresh) until ``condition()``, never reaching tick ``limit``."""
        def one() -> None:
            assert self.i < limit, f"reached tick {limit} before: {what}"
            self.play(self.i + 1)
        return until(condition, what, idle=one)

    def heartbeat(self) -> None:
        """While NT8's ticks pause its session stays up, as NT8's does when its data feed goes quiet."""
        if time.monotonic() - self._last_beat >= 0.2:
            self.client.step(Heartbeat(self.client.last_ack))
            self._last_beat = time.monotonic()

    def close(self) -> None:
        self.client.close()


def first_entry(stream: TickStream, config: Config, decl: InstrumentDecl, spec: InstrumentSpec) -> int:
    """The tick that brings the session's first BRACKET, from the sidecar's own decision pipeline run here on
    the same ticks and configuration (no wall clock involved: it is where the playback's entry will come)."""

    class Discard:
        def write(self, table: str, row: tuple) -> None:
            pass

        def update(self, table: str, key: Any, values: dict[str, Any]) -> None:
            pass

    p = DecisionPipeline(config=config, instruments=[SessionInstrument(0, decl, spec)],
                         recorder=Recorder(Discard(), 1), strategies=make_strategy_factory(config)(),
                         timings=StageTimings(STAGES), id_prefix="P")
    for k in range(len(stream)):
        if any(isinstance(r, SubmitBracket) for r in p.on_tick(k + 1, tick_of(stream, k))):
            return k
    raise AssertionError("the ES session brings no entry under the plumbing configuration")


def write_config(path: Path, port: int) -> Path:
    path.write_text(PLUMBING_CONFIG.read_text(encoding="utf-8") + f"""
[strategy]
names = "momentum"

[feeds]
enabled = "ib"
stale_after_s = {STALE_S}
switch_after_s = {SWITCH_S}
divergence_ticks = 40.0

[feeds.ib]
port = {port}
roots = "ES"
market_data_type = "delayed"
connect_timeout_s = 5.0
""", encoding="utf-8")
    return path


def test_nt8_stale_fails_over_to_ib_and_back_and_no_entry_is_decided_on_delayed_data(shared_data, tmp_path):
    stream = load_stream([shared_data / "nt8" / "ES 06-18.Last.txt.gz"])
    # the fake streams the same prints, from wherever the test puts its cursor
    source = ReplaySource("ES", stream.price.astype(np.float64), stream.size.astype(np.int64), 0.25)
    fake = FakeTws({"ES": source}, ticks_per_s=20.0, tbt_limit=3)
    fake.start()
    fake.pause()  # subscribed, silent, until NT8 first pauses
    config_path = write_config(tmp_path / "sidecar.toml", fake.port)
    config = load_config(config_path)
    spec = master_for(config).resolve("ES 06-18")
    decl = InstrumentDecl("ES 06-18", spec.tick_size, spec.point_value)
    k1 = first_entry(stream, config, decl, spec)
    p1 = k1 // 2
    assert p1 > 5000, f"the first entry comes at tick {k1}: too early for two phases"
    db = tmp_path / "failover.sqlite"
    proc = SidecarProcess(f"sqlite:///{db}", config_path, log_path=tmp_path / "sidecar.log")
    endpoint = proc.start()
    control = proc.control_endpoint
    assert control

    def feeds() -> dict[str, Any]:
        return send_command(control, "status")["feeds"]

    def es() -> dict[str, Any]:
        return feeds()["roots"].get("ES", {})

    def holds() -> list[str]:
        return [h["source"] for h in send_command(control, "status")["storage"]["holds"]]

    try:
        until(lambda: fake.active().get(("ES", "Last")) or fake.active().get(("ES", "MktData")),
              "the sidecar's IB feed subscribed ES")

        run = Playback(endpoint, stream, decl, "failover")
        # --- phase 1: IB live. NT8 plays to the middle of the way, then pauses; IB streams from there.
        run.play(p1)
        source.cursor = p1
        fake.resume()
        reference = until(lambda: es().get("reference") == "ib" and es(), "the reference moved to ib",
                          idle=run.heartbeat)
        assert reference["feeds"]["nt8"]["health"] == "stale" and reference["entries"] == "allowed"
        assert reference["feeds"]["ib"]["health"] == "live" and reference["feeds"]["ib"]["freshness"] == "realtime"
        until(lambda: "nt8_feed_down" in holds(), "trading REDUCING while NT8's feed is down", idle=run.heartbeat)
        run.trickle(lambda: es().get("reference") == "nt8", "the reference came back to nt8", k1)
        until(lambda: "nt8_feed_down" not in holds(), "the REDUCING hold lifted")
        assert feeds()["switches"] == 2

        # --- phase 2: the account loses its live permission; the IB feed reconnects to delayed data
        fake._call(lambda: setattr(fake, "live_roots", set()))
        fake.drop_connections()
        run.trickle(lambda: es()["feeds"].get("ib", {}).get("health") == "delayed", "IB delivers delayed data", k1)
        run.play(k1)  # up to the tick that brings the first entry, not that tick
        source.cursor = k1
        reference = until(lambda: es().get("reference") == "ib" and es(), "the reference moved to ib, delayed",
                          idle=run.heartbeat)
        assert reference["entries"].startswith("refused: RISK_FEED_DELAYED")
        before = len(run.brackets)
        run.play(k1 + 1)  # the entry's tick: decided while the only healthy reference is delayed
        assert len(run.brackets) == before, "an entry was decided on delayed data"
        run.trickle(lambda: es().get("reference") == "nt8", "the reference came back to nt8 after phase 2",
                    len(stream))
        back_at = run.i
        status = feeds()
        assert status["switches"] == 4 and status["roots"]["ES"]["entries"] == "allowed"
        run.close()
    finally:
        code = proc.stop()
        fake.stop()
    log = Path(proc.log_path).read_text(errors="replace")
    assert code == 0, log[-3000:]

    with sqlite3.connect(db) as conn:
        switches = [json.loads(p) for (p,) in conn.execute(
            "select payload from audit_chain where kind = 'feed_switch' order by seq")]
        hold_records = conn.execute("select kind from audit_chain where subject_id = 'nt8_feed_down' order by seq"
                                    ).fetchall()
        decisions = conn.execute("select d.ts_event_ns, d.outcome, d.inputs from decisions d join sessions s "
                                 "on s.session_id = d.session_id where s.instance_id = 'failover' and "
                                 "d.outcome like 'DENIED:%' order by d.ts_event_ns").fetchall()
    # one audit record each way, each time
    assert [(s["from"], s["to"], s["delayed"]) for s in switches] == [
        ("nt8", "ib", False), ("ib", "nt8", False), ("nt8", "ib", True), ("ib", "nt8", False)]
    assert "nt8 stale" in switches[0]["reason"] and switches[0]["feeds"]["ib"]["health"] == "live"
    assert "no new entry" in switches[2]["reason"]
    assert [k for (k,) in hold_records] == ["trading_hold", "trading_hold_released"] * 2
    # the entry of tick k1 was decided, and denied for the delayed reference; nothing was ordered in its stead
    denied_k1 = [(o, json.loads(i)) for ts, o, i in decisions if ts == int(stream.ts_ns[k1])]
    assert denied_k1, f"no denied decision at tick {k1}: {decisions[-5:]}"
    outcome, inputs = denied_k1[0]
    assert outcome.startswith("DENIED:RISK_FEED_DELAYED (ES: the reference is ib, delayed")
    assert inputs["reference"]["feed"] == "ib" and inputs["reference"]["freshness"] == "delayed"
    # and no BRACKET left while the reference was delayed (the first entry's tick up to NT8's return)
    assert not [k for k, _ in run.brackets if k1 <= k < back_at]
