"""Synthetic tick-replay sessions calibrated on the team's real files.

No public full-session ES tick file with sizes and quotes exists, so the demo and the tests of
instruments without real ticks use generated sessions. Every figure the generator uses is in
:data:`CALIBRATIONS`, measured from ``../shared/data`` by :func:`calibrate_from_files` where the
data allows it and marked as an assumption where it does not. Regenerate the measured part with::

    .venv/bin/python -m bridge.data.synthetic ../shared/data

Model, per instrument and in tick units:

- an efficient price on a 1-second grid, a Gaussian random walk whose per-minute variance in
  local hour ``h`` is proportional to ``ticks_per_minute[h] ** var_rate_exponent`` (busy hours
  move more), scaled so the session-average matches ``minute_vol_ticks``; instruments are
  correlated through the increments;
- a spread of 1, 2 or 3 ticks drawn each second from ``spread_ticks_p``, bid/ask placed around
  the efficient price on the tick grid;
- trades: a Poisson number per minute with mean ``ticks_per_minute[local hour]`` (zero while the
  market is closed), uniform times at 100 ns resolution, each at the bid or the ask with equal
  odds, sizes geometric with mean ``mean_trade_size``.

Not modelled (the quality gate and strategies should not rely on them here): fat tails (real
1-minute changes have kurtosis ~30-50, these are Gaussian), volatility clustering, bursts of
trades within a minute beyond Poisson, and the opening auction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bridge.data.nt8files import Nt8Format, instrument_from_filename, read_nt8, ticks_to_minute_bars
from bridge.core.instruments import InstrumentMaster, InstrumentSpec, SessionClock, parse_contract_name

__all__ = [
    "CALIBRATIONS",
    "Calibration",
    "calibrate_from_files",
    "default_correlation",
    "generate_session",
]

_NS_PER_SECOND = 1_000_000_000
_NS_PER_MINUTE = 60 * _NS_PER_SECOND
_HOURS = 24
# An hour counts as measured from ticks when the tick file covers at least this many of its
# minutes; otherwise its rate comes from the minute-volume profile (a half-covered opening hour
# would otherwise stand for the whole hour).
_MIN_COVERED_MINUTES = 50


@dataclass(frozen=True, slots=True)
class Calibration:
    """Figures that drive the generator for one instrument root.

    Attributes
    ----------
    tick_size
        Price increment.
    start_price
        Price the session starts from.
    ticks_per_minute
        Mean trades per minute for each local clock hour 0-23 of the instrument's session time
        zone (America/Chicago for CME); 0 where the market is closed all hour.
    minute_vol_ticks
        Standard deviation of 1-minute close-to-close changes, in ticks, over the whole
        session (as measured from real minute bars, bid/ask bounce included).
    spread_ticks_p
        Probabilities of a spread of 1, 2 and 3-or-more ticks.
    mean_trade_size
        Mean contracts per trade.
    var_rate_exponent
        Minute variance in hour h is proportional to ``ticks_per_minute[h] ** exponent``.
    source
        Where the figures came from.
    """

    tick_size: float
    start_price: float
    ticks_per_minute: tuple[float, ...]
    minute_vol_ticks: float
    spread_ticks_p: tuple[float, ...]
    mean_trade_size: float
    var_rate_exponent: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        if not (self.tick_size > 0 and math.isfinite(self.tick_size)):
            raise ValueError(f"tick_size must be positive, got {self.tick_size}")
        if not (self.start_price > 0 and math.isfinite(self.start_price)):
            raise ValueError(f"start_price must be positive, got {self.start_price}")
        if len(self.ticks_per_minute) != _HOURS or any(
            not (r >= 0 and math.isfinite(r)) for r in self.ticks_per_minute
        ):
            raise ValueError("ticks_per_minute needs 24 non-negative rates, one per local clock hour")
        if not any(r > 0 for r in self.ticks_per_minute):
            raise ValueError("ticks_per_minute is zero in every hour")
        if not (self.minute_vol_ticks >= 0 and math.isfinite(self.minute_vol_ticks)):
            raise ValueError(f"minute_vol_ticks must be >= 0, got {self.minute_vol_ticks}")
        p = self.spread_ticks_p
        if len(p) != 3 or any(x < 0 for x in p) or abs(sum(p) - 1.0) > 1e-4:
            raise ValueError(f"spread_ticks_p must be 3 probabilities (1, 2, 3+ ticks) summing to 1, got {p}")
        if not self.mean_trade_size >= 1:
            raise ValueError(f"mean_trade_size must be >= 1, got {self.mean_trade_size}")
        if not 0 <= self.var_rate_exponent <= 2:
            raise ValueError(f"var_rate_exponent must be within 0..2, got {self.var_rate_exponent}")

    @property
    def mean_spread_noise(self) -> float:
        """Variance (ticks^2) a trade price adds around the efficient price.

        A trade at the bid or ask of an ``s``-tick spread sits ``s/2`` away on average, plus the
        rounding of the quote to the grid (uniform, 1/12): ``E[s^2/4 + 1/12]``.
        """
        return sum(p * (s * s / 4.0) for s, p in zip((1, 2, 3), self.spread_ticks_p, strict=True)) + 1.0 / 12.0


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def _root_of(path: str | Path | None) -> str | None:
    if path is None:
        return None
    try:
        return parse_contract_name(instrument_from_filename(path))[0]
    except ValueError:
        return None


def _in_session(ts_ns: np.ndarray, spec: InstrumentSpec) -> np.ndarray:
    clock = SessionClock(spec.hours)
    return np.fromiter((clock.is_open(int(t)) for t in ts_ns), dtype=bool, count=len(ts_ns))


def _local_hour(ts_ns: np.ndarray, tz: str) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(ts_ns, tz="UTC").tz_convert(tz).hour, dtype=np.int64)


def _local_minute_of_day(ts_ns: np.ndarray, tz: str) -> np.ndarray:
    local = pd.DatetimeIndex(ts_ns, tz="UTC").tz_convert(tz)
    return np.asarray(local.hour * 60 + local.minute, dtype=np.int64)


def _one_minute_changes(bars: pd.DataFrame, tick: float) -> np.ndarray:
    ts = bars["ts_ns"].to_numpy()
    close = bars["close"].to_numpy() / tick
    consecutive = np.diff(ts) == _NS_PER_MINUTE
    return np.diff(close)[consecutive]


def _grid_tick(prices: np.ndarray, declared: float | None) -> float:
    from bridge.core.instruments import prices_on_grid

    if declared is not None and prices_on_grid(prices, declared).all():
        return declared
    levels = np.unique(prices[np.isfinite(prices)])
    if len(levels) < 2:
        raise ValueError("cannot infer a tick size from fewer than two price levels")
    return float(round(float(np.diff(levels).min()), 8))


def _spread_probabilities(spread_ticks: np.ndarray) -> tuple[float, ...]:
    s = np.rint(spread_ticks[np.isfinite(spread_ticks)]).astype(np.int64)
    # Locked/crossed quotes (<= 0) are artefacts of sampling bid and ask at different moments,
    # not a tradable state; they are left out rather than folded into 1 tick.
    s = s[s >= 1]
    if len(s) == 0:
        raise ValueError("no positive spreads to measure")
    counts = np.array([(s == 1).sum(), (s == 2).sum(), (s >= 3).sum()], dtype=np.float64)
    p = counts / counts.sum()
    return tuple(float(x) for x in p)


def read_lean_quote_minutes(path: str | Path) -> pd.DataFrame:
    """Bid and ask closes from a QuantConnect Lean minute quote file.

    Layout: ``ms_since_midnight,bid_open,bid_high,bid_low,bid_close,bid_size,ask_open,ask_high,
    ask_low,ask_close,ask_size``; minutes with a missing side are dropped.
    """
    q = pd.read_csv(path, header=None, usecols=[0, 4, 9], names=["ms", "bid", "ask"], engine="c")
    return q.dropna().reset_index(drop=True)


def _tick_rate_by_hour(ticks: pd.DataFrame, spec: InstrumentSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trades per minute for each local hour the ticks cover well, NaN elsewhere.

    Counts run over every in-session minute the file spans, empty ones included. Also returns
    the local minute of day and trade count of each of those minutes.
    """
    ts = ticks["ts_ns"].to_numpy()
    minute = ts // _NS_PER_MINUTE
    span = np.arange(minute.min(), minute.max() + 1) * _NS_PER_MINUTE
    span = span[_in_session(span, spec)]
    counts = pd.Series(np.ones(len(ts))).groupby(minute).sum().reindex(span // _NS_PER_MINUTE, fill_value=0).to_numpy()
    hours = _local_hour(span, spec.hours.tz)
    rate = np.full(_HOURS, np.nan)
    for h in range(_HOURS):
        sel = hours == h
        if sel.sum() >= _MIN_COVERED_MINUTES:
            rate[h] = counts[sel].mean()
    return rate, _local_minute_of_day(span, spec.hours.tz), counts


@dataclass(frozen=True, slots=True)
class _MinuteProfile:
    volume_by_hour: np.ndarray  # mean bar volume per local hour, NaN where no bars
    volume_by_minute_of_day: pd.Series
    changes: np.ndarray  # consecutive 1-minute close changes, ticks
    var_rate_exponent: float


def _minute_profile(bars: pd.DataFrame, spec: InstrumentSpec, tick: float) -> _MinuteProfile:
    start_ns = bars["ts_ns"].to_numpy() - _NS_PER_MINUTE
    hours = _local_hour(start_ns, spec.hours.tz)
    vol = pd.Series(bars["volume"].to_numpy().astype(np.float64))
    by_hour = vol.groupby(hours).mean()
    volume_by_hour = np.full(_HOURS, np.nan)
    volume_by_hour[by_hour.index.to_numpy()] = by_hour.to_numpy()

    changes = _one_minute_changes(bars, tick)
    consecutive = np.diff(bars["ts_ns"].to_numpy()) == _NS_PER_MINUTE
    # Variance against activity: slope of log variance on log volume across the hours.
    var_h = pd.Series(changes).groupby(hours[1:][consecutive]).var()
    var_h = var_h[(var_h > 0) & np.isfinite(var_h)]
    exponent = 1.0
    if len(var_h) >= 4:
        slope = np.polyfit(np.log(by_hour.reindex(var_h.index).to_numpy()), np.log(var_h.to_numpy()), 1)[0]
        exponent = float(np.clip(slope, 0.0, 2.0))
    by_minute = vol.groupby(_local_minute_of_day(start_ns, spec.hours.tz)).mean()
    return _MinuteProfile(volume_by_hour, by_minute, changes, exponent)


def calibrate_from_files(
    tick_file: str | Path | None = None,
    minute_file: str | Path | None = None,
    quote_minute_files: Iterable[str | Path] = (),
    *,
    root: str | None = None,
    mean_trade_size: float | None = None,
    spread_ticks_p: tuple[float, ...] | None = None,
    master: InstrumentMaster | None = None,
) -> Calibration:
    """Measure a :class:`Calibration` from real NT8 files.

    Parameters
    ----------
    tick_file
        NT8 tick or tick-replay file: tick rate by hour for the hours it covers (at least 50
        minutes), spread when it has bid/ask, trade size when its volumes are real (not all 1).
    minute_file
        NT8 1-minute bars: ``minute_vol_ticks`` (consecutive in-session bars only), the volume
        profile by hour and the variance-vs-activity exponent. With a tick file too, hours the
        tick file does not cover get ``volume[h] * ticks_per_volume``, the ratio measured over the
        minutes of day both files share, and without real sizes ``mean_trade_size`` is
        ``1 / ticks_per_volume``.
    quote_minute_files
        Lean minute quote files (see :func:`read_lean_quote_minutes`) for the spread when the
        tick file has no quotes.
    root
        Instrument root; taken from the file names when None.
    mean_trade_size, spread_ticks_p
        Used only when the files cannot measure them.
    master
        Instrument master for session hours and tick size (default master when None).

    Returns
    -------
    Calibration

    Raises
    ------
    ValueError
        When a figure can be neither measured nor taken from the keyword arguments.
    """
    master = master or InstrumentMaster.default()
    quote_files = [Path(f) for f in quote_minute_files]
    root = root or _root_of(tick_file) or _root_of(minute_file)
    if root is None:
        raise ValueError("cannot tell the instrument: pass root= or name the files like 'ES 12-23.Last.txt'")
    spec = master.resolve(root)
    sources: list[str] = []

    ticks: pd.DataFrame | None = None
    bars: pd.DataFrame | None = None
    if tick_file is not None:
        ticks = read_nt8(tick_file)
        if ticks.attrs["format"] not in (Nt8Format.TICK.value, Nt8Format.TICK_REPLAY.value):
            raise ValueError(f"{tick_file} is a {ticks.attrs['format']} file, not ticks")
        ticks = ticks[_in_session(ticks["ts_ns"].to_numpy(), spec)].reset_index(drop=True)
        sources.append(f"ticks {Path(tick_file).name}")
    if minute_file is not None:
        bars = read_nt8(minute_file)
        if bars.attrs["format"] != Nt8Format.MINUTE.value:
            raise ValueError(f"{minute_file} is a {bars.attrs['format']} file, not minute bars")
        # A bar stamped t covers [t - 1 min, t): judge the session by its start. This drops the
        # weekend and halt "ghost" bars NT8 exports contain.
        bars = bars[_in_session(bars["ts_ns"].to_numpy() - _NS_PER_MINUTE, spec)].reset_index(drop=True)
        sources.append(f"minutes {Path(minute_file).name}")
    if (ticks is None or ticks.empty) and (bars is None or bars.empty):
        raise ValueError("pass a tick_file or a minute_file with in-session data")

    prices = [ticks["price"].to_numpy()] if ticks is not None else []
    prices += [bars[c].to_numpy() for c in ("open", "high", "low", "close")] if bars is not None else []
    tick = _grid_tick(np.concatenate(prices), spec.tick_size)
    start_price = float(bars["close"].iloc[-1]) if bars is not None and len(bars) else float(ticks["price"].iloc[-1])  # type: ignore[index]

    tick_rate = np.full(_HOURS, np.nan)
    ticks_per_volume: float | None = None
    real_sizes = False
    if ticks is not None and len(ticks):
        tick_rate, covered_minutes, covered_counts = _tick_rate_by_hour(ticks, spec)
        real_sizes = bool((ticks["volume"].to_numpy() != 1).any())

    profile = _minute_profile(bars, spec, tick) if bars is not None and len(bars) else None
    if profile is not None and ticks is not None and len(ticks):
        by_minute = profile.volume_by_minute_of_day
        shared = np.isin(covered_minutes, by_minute.index.to_numpy())
        volume = by_minute.reindex(covered_minutes[shared]).to_numpy().sum()
        if volume > 0:
            ticks_per_volume = float(covered_counts[shared].sum() / volume)

    changes = profile.changes if profile is not None else _one_minute_changes(ticks_to_minute_bars(ticks), tick)
    if len(changes) < 30:
        raise ValueError(f"only {len(changes)} consecutive 1-minute changes: too few to measure volatility")

    if real_sizes:
        size = float(ticks["volume"].mean())  # type: ignore[index]
    elif ticks_per_volume:
        size = 1.0 / ticks_per_volume
    elif mean_trade_size is not None:
        size = float(mean_trade_size)
        sources.append(f"mean_trade_size {size:g} given")
    else:
        raise ValueError("trade size not measurable (no sizes in the tick file, no minute file): pass mean_trade_size=")

    volume_by_hour = profile.volume_by_hour if profile is not None else np.full(_HOURS, np.nan)
    per_contract = ticks_per_volume if ticks_per_volume else 1.0 / size
    rate = np.where(np.isnan(tick_rate), np.nan_to_num(volume_by_hour * per_contract), tick_rate)
    if profile is None:
        missing = _open_hours(spec) - set(np.flatnonzero(~np.isnan(tick_rate)).tolist())
        if missing:
            raise ValueError(f"the tick file does not cover local hours {sorted(missing)}: pass a minute_file too")

    if ticks is not None and np.isfinite(ticks["bid"].to_numpy()).any():
        spread = _spread_probabilities((ticks["ask"].to_numpy() - ticks["bid"].to_numpy()) / tick)
    elif quote_files:
        quotes = pd.concat([read_lean_quote_minutes(f) for f in quote_files], ignore_index=True)
        spread = _spread_probabilities((quotes["ask"].to_numpy() - quotes["bid"].to_numpy()) / tick)
        sources.append(f"{len(quote_files)} Lean quote-minute files")
    elif spread_ticks_p is not None:
        spread = spread_ticks_p
        sources.append("spread given")
    else:
        raise ValueError("no quotes to measure the spread: pass quote_minute_files= or spread_ticks_p=")

    return Calibration(
        tick_size=tick,
        start_price=start_price,
        ticks_per_minute=tuple(round(float(r), 2) for r in rate),
        minute_vol_ticks=round(float(np.std(changes, ddof=1)), 3),
        spread_ticks_p=tuple(round(p, 5) for p in spread),
        mean_trade_size=round(size, 2),
        var_rate_exponent=round(profile.var_rate_exponent, 3) if profile is not None else 1.0,
        source="; ".join(sources),
    )


def _open_hours(spec: InstrumentSpec) -> set[int]:
    """Local clock hours in which the session is open at some point of a normal week."""
    hours = spec.hours
    out: set[int] = set()
    monday = dt.datetime(2024, 1, 8)  # a week without DST changes or holidays that matter here
    for day in range(7):
        for h in range(_HOURS):
            for minute in (0, 30, 59):
                if hours.is_open_local(monday + dt.timedelta(days=day, hours=h, minutes=minute)):
                    out.add(h)
    return out


def measure_correlation(minute_file_a: str | Path, minute_file_b: str | Path) -> float:
    """Correlation of 1-minute close-to-close changes over the in-session minutes two files share."""
    master = InstrumentMaster.default()
    frames = []
    for path in (minute_file_a, minute_file_b):
        bars = read_nt8(path)
        spec = master.resolve(instrument_from_filename(path))
        bars = bars[_in_session(bars["ts_ns"].to_numpy() - _NS_PER_MINUTE, spec)]
        frames.append(bars[["ts_ns", "close"]])
    both = frames[0].merge(frames[1], on="ts_ns", suffixes=("_a", "_b"))
    consecutive = np.diff(both["ts_ns"].to_numpy()) == _NS_PER_MINUTE
    a = np.diff(both["close_a"].to_numpy())[consecutive]
    b = np.diff(both["close_b"].to_numpy())[consecutive]
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

# Measured by `.venv/bin/python -m bridge.data.synthetic ../shared/data` (see _measure_all); its
# output is pasted below. Sources and figures:
#   ES : ticks "ES 06-18.Last.txt.gz" (2018-05-07 08:30-12:00 CT, no sizes) + minutes "ES 12-23"
#        (2023-10-10..11-20, in-session bars only) + front-month Lean ES quote minutes (16 days
#        of 2013 and 2020, 19,643 minutes). Hours 9-11 CT are measured tick rates (424.73,
#        290.97, 216.17 per minute); the other hours are ES 12-23 mean minute volume x 0.0935
#        ticks per contract, the ratio over the minutes of day both files share, which also gives
#        the mean trade size 1 / 0.0935 = 10.69 contracts (2018 trades against 2023 volume: an
#        estimate, the files hold no trade sizes). Spread at minute closes: 1 tick 99.34 %,
#        2 ticks 0.62 %, 3+ 0.04 % (locked/crossed minute closes, 0.2 %, left out).
#        1-minute change std 4.044 ticks over 40,664 consecutive in-session minutes.
#   NQ, MES, MYM: their own 12-23 minute files for start price, 1-minute std (17.489, 4.062,
#        7.378 ticks), variance exponent and hourly volume; with no ticks here, trades per
#        minute = volume / ES's 10.69 contracts per trade (an assumption). MES spread = ES's
#        (same book by arbitrage, same tick); NQ and MYM spreads are assumptions (their ticks
#        are 0.16 and 0.29 bp of price against ES's 0.55 bp, so their books are wider in
#        ticks): NQ (0.70, 0.22, 0.08), MYM (0.80, 0.16, 0.04).
# Derived, not measured:
#   YM  = MYM's figures (same index and tick); YM's trade count assumed equal to MYM's.
#   MNQ = NQ's figures, trade rate x 0.580 (the MES/ES mean minute volume ratio, 740.4 / 1277.3,
#         in the 12-23 files).
#   RTY = ES's figures (RTY's tick 0.10 is ~0.55 bp of ~1,800, like ES's 0.25 of 4,500, so the
#         volatility in ticks carries over), start price 1,800 (approximate late-2023 level),
#         trade rate x 0.1 (RTY trades roughly a tenth of ES's contracts: an assumption), spread
#         (0.85, 0.12, 0.03) assumed.
#   M2K = RTY's figures, trade rate x 0.580 like MNQ.
# 1-minute change correlations (measure_correlation on the 12-23 files, 38-40k shared minutes):
#   ES/NQ 0.9073, ES/MES 0.9765, ES/MYM 0.8790, NQ/MES 0.9055, NQ/MYM 0.7153, MES/MYM 0.8761.

# fmt: off
_MEASURED: dict[str, Calibration] = {
    "ES": Calibration(
        tick_size=0.25,
        start_price=4563.25,
        ticks_per_minute=(
            10.12, 15.12, 33.66, 31.68, 27.46, 27.22, 36.99, 101.08, 345.59, 424.73, 290.97, 216.17,
            277.24, 248.33, 418.76, 110.97, 0.0, 14.81, 11.12, 14.71, 13.43, 10.13, 7.96, 7.05,
        ),
        minute_vol_ticks=4.044,
        spread_ticks_p=(0.99337, 0.00622, 0.00041),
        mean_trade_size=10.69,
        var_rate_exponent=0.729,
        source="measured: ticks ES 06-18.Last.txt.gz; minutes ES 12-23.Last.txt; 16 Lean quote-minute files",
    ),
    "NQ": Calibration(
        tick_size=0.25,
        start_price=16070.0,
        ticks_per_minute=(
            5.95, 8.79, 17.46, 17.2, 13.92, 13.72, 17.79, 44.43, 154.36, 175.31, 119.08, 100.53,
            106.38, 95.95, 118.91, 29.27, 0.0, 8.55, 6.04, 8.24, 7.5, 5.69, 4.68, 4.46,
        ),
        minute_vol_ticks=17.489,
        spread_ticks_p=(0.7, 0.22, 0.08),
        mean_trade_size=10.69,
        var_rate_exponent=0.915,
        source="measured: minutes NQ 12-23.Last.txt; trade size from ES; spread assumed",
    ),
    "MES": Calibration(
        tick_size=0.25,
        start_price=4560.25,
        ticks_per_minute=(
            8.47, 12.36, 22.87, 22.2, 18.26, 18.49, 23.87, 66.65, 199.17, 276.02, 180.18, 154.67,
            162.08, 149.4, 168.04, 29.71, 0.0, 11.61, 9.29, 12.63, 11.13, 8.6, 6.75, 6.0,
        ),
        minute_vol_ticks=4.062,
        spread_ticks_p=(0.99337, 0.00622, 0.00041),
        mean_trade_size=10.69,
        var_rate_exponent=0.816,
        source="measured: minutes MES 12-23.Last.txt; trade size and spread from ES",
    ),
    "MYM": Calibration(
        tick_size=1.0,
        start_price=35197.0,
        ticks_per_minute=(
            0.87, 1.47, 2.5, 2.94, 2.22, 2.53, 2.89, 6.88, 25.25, 22.7, 14.98, 13.22,
            13.94, 11.81, 13.52, 4.26, 0.0, 1.47, 1.04, 1.18, 1.05, 0.95, 0.74, 0.68,
        ),
        minute_vol_ticks=7.378,
        spread_ticks_p=(0.8, 0.16, 0.04),
        mean_trade_size=10.69,
        var_rate_exponent=0.91,
        source="measured: minutes MYM 12-23.Last.txt; trade size from ES; spread assumed",
    ),
}
# fmt: on

_MICRO_TO_FULL_VOLUME = 0.580  # MES / ES mean minute volume in the 12-23 files


def _scaled(base: Calibration, rate_factor: float, source: str, **changes: object) -> Calibration:
    rates = tuple(round(r * rate_factor, 2) for r in base.ticks_per_minute)
    return replace(base, ticks_per_minute=rates, source=source, **changes)  # type: ignore[arg-type]


_RTY = _scaled(
    _MEASURED["ES"],
    0.1,
    "derived from ES: tick 0.10, price 1,800 and trade rate x0.1 assumed",
    tick_size=0.1,
    start_price=1800.0,
    spread_ticks_p=(0.85, 0.12, 0.03),
)

CALIBRATIONS: dict[str, Calibration] = {
    **_MEASURED,
    "YM": replace(_MEASURED["MYM"], source="derived: MYM's figures (same index and tick)"),
    "MNQ": _scaled(_MEASURED["NQ"], _MICRO_TO_FULL_VOLUME, "derived: NQ's figures, trade rate x MES/ES volume ratio"),
    "RTY": _RTY,
    "M2K": _scaled(_RTY, _MICRO_TO_FULL_VOLUME, "derived: RTY's figures, trade rate x MES/ES volume ratio"),
}
"""Generator figures per root: ES, NQ, MES, MYM measured (see the comment above), the rest derived."""

CORRELATIONS: dict[frozenset[str], float] = {
    frozenset(("SP", "NDX")): 0.9073,
    frozenset(("SP", "DJ")): 0.8790,
    frozenset(("NDX", "DJ")): 0.7153,
}
"""1-minute change correlation between index families, measured on the 12-23 minute files."""

SAME_INDEX_CORRELATION = 0.9765
"""ES vs MES measured: two contracts on one index, apart only by their own bid/ask noise."""

# Russell 2000 has no file here: it takes the lowest measured cross-index figure for every pair.
_UNMEASURED_FAMILY_CORRELATION = 0.7153

FAMILY = {"ES": "SP", "MES": "SP", "NQ": "NDX", "MNQ": "NDX", "YM": "DJ", "MYM": "DJ", "RTY": "R2K", "M2K": "R2K"}


def default_correlation(roots: Sequence[str]) -> np.ndarray:
    """Target 1-minute change correlation matrix for roots, from the measured family table."""
    n = len(roots)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            fa, fb = FAMILY.get(roots[i]), FAMILY.get(roots[j])
            if fa is None or fb is None:
                raise ValueError(f"no correlation known for {roots[i]}/{roots[j]}: pass correlation=")
            if fa == fb:
                rho = SAME_INDEX_CORRELATION
            else:
                rho = CORRELATIONS.get(frozenset((fa, fb)), _UNMEASURED_FAMILY_CORRELATION)
            out[i, j] = out[j, i] = rho
    return out


# ----------------------------------------------------------------------------------------------
# Generating
# ----------------------------------------------------------------------------------------------


def _decimals(tick: float) -> int:
    exponent = decimal.Decimal(repr(tick)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _nearest_correlation(c: np.ndarray) -> np.ndarray:
    # Clip negative eigenvalues and rescale to a unit diagonal: enough for the small matrices
    # here, where de-noised targets can tip a near-singular matrix just past positive definite.
    w, v = np.linalg.eigh((c + c.T) / 2)
    fixed = (v * np.clip(w, 1e-6, None)) @ v.T
    d = np.sqrt(np.diag(fixed))
    return fixed / np.outer(d, d)


def _to_utc_ns(start: dt.datetime) -> int:
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    delta = start.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta // dt.timedelta(microseconds=1)) * 1000


def generate_session(
    instruments: list[str],
    start: dt.datetime,
    minutes: int,
    seed: int,
    correlation: float | None = None,
    *,
    calibrations: dict[str, Calibration] | None = None,
    master: InstrumentMaster | None = None,
) -> dict[str, pd.DataFrame]:
    """Generate a correlated tick-replay session for one or more instruments.

    Parameters
    ----------
    instruments
        NT8 names, e.g. ``["ES 12-23", "NQ 12-23"]``; each root needs a calibration.
    start
        Session start; a naive datetime is read as UTC.
    minutes
        Length in minutes (closed minutes produce no ticks and no price change).
    seed
        Same seed, same arguments -> identical frames.
    correlation
        Target correlation of 1-minute price changes for every pair; None uses
        :func:`default_correlation` (ES/NQ 0.907 measured). The efficient prices get a slightly
        higher correlation so that, after bid/ask bounce and tick rounding, measured 1-minute
        changes land on the target, as they do in the real files the target came from.
    calibrations, master
        Overrides of :data:`CALIBRATIONS` and the default instrument master.

    Returns
    -------
    dict[str, pandas.DataFrame]
        Per instrument name: ``ts_ns``, ``price``, ``bid``, ``ask``, ``volume`` as
        :func:`bridge.data.nt8files.read_nt8` returns for tick replay; prices on the tick grid,
        ``bid < ask``, ``price`` equal to one of them, ``volume >= 1``, ``ts_ns`` non-decreasing
        multiples of 100 ns.
    """
    if not instruments:
        raise ValueError("instruments is empty")
    if len(set(instruments)) != len(instruments):
        raise ValueError(f"instruments has duplicates: {instruments}")
    if not isinstance(minutes, int) or minutes < 1 or minutes > 31 * 24 * 60:
        raise ValueError(f"minutes must be an integer 1 .. {31 * 24 * 60}, got {minutes!r}")
    calibrations = CALIBRATIONS if calibrations is None else calibrations
    master = master or InstrumentMaster.default()
    n = len(instruments)
    roots = [parse_contract_name(name)[0] for name in instruments]
    specs = [master.resolve(name) for name in instruments]
    missing = [r for r in roots if r not in calibrations]
    if missing:
        raise ValueError(
            f"no calibration for {', '.join(missing)}; calibrated roots: {', '.join(sorted(calibrations))}"
        )
    cals = [calibrations[r] for r in roots]

    if correlation is None:
        target = default_correlation(roots)
    else:
        if not -1.0 <= correlation <= 1.0:
            raise ValueError(f"correlation must be within -1 .. 1, got {correlation}")
        if n > 2 and correlation < -1.0 / (n - 1):
            raise ValueError(f"with {n} instruments a common correlation must be >= {-1.0 / (n - 1):.3f}")
        target = np.full((n, n), float(correlation))
        np.fill_diagonal(target, 1.0)

    start_ns = _to_utc_ns(start)
    minute_starts = start_ns + np.arange(minutes, dtype=np.int64) * _NS_PER_MINUTE
    seconds = minutes * 60

    # Efficient-price variance per minute, net of the bounce/rounding noise that measured
    # minute changes include twice (once at each end); at least a quarter of the total. It is
    # spread over the day in proportion to activity (ticks_per_minute ** exponent), averaging
    # to the calibrated figure over the hours the market is open.
    total_var = np.array([c.minute_vol_ticks**2 for c in cals])
    latent_var = np.maximum(total_var - 2.0 * np.array([c.mean_spread_noise for c in cals]), 0.25 * total_var)
    rate = np.zeros((n, minutes))
    minute_var = np.zeros((n, minutes))
    for i, (spec, cal) in enumerate(zip(specs, cals, strict=True)):
        clock = SessionClock(spec.hours)
        is_open = np.fromiter((clock.is_open(int(t)) for t in minute_starts), dtype=bool, count=minutes)
        hour = _local_hour(minute_starts, spec.hours.tz)
        rates = np.asarray(cal.ticks_per_minute)
        weight = rates**cal.var_rate_exponent
        rate[i] = rates[hour] * is_open
        minute_var[i] = latent_var[i] * weight[hour] / weight[rates > 0].mean() * is_open

    # Per-second shocks are correlated with a latent matrix chosen so that the correlation of
    # *measured* 1-minute close changes, pooled over this session's minutes, hits the target.
    # Three things pull the measured figure below the latent one, in the real files as here:
    # bid/ask bounce and rounding (independent noise 2 * mean_spread_noise per change), last
    # trades that fall at different moments before each minute's end (E|da - db| of two
    # exponential waits: 1/la + 1/lb - 2/(la + lb) minutes of the minute not shared), and
    # activity profiles that do not line up. Divide them out.
    noise = 2.0 * np.array([c.mean_spread_noise for c in cals])
    open_minutes = (minute_var > 0).sum(axis=1)
    variance = minute_var.sum(axis=1) + noise * open_minutes
    sd = np.sqrt(minute_var)
    shared = np.eye(n)
    for a in range(n):
        for b in range(a + 1, n):
            la, lb = rate[a], rate[b]
            both = (la > 0) & (lb > 0)
            lag = np.ones(minutes)
            lag[both] = 1 / la[both] + 1 / lb[both] - 2 / (la[both] + lb[both])
            cov = (sd[a] * sd[b] * np.clip(1.0 - lag, 0.0, 1.0)).sum()
            shared[a, b] = shared[b, a] = cov / math.sqrt(variance[a] * variance[b]) if cov > 0 else 1.0
    latent_corr = np.clip(target / shared, -0.999, 0.999)
    np.fill_diagonal(latent_corr, 1.0)
    chol = np.linalg.cholesky(_nearest_correlation(latent_corr))

    seeds = np.random.SeedSequence(seed).spawn(n + 1)
    z = np.random.default_rng(seeds[0]).standard_normal((seconds, n)) @ chol.T

    out: dict[str, pd.DataFrame] = {}
    for i, (name, cal) in enumerate(zip(instruments, cals, strict=True)):
        rng = np.random.default_rng(seeds[i + 1])
        step_sd = np.repeat(np.sqrt(minute_var[i] / 60.0), 60)
        x = cal.start_price / cal.tick_size + np.cumsum(step_sd * z[:, i])

        spread = rng.choice(3, size=seconds, p=np.asarray(cal.spread_ticks_p) / sum(cal.spread_ticks_p)) + 1
        bid_k = np.floor(x - spread / 2.0 + 0.5).astype(np.int64)
        ask_k = bid_k + spread

        counts = rng.poisson(rate[i])
        total = int(counts.sum())
        minute_of_tick = np.repeat(np.arange(minutes, dtype=np.int64), counts)
        offsets = rng.integers(0, _NS_PER_MINUTE // 100, size=total, dtype=np.int64) * 100
        ts = np.sort(minute_starts[minute_of_tick] + offsets)
        second = (ts - start_ns) // _NS_PER_SECOND
        at_ask = rng.integers(0, 2, size=total).astype(bool)
        bid_t, ask_t = bid_k[second], ask_k[second]
        price_k = np.where(at_ask, ask_t, bid_t)
        if cal.mean_trade_size > 1:
            volume = rng.geometric(1.0 / cal.mean_trade_size, size=total).astype(np.int64)
        else:
            volume = np.ones(total, dtype=np.int64)

        # Round to the tick's decimals so each price is the float that its text reads back as:
        # on the grid and exact through write_nt8/read_nt8.
        places = _decimals(cal.tick_size)
        frame = pd.DataFrame(
            {
                "ts_ns": ts,
                "price": np.round(price_k * cal.tick_size, places),
                "bid": np.round(bid_t * cal.tick_size, places),
                "ask": np.round(ask_t * cal.tick_size, places),
                "volume": volume,
            }
        )
        frame.attrs.update({"instrument": name, "format": Nt8Format.TICK_REPLAY.value, "synthetic": True, "seed": seed})
        out[name] = frame
    return out


# ----------------------------------------------------------------------------------------------
# Regenerating the table
# ----------------------------------------------------------------------------------------------


def _front_month_quote_files(folder: Path) -> list[Path]:
    """Per day the Lean ES quote file of the contract that traded most that day (the front month)."""
    by_day: dict[str, list[Path]] = {}
    for f in sorted(folder.glob("*_es_minute_quote_*.csv")):
        by_day.setdefault(f.name[:8], []).append(f)

    def traded(quote_file: Path) -> float:
        trade_file = quote_file.with_name(quote_file.name.replace("_quote_", "_trade_"))
        if not trade_file.exists():
            return 0.0
        return float(pd.read_csv(trade_file, header=None, usecols=[5]).iloc[:, 0].sum())

    return [max(files, key=traded) for files in by_day.values()]


def _measure_all(data: Path) -> tuple[dict[str, Calibration], dict[str, float]]:
    nt8 = data / "nt8"
    quotes = _front_month_quote_files(data / "lean-es-minute")
    es = calibrate_from_files(nt8 / "ES 06-18.Last.txt.gz", nt8 / "ES 12-23.Last.txt", quotes)
    measured = {"ES": es}
    assumed_spread = {"NQ": (0.70, 0.22, 0.08), "MES": es.spread_ticks_p, "MYM": (0.80, 0.16, 0.04)}
    for root in ("NQ", "MES", "MYM"):
        measured[root] = calibrate_from_files(
            minute_file=nt8 / f"{root} 12-23.Last.txt",
            mean_trade_size=es.mean_trade_size,
            spread_ticks_p=assumed_spread[root],
        )
    names = ["ES", "NQ", "MES", "MYM"]
    corr = {
        f"{a}/{b}": round(measure_correlation(nt8 / f"{a} 12-23.Last.txt", nt8 / f"{b} 12-23.Last.txt"), 4)
        for k, a in enumerate(names)
        for b in names[k + 1 :]
    }
    return measured, corr


def main(argv: list[str] | None = None) -> int:
    """Print the measured calibrations and correlations for pasting into this module."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the shared data folder (holding nt8/ and lean-es-minute/)")
    args = parser.parse_args(argv)
    measured, corr = _measure_all(args.data)
    for root, cal in measured.items():
        print(f"{root}:")
        for f in fields(cal):
            print(f"    {f.name} = {getattr(cal, f.name)!r}")
    print("correlations:", corr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
