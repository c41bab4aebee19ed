"""Sustained tick ingest through the real sidecar (quality gate and storage on), against a bare stream.

    .venv/bin/python bench/bench_ingest.py [--ticks M] [--strategy momentum|none] [--source file|synthetic]
                                           [--data FILE] [--batch N] [--json] [--keep] [--smoke]

What runs, in this order, in one process tree:

1. baseline (before): a DEALER streams M copies of one encoded TICK (two frames, 32 + 51 bytes)
   into a bare pyzmq ROUTER in a child process that only counts them; msg/s from the first send
   until the child reports the M-th message received.
2. client path alone: ``Nt8Client.send`` (build the Tick, encode, send) of the M real ticks into
   the same kind of counting child, and the same loop with encoding only (no socket): the fastest
   this client can feed anything, so a sidecar rate close to it means the client is the limit.
3. the sidecar: ``SidecarProcess`` (``nt8bridge serve`` in a child process, a fresh SQLite file,
   the strategy named by ``--strategy``, default momentum as in production). A free-running client
   (HELLO flags 0: no acknowledgements) sends the M ticks as fast as it can, then BYE. Flow control
   is ZeroMQ's own: the client's DEALER and the sidecar's ROUTER have high-water marks of 100,000
   and 10,000 messages (Nt8Client, SidecarServer.bind), and a DEALER whose pipe is full *blocks* in
   send rather than dropping, while the ROUTER stops reading TCP when its inbound queue is full; so
   no extra window is needed, and anything missing in storage is a real loss. The sidecar ends the
   session on BYE with a storage update that the writer applies after every row handed over before
   it (bridge/storage/writer.py), so "the session row has ended_ns" means "every tick is committed";
   the clock stops when this process sees it (polling the SQLite file every 20 ms). The socket is
   closed only after that: ``Nt8Client.close`` lingers 500 ms, which could discard ticks still
   queued in the client if the sidecar were behind.
   Then SIGINT (a clean shutdown), and the ``ticks`` rows of the session are counted.
4. baseline (after): step 1 again, so that a change in the machine's load during the run shows.

Ratios are against the mean of the two baselines. Ticks: real ES 06-18 trades
(/work/shared/data/nt8/ES 06-18.Last.txt.gz, 74,907 of them on 2018-05-07 13:30-17:00 UTC),
repeated on the following weekdays at the same hours (in session, strictly non-decreasing) as often
as M needs; or ``--source synthetic``: a one-tick random walk on the 0.25 grid, 1 ms apart.

It fails (exit code 1) after printing its figures when the sidecar stored no tick (there is no rate to
speak of) or lost some (sent - stored - refused is not zero). ``--smoke`` runs it at a tiny size in a
few seconds for that check alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.nt8.client import Nt8Client
from bridge.nt8.playback import load_stream
from bridge.protocol import codec
from bridge.protocol.messages import Bye, Error, InstrumentDecl, SubmitBracket, Tick, TickKind
from bridge.transport.sidecar import SidecarProcess
from bridge.storage.queries import session_counts

NS = 1_000_000_000
DAY_NS = 86_400 * NS
INSTRUMENT = InstrumentDecl("ES 06-18", 0.25, 50.0)
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nt8" / "ES 06-18.Last.txt.gz"
GOAL_TICKS_PER_S = 100_000
DRAIN_EVERY = 4096  # free-running replies (ERROR, BRACKET, HEARTBEAT) are read this often
# --smoke: a few thousand ticks; options given explicitly win
SMOKE = {"ticks": 3000}

# A counting peer in its own interpreter (never competing with the sender for a GIL, as the
# sidecar child does not). Protocol: the first message is answered READY (the connection is up,
# the clock may start); after N more it answers DONE with the count. Options as SidecarServer.bind.
COUNTER_SCRIPT = r"""
import sys, zmq
n = int(sys.argv[1])
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 1000)
s.setsockopt(zmq.SNDHWM, 100_000)
s.setsockopt(zmq.RCVHWM, 100_000)
s.bind("tcp://127.0.0.1:*")
print(s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
recv = s.recv_multipart
rid = recv()[0]
s.send_multipart([rid, b"READY"])
count = 0
bytes_seen = 0
while count < n:
    frames = recv()
    count += 1
    bytes_seen += len(frames[1]) + len(frames[2])
s.send_multipart([rid, b"DONE", str(count).encode(), str(bytes_seen).encode()])
s.close()
ctx.term()
"""


# ---------------------------------------------------------------------------------------------
# the ticks
# ---------------------------------------------------------------------------------------------


@dataclass
class TickColumns:
    ts: list[int]
    price: list[float]
    size: list[int]
    description: str

    def __len__(self) -> int:
        return len(self.ts)


def _next_weekdays(first: dt.date, count: int) -> list[dt.date]:
    """``first`` and the weekdays after it: a file's UTC hours fall in session on each of them."""
    days = [first]
    while len(days) < count:
        d = days[-1] + dt.timedelta(days=1)
        while d.weekday() >= 5:
            d += dt.timedelta(days=1)
        days.append(d)
    return days


def real_ticks(path: Path, n: int) -> TickColumns:
    """The file's trades, repeated on following weekdays at the same UTC hours, cut to n."""
    stream = load_stream([path], INSTRUMENT.name)
    base_ts = stream.ts_ns.astype(np.int64)
    first_day = dt.datetime.fromtimestamp(int(base_ts[0]) // NS, dt.timezone.utc).date()
    last_day = dt.datetime.fromtimestamp(int(base_ts[-1]) // NS, dt.timezone.utc).date()
    if first_day != last_day:
        raise SystemExit(f"{path}: spans several days; repeating it by whole days would overlap. "
                         "Use --source synthetic")
    reps = math.ceil(n / len(base_ts))
    days = _next_weekdays(first_day, reps)
    ts = np.concatenate([base_ts + (d - first_day).days * DAY_NS for d in days])[:n]
    price = np.tile(stream.price, reps)[:n]
    size = np.tile(stream.size.astype(np.int64), reps)[:n]
    if np.any(np.diff(ts) < 0):
        raise SystemExit("tick times go backwards; the quality gate would refuse them")
    return TickColumns(ts.tolist(), price.tolist(), size.tolist(),
                       f"{len(base_ts):,} real trades of {path.name} ({first_day}), x{reps} weekdays from {first_day}")


def synthetic_ticks(n: int, seed: int = 7) -> TickColumns:
    """A one-tick random walk on the 0.25 grid, 1 ms apart from a Tuesday 14:30 UTC (in session)."""
    rng = np.random.default_rng(seed)
    steps = rng.choice(np.array([-1, 0, 0, 1]), size=n)  # mostly unchanged, as trades are
    price = 2700.0 + 0.25 * np.cumsum(steps)
    start = int(dt.datetime(2018, 5, 8, 14, 30, tzinfo=dt.timezone.utc).timestamp()) * NS
    ts = start + np.arange(n, dtype=np.int64) * 1_000_000
    size = rng.integers(1, 10, size=n)
    return TickColumns(ts.tolist(), price.tolist(), size.tolist(),
                       f"synthetic random walk, 1 ms apart, from 2018-05-08 14:30 UTC (seed {seed})")


# ---------------------------------------------------------------------------------------------
# baselines and the client alone
# ---------------------------------------------------------------------------------------------


def _start_counter(n: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", COUNTER_SCRIPT, str(n)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("tcp://"):
        proc.kill()
        raise RuntimeError("the counting child did not start")
    return proc, endpoint


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)  # as Nt8Client
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(endpoint)
    return sock


def _wait_done(sock: zmq.Socket, n: int, timeout_s: float = 300.0) -> None:
    if not sock.poll(int(timeout_s * 1000)):
        raise RuntimeError(f"the counting child did not report {n} messages within {timeout_s:.0f} s")
    frames = sock.recv_multipart()
    if frames[0] != b"DONE" or int(frames[1]) != n or int(frames[2]) != 83 * n:
        raise RuntimeError(f"the counting child answered {frames!r}, expected DONE {n} {83 * n}")


def bare_stream(ctx: zmq.Context, n: int) -> dict[str, float]:
    """The transport floor: M identical 83-byte two-frame messages, DEALER -> counting ROUTER child."""
    proc, endpoint = _start_counter(n)
    sock = _dealer(ctx, endpoint)
    try:
        sock.send(b"hello")
        if not sock.poll(10_000) or sock.recv() != b"READY":
            raise RuntimeError("the counting child did not answer")
        frames = codec.encode(Tick(0, int(TickKind.LAST), 2700.0, 1, math.nan, math.nan, 1_525_790_000 * NS,
                                   1_525_790_000 * NS), 1, time.time_ns())
        send = sock.send_multipart
        t0 = time.perf_counter()
        for _ in range(n):
            send(frames)
        sent = time.perf_counter()
        _wait_done(sock, n)
        done = time.perf_counter()
    finally:
        sock.close()
        proc.wait(30)
    return {"messages": n, "send_s": sent - t0, "wall_s": done - t0, "msg_per_s": n / (done - t0)}


def client_into_counter(ctx: zmq.Context, ticks: TickColumns) -> dict[str, float]:
    """``Nt8Client.send`` of the real ticks into a counting child: the client's own ceiling."""
    n = len(ticks)
    proc, endpoint = _start_counter(n)
    client = Nt8Client(endpoint, instance_id="bench-client-only", account="Sim101", instruments=[INSTRUMENT],
                       lockstep=False, context=ctx)
    try:
        client.sock.send(b"hello")  # not HELLO: the counter only needs to see the connection
        if not client.sock.poll(10_000) or client.sock.recv() != b"READY":
            raise RuntimeError("the counting child did not answer")
        send = client.send
        nan = math.nan
        last = int(TickKind.LAST)
        t0 = time.perf_counter()
        for ts, price, size in zip(ticks.ts, ticks.price, ticks.size):
            send(Tick(0, last, price, size, nan, nan, ts, ts))
        sent = time.perf_counter()
        _wait_done(client.sock, n)
        done = time.perf_counter()
    finally:
        client.close(reason=None)
        proc.wait(30)
    return {"messages": n, "send_s": sent - t0, "wall_s": done - t0, "msg_per_s": n / (done - t0)}


def encode_only(ticks: TickColumns) -> dict[str, float]:
    """What ``Nt8Client.send`` does before the socket: build the Tick and encode it."""
    encode = codec.encode
    nan = math.nan
    last = int(TickKind.LAST)
    clock = time.time_ns
    t0 = time.perf_counter()
    for seq, (ts, price, size) in enumerate(zip(ticks.ts, ticks.price, ticks.size), 1):
        encode(Tick(0, last, price, size, nan, nan, ts, ts), seq, clock())
    elapsed = time.perf_counter() - t0
    return {"messages": len(ticks), "wall_s": elapsed, "msg_per_s": len(ticks) / elapsed}


# ---------------------------------------------------------------------------------------------
# the sidecar
# ---------------------------------------------------------------------------------------------


def _db_path(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


def _wait_session_ended(db_file: str, session_id: int, timeout_s: float) -> float:
    """perf_counter() when the session row shows ended_ns: every row before it is committed."""
    deadline = time.monotonic() + timeout_s
    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5.0)
    try:
        while time.monotonic() < deadline:
            try:
                row = con.execute("SELECT ended_ns FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            except sqlite3.OperationalError:  # the writer holds a lock for a moment; ask again
                row = None
            if row is not None and row[0] is not None:
                return time.perf_counter()
            time.sleep(0.02)
    finally:
        con.close()
    raise RuntimeError(f"session {session_id} did not end within {timeout_s:.0f} s: the sidecar is stuck or "
                       "lost the BYE")


def sidecar_ingest(ticks: TickColumns, strategy: str, workdir: Path, ctx: zmq.Context,
                   batch: int = 1) -> dict[str, Any]:
    config_path = workdir / "sidecar.toml"
    config_path.write_text(f'[strategy]\nnames = "{strategy}"\n', encoding="utf-8")
    db_url = f"sqlite:///{workdir / 'ingest.sqlite'}"
    sidecar = SidecarProcess(db_url, config_path, log_path=workdir / "sidecar.log")
    sidecar.start()
    n = len(ticks)
    errors = brackets = 0
    client = Nt8Client(sidecar.endpoint, instance_id="bench-ingest", account="Sim101", instruments=[INSTRUMENT],
                       lockstep=False, context=ctx)
    try:
        welcome = client.connect()
        session_id = welcome.session_id

        def drain() -> None:
            nonlocal errors, brackets
            for msg in client.drain(0):
                if isinstance(msg, Error):
                    errors += 1
                elif isinstance(msg, SubmitBracket):
                    brackets += 1

        send = client.send
        nan = math.nan
        last = int(TickKind.LAST)
        i = 0
        pending: list[Tick] = []
        t0 = time.perf_counter()
        for ts, price, size in zip(ticks.ts, ticks.price, ticks.size):
            if batch == 1:
                send(Tick(0, last, price, size, nan, nan, ts, ts))
            else:  # TICKS messages of `batch` ticks, as a live client batches a burst
                pending.append(Tick(0, last, price, size, nan, nan, ts, ts))
                if len(pending) == batch:
                    client.send_ticks(pending)
                    pending = []
            i += 1
            if i % DRAIN_EVERY == 0:
                drain()
        if pending:
            client.send_ticks(pending)
        t_sent = time.perf_counter()
        send(Bye("benchmark finished"))
        t_done = _wait_session_ended(_db_path(db_url), session_id, timeout_s=600.0)
        drain()
    finally:
        client.close(reason=None)  # BYE was sent above; nothing is queued any more
        code = sidecar.stop()
    counts = session_counts(db_url, session_id)
    con = sqlite3.connect(_db_path(db_url))
    try:
        refused = con.execute("SELECT count(*) FROM quality_events WHERE session_id = ? AND "
                              "json_extract(payload, '$.rejected') = 1", (session_id,)).fetchone()[0]
        first_ns, last_ns = con.execute("SELECT min(ts_sidecar_ns), max(ts_sidecar_ns) FROM ticks "
                                        "WHERE session_id = ?", (session_id,)).fetchone()
    finally:
        con.close()
    log_text = Path(sidecar.log_path).read_text(errors="replace")
    m = re.search(r"storage closed: (\d+) rows committed, (\d+) rejected, (\d+) backpressure waits", log_text)
    warnings = [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line]
    processing_s = (last_ns - first_ns) / NS if first_ns is not None and last_ns > first_ns else math.nan
    return {
        "strategy": strategy, "batch": batch, "session_id": session_id, "ticks_sent": n, "ticks_stored": counts.ticks,
        "ticks_refused_by_gate": refused, "ticks_lost": n - counts.ticks - refused,
        "quality_events_by_reason": counts.quality_events_by_reason, "bars": counts.bars,
        "brackets_received": brackets, "errors_received": errors, "session_end": counts.end_reason,
        "client_send_s": t_sent - t0, "wall_s": t_done - t0, "ticks_per_s": n / (t_done - t0),
        "sidecar_first_to_last_tick_s": processing_s,
        "sidecar_ticks_per_s": counts.ticks / processing_s if processing_s == processing_s else math.nan,
        "storage_rows_committed": int(m.group(1)) if m else None,
        "storage_backpressure_waits": int(m.group(3)) if m else None,
        "sidecar_exit_code": code, "sidecar_log_warning_count": len(warnings),
        "sidecar_log_warnings": warnings[:10], "sidecar_log": str(sidecar.log_path),
    }


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def workload_problems(sidecar: dict[str, Any]) -> list[str]:
    """Why the figures would not measure what they say, if they would not."""
    problems = []
    if not sidecar["ticks_stored"]:
        problems.append(f"the sidecar stored none of the {sidecar['ticks_sent']:,} ticks sent "
                        f"(session end {sidecar['session_end']}, log {sidecar['sidecar_log']})")
    if sidecar["ticks_lost"]:
        problems.append(f"{sidecar['ticks_lost']:,} ticks lost: the rate is not one of zero loss")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=500_000, help="ticks to stream (default 500,000)")
    p.add_argument("--strategy", default="momentum", choices=("momentum", "none"),
                   help="the sidecar's strategy (default momentum, as in production)")
    p.add_argument("--source", default="file", choices=("file", "synthetic"), help="real ticks or a random walk")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"NT8 tick file (default {DEFAULT_DATA})")
    p.add_argument("--batch", type=int, default=1, help="ticks per message: 1 sends TICK messages, more sends "
                   "TICKS messages of that many ticks (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, sidecar log)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(p, argv, SMOKE, 'the sidecar stores nothing or loses ticks')
    if args.ticks < 1:
        p.error("--ticks must be positive")
    if not 1 <= args.batch <= 1000:
        p.error("--batch must be 1..1000 (a TICKS message holds at most what fits in 64 KiB)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source == "file" and not args.data.exists():
        print(f"{args.data} is missing: using synthetic ticks", file=sys.stderr)
        args.source = "synthetic"
    ticks = real_ticks(args.data, args.ticks) if args.source == "file" else synthetic_ticks(args.ticks)
    print(f"ingest of {len(ticks):,} ticks: {ticks.description}; sidecar strategy {args.strategy!r}", flush=True)

    with tempfile.TemporaryDirectory(prefix="nt8bridge-bench-") as tmp:
        workdir = Path(tempfile.mkdtemp(prefix="nt8bridge-bench-")) if args.keep else Path(tmp)
        ctx = zmq.Context()
        try:
            base_before = bare_stream(ctx, len(ticks))
            client_only = client_into_counter(ctx, ticks)
            encode = encode_only(ticks)
            sidecar = sidecar_ingest(ticks, args.strategy, workdir, ctx, args.batch)
            base_after = bare_stream(ctx, len(ticks))
        finally:
            ctx.term()

    base = (base_before["msg_per_s"] + base_after["msg_per_s"]) / 2
    rate = sidecar["ticks_per_s"]
    w = 48
    print()
    print(f"{'':{w}s} {'msg/s':>12s} {'vs baseline':>12s} {'wall s':>8s}")
    rows = [("baseline: bare DEALER->ROUTER stream (before)", base_before),
            ("baseline: bare DEALER->ROUTER stream (after)", base_after),
            ("client alone: Nt8Client.send into a counter", client_only),
            ("client alone: Tick + encode, no socket", encode)]
    for label, r in rows:
        print(f"{label:{w}s} {r['msg_per_s']:12,.0f} {r['msg_per_s'] / base:11.3f}x {r['wall_s']:8.2f}")
    via = "TICK messages" if args.batch == 1 else f"TICKS messages of {args.batch}"
    print(f"sidecar fed with {via}:")
    print(f"{'sidecar: first send -> last row committed':{w}s} {rate:12,.0f} {rate / base:11.3f}x "
          f"{sidecar['wall_s']:8.2f}")
    print(f"{'  sidecar alone: first -> last tick processed':{w}s} {sidecar['sidecar_ticks_per_s']:12,.0f} "
          f"{sidecar['sidecar_ticks_per_s'] / base:11.3f}x {sidecar['sidecar_first_to_last_tick_s']:8.2f}")
    print(f"{'  client: first -> last send (queues absorb)':{w}s} {len(ticks) / sidecar['client_send_s']:12,.0f} "
          f"{len(ticks) / sidecar['client_send_s'] / base:11.3f}x {sidecar['client_send_s']:8.2f}")
    print()
    print(f"ticks sent {sidecar['ticks_sent']:,}   stored {sidecar['ticks_stored']:,}   refused by the quality gate "
          f"{sidecar['ticks_refused_by_gate']:,}   lost {sidecar['ticks_lost']:,}")
    if sidecar["ticks_lost"] != 0:
        print("!" * 78)
        print(f"!!! {sidecar['ticks_lost']:,} TICKS LOST: sent - stored - refused is not zero !!!")
        print("!" * 78)
    print(f"quality events {sidecar['quality_events_by_reason'] or '{}'}; bars {sidecar['bars']:,}; "
          f"BRACKETs {sidecar['brackets_received']}; ERRORs {sidecar['errors_received']}; "
          f"session end {sidecar['session_end']}")
    print(f"storage: {sidecar['storage_rows_committed']} rows committed, "
          f"{sidecar['storage_backpressure_waits']} backpressure waits; sidecar exit code "
          f"{sidecar['sidecar_exit_code']}, {sidecar['sidecar_log_warning_count']} warning/error log line(s)")
    for line in sidecar["sidecar_log_warnings"][:5]:
        print(f"  {line}")
    meets = rate >= GOAL_TICKS_PER_S and sidecar["ticks_lost"] == 0
    print(f"\ngoal {GOAL_TICKS_PER_S:,} ticks/s with zero loss: {rate:,.0f} ticks/s, {sidecar['ticks_lost']} lost -> "
          f"{'meets' if meets else 'DOES NOT meet'} the goal")
    # with batches the client's own ceiling is its send rate in the batched run, not the single-send one
    client_ceiling = client_only["msg_per_s"] if args.batch == 1 else len(ticks) / sidecar["client_send_s"]
    side = ("the client (its send rate alone is within 20% of the sidecar's)" if rate > 0.8 * client_ceiling
            else "the sidecar (the client alone sends %.1fx faster)" % (client_ceiling / rate))
    print(f"bottleneck: {side}")
    if args.keep:
        print(f"work folder kept: {workdir}")
    if args.json:
        print(json.dumps({"ticks": len(ticks), "source": ticks.description, "baseline_before": base_before,
                          "baseline_after": base_after, "baseline_mean_msg_per_s": base,
                          "client_into_counter": client_only, "encode_only": encode, "sidecar": sidecar,
                          "ratio_to_baseline": rate / base, "goal_ticks_per_s": GOAL_TICKS_PER_S,
                          "meets_goal": meets}, indent=2, default=str))
    problems = workload_problems(sidecar)
    if problems:
        print("bench_ingest: FAILED, the workload no longer ingests what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
