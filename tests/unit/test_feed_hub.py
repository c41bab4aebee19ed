"""The feeds inside the sidecar (bridge/transport/feeds.py) and what the decision path does with the reference:
the hub fed by stand-in sessions and feeds that hand values over as the real ones do, the pipeline's collar
and its refusal of entries on delayed data."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from bridge.core.config import Config
from bridge.core.instruments import InstrumentMaster
from bridge.engine.quality import QualityGate
from bridge.feeds.base import Feed, FeedBus, FeedQuote, Freshness, Health
from bridge.feeds.reference import Reference
from bridge.protocol.messages import SubmitBracket, Tick, TickKind
from bridge.risk.switch import TradingSwitch
from bridge.transport.feeds import HOLD_SOURCE, FeedHub, alpha_vantage_stale_s
from tests.unit.test_pipeline_exits import ES, NQ, feed, long_es, make

S = 1_000_000_000
MASTER = InstrumentMaster.default()
MONDAY = 1_525_700_000 * S  # 2018-05-07 13:33 UTC: CME open


@pytest.fixture(autouse=True)
def _switch_interval():
    """The hub shortens the interpreter's switch interval while feeds run; these tests leave it as they found it."""
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


class StubFeed(Feed):
    """Hands values to the bus from the test's thread, as a feed's thread does."""

    def __init__(self, name: str, fail: str = "") -> None:
        super().__init__(name)
        self.fail = fail
        self.bus: FeedBus | None = None
        self.roots: list[str] = []

    def start(self, bus: FeedBus, roots: list[str]) -> None:
        if self.fail:
            raise ConnectionRefusedError(self.fail)
        self.bus, self.roots = bus, roots
        self._set_health(Health.LIVE, "", connected=True)

    def stop(self) -> None:
        self._set_health(Health.DOWN, "stopped", connected=False)

    def probe(self, root: str, timeout_s: float = 10.0) -> FeedQuote:
        raise NotImplementedError

    def send(self, price: float, at_ns: int, freshness: Freshness = Freshness.REALTIME) -> None:
        assert self.bus is not None
        self._delivered(self.bus, FeedQuote(self.name, "ES", "ESM8", price, price - 0.25, price, 1, at_ns, at_ns,
                                            freshness, 900.0 if freshness is Freshness.DELAYED else 0.0))


class Desk:
    """A hub with one stand-in NT8 session streaming ES in lockstep, on a clock the test moves."""

    def __init__(self, on_nt8_down: str = "reducing", feeds: list[Feed] | None = None) -> None:
        c = Config()
        self.config = replace(c, feeds=replace(c.feeds, enabled="ib", stale_after_s=5.0, switch_after_s=2.0,
                                               on_nt8_down=on_nt8_down))
        self.switch = TradingSwitch()
        self.audits: list[tuple[str, str, int, dict]] = []
        self.ib = StubFeed("ib")
        self.hub = FeedHub(self.config, MASTER, self.switch, lambda *r: self.audits.append(r),
                           feeds=feeds or [self.ib])
        self.hub.start()
        spec = MASTER.resolve("ES 06-18")
        self.gate = QualityGate(self.config.quality)
        self.gate.add_instrument(0, spec, 0.25)
        self.state = SimpleNamespace(last=math.nan, last_ts_ns=0)
        pipeline = SimpleNamespace(instruments={0: SimpleNamespace(spec=spec)}, gate=self.gate,
                                   market=SimpleNamespace(instruments={0: self.state}))
        self.session = SimpleNamespace(pipeline=pipeline, last_tick_wall={}, hello=SimpleNamespace(lockstep=True))
        self.wall = time.time_ns() - 60 * S  # a minute ago: the test's clock runs ahead of the real one
        self.mono = 1000.0
        self.data = MONDAY

    def nt8(self, price: float) -> None:
        self.state.last, self.state.last_ts_ns = price, self.data
        self.session.last_tick_wall[0] = self.mono
        self.gate.check_tick(Tick(0, int(TickKind.LAST), price, 1, price - 0.25, price, self.data, self.data))

    def run(self, seconds: float, nt8: float | None = None, ib: float | None = None,
            ib_fresh: Freshness = Freshness.REALTIME) -> None:
        for _ in range(int(seconds * 4)):
            if nt8 is not None:
                self.nt8(nt8)
            if ib is not None:
                self.ib.send(ib, self.wall, ib_fresh)
            self.hub.poll([self.session], self.wall, self.mono)
            self.wall += S // 4
            self.mono += 0.25
            self.data += S // 4 if nt8 is not None else 0

    def kinds(self) -> list[tuple[str, str]]:
        return [(kind, subject) for kind, subject, _, _ in self.audits]


def test_a_stale_nt8_moves_the_reference_with_an_audit_record_and_holds_trading_at_reducing() -> None:
    d = Desk()
    d.run(5, nt8=2700.0, ib=2700.25)
    assert d.audits == [] and d.hub.reference("ES").feed == "nt8"
    d.run(10, ib=2710.0)  # NT8 silent, IB streaming: the market moved 40 ticks meanwhile
    assert d.kinds() == [("feed_switch", "ES"), ("trading_hold", HOLD_SOURCE)]
    switch = d.audits[0][3]
    assert (switch["from"], switch["to"], switch["delayed"], switch["price"]) == ("nt8", "ib", False, 2710.0)
    assert switch["feeds"]["nt8"]["health"] == "stale" and switch["feeds"]["ib"]["health"] == "live"
    hold = d.switch.holds[HOLD_SOURCE]
    assert str(hold.state) == "REDUCING" and "NT8's feed of ES is stale" in hold.reason
    assert hold.denial.startswith("RISK_STATE_REDUCING (nt8_feed_down: ")
    # IB stands in for the stale NT8: the quality gate judges NT8's next trade against IB's price, so a print
    # at NT8's old level (1 tick from NT8's last, 39 from the market) is the jump, and the market's level is not
    assert d.gate.check_tick(Tick(0, int(TickKind.LAST), 2700.25, 1, math.nan, math.nan, d.data,
                                  d.data)).reason.name == "PRICE_JUMP"
    assert d.gate.check_tick(Tick(0, int(TickKind.LAST), 2710.25, 1, math.nan, math.nan, d.data, d.data)) is None
    d.run(5, nt8=2710.0, ib=2710.0)
    assert d.kinds()[2:] == [("feed_switch", "ES"), ("trading_hold_released", HOLD_SOURCE)]
    assert d.audits[2][3]["to"] == "nt8" and HOLD_SOURCE not in d.switch.holds
    rows = d.hub.metric_rows(d.wall)
    assert rows["switches"] == {("ES", "ib"): 1, ("ES", "nt8"): 1}
    assert rows["health"] == {"nt8": Health.LIVE, "ib": Health.LIVE}
    assert {(f, r) for f, r, age, _ in rows["values"] if age is not None} == {("nt8", "ES"), ("ib", "ES")}


def test_with_on_nt8_down_continue_the_reference_moves_but_nothing_is_held() -> None:
    d = Desk(on_nt8_down="continue")
    d.run(5, nt8=2700.0, ib=2700.0)
    d.run(10, ib=2700.0)
    assert d.kinds() == [("feed_switch", "ES")] and d.switch.holds == {}


def test_a_delayed_stand_in_is_never_the_gate_anchor() -> None:
    d = Desk()
    d.run(5, nt8=2700.0, ib=2700.0, ib_fresh=Freshness.DELAYED)
    d.run(10, ib=2750.0, ib_fresh=Freshness.DELAYED)
    assert d.hub.reference("ES").delayed and d.audits[0][3]["delayed"]
    assert d.gate.check_tick(Tick(0, int(TickKind.LAST), 2700.25, 1, math.nan, math.nan, d.data, d.data)) is None


def test_a_feed_that_cannot_start_is_down_with_its_reason_and_the_others_run() -> None:
    ib, broken = StubFeed("ib"), StubFeed("alpha_vantage", fail="connection refused by 127.0.0.1:1")
    d = Desk(feeds=[ib, broken])
    d.ib = ib
    d.run(2, nt8=2700.0, ib=2700.0)
    report = d.hub.report(d.wall)
    assert report["enabled"] == ["ib", "alpha_vantage"]
    assert report["feeds"]["alpha_vantage"]["health"] == "down"
    assert report["feeds"]["alpha_vantage"]["reason"] == "could not start: connection refused by 127.0.0.1:1"
    assert report["feeds"]["ib"]["health"] == "live" and report["feeds"]["nt8"]["health"] == "live"
    assert report["roots"]["ES"]["reference"] == "nt8" and report["quotes_drained"] == 8
    json.dumps(report)  # what the status reply and the snapshot send


def test_while_feeds_run_a_feed_thread_holds_the_decision_path_back_for_a_millisecond_at_most() -> None:
    before = sys.getswitchinterval()
    d = Desk()
    assert sys.getswitchinterval() == pytest.approx(min(before, 0.001))
    d.hub.stop()
    assert sys.getswitchinterval() == before and d.ib.status().reason == "stopped"


def test_the_alpha_vantage_stale_limit_follows_its_budget() -> None:
    c = Config()
    free = replace(c, feeds_alpha_vantage=replace(c.feeds_alpha_vantage, requests_per_day=25, poll_s=3600.0))
    assert alpha_vantage_stale_s(free) == pytest.approx(2 * 86_400 * 4 / 25)  # 4 symbols on 25 requests a day
    paid = replace(c, feeds_alpha_vantage=replace(c.feeds_alpha_vantage, requests_per_day=1_000_000, poll_s=60.0))
    assert alpha_vantage_stale_s(paid) == 120.0


# --- the decision path -------------------------------------------------------------------------------


def reference(feed_name: str, price: float, freshness: Freshness = Freshness.REALTIME) -> Reference:
    return Reference("ES", feed_name, price, freshness, True, 0, 900.0 if freshness is Freshness.DELAYED else 0.0)


def decisions(rows) -> list[tuple[str, dict]]:
    return [(d[6], json.loads(d[8])) for d in rows.decisions()]


def test_no_entry_is_decided_while_the_reference_is_delayed() -> None:
    p, s, rows = make()
    p.references = lambda root: reference("ib", 4500.0, Freshness.DELAYED) if root == "ES" else None
    feed(p, NQ, 0, 15000.0)
    s.next = [long_es()]
    assert feed(p, ES, 0, 4500.0) == []
    (outcome, inputs), = decisions(rows)
    assert outcome.startswith("DENIED:RISK_FEED_DELAYED (ES: the reference is ib, delayed, 900 s behind")
    assert inputs["reference"] == {"feed": "ib", "price": 4500.0, "freshness": "delayed", "healthy": True}
    assert p.denials_by_reason == {"RISK_FEED_DELAYED": 1}


def test_a_kill_is_named_before_the_delayed_reference() -> None:
    p, s, rows = make()
    p.references = lambda root: reference("ib", 4500.0, Freshness.END_OF_DAY)
    p.switch.kill("alice", "test", 0)
    feed(p, NQ, 0, 15000.0)
    s.next = [long_es()]
    assert feed(p, ES, 0, 4500.0) == []
    assert decisions(rows)[0][0].startswith("DENIED:RISK_KILL_SWITCH")


def test_the_collar_is_measured_from_the_reference_feed() -> None:
    p, s, rows = make()
    p.references = lambda root: reference("ib", 4600.0)  # NT8 says 4500, the believed feed 4600
    feed(p, NQ, 0, 15000.0)
    s.next = [long_es()]  # stop 4490, target 4520: 440 ticks from 4600, beyond the 400-tick collar
    assert feed(p, ES, 0, 4500.0) == []
    outcome, inputs = decisions(rows)[0]
    assert outcome == "DENIED:RISK_PRICE_COLLAR"
    assert [c for c in inputs["risk"] if c["check"] == "reference_price"][0]["value"] == 4600.0
    # the same order while NT8 is the reference: within its collar, emitted
    p2, s2, rows2 = make()
    p2.references = lambda root: reference("nt8", math.nan)
    feed(p2, NQ, 0, 15000.0)
    s2.next = [long_es()]
    (bracket,) = feed(p2, ES, 0, 4500.0)
    assert isinstance(bracket, SubmitBracket) and decisions(rows2)[0][1]["reference"]["feed"] == "nt8"


def test_the_prometheus_metrics_of_the_feeds() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from bridge.transport.metrics import SidecarCollector
    from bridge.transport.server import SidecarServer

    d = Desk()
    d.run(5, nt8=2700.0, ib=2702.5)  # 10 ticks apart: IB diverges from NT8
    d.run(10, ib=2702.5)             # then NT8 goes quiet: the reference moves, trading is held
    server = SidecarServer(d.config, SimpleNamespace(write=lambda *a: None, update=lambda *a: None, flush=lambda: None),
                           MASTER, lambda: [])
    server.feeds, server.switch = d.hub, d.switch
    registry = CollectorRegistry()
    registry.register(SidecarCollector(server))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    assert samples[("nt8bridge_feed_health", (("feed", "nt8"), ("health", "stale")))] == 1.0
    assert samples[("nt8bridge_feed_health", (("feed", "nt8"), ("health", "live")))] == 0.0
    assert samples[("nt8bridge_feed_health", (("feed", "ib"), ("health", "live")))] == 1.0
    assert samples[("nt8bridge_feed_switches_total", (("root", "ES"), ("to", "ib")))] == 1.0
    assert samples[("nt8bridge_feed_value_age_seconds", (("feed", "nt8"), ("root", "ES")))] >= 10.0
    assert samples[("nt8bridge_feed_divergence_ticks", (("feed", "ib"), ("root", "ES")))] == 0.0  # the reference
    assert samples[("nt8bridge_trading_hold", (("source", "nt8_feed_down"), ("state", "REDUCING")))] == 1.0


def test_bad_values_from_a_feed_are_counted_reported_and_logged_once_a_minute(caplog) -> None:
    d = Desk()
    d.run(2, nt8=2700.0, ib=2700.0)
    with caplog.at_level("WARNING", logger="nt8bridge.feeds"):
        for _ in range(3):
            d.ib.send(math.nan, d.wall)
            d.ib.send(-5.0, d.wall)
            d.run(1)
    assert d.hub.report(d.wall)["bad_values"] == {"ib": 6}
    lines = [r.getMessage() for r in caplog.records if "values dropped" in r.getMessage()]
    assert lines == ["feeds: 2 values dropped so far (not a finite positive price, or an unknown root): {'ib': 2}"]
    assert d.hub.report(d.wall)["roots"]["ES"]["feeds"]["ib"]["price"] == 2700.0  # the good value before them
