"""Tick-to-order round trip through the whole sidecar, against a bare pyzmq echo in the same run.

    .venv/bin/python bench/bench_roundtrip.py [--samples N] [--warmup W] [--block B] [--json]
                                              [--no-inprocess] [--inprocess-samples K]
                                              [--config FILE] [--smoke]

Three latencies, all measured by this process with ``time.perf_counter_ns`` around one message:

* echo: a bare pyzmq ROUTER in a child process sends every message straight back; a DEALER
  sends [32 B header, 51 B body] (an encoded TICK) and waits for it. The floor of the transport
  (two TCP hops on loopback, two Python processes), measured with the same poll+recv the client uses.
* tick -> ack: the real sidecar (``SidecarProcess``: ``nt8bridge serve`` in a child process, a fresh
  SQLite file, storage on, the default momentum (channel breakout) strategy), a lockstep ``Nt8Client``; an ordinary
  TICK (no bar closes) until its acknowledging HEARTBEAT: decode, quality gate, market state, bar
  building, storage hand-off, ack, and the client's encode/decode.
* tick -> BRACKET: a TICK that closes a 60 s bar whose close breaks the 20-bar channel, until the
  BRACKET it causes is received (features, strategy, sizing, risk, emit, decision/order records).

The three are interleaved in blocks of ``--block`` samples, so that a burst of load from something
else on the machine hits all of them alike; the first ``--warmup`` samples of each are discarded.
The figures to read are the ratios to the echo measured in the same run: absolute microseconds
depend on the machine and on what else runs on it.

Unless ``--no-inprocess``: the same workloads against a ``SidecarServer`` run in a thread of this
process (labelled IN-PROCESS), only to read the server's own per-stage timings
(``server.timings``), which a child process cannot report. Its round trips share one GIL with the
client and are not comparable with the child-process figures.

The sidecar runs the plumbing configuration (``CONFIG_TOML``, the same as tests/plumbing.toml, with
the momentum strategy named): one contract per bracket, no regime filter. The benchmark times the
path a decision takes, not whether the strategy has an edge; under the production defaults
(fractional Kelly sizing, the regime filter) the momentum strategy may rightly send nothing, and
there would be no tick -> BRACKET to time. ``--config FILE`` runs another configuration instead.

Every breakout must bring a BRACKET: when one does not, the benchmark stops with a message and exit
code 1 rather than time something else. ``--smoke`` runs the same workload at tiny sizes in a few
seconds, to prove that it still produces what it measures (tests/integration/test_benches.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.core.config import StrategyConfig, load_config
from bridge.core.market import BarData
from bridge.nt8.client import ClientError, Nt8Client
from bridge.protocol import codec
from bridge.protocol.messages import (
    Error,
    Execution,
    Heartbeat,
    InstrumentDecl,
    OrderRole,
    Side,
    SubmitBracket,
    Tick,
    TickKind,
)
from bridge.storage.writer import StorageWriter
from bridge.transport.server import SidecarServer
from bridge.transport.sidecar import SidecarProcess, make_strategy_factory, master_for
from strategies.features import FeatureEngine, FeatureWindows

INSTRUMENT = InstrumentDecl("ES 06-18", 0.25, 50.0)
TICK_SIZE = 0.25
NS = 1_000_000_000
MINUTE_NS = 60 * NS
GOAL_RATIO = 5.0  # the goal: p99 within 5x of the bare echo's p99

# The sidecar's configuration, written to a file so that neither the user's config.toml nor
# $NT8BRIDGE_CONFIG changes what is measured: tests/plumbing.toml (one contract per bracket, no regime
# filter) with the momentum strategy named. The bench times the path a decision takes, not the
# strategy's edge; with Kelly sizing and the regime filter the strategy may rightly send nothing.
CONFIG_TOML = ('[strategy]\nnames = "momentum"\n[sizing]\nmode = "fixed"\nquantity = 1\n'
               '[portfolio]\nregime_filter = false\n')

# --smoke: the same workload in a few seconds; options given explicitly still win. Ten brackets per
# session, so that a smoke run opens several sessions as a full run does.
SMOKE = {"samples": 20, "warmup": 5, "block": 10, "inprocess_samples": 20, "brackets_per_session": 10}

# The echo peer runs in its own interpreter so that it never competes with the client for a GIL,
# exactly as the sidecar child does not. Socket options mirror SidecarServer.bind.
ECHO_SCRIPT = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.SNDHWM, 100_000)
s.setsockopt(zmq.RCVHWM, 100_000)
s.bind("tcp://127.0.0.1:*")
print(s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
recv, send = s.recv_multipart, s.send_multipart
while True:
    frames = recv()
    if len(frames) == 2 and frames[1] == b"STOP":
        break
    send(frames)
s.close()
ctx.term()
"""


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def summarize(samples_ns: list[int]) -> dict[str, float]:
    """p50/p99/mean/max in microseconds (nearest-rank percentiles: a reported value was observed)."""
    if not samples_ns:
        return {"n": 0, "p50_us": math.nan, "p99_us": math.nan, "mean_us": math.nan, "max_us": math.nan}
    a = np.sort(np.asarray(samples_ns, dtype=np.int64))

    def rank(q: float) -> float:
        return float(a[min(len(a) - 1, max(0, math.ceil(q / 100 * len(a)) - 1))]) / 1000.0

    return {"n": int(len(a)), "p50_us": rank(50), "p99_us": rank(99), "mean_us": float(a.mean()) / 1000.0,
            "max_us": float(a[-1]) / 1000.0}


# ---------------------------------------------------------------------------------------------
# event time: CME Globex session hours
# ---------------------------------------------------------------------------------------------


def _utc_ns(d: dt.datetime) -> int:
    return int(d.replace(tzinfo=dt.timezone.utc).timestamp()) * NS


def session_days(first: dt.date) -> Callable[[], dt.date]:
    """Successive UTC dates whose 00:00-20:40 UTC lies in one CME Globex session (May 2018: CDT).

    00:00 UTC is 19:00 Chicago the evening before, inside the session that closes at 16:00 CDT
    (21:00 UTC); Saturdays and Sundays UTC fall in the weekend break and are skipped.
    """
    day = first - dt.timedelta(days=1)

    def next_day() -> dt.date:
        nonlocal day
        day += dt.timedelta(days=1)
        while day.weekday() >= 5:
            day += dt.timedelta(days=1)
        return day

    return next_day


# ---------------------------------------------------------------------------------------------
# workloads: each ``sample()`` performs one measured round trip and returns its nanoseconds
# ---------------------------------------------------------------------------------------------


class WorkloadError(RuntimeError):
    """The workload no longer produces what the benchmark measures (a BRACKET per breakout, no reply
    to an ordinary tick): the figures would time something else, so the run stops."""


def bars_before_features(strategy: StrategyConfig) -> int:
    """Closed bars the sidecar's feature engine needs before its first snapshot; no strategy decides
    before it. Asked of the engine itself, built with the config's windows as the pipeline builds it,
    so that a longer window added to the features cannot leave the breakout unseen."""
    engine = FeatureEngine(FeatureWindows(strategy.atr_bars, strategy.lookback_bars, strategy.band_bars,
                                          strategy.er_bars, strategy.vol_bars))
    for k in range(100_000):
        bar = BarData(0, 60, k * MINUTE_NS, (k + 1) * MINUTE_NS, 2700.25, 2700.5, 2700.0, 2700.0, 3, 3)
        if engine.on_bar(bar) is not None:
            return k
    raise WorkloadError("the feature engine gave no snapshot after 100,000 bars")


class EchoWorkload:
    """A DEALER against the bare ROUTER echo child; the frames are a real encoded TICK."""

    def __init__(self, endpoint: str, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        tick = Tick(0, int(TickKind.LAST), 2700.0, 1, 2700.0, 2700.25, 1_525_790_000 * NS, 1_525_790_000 * NS)
        self.frames = codec.encode(tick, 1, time.time_ns())
        assert [len(f) for f in self.frames] == [32, 51], "a TICK is 32 + 51 bytes on the wire"

    def sample(self) -> int:
        sock = self.sock
        t0 = time.perf_counter_ns()
        sock.send_multipart(self.frames, copy=True)
        # poll then recv, as Nt8Client.recv does, so the ratio isolates the sidecar, not the client
        if not sock.poll(10_000):
            raise RuntimeError("the echo child stopped answering")
        sock.recv_multipart()
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.sock.send_multipart([b"STOP"])
        self.sock.close(linger=200)


class TickAckWorkload:
    """Ordinary ticks in lockstep, 1 ms apart in event time from a Tuesday 14:30 UTC.

    60,000 ticks fit in one bar, so almost none closes a bar; the rare one that does is timed
    apart (``bar_close_ns``) rather than mixed into the per-tick figure.
    """

    def __init__(self, endpoint: str, ctx: zmq.Context, instance_id: str = "bench-tick-ack") -> None:
        self.client = Nt8Client(endpoint, instance_id=instance_id, account="Sim101", instruments=[INSTRUMENT],
                                lockstep=True, context=ctx)
        self.client.connect()
        self.ts = _utc_ns(dt.datetime(2018, 5, 8, 14, 30))
        self.i = 0
        self.bar_close_ns: list[int] = []

    def sample(self) -> int:
        self.i += 1
        prev_minute = self.ts // MINUTE_NS
        self.ts += 1_000_000
        # A slow walk over four price levels: trades move a tick now and then, as in a quiet
        # market, and the quote around the trade is one tick wide (neither crossed nor locked).
        price = 2700.0 + TICK_SIZE * ((self.i // 16) % 4)
        tick = Tick(0, int(TickKind.LAST), price, 1, price, price + TICK_SIZE, self.ts, self.ts)
        t0 = time.perf_counter_ns()
        replies = self.client.step(tick)
        elapsed = time.perf_counter_ns() - t0
        if replies:
            raise WorkloadError(f"an ordinary tick was answered with {replies!r}; the workload is wrong")
        if self.ts // MINUTE_NS != prev_minute:
            self.bar_close_ns.append(elapsed)
            return -1  # not an ordinary tick: the caller skips it
        return elapsed

    def close(self) -> None:
        self.client.close()


class BracketWorkload:
    """Each sample: a tick closes a bar that broke the 20-bar channel high; time to the BRACKET.

    Per session (a new HELLO from a new instance id, on the next trading day in event time):
    ``quiet_bars`` quiet bars (range 2700.00-2700.50, so ATR > 0; as many as the features need
    before their first snapshot, ``bars_before_features``: 30 with the default windows, whose
    longest are the 30-bar band, efficiency ratio and volatility), then a staircase: bar j holds
    three trades at 2700.75 + j ticks, 20 s apart (so no gap reaches the 30 s stale-feed limit).
    The first trade of bar j+1 closes bar j, whose close is above every high before it: the
    breakout strategy buys. After the BRACKET, an entry fill and a target fill are reported
    (EXECUTION), which makes the session flat again, as bridge/engine/orders.py defines it, before
    the next bar closes. A session is used for at most ``per_session`` samples (the quiet bars and
    the samples must fit in 00:00-20:45 UTC, since the strategy takes no entry in the last 15
    minutes before the 21:00 UTC close). Keep it to a busy day's worth: the sidecar's cost per
    decision grows with the brackets a session has seen (OrderTracker scans them all), so a larger
    value measures that growth, not a typical tick.
    """

    START_PRICE = 2700.75
    LAST_ENTRY_MINUTE = 20 * 60 + 45  # of the UTC day: 15 minutes before the CME close (CDT)

    def __init__(self, endpoint: str, ctx: zmq.Context, quiet_bars: int, per_session: int = 100,
                 prefix: str = "bench-bracket") -> None:
        if quiet_bars + per_session > self.LAST_ENTRY_MINUTE:
            raise ValueError(f"{quiet_bars} quiet bars and {per_session} breakouts do not fit in one session day")
        self.endpoint = endpoint
        self.ctx = ctx
        self.quiet_bars = quiet_bars
        self.per_session = per_session
        self.prefix = prefix
        self.next_day = session_days(dt.date(2018, 5, 8))
        self.sessions = 0
        self.client: Nt8Client | None = None
        self.left = 0
        self.ack_ns: list[int] = []  # the same triggering ticks, until their ack (after the BRACKET)

    # -- lockstep helpers

    def _step(self, msg: Any) -> list[Any]:
        assert self.client is not None
        replies = self.client.step(msg)
        errors = [r for r in replies if isinstance(r, Error)]
        if errors:
            raise WorkloadError(f"the sidecar refused {msg!r}: {errors[0].text}")
        return replies

    def _trade(self, price: float, ts: int) -> Tick:
        return Tick(0, int(TickKind.LAST), price, 1, price - TICK_SIZE, price, ts, ts)

    def _new_session(self) -> None:
        if self.client is not None:
            self.client.close()
        self.sessions += 1
        self.client = Nt8Client(self.endpoint, instance_id=f"{self.prefix}-{self.sessions}", account="Sim101",
                                instruments=[INSTRUMENT], lockstep=True, context=self.ctx)
        self.client.connect()
        self.minute = _utc_ns(dt.datetime.combine(self.next_day(), dt.time(0, 0)))
        for _ in range(self.quiet_bars):
            for k, price in enumerate((2700.25, 2700.50, 2700.00)):
                self._step(self._trade(price, self.minute + k * 20 * NS))
            self.minute += MINUTE_NS
        # the first staircase bar: closing the last quiet bar here causes no signal (it is inside)
        self.price = self.START_PRICE
        replies: list[Any] = []
        for k in range(3):
            replies += self._step(self._trade(self.price, self.minute + k * 20 * NS))
        if replies:
            raise WorkloadError(f"unexpected replies while setting up: {replies!r}")
        self.left = self.per_session

    def sample(self) -> int:
        if self.left == 0:
            self._new_session()
        self.left -= 1
        client = self.client
        assert client is not None
        self.minute += MINUTE_NS
        self.price += TICK_SIZE
        tick = self._trade(self.price, self.minute)
        bracket: SubmitBracket | None = None
        t_bracket = 0
        t0 = time.perf_counter_ns()
        seq = client.send(tick)
        while client.last_ack < seq:
            msg = client.recv(client.timeout_ms)
            if msg is None:
                raise ClientError(f"no answer to the triggering tick seq {seq}")
            if isinstance(msg, SubmitBracket):
                t_bracket = time.perf_counter_ns()
                bracket = msg
            elif isinstance(msg, Heartbeat):
                client.last_ack = max(client.last_ack, msg.ack_seq)
            elif isinstance(msg, Error):
                raise WorkloadError(f"the sidecar refused the triggering tick: {msg.text}")
        t_ack = time.perf_counter_ns()
        if bracket is None:
            closed = dt.datetime.fromtimestamp(self.minute // NS, dt.timezone.utc)
            raise WorkloadError(
                f"no BRACKET after the tick closing breakout bar {self.per_session - self.left} of session "
                f"{self.sessions} (event time {closed:%Y-%m-%d %H:%M} UTC): the sidecar no longer trades the "
                "staircase's breakouts. Check the sidecar's configuration (sizing, regime filter, strategy), the "
                "features' warm-up and strategies/momentum.py")
        self.ack_ns.append(t_ack - t0)
        # Fill the entry and the target: the position is flat and the bracket CLOSED again.
        ts = self.minute + 1_000_000
        cid = bracket.client_order_id
        self._step(Execution(f"{cid}-E", cid, int(OrderRole.ENTRY), f"{cid}-n1", 0, int(Side.BUY), self.price,
                             bracket.quantity, 2.09, ts))
        self._step(Execution(f"{cid}-T", cid, int(OrderRole.TARGET), f"{cid}-n3", 0, int(Side.SELL),
                             bracket.target_price, bracket.quantity, 2.09, ts + 1_000_000))
        for k in (1, 2):  # the rest of the bar, at the same price (20 s apart: no stale-feed flag)
            if self._step(self._trade(self.price, self.minute + k * 20 * NS)):
                raise WorkloadError("unexpected replies inside a bar")
        return t_bracket - t0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def run_interleaved(workloads: dict[str, Callable[[], int]], samples: int, warmup: int,
                    block: int) -> dict[str, list[int]]:
    """Blocks of ``block`` samples of each workload in turn until each has warmup + samples.

    A sample of -1 means "not this kind" (e.g. an ack tick that happened to close a bar) and is
    neither kept nor counted.
    """
    kept: dict[str, list[int]] = {name: [] for name in workloads}
    seen = {name: 0 for name in workloads}
    target = warmup + samples
    # The client's own garbage collector is not what is measured: keep it out of the timings.
    # (The sidecar's collector runs in the sidecar and is part of its latency.)
    gc.collect()
    gc.disable()
    try:
        while any(seen[n] < target for n in workloads):
            for name, sample in workloads.items():
                for _ in range(min(block, target - seen[name])):
                    ns = sample()
                    if ns < 0:
                        continue
                    seen[name] += 1
                    if seen[name] > warmup:
                        kept[name].append(ns)
    finally:
        gc.enable()
    return kept


def start_child(script: str, what: str, cwd: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A Python child running ``script``, which prints the endpoint it bound as its first line."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=cwd)
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("tcp://"):
        proc.kill()
        raise RuntimeError(f"the {what} did not start")
    return proc, endpoint


def start_echo() -> tuple[subprocess.Popen, str]:
    return start_child(ECHO_SCRIPT, "echo child")


def sidecar_config(args: argparse.Namespace, workdir: Path) -> Path:
    """``--config``, or the plumbing configuration written to the work folder."""
    if args.config is not None:
        return args.config
    path = workdir / "sidecar.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    return path


def measure_child(args: argparse.Namespace, workdir: Path, config_path: Path, quiet_bars: int) -> dict[str, Any]:
    """Echo child and sidecar child, interleaved."""
    db_url = f"sqlite:///{workdir / 'roundtrip.sqlite'}"
    ctx = zmq.Context()
    echo_proc, echo_endpoint = start_echo()
    sidecar = SidecarProcess(db_url, config_path, log_path=workdir / "sidecar.log")
    endpoint = sidecar.start()
    echo = ack = bracket = None
    try:
        echo = EchoWorkload(echo_endpoint, ctx)
        ack = TickAckWorkload(endpoint, ctx)
        bracket = BracketWorkload(endpoint, ctx, quiet_bars, per_session=args.brackets_per_session)
        kept = run_interleaved({"echo": echo.sample, "tick_ack": ack.sample, "tick_bracket": bracket.sample},
                               args.samples, args.warmup, args.block)
    finally:
        for w in (echo, ack, bracket):
            if w is not None:
                w.close()
        code = sidecar.stop()
        echo_proc.wait(10)
        ctx.term()
    log_text = Path(sidecar.log_path).read_text(errors="replace")
    warnings = [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line]
    result = {name: summarize(v) for name, v in kept.items()}
    result["tick_bracket_until_ack"] = summarize(bracket.ack_ns[args.warmup:])
    result["bar_close_without_signal"] = summarize(ack.bar_close_ns)
    result["bracket_sessions"] = bracket.sessions
    result["sidecar_exit_code"] = code
    result["sidecar_log_warnings"] = warnings[:20]
    result["sidecar_log_warning_count"] = len(warnings)
    result["sidecar_log"] = str(sidecar.log_path)
    return result


def measure_inprocess(args: argparse.Namespace, workdir: Path, config_path: Path, quiet_bars: int) -> dict[str, Any]:
    """SidecarServer in a thread of this process, only for its stage timings (see the docstring)."""
    config = load_config(config_path)
    writer = StorageWriter(f"sqlite:///{workdir / 'inprocess.sqlite'}", batch_rows=config.storage.batch_rows,
                           queue_batches=config.storage.queue_batches,
                           flush_interval_s=config.storage.flush_interval_ms / 1000.0)
    writer.start()
    ctx = zmq.Context()
    server = SidecarServer(config, writer, master_for(config), make_strategy_factory(config), context=ctx)
    endpoint = server.bind("tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.run, name="inprocess-sidecar", daemon=True)
    thread.start()
    ack = bracket = None
    try:
        ack = TickAckWorkload(endpoint, ctx, instance_id="inproc-tick-ack")
        bracket = BracketWorkload(endpoint, ctx, quiet_bars, per_session=args.brackets_per_session,
                                  prefix="inproc-bracket")
        n = args.inprocess_samples
        kept = run_interleaved({"tick_ack": ack.sample, "tick_bracket": bracket.sample}, n,
                               min(args.warmup, n), args.block)
    finally:
        for w in (ack, bracket):
            if w is not None:
                w.close()
        time.sleep(0.1)  # let the BYEs arrive before the loop ends
        server.request_stop()
        thread.join(30)
        writer.close()
        ctx.term()
    return {"tick_ack": summarize(kept["tick_ack"]), "tick_bracket": summarize(kept["tick_bracket"]),
            "stages": server.timings.summary(), "server_stats": {
                "messages_in": server.stats.messages_in, "messages_out": server.stats.messages_out,
                "internal_errors": server.stats.internal_errors, "send_failures": server.stats.send_failures}}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def report(child: dict[str, Any], inproc: dict[str, Any] | None) -> dict[str, Any]:
    echo = child["echo"]
    rows = [("echo (bare pyzmq ROUTER child)", echo), ("tick -> ack (sidecar child)", child["tick_ack"]),
            ("tick -> BRACKET (sidecar child)", child["tick_bracket"]),
            ("  same ticks -> their ack", child["tick_bracket_until_ack"]),
            ("  bar close, no signal (-> ack)", child["bar_close_without_signal"])]
    print()
    print(f"{'round trip':34s} {'n':>7s} {'p50 us':>9s} {'p99 us':>9s} {'mean us':>9s} {'max us':>9s}"
          f" {'p50/echo':>9s} {'p99/echo':>9s}")
    for label, s in rows:
        if not s["n"]:
            continue
        print(f"{label:34s} {s['n']:7d} {s['p50_us']:9.1f} {s['p99_us']:9.1f} {s['mean_us']:9.1f} "
              f"{s['max_us']:9.1f} {ratio(s['p50_us'], echo['p50_us']):8.2f}x {ratio(s['p99_us'], echo['p99_us']):8.2f}x")
    r_ack = ratio(child["tick_ack"]["p99_us"], echo["p99_us"])
    r_br = ratio(child["tick_bracket"]["p99_us"], echo["p99_us"])
    print()
    for name, r in (("p99(tick->ack) / p99(echo)", r_ack), ("p99(tick->BRACKET) / p99(echo)", r_br)):
        verdict = "meets" if r <= GOAL_RATIO else "DOES NOT meet"
        print(f"{name:32s} = {r:6.2f}x   {verdict} the goal (<= {GOAL_RATIO:g}x)")
    print(f"sidecar: exit code {child['sidecar_exit_code']}, {child['bracket_sessions']} bracket session(s), "
          f"{child['sidecar_log_warning_count']} warning/error line(s) in {child['sidecar_log']}")
    for line in child["sidecar_log_warnings"][:5]:
        print(f"  {line}")
    if inproc is not None:
        print()
        print("IN-PROCESS variant (SidecarServer in a thread of this process, sharing its GIL; not comparable "
              "with the figures above):")
        for label in ("tick_ack", "tick_bracket"):
            s = inproc[label]
            print(f"  {label:14s} n={s['n']:6d} p50 {s['p50_us']:8.1f} us  p99 {s['p99_us']:8.1f} us")
        print("  sidecar stage timings (server.timings; bucket upper bounds, within ~10%):")
        print(f"  {'stage':10s} {'count':>8s} {'p50 us':>9s} {'p99 us':>9s} {'max us':>9s}")
        for stage, s in inproc["stages"].items():
            print(f"  {stage:10s} {s['count']:8d} {s['p50_us']:9.2f} {s['p99_us']:9.2f} {s['max_us']:9.1f}")
    return {"child": child, "inprocess": inproc, "ratios": {
        "p99_tick_ack_over_echo": r_ack, "p99_tick_bracket_over_echo": r_br, "goal": GOAL_RATIO,
        "tick_ack_meets_goal": r_ack <= GOAL_RATIO, "tick_bracket_meets_goal": r_br <= GOAL_RATIO}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=5000, help="measured round trips of each kind (default 5000)")
    p.add_argument("--warmup", type=int, default=500, help="round trips of each kind discarded first (default 500)")
    p.add_argument("--block", type=int, default=250, help="samples of one kind before switching (default 250)")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process stage-timing variant")
    p.add_argument("--inprocess-samples", type=int, default=2000, help="samples of the in-process variant")
    p.add_argument("--brackets-per-session", type=int, default=100,
                   help="breakouts per sidecar session before a fresh HELLO (default 100, at most 1200)")
    p.add_argument("--config", type=Path, default=None,
                   help="the sidecar's configuration file (default: the plumbing configuration: momentum, "
                        "1 contract per bracket, no regime filter); a run in which a breakout brings no BRACKET fails")
    p.add_argument("--keep", action="store_true", help="keep the work folder (databases, sidecar log)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(p, argv, SMOKE, 'the workload no longer brings BRACKETs')
    if args.samples < 1 or args.warmup < 0 or args.block < 1:
        p.error("--samples and --block must be positive, --warmup not negative")
    if not 1 <= args.brackets_per_session <= 1200:
        p.error("--brackets-per-session must be 1..1200 (one trading day of minutes)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nt8bridge-bench-") as tmp:
        workdir = Path(tempfile.mkdtemp(prefix="nt8bridge-bench-")) if args.keep else Path(tmp)
        started = time.perf_counter()
        config_path = sidecar_config(args, workdir)
        config_name = args.config or "plumbing (momentum, 1 contract per bracket, no regime filter)"
        try:
            quiet_bars = bars_before_features(load_config(config_path).strategy)
            print(f"round trips: {args.samples} measured after {args.warmup} warm-up, of each kind, interleaved in "
                  f"blocks of {args.block}; sidecar config {config_name}, {quiet_bars} quiet bars before each "
                  "session's breakouts", flush=True)
            child = measure_child(args, workdir, config_path, quiet_bars)
            inproc = None if args.no_inprocess else measure_inprocess(args, workdir, config_path, quiet_bars)
        except WorkloadError as exc:
            print(f"bench_roundtrip: FAILED, the workload no longer produces what is measured: {exc}", file=sys.stderr)
            return 1
        out = report(child, inproc)
        out["elapsed_s"] = round(time.perf_counter() - started, 1)
        print(f"\n(elapsed {out['elapsed_s']} s{'; work folder kept: ' + str(workdir) if args.keep else ''})")
        if args.json:
            print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
