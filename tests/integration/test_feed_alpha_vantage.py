"""The Alpha Vantage feed against a real HTTP server on loopback that replays Alpha Vantage's response shapes
(tests/fakes/alpha_vantage_server.py): every shape to a health and a counter, the request budget under a
burst and across a restart, the poller that never lets an exception out, the API key nowhere but in the
request, and ``nt8bridge feeds probe`` / ``feeds status`` run as the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.core.config import AlphaVantageConfig
from bridge.feeds import alpha_vantage as av_module
from bridge.feeds.alpha_vantage import AlphaVantageFeed
from bridge.feeds.base import FeedBus, FeedError, Freshness, Health
from tests.fakes.alpha_vantage_server import FIXTURE_DAY, AlphaVantageServer, Reply
from tests.integration.test_server import free_port  # noqa: E402
from tests.integration.test_server import wait_until as shared_wait_until  # noqa: E402

KEY = "AVkey-integration-7Hq2x"
CLI = [sys.executable, "-m", "bridge.cli"]
SPY_CLOSE = 170.24  # the recorded quote: SPY's last regular-session trade of 2013-10-11


def today_ny() -> str:
    return datetime.now(ZoneInfo("America/New_York")).strftime("%Y-%m-%d")


def todays(shape: str) -> Reply:
    """The recorded shape with today's New York date as its trading day."""
    return Reply(shape, replace={FIXTURE_DAY: today_ny()})


def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    """test_server's wait, with the longer default these end-to-end runs need."""
    shared_wait_until(condition, what, timeout_s)


def make_feed(url: str, tmp_path: Path, **overrides) -> AlphaVantageFeed:
    # a day's budget large enough that it never stretches the poll interval (see test_the_poller_spreads_...)
    kw = dict(api_key=KEY, base_url=url, requests_per_s=1000.0, requests_per_day=10_000_000, timeout_s=10.0)
    function = overrides.pop("function", "GLOBAL_QUOTE")
    kw.update(overrides)
    return AlphaVantageFeed(AlphaVantageConfig(**kw), function=function, budget_file=tmp_path / "budget.json")


@pytest.fixture
def av():
    with AlphaVantageServer(hang_limit_s=30.0) as server:
        yield server


@pytest.fixture
def no_thread_escapes(monkeypatch):
    """Every exception that leaves a thread, recorded (a feed must never let one out)."""
    escaped: list[BaseException] = []
    original = threading.excepthook

    def hook(args):
        escaped.append(args.exc_value)
        original(args)
    monkeypatch.setattr(threading, "excepthook", hook)
    return escaped


# --- every shape ---------------------------------------------------------------------------------

def test_a_quote_of_today_is_live_and_carries_root_and_symbol(av, tmp_path):
    av.script(todays("quote"))
    feed = make_feed(av.url, tmp_path)
    q = feed.probe("ES")
    assert (q.root, q.symbol, q.price, q.freshness) == ("ES", "SPY", SPY_CLOSE, Freshness.REALTIME)
    assert av.requests == [{"function": "GLOBAL_QUOTE", "symbol": "SPY", "apikey": KEY}]
    s = feed.status()
    assert s.health is Health.LIVE and s.reason == "" and s.last["ES"] == q and s.counters["requests"] == 1


def test_the_delayed_variant_is_delayed_by_900_s(av, tmp_path):
    av.script(todays("quote_delayed"))
    feed = make_feed(av.url, tmp_path)
    q = feed.probe("NQ")
    assert q.freshness is Freshness.DELAYED and q.delay_s == 900 and q.symbol == "QQQ" and q.root == "NQ"
    s = feed.status()
    assert s.health is Health.DELAYED and "delayed by 15 minutes" in s.reason and s.freshness is Freshness.DELAYED


def test_a_quote_of_an_earlier_trading_day_is_end_of_day(av, tmp_path):
    av.script("quote")  # latest trading day 2013-10-11
    feed = make_feed(av.url, tmp_path)
    q = feed.probe("ES")
    assert q.freshness is Freshness.END_OF_DAY
    assert q.ts_ns == int(datetime(2013, 10, 11, 20, tzinfo=timezone.utc).timestamp()) * 10**9  # 16:00 New York
    s = feed.status()
    assert s.health is Health.DELAYED and s.reason == "end-of-day value: SPY's latest trading day is 2013-10-11"


def test_intraday_gives_the_last_bar_as_a_quote(av, tmp_path):
    av.script("intraday")
    feed = make_feed(av.url, tmp_path, function="TIME_SERIES_INTRADAY")
    q = feed.probe("ES")
    assert av.requests[0] == {"function": "TIME_SERIES_INTRADAY", "symbol": "SPY", "interval": "1min",
                              "outputsize": "compact", "apikey": KEY}
    assert q.price == 170.41 and q.ts_ns == int(datetime(2013, 10, 11, 23, 59, tzinfo=timezone.utc).timestamp()) * 10**9
    assert q.freshness is Freshness.END_OF_DAY


FAILURES = [
    # shape, counter, the sentence starts with
    ("note", "throttled", "throttled by Alpha Vantage: Thank you for using Alpha Vantage! Our standard API call"),
    ("information", "throttled", "throttled by Alpha Vantage: We have detected your API key as *** and our standard"),
    ("information_burst", "throttled", "throttled by Alpha Vantage: Thank you for using Alpha Vantage! Please"),
    ("error_apikey", "key_refused", "Alpha Vantage refused the API key: the parameter apikey is invalid or missing"),
    ("error_symbol", "refused", "Alpha Vantage refused GLOBAL_QUOTE for symbol SPY: Invalid API call."),
    ("quote_empty", "no_quote", "Alpha Vantage has no quote for symbol SPY"),
    ("malformed", "malformed", "Alpha Vantage sent a response for SPY that is not JSON"),
    ("server_error", "http_errors", "Alpha Vantage answered HTTP 503 (server error) for SPY"),
    ("timeout", "timeouts", "Alpha Vantage at http://127.0.0.1:"),
]


@pytest.mark.parametrize("shape,counter,starts", FAILURES, ids=[f[0] for f in FAILURES])
def test_each_failure_shape_is_a_feed_error_a_health_and_a_counter(av, tmp_path, shape, counter, starts):
    av.script(shape)
    feed = make_feed(av.url, tmp_path, timeout_s=0.5 if shape == "timeout" else 10.0)
    with pytest.raises(FeedError) as err:
        feed.probe("ES")
    message = str(err.value)
    assert message.startswith(starts) and "\n" not in message and KEY not in message
    s = feed.status()
    assert s.health is Health.DOWN and s.reason == message and s.counters[counter] == 1
    assert av.count == 1
    if shape == "timeout":
        assert "did not answer for SPY within 0.5 s" in message


def test_a_refused_connection_is_down_and_spends_no_budget(tmp_path):
    feed = make_feed(f"http://127.0.0.1:{free_port()}/query", tmp_path, requests_per_day=25)
    with pytest.raises(FeedError, match=r"^cannot reach Alpha Vantage at http://127\.0\.0\.1:\d+/query: "
                                        r"connection refused$"):
        feed.probe("ES")
    s = feed.status()
    assert s.health is Health.DOWN and not s.connected and s.counters["unreachable"] == 1
    assert feed.budget.remaining() == 25


def test_a_throttle_backs_off_and_their_daily_limit_spends_our_day(av, tmp_path):
    av.script("note")
    feed = make_feed(av.url, tmp_path, requests_per_day=25)
    with pytest.raises(FeedError):
        feed.probe("ES")
    state = feed.budget.state()
    assert state.backoff_until > time.time() + 30 and state.backoff_reason.startswith("throttled by Alpha Vantage")
    assert feed.budget.remaining() == 24  # pace, not the day

    av.script("information")  # "25 requests per day": spent at their end
    with pytest.raises(FeedError):
        feed.probe("ES")
    assert feed.budget.remaining() == 0
    with pytest.raises(FeedError, match="^daily budget of 25 requests spent; resets at 00:00 UTC$"):
        feed.probe("ES")
    assert av.count == 2  # the third was refused here, not sent


def test_an_unknown_root_and_a_missing_key_are_refused_without_a_request(av, tmp_path):
    feed = make_feed(av.url, tmp_path)
    with pytest.raises(FeedError, match="Alpha Vantage has no stand-in for MES"):
        feed.probe("MES")
    nokey = make_feed(av.url, tmp_path, api_key="")
    with pytest.raises(FeedError, match=r"no Alpha Vantage API key: set \$NT8BRIDGE_FEEDS_ALPHA_VANTAGE__API_KEY"):
        nokey.probe("ES")
    assert av.count == 0


# --- the budget ----------------------------------------------------------------------------------

def test_a_burst_of_100_requests_reaches_the_server_at_most_the_budget_and_a_restart_spends_nothing(av, tmp_path):
    av.set_default(todays("quote"))
    feed = make_feed(av.url, tmp_path, requests_per_day=25)

    def one(_: int) -> str:
        try:
            feed.probe("ES")
            return "quote"
        except FeedError as exc:
            return str(exc)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(100)))
    assert av.count == 25 and results.count("quote") == 25
    assert set(results) - {"quote"} == {"daily budget of 25 requests spent; resets at 00:00 UTC"}
    with pytest.raises(FeedError):  # one after the burst: the burst's last answer may have been a quote
        feed.probe("ES")
    s = feed.status()
    assert s.health is Health.DOWN and s.reason == "daily budget of 25 requests spent; resets at 00:00 UTC"
    assert s.counters["budget_refused"] == 76 and s.counters["budget_left_today"] == 0
    assert json.loads((tmp_path / "budget.json").read_text())["used"] == 25

    restarted = make_feed(av.url, tmp_path, requests_per_day=25)  # same budget file: a new process
    with pytest.raises(FeedError, match="daily budget of 25 requests spent"):
        restarted.probe("ES")
    assert av.count == 25


def test_the_per_second_rate_holds_a_probe_that_cannot_wait_long_enough(av, tmp_path):
    av.set_default(todays("quote"))
    feed = make_feed(av.url, tmp_path, requests_per_s=0.001)  # one request per 1000 s
    feed.probe("ES")
    with pytest.raises(FeedError, match=r"no request allowed within 1 s \(requests_per_s is 0\.001\)"):
        feed.probe("ES", timeout_s=1.0)
    assert av.count == 1


# --- the poller ----------------------------------------------------------------------------------

def test_the_poller_delivers_each_stand_in_with_its_root(av, tmp_path, no_thread_escapes):
    av.set_default(todays("quote"))
    feed = make_feed(av.url, tmp_path, poll_s=1.0)
    bus = FeedBus()
    got: list = []
    feed.start(bus, ["ES", "NQ", "MES"])  # MES has no stand-in: not polled
    try:
        wait_until(lambda: (got.extend(bus.drain()) or {q.root for q in got} >= {"ES", "NQ"}), "ES and NQ quotes")
    finally:
        feed.stop()
    assert {(q.root, q.symbol) for q in got} == {("ES", "SPY"), ("NQ", "QQQ")}
    assert {r["symbol"] for r in av.requests} == {"SPY", "QQQ"}
    assert feed.status().counters["values"] >= 2 and feed.roots == ["ES", "NQ"]
    assert feed.status().health is Health.DOWN and feed.status().reason == "stopped"
    assert not no_thread_escapes


def test_the_poller_spreads_the_day_over_the_symbols():
    feed = AlphaVantageFeed(AlphaVantageConfig(api_key=KEY, poll_s=60.0, requests_per_day=25), persist=False)
    feed.roots = ["ES", "NQ", "YM", "RTY"]
    assert feed.poll_interval_s == pytest.approx(86_400 * 4 / 25)  # the budget wins over poll_s
    feed.roots = ["ES"]
    feed.config = AlphaVantageConfig(api_key=KEY, poll_s=60.0, requests_per_day=75_000)
    assert feed.poll_interval_s == 60.0


def test_the_poller_never_lets_an_exception_out(av, tmp_path, monkeypatch, caplog, no_thread_escapes):
    caplog.set_level("DEBUG")
    bad = ["malformed", "server_error", "error_symbol", "error_apikey", "quote_empty", "timeout", "note"]
    av.script(todays("quote"), *bad)  # the first answer is lost to the injected error below
    av.set_default(todays("quote"))
    real = av_module.interpret
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # an error inside the feed's own code, with the key in its message
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError(f"unexpected state while reading apikey={KEY}")
        return real(*args, **kwargs)
    monkeypatch.setattr(av_module, "interpret", flaky)
    feed = make_feed(av.url, tmp_path, poll_s=1.0, timeout_s=2.0)
    bus = FeedBus()
    feed.start(bus, ["ES", "NQ", "YM", "RTY"])
    try:
        wait_until(lambda: feed.status().counters.get("throttled") == 1, "the throttle at the end of the script")
        thread = feed._thread
        assert thread is not None and thread.is_alive()
    finally:
        feed.stop()
    counters = feed.status().counters
    assert counters["errors"] == 1  # the injected failure: caught, counted, logged
    for counter in ("malformed", "http_errors", "refused", "key_refused", "no_quote", "timeouts", "throttled"):
        assert counters[counter] == 1, counter
    assert not no_thread_escapes
    assert "internal error in the Alpha Vantage poller: RuntimeError" in caplog.text
    assert KEY not in caplog.text


def test_after_a_throttle_the_poller_sends_nothing_until_the_back_off_ends(av, tmp_path):
    av.script("note")
    av.set_default(todays("quote"))
    feed = make_feed(av.url, tmp_path, poll_s=1.0)
    feed.start(FeedBus(), ["ES", "NQ"])
    try:
        wait_until(lambda: feed.status().counters.get("throttled") == 1, "the throttle")
        time.sleep(1.5)  # NQ falls due at once and ES a second later: both held by the back-off
        assert av.count == 1
        s = feed.status()
        assert s.health is Health.DOWN and s.reason.startswith("throttled by Alpha Vantage")
    finally:
        feed.stop()


# --- the key -------------------------------------------------------------------------------------

def test_the_key_is_sent_and_nowhere_else(av, tmp_path, caplog):
    caplog.set_level("DEBUG")
    shapes = ["quote", "error_apikey", "note", "malformed", "server_error", "timeout", "information"]
    av.script(*shapes)
    feed = make_feed(av.url, tmp_path, timeout_s=2.0)
    seen: list[str] = []
    for _ in shapes:
        try:
            seen.append(repr(feed.probe("ES")))
        except FeedError as exc:
            seen.append(str(exc))
        seen.append(json.dumps(feed.status().to_dict()))
    assert all(r["apikey"] == KEY for r in av.requests) and av.count == len(shapes)
    assert "apikey=***" in caplog.text  # the URLs were logged (ours at DEBUG, httpx's at INFO), masked
    assert KEY not in caplog.text
    assert not any(KEY in s for s in seen)
    assert KEY not in (tmp_path / "budget.json").read_text()
    assert KEY not in repr(feed.status())


# --- the command line ----------------------------------------------------------------------------

def cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NT8BRIDGE_")}
    environ.update(XDG_DATA_HOME=str(tmp_path / "data"), LOCALAPPDATA=str(tmp_path / "data"),
                   XDG_CONFIG_HOME=str(tmp_path / "config"), **env)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=environ,
                          stdin=subprocess.DEVNULL)


def av_env(av: AlphaVantageServer) -> dict[str, str]:
    return {"NT8BRIDGE_FEEDS_ALPHA_VANTAGE__API_KEY": KEY, "NT8BRIDGE_FEEDS_ALPHA_VANTAGE__BASE_URL": av.url}


def test_feeds_probe_alpha_vantage_prints_one_line(av, tmp_path):
    av.script(todays("quote_delayed"))
    r = cli(["feeds", "probe", "alpha_vantage", "--instrument", "es"], tmp_path, **av_env(av))
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert line.startswith(f"alpha_vantage ES: SPY {SPY_CLOSE} [delayed, 15 min behind] at ")
    assert KEY not in r.stdout + r.stderr


@pytest.mark.parametrize("shape,says", [
    ("information", "throttled by Alpha Vantage: We have detected your API key as *** and"),
    ("note", "throttled by Alpha Vantage: Thank you for using Alpha Vantage!"),
    ("error_apikey", "Alpha Vantage refused the API key: the parameter apikey is invalid or missing."),
])
def test_feeds_probe_alpha_vantage_throttled_or_refused_exits_non_zero_with_one_line(av, tmp_path, shape, says):
    av.set_default(shape)
    r = cli(["feeds", "probe", "alpha_vantage"], tmp_path, **av_env(av))
    assert r.returncode != 0 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"nt8bridge: alpha_vantage probe of ES failed: {says}")
    assert "Traceback" not in r.stderr and KEY not in r.stderr
    assert av.count == 1


def test_feeds_probe_alpha_vantage_unreachable_exits_non_zero_with_one_line(tmp_path):
    port = free_port()
    r = cli(["feeds", "probe", "alpha_vantage"], tmp_path, NT8BRIDGE_FEEDS_ALPHA_VANTAGE__API_KEY=KEY,
            NT8BRIDGE_FEEDS_ALPHA_VANTAGE__BASE_URL=f"http://127.0.0.1:{port}/query")
    assert r.returncode != 0
    assert r.stderr.splitlines() == [f"nt8bridge: alpha_vantage probe of ES failed: cannot reach Alpha Vantage at "
                                     f"http://127.0.0.1:{port}/query: connection refused"]


def test_feeds_status_without_a_sidecar_probes_each_configured_feed_and_says_so(av, tmp_path):
    av.script(todays("quote"))
    port = free_port()
    r = cli(["feeds", "status", "--control", f"tcp://127.0.0.1:{port}"], tmp_path,
            NT8BRIDGE_FEEDS__ENABLED="alpha_vantage", **av_env(av))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"feeds (no sidecar answered at tcp://127.0.0.1:{port}; probed alpha_vantage once):"
    assert lines[1].split() == ["alpha_vantage", "LIVE"]
    assert any(f"ES: SPY {SPY_CLOSE} [realtime]" in line for line in lines)
    assert any(line.strip().startswith("counters: ") and "requests 1" in line for line in lines)
    r = cli(["feeds", "status", "--control", f"tcp://127.0.0.1:{port}", "--json"], tmp_path,
            NT8BRIDGE_FEEDS__ENABLED="alpha_vantage", **av_env(av))
    out = json.loads(r.stdout)
    (row,) = out["feeds"]
    assert row["name"] == "alpha_vantage" and row["last"]["ES"]["bid"] is None and "probed" in out["source"]
    assert KEY not in r.stdout + r.stderr


@pytest.mark.slow
def test_feeds_status_asks_a_running_sidecar_first(av, tmp_path, monkeypatch):
    """A real sidecar polling the local server: ``feeds status`` prints what it reports and sends nothing itself."""
    from bridge.transport.sidecar import SidecarProcess
    av.set_default(todays("quote"))
    for name, value in {**av_env(av), "NT8BRIDGE_FEEDS__ENABLED": "alpha_vantage",
                        "NT8BRIDGE_FEEDS_ALPHA_VANTAGE__REQUESTS_PER_DAY": "10000000",
                        "NT8BRIDGE_FEEDS_ALPHA_VANTAGE__POLL_S": "3600",
                        "XDG_DATA_HOME": str(tmp_path / "sidecar-data")}.items():
        monkeypatch.setenv(name, value)  # the sidecar's environment (SidecarProcess passes it on)
    proc = SidecarProcess(f"sqlite:///{tmp_path / 'status.sqlite'}")
    proc.start()
    try:
        # one request per stand-in, then none for an hour (poll_s)
        wait_until(lambda: {r["symbol"] for r in av.requests} == {"SPY", "QQQ", "DIA", "IWM"}, "a poll of each")
        r = cli(["feeds", "status", "--control", proc.control_endpoint], tmp_path)
        sent_by_cli = av.count - 4
    finally:
        proc.stop()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"feeds (from the sidecar at {proc.control_endpoint}):"
    (row,) = [line for line in lines if line.split()[:1] == ["alpha_vantage"]]
    assert row.split()[1] in ("LIVE", "DIVERGING", "STALE")  # what the sidecar judged, not probed here
    assert any(f"ES: SPY {SPY_CLOSE} [realtime]" in line for line in lines)
    assert sent_by_cli == 0  # the command asked the sidecar, not Alpha Vantage
    assert any(line.strip().startswith("reference for ES: ") for line in lines)
    assert KEY not in r.stdout + r.stderr

def test_feeds_probe_ib_against_an_unreachable_port_exits_non_zero_with_one_line(tmp_path):
    port = free_port()  # nothing listens there: the real ib_async client is refused
    r = cli(["feeds", "probe", "ib", "--timeout", "5"], tmp_path, NT8BRIDGE_FEEDS_IB__HOST="127.0.0.1",
            NT8BRIDGE_FEEDS_IB__PORT=str(port))
    assert r.returncode != 0 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"nt8bridge: ib probe of ES failed: connection refused by 127.0.0.1:{port}")
    assert "Traceback" not in r.stderr
