"""The Interactive Brokers feed: the real ib_async client, inside IbFeed, against the fake TWS on loopback
(tests/fakes/tws.py) streaming the team's recorded ES, NQ, MES and MYM sessions.

The ES prints are the real ticks of ES 06-18; NQ, MES and MYM come from minute bars (four prints a bar), and
the quotes of all of them are inferred from the trades (tests/fakes/tws_replay.py).
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("ib_async", reason="ib_async is not installed (pip install ib_async): the IB feed needs it")

from bridge.core.config import IbFeedConfig  # noqa: E402
from bridge.core.instruments import InstrumentMaster, parse_contract_name, roll_date  # noqa: E402
from bridge.data.nt8files import read_nt8  # noqa: E402
from bridge.feeds.base import FeedBus, FeedError, FeedQuote, Freshness, Health  # noqa: E402
from bridge.feeds.ib import IbFeed  # noqa: E402
from bridge.feeds.ib_rules import front_month, session_day  # noqa: E402
from tests.fakes.tws import FakeTws  # noqa: E402
from tests.fakes.tws_replay import load_sources  # noqa: E402
from tests.integration.test_server import wait_until  # noqa: E402

pytestmark = pytest.mark.shared_data

ROOTS = ["ES", "NQ", "MES", "MYM"]
MASTER = InstrumentMaster.default()


class Tape:
    """What the sidecar's loop would drain from the bus, kept for the test to read."""

    def __init__(self, bus: FeedBus) -> None:
        self.bus = bus
        self.quotes: list[FeedQuote] = []

    def read(self) -> list[FeedQuote]:
        self.quotes.extend(self.bus.drain())
        return self.quotes

    def trades(self, root: str, after_ns: int = 0) -> list[FeedQuote]:
        return [q for q in self.read() if q.root == root and q.size > 0 and q.received_ns > after_ns]

    def wait_trades(self, roots: list[str], n: int = 5, after_ns: int = 0, what: str = "") -> None:
        wait_until(lambda: all(len(self.trades(r, after_ns)) >= n for r in roots),
                   what or f"{n} trades of each of {roots}")


@pytest.fixture
def fake(shared_data: Path) -> Iterator[FakeTws]:
    tws = FakeTws(load_sources(shared_data, ROOTS), ticks_per_s=50.0, tbt_limit=10)
    tws.start()
    yield tws
    tws.stop()


@pytest.fixture
def run_feed(fake: FakeTws) -> Iterator[Callable[..., tuple[IbFeed, Tape]]]:
    started: list[IbFeed] = []

    def make(*, lines: int = 3, market_data_type: str = "live", client_id: int = 17, verify_after_s: float = 5.0,
             roots: list[str] = ROOTS, **feed_options) -> tuple[IbFeed, Tape]:
        cfg = IbFeedConfig(port=fake.port, client_id=client_id, market_data_type=market_data_type,
                           tick_by_tick_lines=lines, roots=",".join(roots), connect_timeout_s=5.0)
        # the replayed sessions are open whatever the wall clock says
        feed_options.setdefault("stale_after_s", 5.0)
        feed = IbFeed(cfg, market_open=lambda root: True, verify_after_s=verify_after_s,
                      reconnect_backoff_s=(0.2, 0.5, 1.0), **feed_options)
        bus = FeedBus()
        feed.start(bus, [])
        started.append(feed)
        return feed, Tape(bus)

    yield make
    for feed in started:
        feed.stop()


def subscription_requests(fake: FakeTws, since: int = 0) -> collections.Counter:
    """(root, kind) -> subscription requests the fake received, from its ``since``-th request on."""
    return collections.Counter((r.root, r.kind) for r in fake.requests()[since:]
                               if r.name in ("reqTickByTickData", "reqMktData"))


def contiguous(seq: list[float], within: list[float]) -> bool:
    """Whether ``seq`` appears in ``within`` as one unbroken run."""
    n = len(seq)
    return any(within[k:k + n] == seq for k in range(len(within) - n + 1))


def expected_symbol(fake: FakeTws, root: str) -> str:
    spec = MASTER.resolve(root)
    _, month = front_month(spec, session_day(spec))
    return fake.contract_for(root, month).local_symbol


# ---------------------------------------------------------------------------------------------- streaming


def test_recorded_es_ticks_arrive_on_the_bus_as_quotes_of_their_roots(run_feed, fake, shared_data):
    feed, tape = run_feed(lines=3)
    tape.wait_trades(ROOTS, n=40)

    es = [q.price for q in tape.trades("ES")]
    recorded = read_nt8(shared_data / "nt8/ES 06-18.Last.txt.gz")["price"].tolist()
    # every ES print arrives, in order, from the first tick of the recorded session on
    assert es == recorded[:len(es)]
    for root in ROOTS:
        got = [q.price for q in tape.trades(root)]
        assert got == [p.price for p in fake.prints(root)][:len(got)]
    quotes = tape.read()
    assert {q.root for q in quotes} == set(ROOTS)
    for q in quotes:
        assert q.feed == "ib" and q.symbol == expected_symbol(fake, q.root)
        assert q.freshness is Freshness.REALTIME and q.delay_s == 0.0
        assert not (q.bid == q.bid and q.ask == q.ask) or q.bid < q.ask
    # quote updates between trades carry the last trade's price and no size
    assert any(q.size == 0 and q.bid == q.bid for q in quotes if q.root == "ES")
    status = feed.status()
    assert status.health is Health.LIVE and status.connected
    assert status.counters["tbt_lines"] == 3 and status.last["ES"].price == tape.trades("ES")[-1].price


def test_at_most_the_configured_tick_by_tick_lines_are_used_and_the_rest_goes_through_reqmktdata(run_feed, fake):
    feed, tape = run_feed(lines=3)
    tape.wait_trades(ROOTS)
    active = fake.active()
    # ES takes two lines (Last, BidAsk), NQ the third for its trades; quotes of NQ and all of MES, MYM by reqMktData
    assert active == collections.Counter({("ES", "Last"): 1, ("ES", "BidAsk"): 1, ("NQ", "Last"): 1,
                                          ("NQ", "MktData"): 1, ("MES", "MktData"): 1, ("MYM", "MktData"): 1})
    assert fake.tbt_max_in_use == 3  # the fake would have allowed 10
    # and so after a reconnection
    fake.drop_connections(abrupt=True)
    wait_until(lambda: feed.status().counters.get("reconnects", 0) >= 1 and fake.active() == active,
               "the subscriptions restored")
    assert fake.tbt_max_in_use == 3
    assert fake.max_rate <= 50 and not [e for e in fake.errors() if e[1] == 100]


def test_a_refused_tick_by_tick_request_does_not_stop_the_others(run_feed, fake):
    fake.tbt_limit = 1  # the account has fewer lines than the configuration says
    feed, tape = run_feed(lines=4)
    tape.wait_trades(ROOTS)
    refused = [e for e in fake.errors() if e[1] == 10190]
    assert len(refused) == 3  # ES BidAsk, NQ Last, NQ BidAsk
    # ES keeps its tick-by-tick trades and takes its quotes from reqMktData; NQ runs on reqMktData
    assert fake.active() == collections.Counter({("ES", "Last"): 1, ("ES", "MktData"): 1, ("NQ", "MktData"): 1,
                                                 ("MES", "MktData"): 1, ("MYM", "MktData"): 1})
    status = feed.status()
    assert status.health is Health.LIVE and status.counters["refused"] == 3
    assert "10190" in status.reason


def test_a_permission_refusal_of_the_first_request_falls_back_for_that_root_only(run_feed, fake):
    fake.refuse_next("tbt", 10089)
    feed, tape = run_feed(lines=4)
    tape.wait_trades(ROOTS)
    # ES's trades come from reqMktData now; NQ's two lines are untouched
    assert fake.active() == collections.Counter({("ES", "BidAsk"): 1, ("ES", "MktData"): 1, ("NQ", "Last"): 1,
                                                 ("NQ", "BidAsk"): 1, ("MES", "MktData"): 1, ("MYM", "MktData"): 1})
    es = [q.price for q in tape.trades("ES")]
    assert contiguous(es, [p.price for p in fake.prints("ES")])
    assert feed.status().counters["refused"] == 1


def test_a_root_without_market_data_permission_is_left_out_and_said_so(run_feed, fake):
    fake.live_roots = {"ES", "NQ", "MES"}  # no MYM subscription, and live data asked for: 354
    feed, tape = run_feed(lines=2)
    tape.wait_trades(["ES", "NQ", "MES"])
    wait_until(lambda: "MYM" in feed.status().reason, "the refusal reported")
    status = feed.status()
    assert status.health is Health.LIVE and "354" in status.reason
    assert not tape.trades("MYM") and ("MYM", "MktData") not in fake.active()


def test_delayed_market_data_arrives_as_delayed_freshness(run_feed, fake):
    fake.live_roots = set()  # no live subscription at all
    feed, tape = run_feed(lines=2, market_data_type="delayed")
    tape.wait_trades(ROOTS)
    assert [r.fields[2] for r in fake.requests("reqMarketDataType")] == ["3"]
    # tick-by-tick is live only: refused (10089), reqMktData carries every root, delayed
    assert [e[1] for e in fake.errors() if e[1] == 10089] == [10089, 10089]
    for q in tape.read():
        assert q.freshness is Freshness.DELAYED and q.delay_s == 900.0
    wait_until(lambda: feed.status().health is Health.DELAYED, "the feed says it is delayed")
    assert "delayed" in feed.status().reason


def test_a_silent_stream_while_the_market_is_open_is_stale_until_values_come_back(run_feed, fake):
    feed, tape = run_feed(lines=2, stale_after_s=1.0, verify_after_s=60.0)
    tape.wait_trades(ROOTS)
    fake.pause()
    wait_until(lambda: feed.status().health is Health.STALE, "STALE while nothing arrives")
    assert "no value from IB for" in feed.status().reason and feed.status().connected
    fake.resume()
    wait_until(lambda: feed.status().health is Health.LIVE, "live again")


def test_a_non_finite_price_is_counted_and_dropped_and_the_stream_goes_on(run_feed, fake):
    feed, tape = run_feed(lines=2)
    tape.wait_trades(["ES"])
    assert fake.inject_last("ES", float("nan")) == 1 and fake.inject_last("ES", 2670.3) == 1  # off the 0.25 grid
    wait_until(lambda: feed.status().counters.get("bad_values", 0) == 2, "the bad values counted")
    mark = time.time_ns()
    tape.wait_trades(["ES"], after_ns=mark)
    assert all(q.price == q.price and q.price % 0.25 == 0 for q in tape.read())
    assert feed.status().health is Health.LIVE


def test_on_its_roll_date_the_feed_moves_to_the_next_contract(run_feed, fake):
    spec = MASTER.resolve("ES")
    today = session_day(spec)
    name, month = front_month(spec, today)
    _, m, y = parse_contract_name(name)
    day = {"now": today}
    feed, tape = run_feed(roots=["ES"], lines=2, trading_day=lambda spec: day["now"], roll_check_s=0.1)
    tape.wait_trades(["ES"])
    old = fake.contract_for("ES", month)
    assert fake.active_symbols() == {old.local_symbol: 2}

    day["now"] = roll_date(y, m)  # the Thursday eight days before the third-Friday expiry
    new = fake.contract_for("ES", front_month(spec, day["now"])[1])
    wait_until(lambda: fake.active_symbols() == {new.local_symbol: 2}, "the subscriptions moved")
    wait_until(lambda: any(q.symbol == new.local_symbol for q in tape.trades("ES")), "trades of the new contract")
    cancelled = [r for r in fake.requests() if r.name.startswith("cancel")]
    assert sorted(r.kind for r in cancelled) == ["BidAsk", "Last"]
    assert new.con_id != old.con_id and feed.status().last["ES"].symbol == new.local_symbol


def test_a_client_id_in_use_is_a_clear_reason(run_feed, fake):
    run_feed(roots=["ES"])[1].wait_trades(["ES"])
    second, _ = run_feed(roots=["ES"])  # same client id
    wait_until(lambda: "already in use" in second.status().reason, "the refusal reported")
    assert second.status().health is Health.DOWN and "client_id" in second.status().reason


# ---------------------------------------------------------------------------------------------- reconnection


@pytest.mark.slow
@pytest.mark.parametrize("abrupt", [True, False], ids=["reset", "closed"])
def test_a_disconnect_mid_stream_then_tws_back_restores_every_subscription(run_feed, fake, abrupt):
    feed, tape = run_feed(lines=3)
    tape.wait_trades(ROOTS)
    before = fake.active()
    n_requests = len(fake.requests())

    fake.drop_connections(abrupt=abrupt)
    fake.stop_listening()  # TWS gone for a while: connection attempts are refused
    wait_until(lambda: "refused" in feed.status().reason, "the feed sees TWS gone")
    status = feed.status()
    assert status.health is Health.DOWN and not status.connected
    mark = time.time_ns()
    fake.start_listening()  # back on the same port

    wait_until(lambda: fake.active() == before, "every subscription restored")
    tape.wait_trades(ROOTS, after_ns=mark, what="trades of every root after the reconnection")
    assert subscription_requests(fake, n_requests) == before  # each one requested again, once
    assert feed.status().counters["reconnects"] == 1 and feed.status().counters["connect_failures"] >= 1
    for root in ROOTS:  # the recording goes on where it was
        after = [q.price for q in tape.trades(root, after_ns=mark)]
        assert contiguous(after, [p.price for p in fake.prints(root)])
    wait_until(lambda: feed.status().health is Health.LIVE, "live again")


@pytest.mark.slow
def test_1100_then_1102_keeps_the_subscriptions_and_the_data_flows_again(run_feed, fake):
    feed, tape = run_feed(lines=3)
    tape.wait_trades(ROOTS)
    n_requests = len(fake.requests())

    fake.connectivity_lost()
    wait_until(lambda: feed.status().health is Health.DOWN, "DOWN on 1100")
    assert "IB lost its connection to its servers" in feed.status().reason and feed.status().connected
    mark = time.time_ns()
    fake.connectivity_restored(data_lost=False)

    tape.wait_trades(ROOTS, after_ns=mark, what="trades of every root after 1102")
    wait_until(lambda: feed.status().health is Health.LIVE, "live again")
    assert subscription_requests(fake, n_requests) == {}  # data maintained: nothing requested again
    assert feed.status().counters["restored_data_maintained"] == 1


@pytest.mark.slow
def test_1100_then_1101_requests_every_subscription_again(run_feed, fake):
    feed, tape = run_feed(lines=3)
    tape.wait_trades(ROOTS)
    before = fake.active()
    n_requests = len(fake.requests())

    fake.connectivity_lost()
    wait_until(lambda: feed.status().health is Health.DOWN, "DOWN on 1100")
    mark = time.time_ns()
    fake.connectivity_restored(data_lost=True)  # TWS forgot every subscription

    wait_until(lambda: fake.active() == before, "every subscription requested again")
    tape.wait_trades(ROOTS, after_ns=mark, what="trades of every root after 1101")
    assert subscription_requests(fake, n_requests) == before
    assert feed.status().counters["restored_data_lost"] == 1


@pytest.mark.slow
def test_a_stream_that_stays_dead_after_1102_is_subscribed_again(run_feed, fake):
    feed, tape = run_feed(lines=3, verify_after_s=1.0)
    tape.wait_trades(ROOTS)
    before = fake.active()
    n_requests = len(fake.requests())

    fake.connectivity_lost()
    wait_until(lambda: feed.status().health is Health.DOWN, "DOWN on 1100")
    mark = time.time_ns()
    fake.connectivity_restored(data_lost=False, streams_resume=False)  # "maintained", yet silent

    tape.wait_trades(ROOTS, after_ns=mark, what="trades of every root after the silent 1102")
    wait_until(lambda: fake.active() == before, "the same subscriptions, renewed")
    # each root's subscriptions were cancelled and requested again
    assert set(subscription_requests(fake, n_requests)) == set(before)
    cancels = [r for r in fake.requests()[n_requests:] if r.name.startswith("cancel")]
    assert {(r.root, r.kind) for r in cancels} == set(before)
    assert feed.status().counters["resubscribes"] >= len(ROOTS)


@pytest.mark.slow
@pytest.mark.parametrize("code", [420, 100])
def test_a_pacing_error_holds_the_requests_then_the_subscription_is_made(run_feed, fake, code):
    fake.refuse_next("tbt", code)
    feed, tape = run_feed(lines=2)
    tape.wait_trades(ROOTS)
    wait_until(lambda: ("ES", "Last") in fake.active(), "ES Last subscribed after the hold")
    assert subscription_requests(fake)[("ES", "Last")] == 2
    assert feed.status().counters["pacing"] == 1 and feed.status().health is Health.LIVE


# ---------------------------------------------------------------------------------------------- probe


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_against_an_unreachable_port_is_one_clear_line():
    port = _closed_port()
    feed = IbFeed(IbFeedConfig(port=port, connect_timeout_s=2.0))
    with pytest.raises(FeedError) as err:
        feed.probe("ES", timeout_s=5.0)
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "refused" in message


def test_probe_answers_with_a_quote_of_the_front_month(fake, shared_data):
    feed = IbFeed(IbFeedConfig(port=fake.port, connect_timeout_s=5.0))
    q = feed.probe("ES", timeout_s=10.0)
    recorded = read_nt8(shared_data / "nt8/ES 06-18.Last.txt.gz")["price"].tolist()
    assert q.root == "ES" and q.symbol == expected_symbol(fake, "ES") and q.price in recorded
    assert q.freshness is Freshness.REALTIME
    assert fake.requests("reqMktData")[0].fields[-3] == "1"  # a snapshot, not a subscription


def test_probe_of_an_unknown_contract_or_instrument_says_which(fake):
    feed = IbFeed(IbFeedConfig(port=fake.port, connect_timeout_s=5.0))
    fake.refuse_next("details", 200)
    with pytest.raises(FeedError, match=r"IB knows no contract ES \d\d-\d\d"):
        feed.probe("ES", timeout_s=10.0)
    with pytest.raises(FeedError, match="unknown instrument 'XX'"):
        feed.probe("XX", timeout_s=10.0)
