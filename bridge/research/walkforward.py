"""Walk-forward optimisation: choose a strategy's parameters on each training window, trade them on the window
that follows, and stitch those test windows into one out-of-sample record.

For every window and every parameter set the research engine (``run_research``) plays the training slice; the
set with the best training Sharpe ratio (the first in grid order among equals) is then played over the training
and test slices together with ``portfolio.start_trading`` at the test's start, so the training slice only warms
up features and regimes, as in ``backtest.py``. Every parameter set is also played over the whole span: that
``days x sets`` matrix is what the overfitting statistics (``overfitting.py``) read.

Runs are independent tasks for an executor (``executors.py``): a task names its data files, time bounds and
parameters, never arrays, and each worker process reads the files once (``functools.lru_cache``). Results come
back in task order, so every executor gives the same numbers.

Windows are aligned on UTC midnight before the first event (or on ``--from``), so that a test window is whole
UTC days and its daily returns belong to it alone. Rolling windows (the default) move by the test length and
keep the training length; anchored ones keep the data's start and grow.
"""

from __future__ import annotations

import functools
import math
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from bridge.core.config import Config, build_config, to_toml
from bridge.core.instruments import InstrumentMaster
from bridge.nt8.playback import TickStream, load_stream
from bridge.research.backtest import trades_of
from bridge.research.grid import Grid, apply_params
from bridge.research.inprocess import run_research
from bridge.research.overfitting import deflated_sharpe_of, pbo, per_period_sharpe
from reports.performance import NS_PER_DAY, TradeRecord, daily_returns, summarize, to_jsonable

__all__ = ["RunOutcome", "RunTask", "Window", "WalkForwardError", "make_windows", "parse_length", "run_task",
           "walk_forward"]

NS_PER_HOUR = 3_600 * 1_000_000_000
_UNITS = {"w": 7 * NS_PER_DAY, "d": NS_PER_DAY, "h": NS_PER_HOUR}
Progress = Callable[[int, int], None]


class WalkForwardError(ValueError):
    """A study that cannot run as asked (windows longer than the data, an empty slice); says what to change."""


def parse_length(text: str) -> int:
    """``20d``, ``12h``, ``2w`` (a number and a unit: w, d, h) to nanoseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([wdh])\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise WalkForwardError(f"window length {text!r} is not a positive number of w, d or h (e.g. 20d, 12h)")
    return int(round(float(m.group(1)) * _UNITS[m.group(2)]))


@dataclass(frozen=True)
class Window:
    """One walk-forward step; every bound is UTC epoch ns, each slice is ``[from, to)``."""

    index: int
    train_from: int
    train_to: int
    test_from: int
    test_to: int


def make_windows(origin_ns: int, end_ns: int, train_ns: int, test_ns: int, *, anchored: bool = False) -> list[Window]:
    """The whole windows between ``origin_ns`` and ``end_ns``: the first test starts ``train_ns`` after the origin,
    each next one where the last ended; rolling training windows keep their length, anchored ones start at the
    origin. Test windows never overlap each other or their own training window."""
    if train_ns <= 0 or test_ns <= 0:
        raise WalkForwardError("train and test lengths must be positive")
    out: list[Window] = []
    k = 0
    while True:
        test_from = origin_ns + train_ns + k * test_ns
        test_to = test_from + test_ns
        if test_to > end_ns:
            return out
        out.append(Window(k, origin_ns if anchored else test_from - train_ns, test_from, test_from, test_to))
        k += 1


def iso(ns: int) -> str:
    """UTC ISO 8601 of epoch ns, to the microsecond when it has one (``parse_utc`` reads it back exactly)."""
    t = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ns // 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}" if t.microsecond else "") + "Z"


# --------------------------------------------------------------------------- one run (in a worker)


@dataclass(frozen=True)
class RunTask:
    """One run of the engine, picklable and small: the configuration as TOML text, the files' paths and the
    slice's bounds. ``trade_from`` > ``start``: what comes before only warms up (``portfolio.start_trading``)."""

    kind: str                               # "train", "test" or "full"
    window: int                             # the window's index; -1 for a full-span run
    set_index: int
    params: tuple[tuple[str, Any], ...]
    config_toml: str
    files: tuple[str, ...]
    start: int
    end: int
    trade_from: int


@dataclass(frozen=True)
class RunOutcome:
    trades: tuple[TradeRecord, ...]         # entered at or after trade_from
    events: int
    brackets: int
    open_at_end: int
    elapsed_s: float


@functools.lru_cache(maxsize=2)
def _stream(files: tuple[str, ...]) -> TickStream:
    """The files, read once per process: every task of a study reads the same ones."""
    return load_stream(list(files))


@functools.lru_cache(maxsize=4)
def _base(config_toml: str) -> tuple[Config, InstrumentMaster]:
    from bridge.transport.sidecar import master_for
    config = build_config(tomllib.loads(config_toml), env={})  # env={}: the driver's values, not this host's
    return config, master_for(config)


def run_task(task: RunTask) -> RunOutcome:
    """Play one slice with one parameter set; module level, so any executor can ship it."""
    config, master = _base(task.config_toml)
    config = apply_params(config, dict(task.params))
    if task.trade_from > task.start:
        config = replace(config, portfolio=replace(config.portfolio, start_trading=iso(task.trade_from)))
    stream = _stream(task.files).between(task.start, task.end)
    if not len(stream):
        return RunOutcome((), 0, 0, 0, 0.0)
    result = run_research(stream, config, master, instance_id=f"optimize-{task.kind}-{task.window}-{task.set_index}")
    trades, still_open = trades_of(result, stream, master)
    return RunOutcome(tuple(t for t in trades if t.entry_ns >= task.trade_from), len(stream), result.brackets,
                      still_open, result.elapsed_s)


# --------------------------------------------------------------------------- the study


@dataclass
class WalkForward:
    """Everything a study measured; ``summary()`` is the JSON the report and ``optimize.json`` show."""

    strategy: str
    files: list[str]
    instruments: list[str]
    train: str
    test: str
    anchored: bool
    equity: float
    grid: Grid
    sets: list[dict[str, Any]]
    origin: int
    end: int
    windows: list[Window]
    train_runs: list[list[RunOutcome]]      # [window][set]
    chosen: list[int]                       # per window
    test_runs: list[RunOutcome]             # per window, the chosen set
    full_runs: list[RunOutcome]             # per set, the whole span
    executor: str = ""
    elapsed_s: float = 0.0

    def _summary(self, trades: Sequence[TradeRecord], start: int, end: int) -> dict[str, Any]:
        return summarize(trades, self.equity, start, end - 1)["total"]  # end - 1: the last day is the day before

    def train_sharpes(self) -> list[list[float]]:
        return [[self._summary(r.trades, w.train_from, w.train_to)["sharpe"] for r in runs]
                for w, runs in zip(self.windows, self.train_runs)]

    def oos_returns(self) -> pd.Series:
        """Daily returns of the stitched test windows: every test trade on one account of ``equity``."""
        trades = [t for r in self.test_runs for t in r.trades]
        return daily_returns(trades, self.equity, self.windows[0].test_from, self.windows[-1].test_to - 1)

    def matrix(self) -> pd.DataFrame:
        """Daily returns of every parameter set over the whole span (rows: UTC weekdays; columns: sets)."""
        return pd.DataFrame({i: daily_returns(list(r.trades), self.equity, self.origin, self.end - 1).to_numpy()
                             for i, r in enumerate(self.full_runs)},
                            index=daily_returns([], self.equity, self.origin, self.end - 1).index)

    def summary(self) -> dict[str, Any]:
        sharpes = self.train_sharpes()
        windows = []
        for w, runs, row, k, test in zip(self.windows, self.train_runs, sharpes, self.chosen, self.test_runs):
            s = self._summary(test.trades, w.test_from, w.test_to)
            windows.append({
                "index": w.index, "train_from": iso(w.train_from), "train_to": iso(w.train_to),
                "test_from": iso(w.test_from), "test_to": iso(w.test_to),
                "train_sharpe": row, "train_trades": [len(r.trades) for r in runs],
                "chosen": k, "chosen_params": self.sets[k],
                "test": {"trades": s["trades"], "net_pnl": s["net_pnl"], "return": s["net_pnl"] / self.equity,
                         "sharpe": s["sharpe"], "max_drawdown": s["max_drawdown"], "open_at_end": test.open_at_end},
            })
        oos = self.oos_returns()
        oos_trades = [t for r in self.test_runs for t in r.trades]
        oos_summary = self._summary(oos_trades, self.windows[0].test_from, self.windows[-1].test_to)
        matrix = self.matrix()
        full = [self._summary(r.trades, self.origin, self.end) for r in self.full_runs]
        trial_sharpes = np.array([per_period_sharpe(matrix[c].to_numpy()) for c in matrix.columns])
        dsr = deflated_sharpe_of(oos.to_numpy(), trial_sharpes)
        p = pbo(matrix.to_numpy())
        tasks = [r for runs in self.train_runs for r in runs] + self.test_runs + self.full_runs
        return to_jsonable({
            "strategy": self.strategy, "files": self.files, "instruments": self.instruments,
            "span": {"from": iso(self.origin), "to": iso(self.end)},
            "train": self.train, "test": self.test, "anchored": self.anchored, "equity": self.equity,
            "grid": {"keys": list(self.grid.keys), "values": [list(v) for v in self.grid.values]},
            "param_sets": self.sets,
            "windows": windows,
            "oos": {"from": iso(self.windows[0].test_from), "to": iso(self.windows[-1].test_to),
                    "days": len(oos), "trades": oos_summary["trades"], "net_pnl": oos_summary["net_pnl"],
                    "return": oos_summary["net_pnl"] / self.equity, "sharpe": oos_summary["sharpe"],
                    "sortino": oos_summary["sortino"], "max_drawdown": oos_summary["max_drawdown"]},
            "full_period": {"sharpe": [s["sharpe"] for s in full], "net_pnl": [s["net_pnl"] for s in full],
                            "trades": [s["trades"] for s in full], "days": len(matrix)},
            "dsr": {"value": dsr.dsr, "sharpe_per_day": dsr.sharpe, "benchmark_sharpe_per_day": dsr.sharpe_benchmark,
                    "trials": dsr.n_trials, "trial_sharpe_variance": dsr.trial_sharpe_variance,
                    "observations": dsr.observations, "skewness": dsr.skewness, "kurtosis": dsr.kurtosis},
            "pbo": {"value": p.pbo, "blocks": p.blocks, "combinations": p.combinations,
                    "oos_loss_share": p.oos_loss_share,
                    "median_logit": float(np.median(p.logits)) if p.logits else math.nan},
            "timing": {"executor": self.executor, "elapsed_s": self.elapsed_s, "tasks": len(tasks),
                       "events": sum(r.events for r in tasks),
                       "engine_s": sum(r.elapsed_s for r in tasks)},
        })


def choose(train_sharpes: Sequence[float]) -> int:
    """The set with the best training Sharpe ratio, the first in grid order among equals; an undefined ratio
    (no trades, no variation) ranks below every defined one."""
    scores = [s if s is not None and math.isfinite(s) else -math.inf for s in train_sharpes]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def walk_forward(files: Sequence[str], config: Config, grid: Grid, strategy: str, *, train: str, test: str,
                 anchored: bool = False, executor: Any, start_ns: int | None = None, end_ns: int | None = None,
                 progress: Progress | None = None) -> WalkForward:
    """Run the study (see the module docstring) on ``executor``; ``config`` is the study's (``study_config``).
    ``start_ns``/``end_ns`` narrow the data to ``[start, end)``; by default the span is the data's, widened to
    whole UTC days."""
    began = time.perf_counter()
    files = tuple(str(f) for f in files)
    try:
        stream = _stream(files)
    except ValueError as exc:  # a file that is not an NT8 export
        raise WalkForwardError(str(exc)) from None
    if not len(stream):
        raise WalkForwardError("no market data in the files")
    from bridge.transport.sidecar import master_for
    master = master_for(config)
    for name in stream.names:  # here, once, rather than in every worker
        try:
            master.resolve(name)
        except ValueError as exc:
            raise WalkForwardError(f"{exc}; declare it in [[instruments]] of the config") from None
    first, last = int(stream.ts_ns[0]), int(stream.ts_ns[-1])
    origin = start_ns if start_ns is not None else first - first % NS_PER_DAY
    end = end_ns if end_ns is not None else last + 1 + (-(last + 1)) % NS_PER_DAY
    if not (origin <= last and end > first and end > origin):
        raise WalkForwardError(f"--from/--to leave no data: the files hold {iso(first)} .. {iso(last)}")
    train_ns, test_ns = parse_length(train), parse_length(test)
    windows = make_windows(origin, end, train_ns, test_ns, anchored=anchored)
    if not windows:
        raise WalkForwardError(f"the span {iso(origin)} .. {iso(end)} is shorter than one training and one test "
                               f"window ({train} + {test}): shorten --train or --test, or give more data")
    sets = grid.sets
    toml = to_toml(config)

    def task(kind: str, w: int, n: int, start: int, stop: int, trade_from: int) -> RunTask:
        return RunTask(kind, w, n, tuple(sets[n].items()), toml, files, start, stop, trade_from)

    first_phase = [task("train", w.index, n, w.train_from, w.train_to, w.train_from)
                   for w in windows for n in range(len(sets))]
    first_phase += [task("full", -1, n, origin, end, origin) for n in range(len(sets))]
    total = len(first_phase) + len(windows)

    def report(offset: int) -> Progress | None:
        return None if progress is None else (lambda done, _n: progress(offset + done, total))

    outcomes = executor.map(run_task, first_phase, progress=report(0))
    per_window = len(sets)
    train_runs = [outcomes[i * per_window:(i + 1) * per_window] for i in range(len(windows))]
    full_runs = outcomes[len(windows) * per_window:]
    study = WalkForward(strategy, list(files), list(stream.names), train, test, anchored, config.sizing.equity,
                        grid, sets, origin, end, windows, train_runs, [], [], full_runs)
    study.chosen = [choose(row) for row in study.train_sharpes()]
    second_phase = [task("test", w.index, k, w.train_from, w.test_to, w.test_from)
                    for w, k in zip(windows, study.chosen)]
    study.test_runs = executor.map(run_task, second_phase, progress=report(len(first_phase)))
    study.executor = getattr(executor, "name", type(executor).__name__)
    study.elapsed_s = time.perf_counter() - began
    return study
