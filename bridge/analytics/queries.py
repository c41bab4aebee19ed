"""The analytics queries: SQL run inside ClickHouse, answered as DataFrames."""

from __future__ import annotations

import re

import pandas as pd

from bridge.analytics.rollups import ORDER_KEY
from bridge.analytics.store import AnalyticsError, AnalyticsStore, quote

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
    parts = [f"(instrument = {quote(instrument)} OR startsWith(instrument, {quote(instrument + ' ')}))"]
    if start_ns is not None:
        parts.append(f"{ts} >= fromUnixTimestamp64Nano(toInt64({int(start_ns)}), 'UTC')")
    if end_ns is not None:
        parts.append(f"{ts} < fromUnixTimestamp64Nano(toInt64({int(end_ns)}), 'UTC')")
    return " AND ".join(parts)


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
