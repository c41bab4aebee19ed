"""NautilusTrader's backtest engine over an NT8 tick export: the other side of bench_research.py.

Run by ``bench_research.py`` with the interpreter of NautilusTrader's own virtualenv (never a dependency of
this project), so it imports nothing of the project: it reads the NT8 file itself. It builds a
``BacktestEngine`` with a simulated CME venue, an ES futures contract (tick 0.25, multiplier 50), the
file's trades as ``TradeTick`` data repeated ``--repeat`` times, and the example strategy shipped with
NautilusTrader (``EMACrossBracket``: EMA 10/20 cross on 1-minute bars built from the trades, an entry with
a stop and a target 3 ATR away). It prints the ticks per second of ``engine.run()`` alone (loading and
building the ticks are outside the clock, as they are for the research engine) and the orders and
fills, to show that it traded; the last line is the figures as JSON for the benchmark.

The repetition (``copy_offsets_ns``) and the peak memory (``peak_rss_mb``) are shared with bench_research.py,
which imports them: both engines see the same timestamps and are measured alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sys
import time
from pathlib import Path

NS = 1_000_000_000
DAY_NS = 86_400 * NS


def peak_rss_mb() -> float | None:
    """Peak resident memory (as bench_research.py measures its own runs); None where it cannot be read."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil
        except ImportError:
            return None
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def copy_offsets_ns(first_ns: int, last_ns: int, copies: int) -> list[int]:
    """How far to shift each copy of a recording spanning ``first_ns``..``last_ns``: copy i plays on the
    i-th weekday after the recording's own, at the same UTC hours, so each copy starts after the previous
    one ends and stays in the exchange's session (a weekend would close it). A recording spanning several
    days is shifted by whole multiples of its span instead."""
    first = dt.datetime.fromtimestamp(first_ns // NS, dt.timezone.utc).date()
    last = dt.datetime.fromtimestamp(last_ns // NS, dt.timezone.utc).date()
    if first != last:
        span_days = (last - first).days + 1
        return [i * span_days * DAY_NS for i in range(copies)]
    offsets, day = [0], first
    while len(offsets) < copies:
        day += dt.timedelta(days=1)
        while day.weekday() >= 5:
            day += dt.timedelta(days=1)
        offsets.append((day - first).days * DAY_NS)
    return offsets


def read_nt8_ticks(path: Path, limit: int | None = None) -> tuple[list[int], list[float], list[int]]:
    """An NT8 tick export (``yyyyMMdd HHmmss fffffff;last[;bid;ask];volume``, times taken as UTC, as the
    project reads them): timestamps in ns, prices, volumes."""
    opener = gzip.open if path.suffix == ".gz" else open
    ts: list[int] = []
    price: list[float] = []
    volume: list[int] = []
    epoch = dt.datetime(1970, 1, 1)
    day_ns: dict[str, int] = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            parts = line.strip().split(";")
            if len(parts) < 3:
                continue
            stamp = parts[0]  # yyyyMMdd HHmmss fffffff (ticks of 100 ns)
            date = stamp[:8]
            base = day_ns.get(date)
            if base is None:
                base = day_ns[date] = int((dt.datetime.strptime(date, "%Y%m%d") - epoch).total_seconds()) * NS
            hms = stamp[9:15]
            secs = int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:6])
            ts.append(base + secs * NS + int(stamp[16:23]) * 100)
            price.append(float(parts[1]))
            volume.append(int(parts[-1]))
            if limit is not None and len(ts) >= limit:
                break
    return ts, price, volume


def es_contract(venue_name: str):  # -> FuturesContract
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.enums import AssetClass
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
    from nautilus_trader.model.instruments import FuturesContract
    from nautilus_trader.model.objects import Price, Quantity

    activation = int(dt.datetime(2016, 6, 17, tzinfo=dt.timezone.utc).timestamp()) * NS
    expiration = int(dt.datetime(2030, 6, 21, tzinfo=dt.timezone.utc).timestamp()) * NS  # past any copy
    return FuturesContract(
        instrument_id=InstrumentId(Symbol("ESM8"), Venue(venue_name)), raw_symbol=Symbol("ESM8"),
        asset_class=AssetClass.INDEX, currency=USD, price_precision=2, price_increment=Price.from_str("0.25"),
        multiplier=Quantity.from_int(50), lot_size=Quantity.from_int(1), underlying="ES",
        activation_ns=activation, expiration_ns=expiration, ts_event=activation, ts_init=activation,
        exchange="XCME")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an NT8 tick export (.txt or .txt.gz)")
    parser.add_argument("--repeat", type=int, default=10, help="copies of the ticks, one per weekday (default 10)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N ticks of the file")
    args = parser.parse_args(argv)

    from decimal import Decimal

    import pandas as pd

    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.examples.strategies.ema_cross_bracket import EMACrossBracket, EMACrossBracketConfig
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.data import BarType
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.objects import Money
    from nautilus_trader.persistence.wranglers import TradeTickDataWrangler

    ts, price, volume = read_nt8_ticks(args.data, args.limit)
    if not ts:
        print(f"FAILED: no tick in {args.data}", file=sys.stderr)
        return 1
    offsets = copy_offsets_ns(ts[0], ts[-1], args.repeat)
    all_ts = [t + off for off in offsets for t in ts]
    n = len(all_ts)
    frame = pd.DataFrame({"price": price * args.repeat, "quantity": [float(v) for v in volume] * args.repeat,
                          "trade_id": [str(i) for i in range(n)]},
                         index=pd.to_datetime(all_ts, unit="ns", utc=True))
    venue = Venue("XCME")
    instrument = es_contract(venue.value)
    ticks = TradeTickDataWrangler(instrument).process(frame)

    # logging at ERROR: the example logs every bar at INFO, which would time the console, not the engine
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(log_level="ERROR"), run_analysis=False))
    engine.add_venue(venue=venue, oms_type=OmsType.NETTING, account_type=AccountType.MARGIN,
                     starting_balances=[Money(1_000_000, USD)], base_currency=USD,
                     trade_execution=True)  # only trades here: they must move the simulated market
    engine.add_instrument(instrument)
    engine.add_data(ticks)
    bar_type = BarType.from_str(f"{instrument.id}-1-MINUTE-LAST-INTERNAL")
    # emulated on the last price: with trades alone the simulated bid and ask are the last trade, so the
    # example's LIMIT_IF_TOUCHED entry at the bar's close would be "in the market" and rejected at the venue;
    # held by the order emulator, it is released as a limit order when a trade touches it
    engine.add_strategy(EMACrossBracket(EMACrossBracketConfig(
        instrument_id=instrument.id, bar_type=bar_type, trade_size=Decimal(1), emulation_trigger="LAST_PRICE")))
    del ticks, frame

    t0, c0 = time.perf_counter(), time.process_time()
    engine.run()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0

    cache = engine.cache
    orders = len(cache.orders())
    fills = sum(o.filled_qty.as_double() > 0 for o in cache.orders())
    positions = len(cache.positions())
    out = {"ticks": n, "elapsed_s": elapsed, "ticks_per_s": n / elapsed, "cpu_s": cpu, "orders": orders,
           "filled_orders": int(fills), "positions": positions, "peak_rss_mb": peak_rss_mb(),
           "repeat": args.repeat}
    engine.dispose()
    print(f"NautilusTrader: {n:,} trade ticks ({len(ts):,} x{args.repeat}), EMACrossBracket on "
          f"{bar_type}; timed around engine.run() only")
    rss = "n/a" if out["peak_rss_mb"] is None else f"{out['peak_rss_mb']:.0f} MB"
    print(f"  {out['ticks_per_s']:,.0f} ticks/s ({elapsed:.2f} s, {cpu:.2f} s of CPU), orders {orders}, "
          f"filled orders {fills}, positions {positions}, peak RSS {rss}")
    print(json.dumps(out))
    if orders == 0 or fills == 0:
        print("FAILED: NautilusTrader placed or filled no order", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
