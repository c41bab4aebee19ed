"""Backtests: the whole decision path (sidecar, strategies, portfolio, risk) over NT8 data files.

A backtest is a playback (``bridge/nt8/playback.py``) through the sidecar's own decision path: in this
process by default (``bridge/research/inprocess.py``), or against a real sidecar process over ZeroMQ
(``engine="playback"``); the orders and fills are the same, so what is measured is what would trade. Walk-forward, in one command:

1. **calibration** on the data before ``split`` (the earlier window): every strategy trades one
   contract (``sizing.mode = fixed``), and its win rate is measured;
2. **test** on the data from ``split`` on, never seen by step 1: the strategies' stated win
   probabilities are updated with the calibration record (the same Beta update the portfolio uses
   live), sizing is fractional Kelly, and the earlier data only warms up features and regimes
   (``portfolio.start_trading = split``).

Nothing is tuned on the test window. Fills include the fill model's slippage and commission;
a position still open at the end is closed at the last price (and counted in ``open_at_end``).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from bridge.core.config import Config, parse_utc, to_toml
from bridge.core.instruments import InstrumentMaster
from bridge.nt8.fillmodel import Fill
from bridge.nt8.playback import PlaybackResult, TickStream, run_playback
from reports.performance import TradeRecord, summarize, to_jsonable

PRIOR_FIELDS = {"momentum": "momentum_win_prior", "reversion": "reversion_win_prior", "spread": "spread_win_prior"}


@dataclass
class _Lot:
    strategy: str
    bracket: str
    direction: int
    quantity: int
    entry_ns: int
    entry_price: float
    commission: float


def trades_from_fills(fills: list[tuple[int, Fill]], algorithms: dict[str, str], names: list[str],
                      point_values: list[float], last_price: dict[int, float], end_ns: int) -> tuple[list[TradeRecord], int]:
    """Round trips from the broker's fills: each entry opens a lot owned by its bracket's strategy;
    the bracket's stop or target closes it, a FLATTEN closes the instrument's lots oldest first.
    Returns the trades and how many lots were still open at the end (closed at the last price)."""
    lots: dict[int, deque[_Lot]] = defaultdict(deque)
    trades: list[TradeRecord] = []

    def close(lot: _Lot, q: int, ts: int, price: float, commission: float, iid: int) -> None:
        share = lot.commission * q / lot.quantity
        trades.append(TradeRecord(lot.strategy.split("@")[0], names[iid], lot.direction, q, lot.entry_ns, ts,
                                  lot.entry_price, price, point_values[iid], share + commission))
        lot.commission -= share
        lot.quantity -= q

    for ts, f in fills:
        iid = f.instrument_id
        sign = 1 if f.side == "BUY" else -1
        if f.role == "ENTRY":
            lots[iid].append(_Lot(algorithms.get(f.bracket_id, "unknown"), f.bracket_id, sign, f.quantity, ts, f.price,
                                  f.commission))
            continue
        left = f.quantity
        own = [lot for lot in lots[iid] if lot.bracket == f.bracket_id] if f.role != "FLATTEN" else []
        for lot in own or list(lots[iid]):
            if left <= 0:
                break
            if lot.direction == sign or lot.quantity <= 0:
                continue
            q = min(left, lot.quantity)
            close(lot, q, ts, f.price, f.commission * q / f.quantity, iid)
            left -= q
        lots[iid] = deque(lot for lot in lots[iid] if lot.quantity > 0)
    still_open = 0
    for iid, queue in lots.items():
        for lot in queue:
            still_open += 1
            close(lot, lot.quantity, max(end_ns, lot.entry_ns), last_price.get(iid, lot.entry_price), 0.0, iid)
    return trades, still_open


ENGINES = ("research", "playback")


def _run(stream: TickStream, config: Config, master: InstrumentMaster, db_url: str, window: int,
         progress: Callable[[str, int, int], None] | None, phase: str, engine: str) -> PlaybackResult:
    """One playback of the decision path: in this process (research, the default) or against a sidecar process
    over ZeroMQ (playback); the same orders and fills either way (tests/integration/test_playback_digest.py)."""
    on_progress = (lambda n: progress(phase, n, len(stream))) if progress else None
    if engine == "research":
        from bridge.research.inprocess import run_research
        return run_research(stream, config, master, db_url=db_url, window=window, instance_id=f"backtest-{phase}",
                            progress=on_progress)
    from bridge.transport.security import client_secret
    from bridge.transport.sidecar import SidecarProcess
    with tempfile.TemporaryDirectory(prefix="nt8bridge-backtest-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        with SidecarProcess(db_url, path) as proc:
            assert proc.endpoint is not None
            return run_playback(stream, proc.endpoint, config, master, window=window, instance_id=f"backtest-{phase}",
                                progress=on_progress, secret=client_secret(config.security))  # remote mode: its secret


def trades_of(result: PlaybackResult, stream: TickStream, master: InstrumentMaster) -> tuple[list[TradeRecord], int]:
    """The round trips of a playback of ``stream`` (``trades_from_fills``; positions open at the end closed at
    the last price) and how many were still open."""
    pvs = [master.resolve(n).point_value for n in stream.names]
    last: dict[int, float] = {}
    for i in range(len(stream.names)):
        idx = (stream.instrument == i).nonzero()[0]
        if len(idx):
            last[i] = float(stream.price[idx[-1]])
    return trades_from_fills(result.fills_detail, result.bracket_algorithms, stream.names, pvs, last,
                             int(stream.ts_ns[-1]) if len(stream) else 0)


def calibrated_priors(config: Config, trades: list[TradeRecord]) -> tuple[Config, dict[str, Any]]:
    """Each strategy's stated win probability updated with its calibration-window record."""
    k = config.sizing.prior_strength
    changes: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for name, fld in PRIOR_FIELDS.items():
        if name not in config.strategy.strategy_names():
            continue
        own = [t for t in trades if t.strategy == name]
        if name == "spread":  # a spread group is one bet: its legs close together
            by_entry: dict[int, float] = defaultdict(float)
            for t in own:
                by_entry[t.entry_ns] += t.net_pnl
            outcomes = list(by_entry.values())
        else:
            outcomes = [t.net_pnl for t in own]
        wins = sum(1 for x in outcomes if x > 0)
        stated = getattr(config.strategy, fld)
        posterior = (stated * k + wins) / (k + len(outcomes)) if k + len(outcomes) > 0 else stated
        changes[fld] = posterior
        report[name] = {"bets": len(outcomes), "wins": wins,
                        "win_rate": wins / len(outcomes) if outcomes else None,
                        "stated_prior": stated, "calibrated_prior": posterior}
    return replace(config, strategy=replace(config.strategy, **changes)), report


def strategy_status(config: Config) -> dict[str, str]:
    """Each strategy's status line (``ready``, or e.g. the ML strategy's "no model" and why), so that a
    strategy that cannot trade says so in the report instead of showing zero trades without a reason."""
    from strategies.registry import build_strategies
    return {s.name: s.status for s in build_strategies(config.strategy)}


def run_backtest(stream: TickStream, config: Config, master: InstrumentMaster, db_url: str, *,
                 split: str | None = None, window: int = 256, engine: str = "research", out_dir: Path | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Walk-forward backtest; see the module docstring. Returns a JSON-ready report; with ``out_dir``, the test
    window's trades, daily equity and daily returns are written there as CSV files (``write_series``)."""
    if not len(stream):
        raise ValueError("no market data in the files")
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    first, last = int(stream.ts_ns[0]), int(stream.ts_ns[-1])
    report: dict[str, Any] = {"engine": engine, "instruments": stream.names, "files": stream.sources,
                              "strategies": list(config.strategy.strategy_names()),
                              "strategy_status": strategy_status(config),
                              "data_from_ns": first, "data_to_ns": last}
    test_config = config
    start_ns = first
    if split:
        start_ns = parse_utc(split)
        if not first < start_ns < last:
            raise ValueError(f"the split {split} is not inside the data ({_iso(first)} .. {_iso(last)})")
        train = stream.before(start_ns)
        cal_config = replace(config, sizing=replace(config.sizing, mode="fixed", quantity=1),
                             portfolio=replace(config.portfolio, start_trading=""))
        cal = _run(train, cal_config, master, db_url, window, progress, "calibration", engine)
        cal_trades, _ = trades_of(cal, train, master)
        test_config, priors = calibrated_priors(config, cal_trades)
        report["calibration"] = {"from": _iso(first), "to": _iso(start_ns), "sizing": "fixed, 1 contract",
                                 "priors": priors, "summary": to_jsonable(summarize(cal_trades, config.sizing.equity,
                                                                                   first, start_ns))}
        test_config = replace(test_config, portfolio=replace(test_config.portfolio, start_trading=split))
    result = _run(stream, test_config, master, db_url, window, progress, "test", engine)
    trades, still_open = trades_of(result, stream, master)
    trades = [t for t in trades if t.entry_ns >= start_ns]
    sc = test_config.sizing
    report["test"] = {
        "from": _iso(start_ns), "to": _iso(last), "sizing": f"{sc.mode}" + (
            f" ({sc.kelly_fraction:g} Kelly, shrinkage {sc.shrinkage:g}, equity {sc.equity:,.0f})" if sc.mode == "kelly" else ""),
        "costs": {"commission_per_contract_side": test_config.fill_model.commission_per_contract,
                  "slippage_ticks_per_side": test_config.fill_model.slippage_ticks},
        "brackets": result.brackets, "fills": len(result.fills_detail), "open_at_end": still_open,
        "summary": to_jsonable(summarize(trades, sc.equity, start_ns, max(last, start_ns + 1))),
        "priors_used": {name: getattr(test_config.strategy, fld) for name, fld in PRIOR_FIELDS.items()
                        if name in test_config.strategy.strategy_names()},
        "elapsed_s": round(result.elapsed_s, 2), "session_id": result.session_id,
    }
    if out_dir is not None:
        report["files_written"] = write_series(trades, sc.equity, start_ns, max(last, start_ns + 1), out_dir)
    report["trades"] = [to_jsonable({"strategy": t.strategy, "instrument": t.instrument, "direction": t.direction,
                                     "quantity": t.quantity, "entry": _iso(t.entry_ns), "exit": _iso(t.exit_ns),
                                     "entry_price": t.entry_price, "exit_price": t.exit_price,
                                     "net_pnl": t.net_pnl}) for t in trades]
    return report


def write_series(trades: list[TradeRecord], equity: float, start_ns: int, end_ns: int, out_dir: Path) -> dict[str, str]:
    """The test window as files quantstats and empyrical read directly: ``returns.csv`` (date, return: daily simple
    returns of realised equity, one per UTC weekday; ``pd.read_csv(f, index_col=0, parse_dates=True)["return"]``),
    ``equity.csv`` (date, equity) and ``trades.csv`` (one round trip a row, net of costs)."""
    import pandas as pd

    from reports.performance import daily_equity, daily_returns
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.csv" for name in ("returns", "equity", "trades")}
    daily_returns(trades, equity, start_ns, end_ns).to_csv(paths["returns"], index_label="date")
    daily_equity(trades, equity, start_ns, end_ns).to_csv(paths["equity"], index_label="date")
    pd.DataFrame([{"strategy": t.strategy, "instrument": t.instrument, "direction": t.direction,
                   "quantity": t.quantity, "entry": _iso(t.entry_ns), "exit": _iso(t.exit_ns),
                   "entry_price": t.entry_price, "exit_price": t.exit_price, "net_pnl": t.net_pnl} for t in trades],
                 columns=["strategy", "instrument", "direction", "quantity", "entry", "exit", "entry_price",
                          "exit_price", "net_pnl"]).to_csv(paths["trades"], index=False)
    return {name: str(p) for name, p in paths.items()}


def _iso(ns: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
