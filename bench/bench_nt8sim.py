"""NT8 simulator playback (the real NinjaScript under Mono) through the real sidecar: latency and ticks/s.

    .venv/bin/python bench/bench_nt8sim.py [--data FILE] [--max-events N] [--repeat N] [--window W]
                                           [--latency-ms MS] [--event-warmup E] [--samples N] [--warmup W]
                                           [--block B] [--no-acker] [--no-after] [--keep] [--json] [--smoke]

What runs: ``bridge.nt8.simulator.run_nt8sim``, as ``nt8bridge playback --engine nt8sim`` does: the NinjaScript
strategy (ninjascript/Strategies/Nt8Bridge.cs) in the NT8 simulator, hosted by pythonnet in this process,
plays a data file against a sidecar child process (``SidecarProcess``: ``nt8bridge serve``, a fresh SQLite
file, storage on, the momentum strategy in bench_roundtrip.py's plumbing configuration: one contract per
bracket, no regime filter, so that the strategy trades), a fresh sidecar for every run. The engine times
every event in C# (``Nt8SimResult.event_micros``: wall microseconds from the start of the event until
everything it caused is done), so nothing crosses into Python per tick.

* Lockstep (``--repeat`` runs): every message the strategy posts waits for the sidecar's acknowledgement.
  Events at which an entry order (name ``...:E``) was submitted are "tick -> BRACKET": the TICK, the
  sidecar deciding, the BRACKET coming back, the strategy submitting the entry, the simulator filling it
  and the strategy reporting the order updates, fills, position and account, each report acknowledged.
  All other events are "tick -> ack", split by what else they carried (a BAR at a bar close, reports of
  exit fills). Throughput: events per second of the run.
* Free-running (``--latency-ms``, default 50): no waiting; throughput only. The engine's rate does not
  wait for the sidecar, so the run also reports what reached it: the link's sent / stale-dropped /
  dropped counts, the ticks the sidecar stored, how its session ended, and its processing rate
  (stored ticks over the span of their ``ts_sidecar_ns``).
* Unless ``--no-acker``: the same lockstep and free-running runs against an "instant acker", a bare pyzmq
  ROUTER child that answers HELLO with WELCOME and every other message at once with its HEARTBEAT ack:
  the simulator, the strategy and the C# link alone, for the profile of where an event's time goes.

Baselines, measured before and after the playbacks (ratios are to the mean of the two), each
interleaved in blocks of ``--block`` samples after ``--warmup`` discarded ones:

* echo: bench_roundtrip.py's bare echo: a pyzmq DEALER sends an encoded TICK to a pyzmq ROUTER child
  that sends it straight back (two Python processes).
* C# echo: the NinjaScript's ``ZmtpDealer`` against the same ROUTER child, timed in C#
  (``Stopwatch``), with the frames prebuilt, and again with ``Codec.Encode``/``Codec.Decode`` around it
  as the lockstep link does per message.
* C# link: the NinjaScript's ``BridgeLink`` in lockstep, its ``Post(TICK)`` timed in C# against the
  instant acker: the link without the simulator and the strategy.
* tick -> ack (Python client): bench_roundtrip.py's ``TickAckWorkload`` against a sidecar child: the
  sidecar's own processing of an ordinary tick is this minus the echo.

The machine is small and shared: compare ratios measured in one run, not absolute figures across runs.

It fails (exit code 1) after printing its figures when a playback no longer produces what is measured:
a lockstep run against the sidecar without an entry and a fill (no tick -> BRACKET), a strategy
error, a lockstep run whose ticks the sidecar did not all store, or a free-running run of which the
sidecar stored nothing. ``--smoke`` plays the first 30,000 events of ES 06-18 (the first entry comes at
about event 25,500) with small baselines, for that check alone; it still compiles and hosts Mono.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_roundtrip as rt  # noqa: E402  (the echo child, its workload, the Python tick -> ack, summarize)

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.core.config import load_config  # noqa: E402
from bridge.protocol.messages import MsgType  # noqa: E402
from bridge.transport.sidecar import SidecarProcess, master_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "nt8" / "ES 06-18.Last.txt.gz"
GOAL_EVENTS_PER_S = 20_000  # the goal for lockstep playback on this 2-core machine
MINUTE_NS = 60 * 1_000_000_000
# --smoke: far enough into ES 06-18 for the first entry, tiny baselines; options given explicitly win
SMOKE = {"max_events": 30_000, "samples": 50, "warmup": 10, "block": 25, "event_warmup": 100}

# A ROUTER that plays a sidecar which costs nothing: WELCOME for HELLO, an immediate HEARTBEAT(ack_seq)
# for everything else (BYE excepted), no decoding beyond the 32-byte header. It counts messages by type
# and prints the counts when told to STOP.
ACKER_SCRIPT = r"""
import json, struct, sys, time, zmq
from bridge.protocol import codec
from bridge.protocol.messages import Welcome
H, Q = struct.Struct("<4sBBHQqq"), struct.Struct("<Q")
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.SNDHWM, 100_000)
s.setsockopt(zmq.RCVHWM, 100_000)
s.bind("tcp://127.0.0.1:*")
print(s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
recv, send, pack, unpack, now = s.recv_multipart, s.send_multipart, H.pack, H.unpack, time.time_ns
counts, out = {}, 0
while True:
    f = recv()
    if len(f) == 2 and f[1] == b"STOP":
        break
    if len(f) != 3:
        continue
    magic, version, t, flags, seq, ts_send, ts_echo = unpack(f[1])
    counts[t] = counts.get(t, 0) + 1
    out += 1
    if t == 1:
        send([f[0], *codec.encode(Welcome(out, "instant-acker", 1000, 10000, now(), 1 << 20), out, now(), ts_send * 100)])
    elif t != 9:
        send([f[0], pack(magic, version, 8, 0, out, now() // 100, ts_send), Q.pack(seq)])
print(json.dumps(counts), flush=True)
s.close()
ctx.term()
"""

# The C# echo, compiled with mcs against the NinjaScript assembly and timed inside .NET.
CS_ECHO = r"""
using System;
using System.Diagnostics;
using NinjaTrader.NinjaScript.AddOns.Nt8Bridge;

namespace Nt8BridgeBench
{
	public sealed class CsEcho : IDisposable
	{
		private readonly ZmtpDealer dealer = new ZmtpDealer();
		private readonly Tick tick = new Tick { InstrumentId = 0, Kind = 0, Price = 2700.0, Volume = 1, Bid = 2700.0, Ask = 2700.25,
			TsExchange = 15257900000000000, TsReceive = 15257900000000000 };
		private readonly byte[][] prebuilt;
		private ulong seq = 1;

		public CsEcho(string endpoint)
		{
			dealer.Connect(endpoint, 5000);
			prebuilt = Codec.Encode(tick, 1, WireTime.Now());
		}

		// n round trips, nanoseconds each. codec: encode a TICK and decode the reply, as the lockstep link
		// does around every message; otherwise the same frames are sent every time.
		public long[] Run(int n, bool codec)
		{
			long[] ns = new long[n];
			for (int i = 0; i < n; i++)
			{
				long t0 = Stopwatch.GetTimestamp();
				byte[][] frames = codec ? Codec.Encode(tick, seq++, WireTime.Now()) : prebuilt;
				dealer.Send(frames);
				byte[][] reply = dealer.Receive(10000);
				if (reply == null)
					throw new TimeoutException("the echo child stopped answering");
				if (codec)
				{
					Header header;
					if (Codec.Decode(reply, out header) == null)
						throw new InvalidOperationException("no message decoded");
				}
				ns[i] = (long)((Stopwatch.GetTimestamp() - t0) * (1e9 / Stopwatch.Frequency));
			}
			return ns;
		}

		public void Dispose() { dealer.Dispose(); }
	}

	public sealed class NullListener : ILinkListener
	{
		public void OnWelcome(Welcome welcome) { }
		public void OnCommand(Header header, Message message) { }
		public void OnLinkDown(string reason) { }
	}

	// The NinjaScript's BridgeLink in lockstep, without the simulator and the strategy: every Post encodes a
	// TICK, sends it, and receives and decodes until its ack.
	public sealed class CsLink : IDisposable
	{
		private readonly BridgeLink link;

		public CsLink(string endpoint)
		{
			Func<Hello> hello = () =>
			{
				Hello h = new Hello { InstanceId = "bench-link", Account = "Sim101", HeartbeatMs = 1000, Nt8Clock = WireTime.Now(),
					Nt8Version = "bench" };
				h.Instruments.Add(new InstrumentDecl { Name = "ES 06-18", TickSize = 0.25, PointValue = 50 });
				return h;
			};
			link = new BridgeLink(new LinkOptions { Endpoint = endpoint, Lockstep = true }, hello, new NullListener());
			link.Start();
		}

		// n Posts, nanoseconds each
		public long[] Run(int n)
		{
			long[] ns = new long[n];
			for (int i = 0; i < n; i++)
			{
				long now = WireTime.Now();
				Tick tick = new Tick { InstrumentId = 0, Kind = 0, Price = 2700.0, Volume = 1, Bid = 2700.0, Ask = 2700.25,
					TsExchange = now, TsReceive = now };
				long t0 = Stopwatch.GetTimestamp();
				if (!link.Post(tick))
					throw new InvalidOperationException("a lockstep Post was not acknowledged: " + link.LastError);
				ns[i] = (long)((Stopwatch.GetTimestamp() - t0) * (1e9 / Stopwatch.Frequency));
			}
			return ns;
		}

		public void Dispose() { link.Stop("benchmark done"); }
	}
}
"""


# ---------------------------------------------------------------------------------------------
# the .NET side
# ---------------------------------------------------------------------------------------------


def load_dotnet(workdir: Path) -> Any:
    """Start Mono (once per process), load the simulator and the NinjaScript, compile and load the C# echo."""
    warnings.filterwarnings("ignore", message="Hosting Mono versions before")
    from bridge.nt8.ninjascript import build, compile_library
    from bridge.nt8.simulator import load_runtime

    assemblies = build()
    load_runtime(assemblies)
    src = workdir / "CsEcho.cs"
    src.write_text(CS_ECHO, encoding="utf-8")
    dll = compile_library([src], workdir / "Nt8BridgeBench.dll", (str(assemblies.simulator), str(assemblies.ninjascript)))
    import clr  # noqa: F401  (pythonnet: makes .NET namespaces importable)
    from System.Reflection import Assembly  # type: ignore[import-not-found]

    Assembly.LoadFrom(str(dll))
    clr.AddReference(str(dll))
    from Nt8BridgeBench import CsEcho, CsLink  # type: ignore[import-not-found]

    return CsEcho, CsLink


class CsWorkload:
    """``sample()`` hands out one C# round trip at a time from blocks measured in one .NET call."""

    def __init__(self, obj: Any, block: int, *run_args: Any) -> None:
        self.obj = obj
        self.block = block
        self.run_args = run_args
        self.buf: list[int] = []

    def sample(self) -> int:
        if not self.buf:
            self.buf = [int(x) for x in self.obj.Run(self.block, *self.run_args)]
            self.buf.reverse()
        return self.buf.pop()

    def close(self) -> None:
        self.obj.Dispose()


# ---------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------


def measure_baselines(args: argparse.Namespace, workdir: Path, dotnet: tuple[Any, Any], tag: str) -> dict[str, Any]:
    cs_echo_type, cs_link_type = dotnet
    config_path = workdir / "sidecar.toml"
    ctx = zmq.Context()
    echo_proc, echo_endpoint = rt.start_echo()
    acker_proc, acker_endpoint = start_acker()
    sidecar = SidecarProcess(f"sqlite:///{workdir / f'baseline-{tag}.sqlite'}", config_path,
                             log_path=workdir / f"sidecar-baseline-{tag}.log")
    endpoint = sidecar.start()
    echo = cs = cs_codec = cs_link = ack = None
    try:
        echo = rt.EchoWorkload(echo_endpoint, ctx)
        cs = CsWorkload(cs_echo_type(echo_endpoint), args.block, False)
        cs_codec = CsWorkload(cs_echo_type(echo_endpoint), args.block, True)
        cs_link = CsWorkload(cs_link_type(acker_endpoint), args.block)
        ack = rt.TickAckWorkload(endpoint, ctx, instance_id=f"bench-nt8sim-py-{tag}")
        kept = rt.run_interleaved({"echo": echo.sample, "cs_echo": cs.sample, "cs_echo_codec": cs_codec.sample,
                                   "cs_link_acker": cs_link.sample, "py_tick_ack": ack.sample},
                                  args.samples, args.warmup, args.block)
    finally:
        for w in (cs, cs_codec, cs_link, ack, echo):  # echo last: its close stops the echo child
            if w is not None:
                w.close()
        stop_acker(acker_proc, acker_endpoint)
        sidecar.stop()
        echo_proc.wait(10)
        ctx.term()
    return {name: rt.summarize(v) for name, v in kept.items()}


# ---------------------------------------------------------------------------------------------
# playbacks
# ---------------------------------------------------------------------------------------------


def bar_closes(path: Path, n: int) -> np.ndarray | None:
    """Events (in the engine's order) that are the first trade of a new minute bar, when the strategy posts
    the previous bar as a BAR after the TICK. None when the file is not a tick file."""
    from bridge.data.nt8files import Nt8Format, read_nt8

    df = read_nt8(path)
    if df.attrs["format"] not in (Nt8Format.TICK.value, Nt8Format.TICK_REPLAY.value):
        return None
    ts = np.sort(df["ts_ns"].to_numpy(), kind="stable")[:n]  # the engine's stable sort by time
    bar = -((-ts) // MINUTE_NS)  # a bar ends on the minute, and holds the trade stamped exactly on it
    out = np.zeros(len(ts), dtype=bool)
    out[1:] = bar[1:] != bar[:-1]
    return out


def classify(result: Any, closes: np.ndarray | None, warmup: int) -> dict[str, Any]:
    micros = np.asarray(result.event_micros, dtype=np.float64)
    n = len(micros)
    entry = np.zeros(n, dtype=bool)
    other_orders = np.zeros(n, dtype=bool)
    for o in result.orders:
        k = o["submitted_at_event"]
        if 0 <= k < n:
            (entry if o["name"].endswith(":E") else other_orders)[k] = True
    fills = np.zeros(n, dtype=bool)
    for f in result.fills:
        if 0 <= f["event_index"] < n:
            fills[f["event_index"]] = True
    close = closes[:n] if closes is not None and len(closes) >= n else np.zeros(n, dtype=bool)
    reports = (fills | other_orders) & ~entry
    rows = {
        "tick_ack": ~entry,
        "plain": ~entry & ~close & ~reports,
        "bar_close": ~entry & close & ~reports,
        "reports": reports,
        "tick_bracket": entry,
    }
    measured = np.arange(n) >= warmup
    total = micros.sum()
    out: dict[str, Any] = {}
    for name, mask in rows.items():
        sel = micros[mask & measured]
        s = rt.summarize((sel * 1000).astype(np.int64).tolist())
        s["share_of_time"] = float(micros[mask].sum() / total) if total else math.nan
        out[name] = s
    out["all"] = rt.summarize((micros[measured] * 1000).astype(np.int64).tolist())
    out["loop_events_per_s"] = n / (total / 1e6) if total else math.nan
    return out


def link_stats(prints: list[str]) -> dict[str, int]:
    """The link's own counts, from the line it prints when it stops."""
    for line in reversed(prints):
        m = re.search(r"stopped \(.*\): (\d+) sent, (\d+) received, (\d+) dropped, (\d+) stale dropped", line)
        if m:
            return dict(zip(("sent", "received", "dropped", "stale_dropped"), map(int, m.groups())))
    return {}


def _db_file(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


def wait_sessions_ended(db_url: str, instance_id: str, timeout_s: float = 120.0) -> float | None:
    """perf_counter() when every session of ``instance_id`` shows ended_ns in SQLite (the sidecar has
    processed everything up to the BYE; polled every 20 ms, as bench_ingest.py does), or None."""
    deadline = time.monotonic() + timeout_s
    con = sqlite3.connect(f"file:{_db_file(db_url)}?mode=ro", uri=True, timeout=5.0)
    try:
        while time.monotonic() < deadline:
            try:
                rows = con.execute("SELECT ended_ns FROM sessions WHERE instance_id = ?", (instance_id,)).fetchall()
            except sqlite3.OperationalError:  # no table yet, or the writer holds a lock for a moment
                rows = []
            if rows and all(r[0] is not None for r in rows):
                return time.perf_counter()
            time.sleep(0.02)
    finally:
        con.close()
    return None


def stored(db_url: str, instance_id: str) -> dict[str, Any]:
    """What the sidecar stored for the playback's sessions: ticks, how the sessions ended, and the
    sidecar's processing rate (ticks over the span of their ``ts_sidecar_ns``)."""
    try:
        con = sqlite3.connect(f"file:{_db_file(db_url)}?mode=ro", uri=True, timeout=5.0)
        try:
            ids = "(SELECT session_id FROM sessions WHERE instance_id = ?)"
            n, first, last = con.execute(f"SELECT count(*), min(ts_sidecar_ns), max(ts_sidecar_ns) FROM ticks "
                                         f"WHERE session_id IN {ids}", (instance_id,)).fetchone()
            ends = [r[0] for r in con.execute("SELECT end_reason FROM sessions WHERE instance_id = ? ORDER BY started_ns",
                                              (instance_id,))]
        finally:
            con.close()
    except sqlite3.Error as exc:  # a figure for the record, not worth failing the benchmark
        return {"ticks_stored": None, "error": str(exc)}
    rate = (n - 1) / ((last - first) / 1e9) if n > 1 and last > first else math.nan
    return {"ticks_stored": n, "session_end": ends, "sidecar_ticks_per_s": rate}


def start_acker() -> tuple[subprocess.Popen, str]:
    return rt.start_child(ACKER_SCRIPT, "instant acker", cwd=REPO)


def stop_acker(proc: subprocess.Popen, endpoint: str) -> dict[str, int]:
    """Stop the acker; its message counts by type."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    s.send(b"STOP")
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.wait(10)
    s.close(linger=200)
    ctx.term()
    return {MsgType(int(t)).name: c for t, c in json.loads(line).items()} if line else {}


def play(args: argparse.Namespace, workdir: Path, label: str, *, lockstep: bool, acker: bool,
         closes: np.ndarray | None, cs_link_type: Any = None) -> dict[str, Any]:
    """One playback against a fresh sidecar child (or a fresh instant acker).

    With ``cs_link_type`` (lockstep against the acker): ``BridgeLink.Post(TICK)`` is also timed in a C# loop
    right before and right after the playback, against the same acker (up to 10,000 times each, after
    ``--event-warmup``): a reference taken under the same load, for the simulator's and the strategy's share
    of an event."""
    from bridge.nt8.simulator import run_nt8sim

    config_path = workdir / "sidecar.toml"
    config = load_config(config_path)
    db_url = f"sqlite:///{workdir / f'{label}.sqlite'}"
    acker_proc = sidecar = None
    if acker:
        acker_proc, endpoint = start_acker()
    else:
        sidecar = SidecarProcess(db_url, config_path, log_path=workdir / f"sidecar-{label}.log")
        endpoint = sidecar.start()
    counts: dict[str, int] = {}
    code = 0
    drained_s = None
    link_ns: list[int] = []

    def link_posts(n: int) -> None:
        if cs_link_type is not None and n > 0:
            link = cs_link_type(endpoint)
            try:
                ns = [int(x) for x in link.Run(n + args.event_warmup)]
            finally:
                link.Dispose()
            link_ns.extend(ns[args.event_warmup:])

    try:
        half = min(10_000, (args.max_events or 20_000) // 2)
        link_posts(half)
        result = run_nt8sim([args.data], endpoint, config, master_for(config), lockstep=lockstep,
                            window=args.window if lockstep else 1,
                            latency_ms=0 if lockstep else args.latency_ms, max_events=args.max_events, timings=True)
        if sidecar is not None:
            returned = time.perf_counter()
            seen = wait_sessions_ended(db_url, result.instance_id)
            drained_s = None if seen is None else seen - returned
        link_posts(half)
    finally:
        if acker_proc is not None:
            counts = stop_acker(acker_proc, endpoint)
        if sidecar is not None:
            code = sidecar.stop()
    out: dict[str, Any] = {
        "label": label, "lockstep": result.lockstep, "events": result.events, "elapsed_s": result.elapsed_s,
        "events_per_s": result.events_per_s, "brackets": result.brackets, "orders": len(result.orders),
        "fills": len(result.fills), "digest": result.digest, "strategy_error": result.strategy_error,
        "link": link_stats(result.prints), "acker_counts": counts, "sidecar_exit_code": code,
        "sidecar_done_after_s": drained_s,
    }
    out.update(classify(result, closes, args.event_warmup))
    if sidecar is not None:
        out.update(stored(db_url, result.instance_id))
        log_text = Path(sidecar.log_path).read_text(errors="replace")
        warn = [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line]
        out["sidecar_log_warning_count"], out["sidecar_log_warnings"] = len(warn), warn[:5]
        out["sidecar_log"] = str(sidecar.log_path)
    if link_ns:
        out["cs_link"] = rt.summarize(link_ns)
    if out["link"].get("sent") and result.events:
        out["messages_per_event"] = out["link"]["sent"] / result.events  # HELLO, ACCOUNT and BYE included
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def mean_baseline(before: dict[str, Any], after: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    if after is None:
        return before
    return {k: {q: (before[k][q] + after[k][q]) / 2 for q in ("p50_us", "p99_us", "mean_us")} for k in before}


HEAD = (f"{'':44s} {'n':>7s} {'p50 us':>8s} {'p99 us':>8s} {'mean us':>8s} {'max us':>8s} {'p50/echo':>8s} "
        f"{'p99/echo':>8s} {'p50/C#':>7s} {'time':>5s}")


def row(label: str, s: dict[str, Any], base: dict[str, dict[str, float]]) -> None:
    if not s.get("n"):
        print(f"{label:44s} {0:7d}")
        return
    share = f"{100 * s['share_of_time']:4.0f}%" if "share_of_time" in s else ""
    print(f"{label:44s} {s['n']:7d} {s['p50_us']:8.1f} {s['p99_us']:8.1f} {s['mean_us']:8.1f} {s['max_us']:8.0f} "
          f"{ratio(s['p50_us'], base['echo']['p50_us']):7.2f}x {ratio(s['p99_us'], base['echo']['p99_us']):7.2f}x "
          f"{ratio(s['p50_us'], base['cs_echo_codec']['p50_us']):6.2f}x {share:>5s}")


def report(args: argparse.Namespace, before: dict[str, Any], after: dict[str, Any] | None, lock: list[dict[str, Any]],
           free: dict[str, Any], acker_lock: list[dict[str, Any]], acker_free: dict[str, Any] | None) -> dict[str, Any]:
    base = mean_baseline(before, after)
    print()
    print("BASELINES (before" + (" / after the playbacks; ratios below are to their mean)" if after else ")"))
    print(f"{'':44s} {'n':>7s} {'p50 us':>8s} {'p99 us':>8s} {'mean us':>8s}   (after: p50, p99)")
    names = {"echo": "echo (pyzmq DEALER <-> pyzmq ROUTER child)",
             "cs_echo": "C# echo (ZmtpDealer, prebuilt frames)",
             "cs_echo_codec": "C# echo + Codec.Encode/Decode (C#)",
             "cs_link_acker": "C# BridgeLink.Post(TICK), instant acker",
             "py_tick_ack": "tick -> ack, Python client, sidecar child"}
    for k, label in names.items():
        s = before[k]
        tail = f"   ({after[k]['p50_us']:6.1f}, {after[k]['p99_us']:6.1f})" if after else ""
        print(f"{label:44s} {s['n']:7d} {s['p50_us']:8.1f} {s['p99_us']:8.1f} {s['mean_us']:8.1f}{tail}")
    sidecar_share = base["py_tick_ack"]["p50_us"] - base["echo"]["p50_us"]
    print(f"  the sidecar's processing of an ordinary tick plus the Python client's encode/decode ~ p50(tick->ack) - "
          f"p50(echo) = {sidecar_share:.1f} us")

    print()
    print(f"LOCKSTEP PLAYBACK (window {args.window}) of {args.data.name}: wall time per event, timed in C# by the engine (first "
          f"{args.event_warmup} events left out of the percentiles; 'time' = share of the run's event time)")
    print(HEAD)
    for r in lock:
        print(f"[{r['label']}] {r['events']:,} events, {r['brackets']} entries, {r['fills']} fills, "
              f"{r['link'].get('sent', '?')} messages sent, {r['events_per_s']:,.0f} events/s "
              f"({r['loop_events_per_s']:,.0f}/s in the event loop), digest {r['digest'][:12]}")
        row("  tick -> ack (no entry at the event)", r["tick_ack"], base)
        row("    plain tick (TICK only)", r["plain"], base)
        row("    bar close (TICK + BAR)", r["bar_close"], base)
        row("    exit fills / order reports, no entry", r["reports"], base)
        row("  tick -> BRACKET (entry submitted+filled)", r["tick_bracket"], base)
        if r["strategy_error"]:
            print(f"  STRATEGY ERROR: {r['strategy_error'][:300]}")
        if r.get("sidecar_log_warning_count"):
            print(f"  {r['sidecar_log_warning_count']} warning/error line(s) in {r['sidecar_log']}")
    for r in acker_lock:
        print(f"[{r['label']}] sim + strategy + link against an instant acker: {r['events']:,} events, "
              f"{r['events_per_s']:,.0f} events/s ({r['loop_events_per_s']:,.0f}/s in the event loop), "
              f"{r.get('messages_per_event', math.nan):.4f} messages per event")
        row("  any event", r["all"], base)
        row("    plain tick (TICK only)", r["plain"], base)
        row("    bar close (TICK + BAR)", r["bar_close"], base)
        if "cs_link" in r:
            row("  BridgeLink.Post(TICK) loop, before+after", r["cs_link"], base)
    digests = {r["digest"] for r in lock}
    if len(lock) > 1:
        print(f"lockstep digests {'all equal' if len(digests) == 1 else 'DIFFER: ' + str(sorted(digests))}")

    print()
    print("THROUGHPUT (engine: events/s of the run, as `nt8bridge playback --engine nt8sim` reports it, setup, "
          "connection, end of session and, free-running, the engine's 250 ms drain included; loop: events over the sum "
          "of their wall times; stored: ticks the sidecar stored; sidecar: its processing rate, stored ticks over the "
          "span of their ts_sidecar_ns)")
    print(f"  {'':36s} {'engine /s':>9s} {'loop /s':>9s} {'stored':>15s} {'sidecar /s':>10s}  {'session end':12s} "
          f"link: sent / stale dropped / dropped")
    rates = [r["events_per_s"] for r in lock]
    best = max(rates)
    runs = [(f"lockstep, sidecar [{r['label']}]", r) for r in lock]
    runs.append((f"free-running {args.latency_ms} ms, sidecar", free))
    runs += [(f"lockstep, instant acker [{r['label'][6:]}]", r) for r in acker_lock]
    if acker_free is not None:
        runs.append((f"free-running {args.latency_ms} ms, instant acker", acker_free))
    for what, r in runs:
        st = f"{r['ticks_stored']} of {r['events']}" if r.get("ticks_stored") is not None else ""
        sc = f"{r['sidecar_ticks_per_s']:10,.0f}" if r.get("ticks_stored") else f"{'':10s}"
        end = ",".join(r.get("session_end") or [])
        link = r["link"]
        print(f"  {what:36s} {r['events_per_s']:9,.0f} {r['loop_events_per_s']:9,.0f} {st:>15s} {sc}  {end:12s} "
              f"{link.get('sent', '?')} / {link.get('stale_dropped', '?')} / {link.get('dropped', '?')}")
    if free.get("ticks_stored") is not None and free["ticks_stored"] < free["events"]:
        print(f"  free-running: the sidecar stored {free['ticks_stored']} of {free['events']} ticks "
              f"({free.get('sidecar_log_warning_count', 0)} warning lines in its log: {free.get('sidecar_log')})")
    met = best >= GOAL_EVENTS_PER_S
    print()
    print(f"lockstep throughput, window {args.window}: {best:,.0f} events/s (best of {len(lock)}): "
          f"{'meets' if met else 'DOES NOT meet'} the goal of {GOAL_EVENTS_PER_S:,} ticks/s "
          f"({1e6 / GOAL_EVENTS_PER_S:.0f} us per event; the run took {1e6 / best:.0f} us per event)")
    c = base["cs_echo_codec"]["p50_us"]
    k = base["cs_link_acker"]["p50_us"]
    print("where a plain tick's time goes (p50; differences of figures measured at different moments carry the "
          "machine's noise, +-20 us here):")
    print(f"  transport + codec (C# echo + Codec)                 ~{c:.1f} us")
    print(f"  the link's own work + the acker's header handling   ~{k - c:.1f} us  (BridgeLink.Post to the acker "
          f"{k:.1f} - C# echo + Codec)")
    for r, q in zip(lock, acker_lock):
        p, a = r["plain"]["p50_us"], q["plain"]["p50_us"]
        line = f"  [{r['label']}] sidecar ~{p - a:.1f} us (event with the sidecar {p:.1f} - with the instant acker {a:.1f})"
        if "cs_link" in q:
            line += (f"; simulator + strategy ~{a - q['cs_link']['p50_us']:.1f} us (event with the acker - "
                     f"BridgeLink.Post loop {q['cs_link']['p50_us']:.1f} around it)")
        print(line)
    if acker_free is not None and acker_free["loop_events_per_s"]:
        print(f"  simulator + strategy + enqueueing, free-running against the acker: "
              f"{1e6 / acker_free['loop_events_per_s']:.1f} us per event in the event loop (the link's writer thread "
              f"runs on the other core)")
    print(f"  sidecar + the Python client's own encode/decode (Python tick->ack - echo): {sidecar_share:.1f} us")
    return {"baseline_before": before, "baseline_after": after, "baseline_mean": base, "lockstep": lock,
            "free_running": free, "acker_lockstep": acker_lock, "acker_free_running": acker_free,
            "goal_events_per_s": GOAL_EVENTS_PER_S, "lockstep_best_events_per_s": best, "goal_met": met}


def workload_problems(lock: list[dict[str, Any]], free: dict[str, Any], acker_lock: list[dict[str, Any]],
                      acker_free: dict[str, Any] | None, tick_file: bool) -> list[str]:
    """Why the figures would not measure what they say, if they would not. Stored ticks are counted
    only for a tick file: a minute file's events reach the sidecar as bars."""
    problems = []
    for r in lock:
        if not r["brackets"] or not r["fills"]:
            problems.append(f"[{r['label']}] {r['brackets']} entries and {r['fills']} fills in {r['events']:,} events: "
                            "no tick -> BRACKET to time (is the sidecar still in the plumbing configuration?)")
        if tick_file and r.get("ticks_stored") != r["events"]:
            problems.append(f"[{r['label']}] the sidecar stored {r.get('ticks_stored')} of {r['events']:,} ticks")
    if tick_file and not free.get("ticks_stored"):
        problems.append(f"[{free['label']}] the sidecar stored no tick ({free.get('session_end')})")
    for r in [*lock, free, *acker_lock, *([acker_free] if acker_free else [])]:
        if r["strategy_error"]:
            problems.append(f"[{r['label']}] strategy error: {r['strategy_error'][:200]}")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"NT8 data file (default {DEFAULT_DATA})")
    p.add_argument("--max-events", type=int, default=None, help="play at most this many events (default: all)")
    p.add_argument("--repeat", type=int, default=1, help="lockstep runs, each against a fresh sidecar (default 1)")
    p.add_argument("--window", type=int, default=1, help="lockstep window: 1 waits for the sidecar on every message "
                   "(default); N lets up to N ticks travel as one TICKS message, waiting at bar closes and full batches")
    p.add_argument("--latency-ms", type=int, default=50, help="free-running order latency in event time (default 50)")
    p.add_argument("--event-warmup", type=int, default=1000,
                   help="events of each playback left out of its percentiles, not out of its throughput (default 1000)")
    p.add_argument("--samples", type=int, default=5000, help="baseline round trips of each kind (default 5000)")
    p.add_argument("--warmup", type=int, default=500, help="baseline round trips of each kind discarded first (default 500)")
    p.add_argument("--block", type=int, default=250, help="baseline samples of one kind before switching (default 250)")
    p.add_argument("--no-acker", action="store_true", help="skip the runs against the instant acker")
    p.add_argument("--no-after", action="store_true", help="measure the baselines only before the playbacks")
    p.add_argument("--keep", action="store_true", help="keep the work folder (databases, sidecar logs)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(p, argv, SMOKE, 'a playback no longer brings an entry')
    if args.samples < 1 or args.warmup < 0 or args.block < 1 or args.repeat < 1 or args.event_warmup < 0:
        p.error("--samples, --block and --repeat must be positive, --warmup and --event-warmup not negative")
    if args.latency_ms < 1:
        p.error("--latency-ms must be at least 1 (0 would be lockstep)")
    if not args.data.exists():
        p.error(f"no data file {args.data}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nt8bridge-bench-") as tmp:
        workdir = Path(tempfile.mkdtemp(prefix="nt8bridge-bench-")) if args.keep else Path(tmp)
        (workdir / "sidecar.toml").write_text(rt.CONFIG_TOML, encoding="utf-8")
        started = time.perf_counter()
        print("compiling/loading the simulator and the NinjaScript under Mono ...", flush=True)
        dotnet = load_dotnet(workdir)
        closes = bar_closes(args.data, args.max_events or 1 << 62)
        print(f"baselines: {args.samples} round trips after {args.warmup} warm-up, of each kind, interleaved in "
              f"blocks of {args.block}", flush=True)
        before = measure_baselines(args, workdir, dotnet, "before")
        gc.collect()
        lock: list[dict[str, Any]] = []
        acker_lock: list[dict[str, Any]] = []
        for i in range(args.repeat):
            print(f"lockstep playback {i + 1}/{args.repeat} ...", flush=True)
            lock.append(play(args, workdir, f"lockstep-{i + 1}", lockstep=True, acker=False, closes=closes))
            if not args.no_acker:  # right after, so that the pair sees about the same load
                print(f"lockstep playback {i + 1}/{args.repeat} against the instant acker ...", flush=True)
                acker_lock.append(play(args, workdir, f"acker-lockstep-{i + 1}", lockstep=True, acker=True,
                                       closes=closes, cs_link_type=dotnet[1]))
        print(f"free-running playback ({args.latency_ms} ms) ...", flush=True)
        free = play(args, workdir, "free-running", lockstep=False, acker=False, closes=closes)
        acker_free = None
        if not args.no_acker:
            print("free-running playback against the instant acker ...", flush=True)
            acker_free = play(args, workdir, "acker-free-running", lockstep=False, acker=True, closes=closes)
        after = None
        if not args.no_after:
            print("baselines again ...", flush=True)
            after = measure_baselines(args, workdir, dotnet, "after")
        out = report(args, before, after, lock, free, acker_lock, acker_free)
        out["elapsed_s"] = round(time.perf_counter() - started, 1)
        print(f"\n(elapsed {out['elapsed_s']} s{'; work folder kept: ' + str(workdir) if args.keep else ''})")
        if args.json:
            print(json.dumps(out, indent=2, default=str))
    problems = workload_problems(lock, free, acker_lock, acker_free, tick_file=closes is not None)
    if problems:
        print("bench_nt8sim: FAILED, the workload no longer produces what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
