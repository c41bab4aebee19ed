"""The analytics queries: SQL run inside ClickHouse, answered as DataFrames."""

from __future__ import annotations

import re

import pandas as pd

from bridge.analytics.rollups import ORDER_KEY
from bridge.analytics.store import AnalyticsError, AnalyticsStore, quote
from bridge.core.instruments import InstrumentMaster

_NS = 1_000_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def resolution_seconds(text: str) -> int:
    """``30s``, ``5m``, ``1h``, ``1d`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text.lower())
    if not m or int(m.group(1)) == 0:
        raise AnalyticsError(f"resolution {text!r}: a positive number and a unit s, m, h or d (e.g. 5m)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _where(instrument: str, start_ns: int | None, end_ns: int | None, ts: str = "ts") -> str:
    # "ES" names every ES contract ("ES 06-18", "ES 12-23"); "ES 06-18" names one
    return (f"(instrument = {quote(instrument)} OR startsWith(instrument, {quote(instrument + ' ')})) AND "
            + _where_time(start_ns, end_ns, ts))


def _minute_aligned(*stamps_ns: int | None) -> bool:
    """Whether a time window can be answered from the minute rollups (rollups.py) with the ticks' answer."""
    return all(t is None or t % (60 * _NS) == 0 for t in stamps_ns)


def bars(store: AnalyticsStore, instrument: str, resolution: str, start_ns: int | None = None,
         end_ns: int | None = None) -> pd.DataFrame:
    """OHLCV bars from the ticks, stamped at the bar's end as NT8 does (a tick exactly on a boundary opens
    the bar that starts there, as ``ticks_to_minute_bars``); empty intervals omitted. Columns: instrument,
    ts_ns, open, high, low, close, volume, ticks."""
    seconds = resolution_seconds(resolution)
    n = seconds * _NS
    if seconds % 60 == 0 and _minute_aligned(start_ns, end_ns):
        # whole minutes: the minute rollup (a bar of k minutes is the union of its k minutes)
        sql = f"""
        SELECT instrument, intDiv(toUnixTimestamp(minute), {seconds}) * {n} + {n} AS ts_ns,
               argMinMerge(open) AS open, max(high) AS high, min(low) AS low, argMaxMerge(close) AS close,
               sum(volume) AS volume, sum(ticks) AS ticks
        FROM `{store.database}`.ticks_1m
        WHERE {_where(instrument, start_ns, end_ns, "minute")}
        GROUP BY instrument, ts_ns
        ORDER BY instrument, ts_ns"""
    else:
        sql = f"""
        SELECT instrument,
               intDiv(toUnixTimestamp64Nano(ts), {n}) * {n} + {n} AS ts_ns,
               argMin(price, {ORDER_KEY}) AS open, max(price) AS high, min(price) AS low,
               argMax(price, {ORDER_KEY}) AS close, sum(volume) AS volume, count() AS ticks
        FROM `{store.database}`.ticks AS t
        WHERE {_where(instrument, start_ns, end_ns)}
        GROUP BY instrument, ts_ns
        ORDER BY instrument, ts_ns"""
    df = store.query_df(sql)
    return df.astype({"ts_ns": "int64", "volume": "int64", "ticks": "int64"}) if len(df) else df


# --- sessions -------------------------------------------------------------------------------------------------
# A session is labelled by the exchange-local date it ends on: with the CME's 17:00 America/Chicago start, the
# ticks from Monday 17:00 to Tuesday 16:00 CT are Tuesday's session. session_start_h = 0: the local calendar day.
# The shift is done on the instant (ts + 24h - start): the only DST switches fall at 02:00 local on a weekend,
# far from a 17:00 boundary, so the label is right on every trading day.
DEFAULT_SESSION_TZ = "America/Chicago"
DEFAULT_SESSION_START_H = 17


def _session_expr(tz: str, start_h: int, ts: str = "ts") -> str:
    if not 0 <= start_h <= 23:
        raise AnalyticsError(f"session start hour {start_h}: 0 to 23")
    try:
        from zoneinfo import ZoneInfo
        ZoneInfo(tz)
    except Exception:  # noqa: BLE001 - ZoneInfo raises several kinds for a bad name
        raise AnalyticsError(f"session time zone {tz!r}: not an IANA zone (e.g. America/Chicago)") from None
    shift = f"addHours({ts}, {24 - start_h})" if start_h else ts
    return f"toDate(toTimeZone({shift}, {quote(tz)}))"


def vwap(store: AnalyticsStore, instrument: str, start_ns: int | None = None, end_ns: int | None = None, *,
         tz: str = DEFAULT_SESSION_TZ, session_start_h: int = DEFAULT_SESSION_START_H) -> pd.DataFrame:
    """Volume-weighted average price per session. Columns: session (date), instrument, vwap, volume, ticks,
    high, low, first_ns, last_ns."""
    # aliases differ from the column names: ClickHouse resolves a name to its alias first, so
    # "sum(volume) AS volume" would turn sum(price * volume) into an aggregate of an aggregate
    if _minute_aligned(start_ns, end_ns):  # from the minute rollup: sums of sums, extremes of extremes
        sql = f"""
        SELECT {_session_expr(tz, session_start_h, "minute")} AS session, instrument,
               sum(pv) / sum(volume) AS vwap_, sum(volume) AS volume_, sum(ticks) AS ticks_,
               max(high) AS high_, min(low) AS low_,
               toUnixTimestamp64Nano(min(first_ts)) AS first_ns, toUnixTimestamp64Nano(max(last_ts)) AS last_ns
        FROM `{store.database}`.ticks_1m
        WHERE {_where(instrument, start_ns, end_ns, "minute")}
        GROUP BY session, instrument"""
    else:
        sql = f"""
        SELECT {_session_expr(tz, session_start_h)} AS session, instrument,
               sum(price * volume) / sum(volume) AS vwap_, sum(volume) AS volume_, count() AS ticks_,
               max(price) AS high_, min(price) AS low_,
               toUnixTimestamp64Nano(min(ts)) AS first_ns, toUnixTimestamp64Nano(max(ts)) AS last_ns
        FROM `{store.database}`.ticks
        WHERE {_where(instrument, start_ns, end_ns)}
        GROUP BY session, instrument"""
    sql += "\n        HAVING volume_ > 0\n        ORDER BY instrument, session"
    df = store.query_df(sql).rename(columns=lambda c: c.rstrip("_"))
    return df.astype({"volume": "int64", "ticks": "int64", "first_ns": "int64", "last_ns": "int64"}) if len(df) else df


def volume_profile(store: AnalyticsStore, instrument: str, start_ns: int | None = None, end_ns: int | None = None,
                   *, bucket: float | None = None, tz: str = DEFAULT_SESSION_TZ,
                   session_start_h: int = DEFAULT_SESSION_START_H) -> pd.DataFrame:
    """Volume at each price (or each ``bucket``-wide price band, labelled by its low edge) per session.
    Columns: session, instrument, price, volume, ticks, poc (True on the session's highest-volume price; the
    lowest such price when two tie)."""
    if bucket is not None and not bucket > 0:
        raise AnalyticsError(f"bucket {bucket}: a positive price width (e.g. the tick size, 0.25)")
    # round(price / bucket) first: 2675.0 / 0.25 is 10700 exactly, but a price carrying float noise must not
    # fall into the band below
    level = "price" if bucket is None else f"floor(round(price / {bucket!r}, 6)) * {bucket!r}"
    # minute-aligned windows from the per-price minute rollup, others from the ticks
    table, ts, ticks = ("ticks_1m_price", "minute", "sum(ticks)") if _minute_aligned(start_ns, end_ns) else (
        "ticks", "ts", "count()")
    sql = f"""
        SELECT session, instrument, level, vol, ticks,
               vol = max_v AND level = min(if(vol = max_v, level, inf)) OVER w AS poc
        FROM (
            SELECT session, instrument, level, vol, ticks, max(vol) OVER w AS max_v
            FROM (
                SELECT {_session_expr(tz, session_start_h, ts)} AS session, instrument, {level} AS level,
                       sum(volume) AS vol, {ticks} AS ticks
                FROM `{store.database}`.{table}
                WHERE {_where(instrument, start_ns, end_ns, ts)}
                GROUP BY session, instrument, level
            )
            WINDOW w AS (PARTITION BY session, instrument)
        )
        WINDOW w AS (PARTITION BY session, instrument)
        ORDER BY instrument, session, level"""
    df = store.query_df(sql).rename(columns={"level": "price", "vol": "volume"})
    return df.astype({"volume": "int64", "ticks": "int64", "poc": "bool"}) if len(df) else df


# --- quotes and fills -----------------------------------------------------------------------------------------
# Percentiles are quantileExactInclusive: the exact value with linear interpolation between the two nearest
# ranks, what numpy and pandas compute by default, so a notebook and this agree to the last digit.

def _keys(by: str, allowed: dict[str, str]) -> list[str]:
    keys = [k.strip() for k in by.split(",") if k.strip()]
    bad = [k for k in keys if k not in allowed]
    if bad or not keys:
        raise AnalyticsError(f"--by {by!r}: a comma-separated list of {', '.join(allowed)}")
    return keys


def spreads(store: AnalyticsStore, instrument: str, start_ns: int | None = None, end_ns: int | None = None, *,
            by: str = "session", tz: str = DEFAULT_SESSION_TZ,
            session_start_h: int = DEFAULT_SESSION_START_H) -> pd.DataFrame:
    """Bid-ask spread statistics from the quotes whose both sides are known, per instrument and ``by``
    (``session``, ``hour``: the local hour of day in ``tz``, or both). Columns: instrument, the keys, quotes,
    mean_spread, median_spread, p95_spread, twa_spread (each spread weighted by how long it stood: until the
    next quote of its instrument and session, by (ts, seq); the session's last quote weighs nothing)."""
    allowed = {"session": _session_expr(tz, session_start_h), "hour": f"toHour(toTimeZone(ts, {quote(tz)}))"}
    keys = _keys(by, allowed)
    sql = f"""
        SELECT instrument, {', '.join(keys)}, count() AS quotes, avg(spread) AS mean_spread,
               quantileExactInclusive(0.5)(spread) AS median_spread,
               quantileExactInclusive(0.95)(spread) AS p95_spread,
               sum(spread * stood) / nullIf(sum(stood), 0) AS twa_spread
        FROM (
            SELECT instrument, session, hour, spread,
                   leadInFrame(ns, 1, ns) OVER (PARTITION BY instrument, session ORDER BY ns, seq
                                                ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) - ns AS stood
            FROM (
                SELECT instrument, {allowed['session']} AS session, {allowed['hour']} AS hour, seq,
                       toUnixTimestamp64Nano(ts) AS ns, ask - bid AS spread
                FROM `{store.database}`.quotes
                WHERE {_where(instrument, start_ns, end_ns)} AND isFinite(bid) AND isFinite(ask)
            )
        )
        GROUP BY instrument, {', '.join(keys)}
        ORDER BY instrument, {', '.join(keys)}"""
    df = store.query_df(sql)
    return df.astype({"quotes": "int64", "hour": "int64"} if "hour" in keys else {"quotes": "int64"}) if len(df) else df


def executions(store: AnalyticsStore, ticks: dict[str, tuple[float, float]], *, by: str = "strategy,instrument",
               instrument: str | None = None, start_ns: int | None = None, end_ns: int | None = None,
               tz: str = DEFAULT_SESSION_TZ) -> pd.DataFrame:
    """Fills per ``by`` (strategy, instrument, hour: the local hour of day in ``tz``, session_id, role, side):
    fills, volume (contracts), slippage mean and p95 in ticks and in money, latency mean and p95 (ms).

    Slippage is signed against the trader: a buy above or a sell below its expected price is positive; in
    ticks it is (price - expected) / tick size, in money that times the tick value and the fill's quantity.
    ``ticks`` maps an instrument name to (tick_size, point_value); fills of another instrument, and fills
    without an expected price, count in fills and volume but not in slippage (NULL)."""
    allowed = {"strategy": "strategy", "instrument": "instrument", "hour": f"toHour(toTimeZone(ts, {quote(tz)}))",
               "session_id": "session_id", "role": "role", "side": "side", "account": "account"}
    keys = _keys(by, allowed)
    names = list(ticks)
    tick, tick_value = (_lookup(names, [ticks[n][0] for n in names]),
                        _lookup(names, [ticks[n][0] * ticks[n][1] for n in names]))
    where = _where(instrument, start_ns, end_ns) if instrument else _where_time(start_ns, end_ns)
    sql = f"""
        SELECT {', '.join(f'{allowed[k]} AS {k}' for k in keys)}, count() AS fills, sum(quantity) AS volume,
               avg(slip_ticks) AS slippage_ticks_mean,
               quantileExactInclusive(0.95)(slip_ticks) AS slippage_ticks_p95,
               avg(slip_money) AS slippage_money_mean,
               quantileExactInclusive(0.95)(slip_money) AS slippage_money_p95,
               avg(latency_ns) / 1e6 AS latency_ms_mean,
               quantileExactInclusive(0.95)(latency_ns) / 1e6 AS latency_ms_p95
        FROM (
            SELECT *, slip / tick AS slip_ticks, slip / tick * tick_value * quantity AS slip_money
            FROM (
                SELECT *, if(side = 'SELL', -1, 1) * (price - expected_price) AS slip,
                       {tick} AS tick, {tick_value} AS tick_value
                FROM `{store.database}`.executions
                WHERE {where}
            )
        )
        GROUP BY {', '.join(keys)}
        ORDER BY {', '.join(keys)}"""
    df = store.query_df(sql)
    return df.astype({"fills": "int64", "volume": "int64"}) if len(df) else df


def _where_time(start_ns: int | None, end_ns: int | None, ts: str = "ts") -> str:
    parts = ["1"]  # a condition even with neither bound
    if start_ns is not None:
        parts.append(f"{ts} >= fromUnixTimestamp64Nano(toInt64({int(start_ns)}), 'UTC')")
    if end_ns is not None:
        parts.append(f"{ts} < fromUnixTimestamp64Nano(toInt64({int(end_ns)}), 'UTC')")
    return " AND ".join(parts)


def _lookup(names: list[str], numbers: list[float]) -> str:
    """SQL: the number of the instrument's name, NULL for a name not listed."""
    if not names:
        return "CAST(NULL AS Nullable(Float64))"
    keys = "[" + ", ".join(quote(x) for x in names) + "]"
    vals = "CAST([" + ", ".join(repr(float(x)) for x in numbers) + "] AS Array(Nullable(Float64)))"
    return f"transform(instrument, {keys}, {vals}, CAST(NULL AS Nullable(Float64)))"


def tick_sizes(store: AnalyticsStore, master: InstrumentMaster) -> dict[str, tuple[float, float]]:
    """(tick_size, point_value) of every instrument with fills in the store that ``master`` knows."""
    names = store.query_df(f"SELECT DISTINCT instrument FROM `{store.database}`.executions")["instrument"]
    out = {}
    for name in names:
        try:
            spec = master.resolve(str(name))
        except ValueError:  # unknown root or a malformed name: its slippage stays in prices only (NULL here)
            continue
        out[str(name)] = (spec.tick_size, spec.point_value)
    return out
