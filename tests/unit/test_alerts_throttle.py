"""Deduplication and the per-destination token bucket (bridge/alerts/throttle.py), and the dispatcher that
applies both (bridge/alerts/dispatch.py): nothing held back is lost, every alert is counted once."""

from __future__ import annotations

import threading

from bridge.alerts.alert import Alert, Severity
from bridge.alerts.destinations import DeliveryError, Retry
from bridge.alerts.dispatch import Dispatcher
from bridge.alerts.throttle import Dedup, RateLimiter, TokenBucket


def alert(kind: str = "reconciliation_break", subject: str = "ES 06-24 EXTRA", n: int = 0, **kw) -> Alert:
    return Alert(kind, kw.pop("severity", Severity.CRITICAL), subject, f"{kind} {subject} #{n}", f"text {n}", **kw)


def test_a_burst_of_identical_alerts_is_one_alert_then_one_summary_per_window():
    d = Dedup(300.0)
    sent = [a for i in range(100) for a in d.offer(alert(n=i), now=10.0 + i * 0.01)]
    assert [a.title for a in sent] == ["reconciliation_break ES 06-24 EXTRA #0"]
    assert d.suppressed["reconciliation_break"] == 99
    assert d.due(now=309.9) == []  # the window is still open
    [summary] = d.due(now=310.0)
    assert summary.fields["repeats"] == 99 and "repeated 99 more times" in summary.title
    assert summary.text.startswith("text 99")  # the last one is what it shows
    assert d.due(now=700.0) == []  # a window without repeats ends quietly
    assert d.offer(alert(n=100), now=700.1) != []  # and the next one is news


def test_a_different_subject_is_a_different_alert():
    d = Dedup(300.0)
    assert d.offer(alert(subject="ES"), 0.0) and d.offer(alert(subject="NQ"), 0.0)
    assert d.offer(alert(kind="kill", subject="ES"), 0.0)


def test_an_alert_that_clears_a_kind_ends_its_window_with_the_count_of_its_repeats():
    d = Dedup(300.0)
    d.offer(alert("kill", "desk"), 0.0)
    d.offer(alert("kill", "desk"), 1.0)
    out = d.offer(alert("enable", "desk", clears="kill", severity=Severity.WARNING), 2.0)
    assert [a.kind for a in out] == ["kill", "enable"] and out[0].fields["repeats"] == 1
    assert [a.kind for a in d.offer(alert("kill", "desk"), 3.0)] == ["kill"]  # halted again: news at once


def test_zero_dedup_sends_everything():
    d = Dedup(0.0)
    assert sum(len(d.offer(alert(), 0.0)) for _ in range(5)) == 5


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst():
    b = TokenBucket(rate_per_min=6, burst=2, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [True, True, False]
    assert not b.take(9.9) and b.take(10.0)  # one token every 10 s
    assert b.take(100.0) and b.take(100.0) and not b.take(100.0)  # never more than the burst


def test_what_the_bucket_refuses_is_counted_and_summarised_when_it_refills():
    r = RateLimiter(rate_per_min=6, burst=2)
    results = [r.offer("slack-1", alert(kind, str(i), i), 0.0)
               for i, kind in enumerate(["kill", "drift", "drift", "stale_feed", "drift"])]
    assert results == [True, True, False, False, False]
    assert r.offer("email", alert("drift", "x"), 0.0)  # buckets are per destination
    assert r.held("slack-1") == 3 and r.suppressed[("drift", "slack-1")] == 2
    assert r.due(5.0) == []
    [(dest, summary)] = r.due(10.0)
    assert dest == "slack-1" and summary.kind == "rate_limited" and summary.fields["held"] == 3
    assert summary.fields["kinds"] == {"drift": 2, "stale_feed": 1}
    assert "Among them: drift 2 #2; stale_feed 3 #3; drift 4 #4." in summary.text  # the titles held, in order
    assert r.held("slack-1") == 0 and r.due(100.0) == []


def test_a_rate_summary_names_the_most_severe_alerts_it_held_first():
    r = RateLimiter(rate_per_min=6, burst=1)
    for i in range(8):
        r.offer("slack-1", alert("feed_quality", str(i), i, severity=Severity.WARNING), 0.0)
    r.offer("slack-1", alert("kill", "desk", 99), 0.0)
    [(_, summary)] = r.due(10.0)
    assert summary.severity == Severity.CRITICAL and summary.fields["held"] == 8
    assert "Among them: kill desk #99; feed_quality 1 #1; feed_quality 2 #2" in summary.text


def test_while_a_summary_waits_new_alerts_queue_behind_it():
    r = RateLimiter(rate_per_min=60, burst=1)
    assert r.offer("d", alert(n=0), 0.0)
    assert not r.offer("d", alert(n=1), 0.5)
    # a token is back at 1.0, but the summary has it first: a new alert may not overtake the held count
    assert not r.offer("d", alert(n=2), 1.0)
    assert r.held("d") == 2


class Recorder:
    def __init__(self, name: str, fail_with: DeliveryError | None = None) -> None:
        self.name = name
        self.fail_with = fail_with
        self.got: list[Alert] = []
        self.calls = 0
        self.lock = threading.Lock()

    def send(self, a: Alert) -> None:
        with self.lock:
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            self.got.append(a)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_dispatcher_sends_one_plus_a_summary_and_counts_every_alert_once():
    clock = Clock()
    good, dead = Recorder("generic-1"), Recorder("slack-1", DeliveryError("HTTP 503"))
    d = Dispatcher([good, dead], dedup_s=60.0, rate_per_min=1000.0, retry=Retry(attempts=3, backoff_s=0.0),
                   clock=clock)
    try:
        for i in range(100):
            d.submit(alert(n=i))
        d.tick()
        assert d.flush(30.0)
        assert [a.title for a in good.got] == ["reconciliation_break ES 06-24 EXTRA #0"]
        clock.t = 60.0
        d.tick()
        assert d.flush(30.0)
        assert len(good.got) == 2 and good.got[1].fields["repeats"] == 99
        assert d.stats.sent[("reconciliation_break", "generic-1")] == 2
        assert d.stats.failed[("reconciliation_break", "slack-1")] == 2 and dead.calls == 6  # 3 tries each
        assert d.stats.attempts["slack-1"] == 6
        assert d.suppressed()[("reconciliation_break", "all", "duplicate")] == 99
        assert d.raised["reconciliation_break"] == 100
    finally:
        d.close(5.0)


def test_a_destination_that_raises_something_unexpected_is_a_failure_not_a_crash():
    class Broken:
        name = "broken"

        def send(self, a: Alert) -> None:
            raise ZeroDivisionError("a bug")
    good = Recorder("generic-1")
    d = Dispatcher([Broken(), good], dedup_s=0.0, rate_per_min=1000.0)
    try:
        d.submit(alert())
        d.submit(alert(kind="kill", subject="desk"))
        assert d.flush(30.0)
        assert d.stats.failed[("reconciliation_break", "broken")] == 1 and d.stats.failed[("kill", "broken")] == 1
        assert len(good.got) == 2
        assert all(w.thread.is_alive() for w in d.workers.values())
    finally:
        d.close(5.0)
