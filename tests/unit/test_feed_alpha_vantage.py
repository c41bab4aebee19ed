"""Alpha Vantage without a network: every recorded response shape (tests/vectors/alpha_vantage, the same
files the local server replays) read into a quote with its freshness or a failure with its sentence;
the request budget's day, rate, back-off and persistence on a clock the test turns."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bridge.feeds.alpha_vantage_shapes import Failure, interpret, mask_key, parse_symbols
from bridge.feeds.base import FeedQuote, Freshness
from bridge.feeds.budget import RequestBudget

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "alpha_vantage"
KEY = "K3Y-unit-Zq81"
NY_CLOSE_2013_10_11_NS = int(datetime(2013, 10, 11, 20, 0, tzinfo=timezone.utc).timestamp()) * 10**9  # 16:00 EDT


def body(name: str, *, day: str | None = None, symbol: str = "SPY") -> bytes:
    text = (VECTORS / name).read_text(encoding="utf-8").replace("${apikey}", KEY).replace("${symbol}", symbol)
    if day:
        text = text.replace("2013-10-11", day)
    return text.encode()


def ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp()) * 10**9


def read(name: str, received_ns: int, *, function: str = "GLOBAL_QUOTE", status: int = 200, day: str | None = None):
    return interpret(status, body(name, day=day), function=function, root="ES", symbol="SPY", key=KEY,
                     feed="alpha_vantage", received_ns=received_ns)


# --- quotes --------------------------------------------------------------------------------------

def test_a_quote_of_today_is_real_time_and_carries_the_future_root_and_the_etf_symbol():
    received = ns(2024, 5, 14, 15, 0)  # 11:00 in New York
    q = read("global_quote.json", received, day="2024-05-14")
    assert isinstance(q, FeedQuote)
    assert (q.feed, q.root, q.symbol, q.price) == ("alpha_vantage", "ES", "SPY", 170.24)
    assert q.freshness is Freshness.REALTIME and q.delay_s == 0 and q.ts_ns == q.received_ns == received


def test_a_quote_whose_latest_trading_day_is_before_today_in_new_york_is_end_of_day():
    q = read("global_quote.json", ns(2013, 10, 14, 14, 0))  # the Monday after
    assert q.freshness is Freshness.END_OF_DAY
    assert q.ts_ns == NY_CLOSE_2013_10_11_NS  # the close of that day
    assert q.delay_s == pytest.approx((ns(2013, 10, 14, 14, 0) - NY_CLOSE_2013_10_11_NS) / 1e9)


def test_today_is_new_yorks_today_not_utcs():
    # 01:00 UTC on the 12th is still the 11th (21:00) in New York: the 11th's quote is today's there
    q = read("global_quote.json", ns(2013, 10, 12, 1, 0))
    assert q.freshness is Freshness.REALTIME


def test_the_delayed_variant_is_delayed_by_fifteen_minutes():
    received = ns(2024, 5, 14, 15, 0)
    q = read("global_quote_delayed.json", received, day="2024-05-14")
    assert q.freshness is Freshness.DELAYED and q.delay_s == 900
    assert q.ts_ns == received - 900 * 10**9 and q.price == 170.24


def test_a_delayed_quote_of_an_earlier_day_is_end_of_day():
    assert read("global_quote_delayed.json", ns(2024, 5, 14, 15, 0)).freshness is Freshness.END_OF_DAY


def test_an_empty_global_quote_is_an_unknown_symbol():
    f = read("global_quote_empty.json", ns(2024, 5, 14, 15, 0))
    assert isinstance(f, Failure) and f.counter == "no_quote" and "no quote for symbol SPY" in f.reason


@pytest.mark.parametrize("price", ['"NaN"', '"0.0000"', '"-1"', '"abc"', "null"])
def test_a_quote_without_a_usable_price_is_malformed(price):
    data = json.loads(body("global_quote.json"))
    raw = json.dumps(data).replace('"170.2400"', price)
    f = interpret(200, raw.encode(), function="GLOBAL_QUOTE", root="ES", symbol="SPY", key=KEY, feed="av",
                  received_ns=ns(2024, 5, 14, 15, 0))
    assert isinstance(f, Failure) and f.counter == "malformed" and "no usable price" in f.reason


# --- intraday ------------------------------------------------------------------------------------

def test_intraday_gives_the_last_bars_close_stamped_in_us_eastern():
    received = ns(2013, 10, 14, 14, 0)
    q = read("intraday_1min.json", received, function="TIME_SERIES_INTRADAY")
    series = json.loads(body("intraday_1min.json"))["Time Series (1min)"]
    last = max(series)
    assert last == "2013-10-11 19:59:00" and q.price == float(series[last]["4. close"])
    assert q.ts_ns == ns(2013, 10, 11, 23, 59)  # 19:59 EDT
    assert q.freshness is Freshness.END_OF_DAY  # Last Refreshed is an earlier New York day


def test_intraday_freshness_follows_last_refreshed():
    # the same day, a minute after the last bar: real time; half an hour after: delayed by that much
    fresh = read("intraday_1min.json", ns(2013, 10, 11, 23, 59) + 60 * 10**9, function="TIME_SERIES_INTRADAY")
    assert fresh.freshness is Freshness.REALTIME and fresh.delay_s == 0
    late = ns(2013, 10, 11, 23, 59) + 1800 * 10**9
    # still the 11th in New York (20:29)
    old = read("intraday_1min.json", late, function="TIME_SERIES_INTRADAY")
    assert old.freshness is Freshness.DELAYED and old.delay_s == pytest.approx(1800)


def test_intraday_without_its_series_is_malformed():
    raw = json.dumps({"Meta Data": {"3. Last Refreshed": "2013-10-11 19:59:00"}}).encode()
    f = interpret(200, raw, function="TIME_SERIES_INTRADAY", root="ES", symbol="SPY", key=KEY, feed="av",
                  received_ns=1)
    assert isinstance(f, Failure) and f.counter == "malformed"


# --- failures ------------------------------------------------------------------------------------

def test_note_is_a_throttle_about_pace_not_the_day():
    f = read("note_throttle.json", 1)
    assert f.throttled and not f.daily_limit and f.counter == "throttled"
    assert f.reason.startswith("throttled by Alpha Vantage: Thank you for using Alpha Vantage! Our standard API call")


def test_information_is_a_throttle_that_spends_the_day_and_never_repeats_the_key():
    raw = body("information_throttle.json")
    assert KEY.encode() in raw  # Alpha Vantage quotes the key back: the test is only worth something if so
    f = read("information_throttle.json", 1)
    assert f.throttled and f.daily_limit
    assert KEY not in f.reason and "your API key as ***" in f.reason and "25 requests per day" in f.reason


def test_the_burst_sentence_is_about_pace():
    f = read("information_burst.json", 1)
    assert f.throttled and not f.daily_limit


def test_error_message_says_whether_the_key_or_the_symbol_was_refused():
    key = read("error_apikey.json", 1)
    assert key.counter == "key_refused" and key.reason.startswith("Alpha Vantage refused the API key: ")
    sym = read("error_symbol.json", 1)
    assert sym.counter == "refused" and "refused GLOBAL_QUOTE for symbol SPY" in sym.reason
    assert KEY not in key.reason + sym.reason


def test_malformed_json_and_a_5xx_are_failures_not_exceptions():
    bad = read("malformed.json", 1)
    assert bad.counter == "malformed" and "not JSON" in bad.reason
    html = read("server_error.html", 1, status=503)
    assert html.counter == "http_errors" and "HTTP 503" in html.reason
    lst = interpret(200, b"[1, 2]", function="GLOBAL_QUOTE", root="ES", symbol="SPY", key=KEY, feed="av", received_ns=1)
    assert lst.counter == "malformed"
    binary = interpret(200, b"\xff\xfe\x00", function="GLOBAL_QUOTE", root="ES", symbol="SPY", key=KEY, feed="av",
                       received_ns=1)
    assert binary.counter == "malformed"


def test_every_reason_is_one_line():
    for name in ("note_throttle.json", "information_throttle.json", "error_apikey.json", "malformed.json"):
        assert "\n" not in read(name, 1).reason


def test_mask_key_hides_the_key_and_any_apikey_parameter():
    url = f"https://www.alphavantage.co/query?function=GLOBAL_QUOTE&symbol=SPY&apikey={KEY}"
    assert mask_key(url, KEY).endswith("apikey=***") and KEY not in mask_key(url, KEY)
    assert mask_key("GET /query?apikey=other&x=1", "") == "GET /query?apikey=***&x=1"


def test_parse_symbols():
    assert parse_symbols("ES=SPY, nq=qqq,YM=DIA,RTY=IWM") == {"ES": "SPY", "NQ": "QQQ", "YM": "DIA", "RTY": "IWM"}
    with pytest.raises(ValueError, match="'ES' is not ROOT=SYMBOL"):
        parse_symbols("ES,NQ=QQQ")


# --- the budget ----------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


DAY0 = datetime(2024, 5, 14, 23, 59, 0, tzinfo=timezone.utc).timestamp()


def test_the_day_is_spent_at_its_limit_and_comes_back_at_utc_midnight(tmp_path):
    clock = Clock(DAY0)
    b = RequestBudget(3, 1000.0, tmp_path / "b.json", clock)
    assert [b.try_spend().ok for _ in range(5)] == [True, True, True, False, False]
    refused = b.try_spend()
    assert refused.reason == "daily budget of 3 requests spent; resets at 00:00 UTC"
    assert refused.wait_s == pytest.approx(60.0)  # until 00:00 UTC
    clock.t += 60.0
    assert b.try_spend().ok and b.remaining() == 2


def test_the_rate_is_a_token_bucket():
    clock = Clock(DAY0)
    b = RequestBudget(100, 1.0, None, clock)
    assert b.try_spend().ok
    g = b.try_spend()
    assert not g.ok and g.reason == "" and g.wait_s == pytest.approx(1.0)
    clock.t += 0.5
    assert b.try_spend().wait_s == pytest.approx(0.5)
    clock.t += 0.5
    assert b.try_spend().ok
    clock.t += 3600  # saving up gives one request at once, not an hour's worth
    assert b.try_spend().ok and not b.try_spend().ok


def test_a_wall_clock_going_back_refills_nothing():
    clock = Clock(DAY0)
    b = RequestBudget(100, 1.0, None, clock)
    assert b.try_spend().ok
    clock.t -= 3600
    assert not b.try_spend().ok


def test_the_count_survives_a_restart_and_is_shared_by_two_processes(tmp_path):
    clock = Clock(DAY0 - 3600)
    path = tmp_path / "sub" / "budget.json"
    first = RequestBudget(5, 1000.0, path, clock)
    for _ in range(3):
        assert first.try_spend().ok
    restarted = RequestBudget(5, 1000.0, path, clock)
    assert restarted.remaining() == 2
    assert restarted.try_spend().ok
    assert first.try_spend().ok          # the first one sees the restarted one's request: the fifth
    assert not restarted.try_spend().ok and not first.try_spend().ok
    assert json.loads(path.read_text())["used"] == 5
    assert not list(path.parent.glob("*.tmp"))  # written by replace, no temporary left behind


def test_a_restart_does_not_get_a_full_bucket(tmp_path):
    clock = Clock(DAY0 - 3600)
    path = tmp_path / "budget.json"
    assert RequestBudget(100, 0.01, path, clock).try_spend().ok
    assert not RequestBudget(100, 0.01, path, clock).try_spend().ok


def test_a_back_off_is_kept_across_a_restart_and_a_probe_may_ignore_it(tmp_path):
    clock = Clock(DAY0 - 3600)
    path = tmp_path / "budget.json"
    RequestBudget(10, 1000.0, path, clock).back_off(120, "throttled by Alpha Vantage: slow down")
    b = RequestBudget(10, 1000.0, path, clock)
    g = b.try_spend()
    assert not g.ok and g.reason == "throttled by Alpha Vantage: slow down" and g.wait_s == pytest.approx(120)
    assert b.try_spend(ignore_backoff=True).ok
    clock.t += 121
    assert b.try_spend().ok


def test_exhaust_and_refund(tmp_path):
    clock = Clock(DAY0 - 3600)
    b = RequestBudget(10, 1000.0, tmp_path / "b.json", clock)
    assert b.try_spend().ok
    b.refund()
    assert b.remaining() == 10
    b.exhaust()
    assert b.remaining() == 0 and "spent" in b.try_spend().reason


def test_an_unreadable_file_is_replaced_not_trusted_nor_fatal(tmp_path, caplog):
    path = tmp_path / "budget.json"
    path.write_text("{not json")
    b = RequestBudget(2, 1000.0, path, Clock(DAY0))
    assert b.try_spend().ok
    assert "unreadable" in caplog.text
    assert json.loads(path.read_text())["used"] == 1


def test_a_budget_file_that_cannot_be_written_still_holds_in_memory(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    b = RequestBudget(2, 1000.0, blocker / "budget.json", Clock(DAY0))  # its folder is a file
    assert [b.try_spend().ok for _ in range(3)] == [True, True, False]
    assert caplog.text.count("cannot save the request budget") == 1


def test_non_finite_numbers_in_the_file_are_ignored(tmp_path):
    path = tmp_path / "budget.json"
    path.write_text(json.dumps({"day": "2024-05-14", "used": 0, "tokens": math.inf, "tokens_at": 0.0}))
    b = RequestBudget(2, 0.001, path, Clock(DAY0))
    assert b.try_spend().ok and not b.try_spend().ok


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_recorded_shapes_carry_the_real_spy_prices(shared_data, tmp_path):
    """The fixtures are what make_fixtures.py writes from the team's SPY trades: rewritten, they are equal."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_av_fixtures", VECTORS / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(shared_data / "nt8" / "SPY.Last.txt.gz", tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in VECTORS.iterdir() if p.suffix in (".json", ".html"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name
