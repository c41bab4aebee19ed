"""The cost of the feeds beside NT8 on the hot path: tick-to-BRACKET of a sidecar running two extra feeds
against the same sidecar running none, in the same run.

    .venv/bin/python bench/bench_feeds.py [--samples N] [--warmup W] [--block B] [--ib-ticks-per-s R]
                                          [--json] [--keep] [--smoke]

Three real sidecars (``SidecarProcess``: ``nt8bridge serve`` in child processes, each with a fresh SQLite file,
storage on, the plumbing configuration with the momentum strategy, as bench_roundtrip.py runs it):

* none: ``feeds.enabled`` empty, NT8 its only feed (the sidecar as it was before the feeds);
* none again: the same, a second time: how far apart two identical sidecars land in the same run is the
  noise under the figure on a shared machine;
* feeds: ``feeds.enabled = "ib,alpha_vantage"``: the real IB feed (ib_async on its own thread) connected to
  the fake TWS (tests/fakes/tws.py) streaming ES prints at ``--ib-ticks-per-s`` as tick-by-tick Last and
  BidAsk, and the Alpha Vantage feed polling the local HTTP server (tests/fakes/alpha_vantage_server.py) for
  SPY once a second. Its loop drains the feed bus, evaluates the reference book and judges ES a few times a
  second, between bursts of NT8 messages, and its decisions read the book's reference.

The fake TWS and the HTTP server run in a child process of their own, so that their threads compete with
the sidecar they feed, never with this process's client. The workload is bench_roundtrip.py's: each sample
is a TICK closing a bar that breaks the channel, timed until its BRACKET arrives (then fills flatten the
position). The sidecars' samples are interleaved in blocks of ``--block``, so that outside load hits them
alike. The figure is p99(feeds) / p99(none); the goal is at most 1.05 (5 % worse).

The run fails (exit 1) when a breakout brings no BRACKET, or when the feeds sidecar received nothing from
either feed: its figure would then time a sidecar without feeds. The feeds sidecar's staleness policy is
relaxed (``on_nt8_down = "continue"``, a long stale limit), because this process feeds one sidecar while
the other waits: what is measured is the hand-over, not the REDUCING hold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zmq  # noqa: E402

import smoke  # noqa: E402 - bench/smoke.py
from bench_roundtrip import (  # noqa: E402
    CONFIG_TOML,
    BracketWorkload,
    WorkloadError,
    bars_before_features,
    run_interleaved,
    summarize,
)
from bridge.core.config import load_config  # noqa: E402
from bridge.transport.control import send_command  # noqa: E402
from bridge.transport.sidecar import SidecarProcess  # noqa: E402

GOAL_RATIO = 1.05
SMOKE = {"samples": 20, "warmup": 5, "block": 10, "brackets_per_session": 10}

# The fake TWS and the Alpha Vantage stand-in, in a process of their own: a random walk of ES prints around
# the workload's prices (what they say does not matter here, only that they keep arriving), and SPY quotes.
FEEDS_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from tests.fakes.tws import FakeTws
from tests.fakes.tws_replay import ReplaySource
from tests.fakes.alpha_vantage_server import AlphaVantageServer
rng = np.random.default_rng(7)
prices = 2700.0 + 0.25 * np.cumsum(rng.integers(-1, 2, 20_000))
source = ReplaySource("ES", prices, rng.integers(1, 10, 20_000), 0.25)
tws = FakeTws({"ES": source}, ticks_per_s=float(sys.argv[2]), tbt_limit=3)
port = tws.start()
av = AlphaVantageServer("quote").start()
print(port, av.url, flush=True)
sys.stdin.readline()
tws.stop()
av.close()
"""


def start_feeds(ticks_per_s: float) -> tuple[subprocess.Popen, int, str]:
    proc = subprocess.Popen([sys.executable, "-c", FEEDS_SCRIPT, str(ROOT), str(ticks_per_s)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2:
        proc.kill()
        raise RuntimeError("the fake TWS and Alpha Vantage server did not start")
    return proc, int(line[0]), line[1]


def feeds_config(port: int, av_url: str, enabled: str = "ib,alpha_vantage") -> str:
    return CONFIG_TOML + f"""
[feeds]
enabled = "{enabled}"
on_nt8_down = "continue"
stale_after_s = 600.0

[feeds.ib]
port = {port}
roots = "ES"
client_id = 23

[feeds.alpha_vantage]
api_key = "bench-key"
base_url = "{av_url}"
requests_per_day = 1000000
requests_per_s = 5.0
poll_s = 1.0
symbols = "ES=SPY"
"""


def wait_for_feeds(control: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Until the feeds sidecar has values from both feeds (their counters), or the timeout."""
    deadline = time.monotonic() + timeout_s
    feeds: dict[str, Any] = {}
    while time.monotonic() < deadline:
        feeds = send_command(control, "status")["feeds"]
        values = {n: f["counters"].get("values", 0) for n, f in feeds["feeds"].items() if n != "nt8"}
        if all(values.get(n, 0) > 0 for n in feeds["enabled"]):
            return feeds
        time.sleep(0.2)
    return feeds


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Three sidecars: none, none again (the same configuration: how far apart two identical sidecars land in
    this run, the noise under the figure), and feeds; their samples interleaved."""
    plain = workdir / "none.toml"
    plain.write_text(CONFIG_TOML, encoding="utf-8")
    quiet_bars = bars_before_features(load_config(plain).strategy)
    os.environ["XDG_DATA_HOME"] = str(workdir / "data")  # the Alpha Vantage budget file: not the user's
    feeds_proc, port, av_url = start_feeds(args.ib_ticks_per_s)
    with_feeds = workdir / "feeds.toml"
    with_feeds.write_text(feeds_config(port, av_url, args.feeds), encoding="utf-8")
    ctx = zmq.Context()
    procs = {name: SidecarProcess(f"sqlite:///{workdir / (name + '.sqlite')}", config, log_path=workdir / f"{name}.log")
             for name, config in (("none", plain), ("none_again", plain), ("feeds", with_feeds))}
    loads: dict[str, BracketWorkload] = {}
    try:
        endpoints = {name: proc.start() for name, proc in procs.items()}
        control = procs["feeds"].control_endpoint
        assert control
        before = wait_for_feeds(control)
        for name, endpoint in endpoints.items():
            loads[name] = BracketWorkload(endpoint, ctx, quiet_bars, per_session=args.brackets_per_session,
                                          prefix=f"bench-{name}")
        kept = run_interleaved({name: w.sample for name, w in loads.items()}, args.samples, args.warmup, args.block)
        after = send_command(control, "status")["feeds"]
    finally:
        for w in loads.values():
            w.close()
        codes = tuple(proc.stop() for proc in procs.values())
        if feeds_proc.stdin is not None:
            feeds_proc.stdin.close()
        feeds_proc.wait(30)
        ctx.term()
    return {**{name: summarize(v) for name, v in kept.items()}, "feeds_before": before, "feeds_after": after,
            "exit_codes": codes, "logs": [str(proc.log_path) for proc in procs.values()], "enabled": args.feeds}


def ratio(x: float, y: float) -> float:
    return x / y if y > 0 else math.nan


def report(r: dict[str, Any]) -> dict[str, Any]:
    none, again, feeds = r["none"], r["none_again"], r["feeds"]
    after = r["feeds_after"]
    print()
    print(f"{'tick -> BRACKET':40s} {'n':>6s} {'p50 us':>9s} {'p99 us':>9s} {'mean us':>9s} {'max us':>9s}")
    for label, s in (("sidecar, no feed beside NT8", none), ("  the same sidecar again (noise)", again),
                     (f"sidecar, {r['enabled'].replace(',', ' + ')} running", feeds)):
        print(f"{label:40s} {s['n']:6d} {s['p50_us']:9.1f} {s['p99_us']:9.1f} {s['mean_us']:9.1f} {s['max_us']:9.1f}")
    r50, r99 = ratio(feeds["p50_us"], none["p50_us"]), ratio(feeds["p99_us"], none["p99_us"])
    n50, n99 = ratio(again["p50_us"], none["p50_us"]), ratio(again["p99_us"], none["p99_us"])
    print()
    print(f"p50(feeds) / p50(none)               = {r50:6.3f}   (two sidecars without feeds: {n50:.3f})")
    verdict = "meets" if r99 <= GOAL_RATIO else "DOES NOT meet"
    print(f"p99(feeds) / p99(none)               = {r99:6.3f}   {verdict} the goal (<= {GOAL_RATIO:g}); two sidecars "
          f"without feeds: {n99:.3f}")
    counters = {n: f["counters"] for n, f in after["feeds"].items() if n != "nt8"}
    print(f"feeds sidecar: {after['quotes_drained']:,} values drained from the bus "
          f"({after['dropped_by_bus']} dropped), ib {counters.get('ib', {}).get('values', 0):,} values, "
          f"alpha_vantage {counters.get('alpha_vantage', {}).get('values', 0):,} values; reference of ES: "
          f"{after['roots'].get('ES', {}).get('reference')}")
    print(f"sidecars' exit codes {r['exit_codes']}; logs {', '.join(r['logs'])}")
    return {"none": none, "none_again": again, "feeds": feeds, "p50_ratio": r50, "p99_ratio": r99,
            "noise_p50_ratio": n50, "noise_p99_ratio": n99, "goal": GOAL_RATIO, "meets_goal": r99 <= GOAL_RATIO,
            "feeds_status": after}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=3000, help="measured BRACKETs of each sidecar (default 3000)")
    p.add_argument("--warmup", type=int, default=300, help="BRACKETs of each discarded first (default 300)")
    p.add_argument("--block", type=int, default=100, help="samples of one sidecar before switching (default 100)")
    p.add_argument("--brackets-per-session", type=int, default=100, help="breakouts per session (default 100)")
    p.add_argument("--ib-ticks-per-s", type=float, default=100.0,
                   help="prints a second the fake TWS streams (default 100, a busy ES)")
    p.add_argument("--feeds", default="ib,alpha_vantage", choices=("ib,alpha_vantage", "ib", "alpha_vantage"),
                   help="the feeds the feeds sidecar runs (default both; one alone to see what each costs)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (databases, sidecar logs)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(p, argv, SMOKE, "a breakout brings no BRACKET or the feeds deliver nothing")
    if args.samples < 1 or args.warmup < 0 or args.block < 1 or not 1 <= args.brackets_per_session <= 1200:
        p.error("--samples and --block must be positive, --warmup not negative, --brackets-per-session 1..1200")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nt8bridge-bench-feeds-") as tmp:
        workdir = Path(tempfile.mkdtemp(prefix="nt8bridge-bench-feeds-")) if args.keep else Path(tmp)
        print(f"tick -> BRACKET: {args.samples} measured after {args.warmup} warm-up on each sidecar, interleaved in "
              f"blocks of {args.block}; the feeds sidecar runs {args.feeds} (ib: the fake TWS streaming "
              f"{args.ib_ticks_per_s:g} prints/s; alpha_vantage: a poll a second)", flush=True)
        started = time.perf_counter()
        try:
            r = measure(args, workdir)
        except WorkloadError as exc:
            print(f"bench_feeds: FAILED, the workload no longer produces what is measured: {exc}", file=sys.stderr)
            return 1
        counters = {n: f["counters"].get("values", 0) for n, f in r["feeds_after"]["feeds"].items()}
        if not all(counters.get(n) for n in args.feeds.split(",")) or not r["feeds_after"]["quotes_drained"]:
            print(f"bench_feeds: FAILED, the feeds sidecar received nothing from a feed ({counters}); its figures "
                  f"would time a sidecar without feeds. Its log: {r['logs'][-1]}", file=sys.stderr)
            return 1
        out = report(r)
        out["elapsed_s"] = round(time.perf_counter() - started, 1)
        print(f"\n(elapsed {out['elapsed_s']} s{'; work folder kept: ' + str(workdir) if args.keep else ''})")
        if args.json:
            print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
