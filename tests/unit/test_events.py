"""EventFeed, the event stream's reader: what it counts as lost (gaps in seq), as malformed, and as a restart,
fed by a real PUB socket with frames written by hand."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import zmq

from bridge.transport.events import EventFeed, EventPublisher

BOOT = "aaaaaaaaaaaa"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wire():
    """A PUB socket, an EventFeed subscribed to it (after the subscription is known to have arrived), and a
    send(topic, body-or-raw-frames) that returns what the feed decoded."""
    ctx = zmq.Context()
    endpoint = f"inproc://events-{uuid.uuid4().hex}"
    pub = ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    clock = Clock()
    feed = EventFeed(endpoint, ctx=ctx, clock=clock)
    seq = 0
    deadline = time.monotonic() + 10  # a bound on waiting for the subscription, not a speed requirement
    while not feed.poll(20):  # PUB drops what it sends before the subscription arrives
        assert time.monotonic() < deadline, "the feed never received anything"
        seq += 1
        pub.send_multipart([b"snapshot", json.dumps({"seq": seq, "boot": BOOT, "ts_ns": 1, "state": {}}).encode()])
    feed.poll(20)  # the other joining messages that made it through

    def send(topic: str | None, body: dict | None = None, frames: list[bytes] | None = None):
        if frames is None:
            frames = [topic.encode(), json.dumps(body).encode()]
        pub.send_multipart(frames)
        return feed.poll(2000)

    yield feed, send, clock, seq
    feed.close()
    pub.close(linger=0)
    ctx.term()


def event(seq: int, boot: str = BOOT, **body) -> dict:
    return {"seq": seq, "boot": boot, "ts_ns": 5, **body}


def test_gaps_in_seq_are_counted_as_lost_and_late_joiners_lose_nothing(wire):
    feed, send, _clock, last = wire
    assert feed.lost == 0 and feed.restarts == 0  # the messages before the subscription count for nothing
    start = feed.received
    assert [e.seq for e in send("row.orders", event(last + 1, table="orders"))] == [last + 1]
    got = send("row.orders", event(last + 5, table="orders"))  # three never arrived
    assert got[0].seq == last + 5 and got[0].topic == "row.orders" and got[0].body["table"] == "orders"
    assert feed.lost == 3
    send("ticks", event(last + 3))  # an older one (not possible on one PUB, but not a loss either)
    send("ticks", event(last + 6))
    assert feed.lost == 3
    assert feed.received == start + 4


def test_malformed_frames_are_counted_and_skipped(wire):
    feed, send, _clock, last = wire
    before = feed.received
    bad = [[b"only-a-topic"],
           [b"row.orders", b"{not json"],
           [b"row.orders", json.dumps({"boot": BOOT, "ts_ns": 1}).encode()],  # no seq
           [b"row.orders", json.dumps({"seq": "x", "boot": BOOT, "ts_ns": 1}).encode()],
           [b"\xff\xfe", json.dumps(event(last + 1)).encode()],  # a topic that is not UTF-8
           [b"row.orders", json.dumps([1, 2]).encode()]]  # JSON, but not an object
    for frames in bad:
        assert send(None, frames=frames) == []
    assert feed.malformed == len(bad)
    assert feed.received == before and feed.lost == 0  # nothing bad moved the sequence
    assert [e.seq for e in send("row.orders", event(last + 1))] == [last + 1]
    assert feed.lost == 0


def test_a_new_boot_is_a_restart_and_counts_from_its_first_message(wire):
    feed, send, _clock, last = wire
    send("snapshot", event(last + 1, state={"sessions": []}))
    assert feed.restarts == 0
    got = send("snapshot", event(3, boot="bbbbbbbbbbbb", state={"sidecar": {"pid": 2}}))
    assert feed.restarts == 1
    assert feed.lost == 2  # seq 1 and 2 of the new sidecar never arrived
    assert got[0].boot == "bbbbbbbbbbbb" and feed.last_snapshot == {"sidecar": {"pid": 2}}
    send("snapshot", event(4, boot="bbbbbbbbbbbb", state={}))
    assert feed.lost == 2 and feed.restarts == 1


def test_the_sidecar_is_up_while_snapshots_keep_coming(wire):
    feed, send, clock, last = wire
    send("snapshot", event(last + 1, state={}))
    assert feed.sidecar_up
    clock.now += feed.alive_s + 0.5
    assert not feed.sidecar_up
    send("snapshot", event(last + 2, state={}))
    assert feed.sidecar_up


def test_a_publisher_numbers_every_message_and_conflates_ticks():
    ctx = zmq.Context()
    endpoint = f"inproc://events-{uuid.uuid4().hex}"
    publisher = EventPublisher(ctx, endpoint)
    feed = EventFeed(endpoint, ctx=ctx)
    try:
        deadline = time.monotonic() + 10
        while not feed.poll(20):
            assert time.monotonic() < deadline, "the feed never received anything"
            publisher.publish("snapshot", {"state": {}})
        for price in (1.0, 2.0, 3.0):
            publisher.row("ticks", (7, 1, "ES 06-18", 0, price, 1, float("nan"), float("nan"), 10, 11, 12))
        publisher.flush_ticks()
        publisher.row("executions", (7, 2, "x1", "B1", "ENTRY", "n1", "ES 06-18", "BUY", 2670.0, 1, float("nan"), 13))
        got = feed.poll(2000)
        while len(got) < 2:
            more = feed.poll(2000)
            assert more, got
            got += more
        ticks, execution = got[-2:]
        assert ticks.topic == "ticks" and [t["price"] for t in ticks.body["ticks"]] == [3.0]
        assert ticks.body["ticks"][0]["bid"] is None  # NaN travels as null
        assert publisher.stats.ticks_conflated == 2
        assert execution.topic == "row.executions" and execution.body["row"]["commission"] is None
        assert execution.seq == ticks.seq + 1 and feed.lost == 0
        with pytest.raises(zmq.ZMQError):
            EventPublisher(ctx, endpoint)  # taken: an error the caller reports, and no socket left open
    finally:
        feed.close()
        publisher.close()
        ctx.term()


def test_recent_latency_is_the_last_window_not_the_whole_run():
    from bridge.core.timing import RecentWindow, StageTimings
    t = StageTimings(("risk",))
    window = RecentWindow(window_s=60.0, step_s=5.0)
    t.record("risk", 1_000_000)  # a slow start: 1 ms
    t.fold()
    first = window.figures(t.histograms, now=0.0)["risk"]
    assert first["count"] == 1 and 900 <= first["p99_us"] <= 1200
    for now in range(5, 125, 5):  # two minutes of fast decisions, 10 us each
        for _ in range(100):
            t.record("risk", 10_000)
        t.fold()
        recent = window.figures(t.histograms, now=float(now))["risk"]
    # the slow one has left the window; what is left is about a minute of the fast ones
    assert recent["p99_us"] < 15 and 1100 <= recent["count"] <= 1300
    assert t.histograms["risk"].percentile_us(100) >= 900  # the whole run still has it
