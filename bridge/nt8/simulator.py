"""Playback with the NT8 simulator: the real NinjaScript strategy, compiled with mcs, run under Mono.

pythonnet hosts the .NET runtime in this process (Mono on Linux, .NET Framework on Windows),
loads the two assemblies of ``bridge.nt8.ninjascript.build`` and hands the engine its files and
settings; the playback loop then runs entirely inside .NET (data, lifecycle, fills, the strategy's
ZeroMQ link to the sidecar) and Python reads the report at the end, plus a progress count every
65,536 events. Nothing crosses the language boundary per tick.

Modes:
- lockstep (default): the strategy's link waits for the sidecar's acknowledgement after every
  message, orders act synchronously (NT8's Playback101). The same data gives the same orders and
  fills, run after run (``digest``).
- free-running: no waiting; orders take ``latency_ms`` of event time to reach the exchange, and
  the sidecar's answers arrive when they arrive. Faster, closer to live, not repeatable.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bridge.core.config import Config
from bridge.data.nt8files import instrument_from_filename
from bridge.core.instruments import InstrumentMaster
from bridge.nt8.ninjascript import Build, build

STRATEGY_TYPE = "NinjaTrader.NinjaScript.Strategies.Nt8BridgeStrategy"
_TICKS_PER_NS = 100
_UNIX_EPOCH_TICKS = 621355968000000000
# The link's last line (BridgeLink.Stop, printed by the strategy): its counters, for the report. The
# simulator never references the AddOns assembly, so they travel as NT8 would show them, in the output.
_LINK_STOPPED = re.compile(r"Nt8Bridge link: stopped \(.*\): (?P<link_sent>\d+) sent, (?P<link_received>\d+) received, "
                           r"(?P<link_dropped>\d+) dropped, (?P<link_dropped_stale>\d+) stale dropped, "
                           r"(?P<link_downs>\d+) link downs, (?P<link_protocol_errors>\d+) protocol errors"
                           r"(?:, (?P<link_dropped_order_events>\d+) of the dropped were order events)?"
                           r"(?:, (?P<link_auth_failures>\d+) unauthenticated dropped)?")  # remote mode only

_runtime_lock = threading.Lock()
_loaded: dict[str, Any] = {}


class Nt8SimError(RuntimeError):
    """The simulated playback could not run; the message says what to change."""


@dataclass(frozen=True)
class FaultSpec:
    """Live-broker misbehaviour injected by the simulator (see ninjascript/Simulator/Engine/SimExchange.cs)."""

    seed: int = 1
    reject_rate: float = 0.0
    drop_order_update_rate: float = 0.0
    execution_first_rate: float = 0.0


@dataclass
class Nt8SimResult:
    instruments: list[str]
    instance_id: str
    events: int
    trades: int
    bars: int
    market_data_events: int
    bar_updates: int
    custom_events: int
    elapsed_s: float
    orders: list[dict[str, Any]]
    fills: list[dict[str, Any]]
    realized_pnl: dict[str, float]
    commission: float
    final_position: dict[str, int]
    digest: str
    strategy_error: str | None
    chart_text: list[str]
    prints: list[str]
    counters: dict[str, int] = field(default_factory=dict)
    lockstep: bool = True
    event_micros: Any = None  # numpy float32 array, wall time per event (``timings=True``)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def brackets(self) -> int:
        return sum(1 for o in self.orders if o["name"].endswith(":E"))


def load_runtime(assemblies: Build | None = None) -> dict[str, Any]:
    """Start .NET in this process (once) and load the simulator and the NinjaScript assemblies."""
    with _runtime_lock:
        if _loaded:
            return _loaded
        assemblies = assemblies or build()
        import pythonnet

        try:
            pythonnet.load("mono" if not _is_windows() else "netfx")
        except RuntimeError as exc:
            if "already" not in str(exc).lower():
                raise Nt8SimError(f"cannot start the .NET runtime: {exc} (Linux: apt-get install mono-devel)") from exc
        import clr

        from System.Reflection import Assembly  # type: ignore[import-not-found]

        sim = Assembly.LoadFrom(str(assemblies.simulator))
        script = Assembly.LoadFrom(str(assemblies.ninjascript))
        clr.AddReference(str(assemblies.simulator))
        clr.AddReference(str(assemblies.ninjascript))
        _loaded.update(simulator=sim, ninjascript=script, build=assemblies)
        return _loaded


def _is_windows() -> bool:
    import os
    return os.name == "nt"


def run_nt8sim(files: list[Path], endpoint: str, config: Config, master: InstrumentMaster, *,
               instrument: str | None = None, lockstep: bool = True, window: int = 1, latency_ms: int = 0,
               speed: float = 0.0,
               parameters: dict[str, Any] | None = None, faults: FaultSpec | None = None,
               timezone: str = "UTC", instance_id: str | None = None, max_events: int | None = None,
               progress: Callable[[int, int], None] | None = None, progress_every: int = 1 << 16,
               timings: bool = False) -> Nt8SimResult:
    """Play ``files`` through the compiled strategy against the sidecar at ``endpoint``.

    ``window`` (lockstep): messages that may travel before the strategy waits for the sidecar; it
    always waits at a bar close and on every tick while one of its orders is live. 1 waits on every
    message. Runs are repeatable for a given window.
    ``speed``: N plays N times faster than real time, like NT8's Playback speed; 0 is as fast as
    possible. Free-running, it lets the sidecar's answers arrive while the data moves on.
    ``progress(done, total)`` is called every ``progress_every`` events, from the engine's thread.
    """
    if lockstep and latency_ms:
        raise Nt8SimError("order latency is a free-running setting; lockstep orders act at once like Playback101")
    rt = load_runtime()
    from Nt8Bridge.Simulator import PlaybackEngine, PlaybackOptions  # type: ignore[import-not-found]
    from System import Action, Int64  # type: ignore[import-not-found]

    options = PlaybackOptions()
    options.StrategyTypeName = STRATEGY_TYPE
    options.TimeZoneId = timezone
    fill = config.fill_model
    options.Fill.SlippageTicks = fill.slippage_ticks
    options.Fill.CommissionPerContract = fill.commission_per_contract
    options.Fill.FillLimitOnTouch = fill.fill_limit_on_touch
    options.Fill.OrderLatencyMs = latency_ms
    if speed < 0:
        raise Nt8SimError("the speed must be positive (N times real time), or 0 for as fast as possible")
    options.Speed = float(speed)
    options.RecordEventTimes = timings
    if max_events is not None:
        options.MaxEvents = max_events
    f = faults or FaultSpec()
    options.Faults.Seed, options.Faults.RejectRate = f.seed, f.reject_rate
    options.Faults.DropOrderUpdateRate, options.Faults.ExecutionFirstRate = f.drop_order_update_rate, f.execution_first_rate
    engine = PlaybackEngine(options)

    names: list[str] = []
    for path in files:
        name = instrument if (instrument and len(files) == 1) else instrument_from_filename(path)
        if name is None:
            raise Nt8SimError(f"cannot tell the instrument of {path.name}: name it like 'ES 06-18.Last.txt' or pass --instrument")
        try:
            spec = master.resolve(name)
        except ValueError as exc:
            raise Nt8SimError(str(exc)) from None
        if name not in names:
            names.append(name)
            engine.AddInstrument(name, spec.tick_size, spec.point_value)
        try:
            engine.AddFile(str(path), names.index(name))
        except Exception as exc:  # FeedException: the message names the file and line
            raise Nt8SimError(str(getattr(exc, "Message", exc))) from None
    instance_id = instance_id or f"nt8sim-{uuid.uuid4().hex[:12]}"
    if window < 1:
        raise Nt8SimError("the lockstep window must be at least 1")
    params: dict[str, Any] = {"SidecarEndpoint": endpoint, "InstanceName": instance_id, "Lockstep": lockstep,
                              "LockstepWindow": window,
                              "ExtraInstruments": ",".join(names[1:])}
    params.update(parameters or {})
    for key, value in params.items():
        engine.SetParameter(key, str(value).lower() if isinstance(value, bool) else str(value))
    if progress is not None:
        total = int(engine.EventCount)
        engine.ProgressEvery = progress_every
        engine.Progress = Action[Int64](lambda n: progress(int(n), total))
    try:
        report = engine.Run(rt["ninjascript"])
    except Exception as exc:
        raise Nt8SimError(str(getattr(exc, "Message", exc))) from None
    result = _result(report, names, instance_id)
    if timings:
        result.event_micros = _numpy_copy(report.EventMicrosArray())
    return result


def _numpy_copy(net_array: Any) -> Any:
    """A .NET float[] as a numpy array, copied in one block through the buffer protocol."""
    import numpy as np

    if len(net_array) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.frombuffer(memoryview(net_array), dtype=np.float32).copy()


def _link_counters(prints: list[str]) -> dict[str, int]:
    """link_sent, link_received, link_dropped (queue full, or never sent), link_dropped_stale (queued before a
    session), link_downs, link_protocol_errors, link_dropped_order_events and, in remote mode, link_auth_failures
    (messages from the sidecar dropped as unauthenticated) from the link's stop line; empty
    when the strategy never started its link (or the line was not kept)."""
    for line in reversed(prints):
        m = _LINK_STOPPED.search(line)
        if m:
            return {k: int(v) for k, v in m.groupdict().items() if v is not None}
    return {}


def _result(report: Any, names: list[str], instance_id: str) -> Nt8SimResult:
    orders = [{"ordinal": o.Ordinal, "order_id": o.OrderId, "name": o.Name, "instrument": names[o.Instrument],
               "action": o.Action, "type": o.Type, "quantity": o.Quantity, "filled": o.Filled,
               "limit_price": o.LimitPrice, "stop_price": o.StopPrice, "oco": o.Oco, "state": o.State,
               "avg_fill_price": o.AverageFillPrice, "submitted_at_event": o.SubmittedAtEvent}
              for o in report.OrderArray()]
    fills = [{"execution_id": x.ExecutionId, "order_id": x.OrderId, "order_name": x.OrderName,
              "instrument": names[x.Instrument], "action": x.Action, "price": x.Price, "quantity": x.Quantity,
              "ts_ns": (x.TimeUtcTicks - _UNIX_EPOCH_TICKS) * _TICKS_PER_NS, "event_index": x.EventIndex,
              "position_after": x.PositionAfter, "commission": x.Commission}
             for x in report.FillArray()]
    counters = {"orders_rejected": report.OrdersRejected, "changes_refused": report.ChangesRefused,
                "order_updates_dropped": report.OrderUpdatesDropped, "executions_first": report.ExecutionsFirst,
                "prints_dropped": report.PrintsDropped}
    prints = list(report.PrintArray())
    counters.update(_link_counters(prints))
    return Nt8SimResult(
        instruments=names, instance_id=instance_id, events=report.Events, trades=report.Trades, bars=report.Bars,
        market_data_events=report.MarketDataEvents, bar_updates=report.BarUpdates, custom_events=report.CustomEvents,
        elapsed_s=report.ElapsedSeconds, orders=orders, fills=fills,
        realized_pnl={names[i]: round(report.Realized[i], 2) for i in range(len(names))},
        commission=round(sum(report.Commission[i] for i in range(len(names))), 2),
        final_position={names[i]: int(report.FinalPosition[i]) for i in range(len(names))},
        digest=report.Digest, strategy_error=report.StrategyError, chart_text=list(report.ChartTextArray()),
        prints=prints, counters=counters, lockstep=report.Lockstep,
    )
