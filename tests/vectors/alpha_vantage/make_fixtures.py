"""Writes the Alpha Vantage response shapes that tests/fakes/alpha_vantage_server.py replays.

The shapes follow Alpha Vantage's documented JSON formats (GLOBAL_QUOTE, its 15-minute delayed variant,
TIME_SERIES_INTRADAY, the ``Note`` / ``Information`` throttle bodies, ``Error Message``); the numbers are
real: SPY trades of 2013-10-07 .. 2013-10-11 from the team's data (../shared/data/nt8/SPY.Last.txt.gz,
UTC stamps). The quote is 2013-10-11's regular session (09:30-16:00 New York), the intraday series the
last 100 one-minute bars of that day's extended session (04:00-20:00 New York, bars stamped at their
start in US/Eastern, empty minutes left out as Alpha Vantage does).

Placeholders the server fills per request: ``${apikey}`` (the key the request carried, as Alpha Vantage's
own throttle sentence quotes it back) and ``${symbol}``.
Run: ``python tests/vectors/alpha_vantage/make_fixtures.py`` (the files are committed; rerun only to
change a shape, and review the diff).
"""

from __future__ import annotations

import gzip
import json
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).parent
SPY = HERE.parents[2].parent / "shared" / "data" / "nt8" / "SPY.Last.txt.gz"
NY = ZoneInfo("America/New_York")
DAY = "2013-10-11"


UTC_DAYS = ("20131010", "20131011", "20131012")  # the UTC days the two New York days below fall on


def trades(spy: Path) -> list[tuple[str, str, float, int]]:
    """The trades of UTC_DAYS: (New York day, New York minute "HH:MM", price, volume)."""
    out = []
    with gzip.open(spy, "rt", encoding="ascii") as f:
        for line in f:
            if not line.startswith(UTC_DAYS):
                continue
            stamp, last, _bid, _ask, volume = line.strip().split(";")
            t = datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                         int(stamp[13:15]), tzinfo=timezone.utc).astimezone(NY)
            out.append((f"{t.year:04d}-{t.month:02d}-{t.day:02d}", f"{t.hour:02d}:{t.minute:02d}", float(last),
                        int(volume)))
    return out


def px(x: float) -> str:
    return f"{x:.4f}"


def main(spy: Path = SPY, out: Path = HERE) -> None:
    """Write every fixture into ``out`` (tests/unit/test_feed_alpha_vantage.py rewrites them to compare)."""
    rows = trades(spy)

    def write(name: str, body: dict) -> None:
        (out / name).write_text(json.dumps(body, indent=4) + "\n", encoding="utf-8")

    def session(day: str) -> list[tuple[str, str, float, int]]:
        return [r for r in rows if r[0] == day and "09:30" <= r[1] < "16:00"]
    today, before = session(DAY), session("2013-10-10")
    prices = [p for _, _, p, _ in today]
    close, prev = prices[-1], before[-1][2]
    quote = OrderedDict([
        ("01. symbol", "${symbol}"), ("02. open", px(prices[0])), ("03. high", px(max(prices))),
        ("04. low", px(min(prices))), ("05. price", px(close)), ("06. volume", str(sum(v for *_, v in today))),
        ("07. latest trading day", DAY), ("08. previous close", px(prev)), ("09. change", px(close - prev)),
        ("10. change percent", f"{100 * (close - prev) / prev:.4f}%"),
    ])
    write("global_quote.json", {"Global Quote": quote})
    write("global_quote_delayed.json", {"Global Quote - DATA DELAYED BY 15 MINUTES": quote})
    write("global_quote_empty.json", {"Global Quote": {}})  # what an unknown symbol gets

    bars: OrderedDict[str, list[float]] = OrderedDict()
    for day, minute, p, v in rows:
        if day != DAY or not "04:00" <= minute < "20:00":
            continue
        key = f"{day} {minute}:00"
        b = bars.setdefault(key, [p, p, p, p, 0])
        b[1], b[2], b[3], b[4] = max(b[1], p), min(b[2], p), p, b[4] + v
    last100 = list(bars.items())[-100:]
    series = OrderedDict((k, OrderedDict([("1. open", px(b[0])), ("2. high", px(b[1])), ("3. low", px(b[2])),
                                          ("4. close", px(b[3])), ("5. volume", str(int(b[4])))]))
                         for k, b in reversed(last100))  # newest first, as Alpha Vantage sends them
    meta = OrderedDict([("1. Information", "Intraday (1min) open, high, low, close prices and volume"),
                        ("2. Symbol", "${symbol}"), ("3. Last Refreshed", last100[-1][0]), ("4. Interval", "1min"),
                        ("5. Output Size", "Compact"), ("6. Time Zone", "US/Eastern")])
    write("intraday_1min.json", {"Meta Data": meta, "Time Series (1min)": series})

    write("note_throttle.json", {"Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 "
                                 "calls per minute and 500 calls per day. Please visit "
                                 "https://www.alphavantage.co/premium/ if you would like to target a higher API "
                                 "call frequency."})
    write("information_throttle.json", {"Information": "We have detected your API key as ${apikey} and our "
                                        "standard API rate limit is 25 requests per day. Please subscribe to any "
                                        "of the premium plans at https://www.alphavantage.co/premium/ to instantly "
                                        "remove all daily rate limits."})
    write("information_burst.json", {"Information": "Thank you for using Alpha Vantage! Please consider spreading "
                                     "out your free API requests more sparingly (1 request per second). You may "
                                     "subscribe to any of the premium plans at https://www.alphavantage.co/premium/ "
                                     "to lift the free key rate limit (25 requests per day), raise the per-minute "
                                     "rate limit, and remove the per-second burst limit."})
    write("error_symbol.json", {"Error Message": "Invalid API call. Please retry or visit the documentation "
                                "(https://www.alphavantage.co/documentation/) for TIME_SERIES_INTRADAY."})
    write("error_apikey.json", {"Error Message": "the parameter apikey is invalid or missing. Please claim your free "
                                "API key on (https://www.alphavantage.co/support/#api-key). It should take less "
                                "than 20 seconds."})
    # cut off mid-object, as a proxy or an overloaded server leaves a body
    (out / "malformed.json").write_text(json.dumps({"Global Quote": quote}, indent=4)[:180], encoding="utf-8")
    (out / "server_error.html").write_text(
        "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 "
        "Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n", encoding="utf-8")


if __name__ == "__main__":
    main()
