"""Soak: an hour of market time through a real sidecar at 10x, watching memory and latency stay flat.

    .venv/bin/python bench/bench_soak.py [--minutes 60] [--speed 10] [--windows 6] [--seed 3] [--json] [--smoke]

A synthetic ES session (``bridge.data.synthetic.generate_session``: calibrated on the team's real ES
data, so the tick rate follows the hour of day) is sent by a lockstep NT8 client (``Nt8Client``) to
``nt8bridge serve`` in a child process (a fresh SQLite file, storage and audit trail on, the plumbing
configuration: the momentum strategy trades), paced at ``--speed`` times real time. Every tick waits
for its acknowledgement, so its round trip is the sidecar's whole answer: quality gate, bars,
features, strategy, risk, storage hand-over.

Printed per window of market time: ticks, round-trip p50/p99 (microseconds) and the sidecar's
resident memory (VmRSS, Linux); then the last window against the first (the baseline, measured in the
same run): p50 ratio and RSS growth. Fails when a tick is not acknowledged, when no BRACKET was sent
in an hour or more, or when RSS grows by more than ``GOAL_RSS_GROWTH_MB`` (not judged in a smoke run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file

from bridge.data.synthetic import generate_session  # noqa: E402
from bridge.nt8.client import Nt8Client  # noqa: E402
from bridge.protocol.messages import InstrumentDecl, SubmitBracket, Tick  # noqa: E402
from bridge.transport.sidecar import SidecarProcess  # noqa: E402

PLUMBING = ROOT / "tests" / "plumbing.toml"
INSTRUMENT = "ES 12-23"
START = dt.datetime(2023, 11, 8, 14, 30)  # a Wednesday, the cash open (UTC)
GOAL_RSS_GROWTH_MB = 50.0
SMOKE = {"minutes": 3, "speed": 120.0, "windows": 3}


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run(args: argparse.Namespace, folder: Path) -> dict:
    frame = generate_session([INSTRUMENT], START, args.minutes, args.seed)[INSTRUMENT]
    ts = frame["ts_ns"].to_numpy()
    price, bid, ask = (frame[c].to_numpy(float) for c in ("price", "bid", "ask"))
    size = frame["volume"].to_numpy()
    t0 = int(ts[0])
    window_ns = args.minutes * 60 * 10**9 // args.windows
    sidecar = SidecarProcess(f"sqlite:///{folder / 'soak.sqlite'}", PLUMBING, log_path=folder / "sidecar.log")
    endpoint = sidecar.start()
    out: dict = {"ticks": len(ts), "minutes": args.minutes, "speed": args.speed, "windows": [], "brackets": 0,
                 "failures": []}
    client = Nt8Client(endpoint, instance_id="soak", account="Sim101",
                       instruments=[InstrumentDecl(INSTRUMENT, 0.25, 50.0)])
    try:
        client.connect()
        wall0 = time.perf_counter()
        lat: list[float] = []
        window, count = 0, 0
        for k in range(len(ts)):
            due = wall0 + (int(ts[k]) - t0) / 1e9 / args.speed
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            w = min(args.windows - 1, (int(ts[k]) - t0) // window_ns)
            if w != window:
                out["windows"].append(summary(window, lat, rss_bytes(sidecar.proc.pid)))
                window, lat = w, []
            ns = int(ts[k])
            t = time.perf_counter_ns()
            replies = client.step(Tick(0, 0, float(price[k]), int(size[k]), float(bid[k]), float(ask[k]), ns, ns))
            lat.append((time.perf_counter_ns() - t) / 1000)
            out["brackets"] += sum(isinstance(r, SubmitBracket) for r in replies)
            count += 1
        out["windows"].append(summary(window, lat, rss_bytes(sidecar.proc.pid)))
        out["acknowledged"] = count
        out["wall_s"] = time.perf_counter() - wall0
        client.close()
    except Exception as exc:  # ClientError: a tick not acknowledged in time, the sidecar gone
        out["failures"].append(f"the soak stopped: {exc}")
    finally:
        code = sidecar.stop()
        if code != 0:
            out["failures"].append(f"the sidecar exited with code {code}")
    return out


def summary(window: int, lat: list[float], rss: int | None) -> dict:
    a = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"window": window, "ticks": len(lat), "p50_us": float(np.percentile(a, 50)),
            "p99_us": float(np.percentile(a, 99)), "rss": rss}


def report(out: dict, args: argparse.Namespace) -> None:
    print(f"soak: {out['minutes']} minutes of synthetic {INSTRUMENT} market time ({out['ticks']:,} ticks) at "
          f"{out['speed']:g}x, lockstep, plumbing configuration; {out['brackets']} BRACKETs sent")
    print(f"{'window (market time)':<24}{'ticks':>9}{'p50 us':>10}{'p99 us':>10}{'RSS MB':>10}")
    span = out["minutes"] / max(1, args.windows)
    for w in out["windows"]:
        rss = f"{w['rss'] / 1e6:10.1f}" if w["rss"] else f"{'n/a':>10}"
        label = f"{w['window'] * span:5.0f}-{(w['window'] + 1) * span:.0f} min"
        print(f"{label:<24}{w['ticks']:>9,}{w['p50_us']:>10.0f}{w['p99_us']:>10.0f}{rss}")
    if len(out["windows"]) >= 2:
        first, last = out["windows"][0], out["windows"][-1]
        print(f"last window / first window, round-trip p50   {last['p50_us'] / first['p50_us']:8.2f}x")
        if first["rss"] and last["rss"]:
            growth = (last["rss"] - first["rss"]) / 1e6
            out["rss_growth_mb"] = growth
            met = growth <= GOAL_RSS_GROWTH_MB
            print(f"RSS growth, last window - first              {growth:8.1f} MB   goal <= {GOAL_RSS_GROWTH_MB:g} MB: "
                  f"{'met' if met else 'NOT met'}{' (not judged in a smoke run)' if args.smoke else ''}")
            if not met and not args.smoke:
                out["failures"].append(f"RSS grew by {growth:.1f} MB")
    if args.minutes >= 60 and not out["brackets"]:  # the features' windows fill in the first half hour
        out["failures"].append("no BRACKET in an hour's soak: the strategy path was not exercised")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=60, help="market time played (default 60)")
    p.add_argument("--speed", type=float, default=10.0, help="times real time (default 10)")
    p.add_argument("--windows", type=int, default=6, help="windows the figures are given for (default 6)")
    p.add_argument("--seed", type=int, default=3, help="of the synthetic session (default 3)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(p, argv, SMOKE, "a tick is not acknowledged or the sidecar fails")
    if args.minutes < 1 or args.speed <= 0 or args.windows < 1:
        p.error("--minutes, --speed and --windows must be positive")
    with tempfile.TemporaryDirectory(prefix="nt8bridge-soak-") as tmp:
        out = run(args, Path(tmp))
    report(out, args)
    if args.json:
        print(json.dumps(out, indent=2))
    if out["failures"]:
        print("bench_soak: FAILED: " + "; ".join(out["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
