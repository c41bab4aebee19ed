"""The research engine's speed against NautilusTrader's backtest engine, on the same real ticks, in one run.

    .venv/bin/python bench/bench_research.py [--repeat K] [--nautilus-python PATH] [--profile] [--smoke]
    .venv/bin/python bench/bench_research.py --setup-nautilus      # NautilusTrader in bench/.venv-nautilus

The ticks: the 74,907 real ES trades of ../shared/data/nt8/"ES 06-18.Last.txt.gz", repeated ``--repeat``
times (default 10), copy i on the i-th weekday after the recording's own at the same UTC hours (in session,
each copy after the previous one). Rows of the table, each measured in a child process of its own so that
its peak resident memory is its own:

- research, no database: ``run_research`` (the sidecar's decision path in this process) with
  tests/plumbing.toml, rows counted and dropped, every audit record hashed into a chain journaled and
  checkpointed in a temporary folder (audit on). Timed around ``run_research`` (building the server
  included, loading the ticks not).
- research, SQLite + audit: the same with a fresh SQLite file: every row through the storage writer and
  every audit record in the hash chain, committed before the clock stops (the writer's close).
- NautilusTrader: bench/nautilus_ema_bracket.py run by the interpreter of NautilusTrader's own virtualenv
  (never a dependency of the project): its example ``EMACrossBracket`` over the same ticks as
  ``TradeTick`` data, timed around ``engine.run()`` only.
- numpy: a bare vectorised pass over the same ticks (1-minute bars, EMA 10/20 cross, ATR brackets, the
  first touch of stop or target found by array search): what the hardware gives with no engine at all.

The guards (exit code 1, in smoke and full runs): the research run of one full copy must give the pinned
digest of tests/integration/test_playback_digest.py (a different digest means a different decision path is
being timed), and the research runs must place brackets. ``--smoke``: one copy of the first 30,000 ticks
(the first bracket comes at event 25,528), NautilusTrader only when ``--nautilus-python`` is given.
``--profile``: after the timed run, one more of the research engine without database under cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from nautilus_ema_bracket import copy_offsets_ns, peak_rss_mb  # noqa: E402 - plain Python: shared by both sides
from bridge.core.config import load_config  # noqa: E402
from bridge.nt8.playback import TickStream, load_stream  # noqa: E402
from bridge.research.inprocess import run_research  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "nt8" / "ES 06-18.Last.txt.gz"
CONFIG = REPO / "tests" / "plumbing.toml"
NT_SCRIPT = BENCH / "nautilus_ema_bracket.py"
NT_VENV = BENCH / ".venv-nautilus"
NT_VERSION = "1.221.0"
# `nt8bridge --config tests/plumbing.toml playback --engine research` on one copy of DATA
PINNED_DIGEST = "e41fc28756934ab6a0f15e9b901bad57a87efb275850d5a7dd923b36be263544"
# the first bracket of the file comes at event 25,528: 30,000 ticks are the fewest with one to check
SMOKE = {"repeat": 1, "limit": 30_000, "rounds": 1}
NUMPY_RUNS = 5  # the numpy pass takes milliseconds: the median of a few


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# ---------------------------------------------------------------- the ticks


def repeated(stream: TickStream, copies: int) -> TickStream:
    """``stream`` ``copies`` times, each copy shifted to start after the previous one ends (same order)."""
    if copies == 1:
        return stream
    offsets = np.array(copy_offsets_ns(int(stream.ts_ns[0]), int(stream.ts_ns[-1]), copies), dtype=np.int64)
    ts = (stream.ts_ns.astype(np.int64)[None, :] + offsets[:, None]).ravel()

    def tile(a: np.ndarray) -> np.ndarray:
        return np.tile(a, copies)

    return TickStream(list(stream.names), tile(stream.instrument), ts, tile(stream.price), tile(stream.bid),
                      tile(stream.ask), tile(stream.size), tile(stream.is_bar), tile(stream.open),
                      tile(stream.high), tile(stream.low), list(stream.sources))


def first(stream: TickStream, n: int | None) -> TickStream:
    if n is None or n >= len(stream):
        return stream
    return TickStream(stream.names, stream.instrument[:n], stream.ts_ns[:n], stream.price[:n], stream.bid[:n],
                      stream.ask[:n], stream.size[:n], stream.is_bar[:n], stream.open[:n], stream.high[:n],
                      stream.low[:n], stream.sources)


# ---------------------------------------------------------------- the measured runs (each in a child)


def research_run(data: Path, repeat: int, limit: int | None, db: bool, profile: bool) -> dict[str, Any]:
    """One copy for the digest (untimed: it also warms the imports), then ``repeat`` copies timed."""
    config = load_config(CONFIG, env={})
    base = load_stream([data])
    one = first(base, limit)
    check = run_research(one, config)
    stream = repeated(one, repeat)
    with tempfile.TemporaryDirectory(prefix="bench_research-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'research.sqlite'}" if db else None
        t0, c0 = time.perf_counter(), time.process_time()
        # audit on in both: without a database the chain is journaled and checkpointed in the temp folder
        result = run_research(stream, config, db_url=db_url, audit_dir=None if db else Path(tmp) / "audit")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"ticks": len(stream), "elapsed_s": elapsed, "ticks_per_s": len(stream) / elapsed, "cpu_s": cpu,
           "brackets": result.brackets, "fills": result.fills, "one_copy_digest": check.digest,
           "one_copy_full": limit is None or limit >= len(base), "peak_rss_mb": peak_rss_mb(),
           "traded": f"{result.brackets:,} brackets, {result.fills:,} fills"}
    if profile:  # another run, so that the profiler's overhead stays out of the timed one
        print_profile(stream, config)
    return out


def print_profile(stream: TickStream, config: Any) -> None:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(run_research, stream, config)
    for key in ("cumulative", "tottime"):
        print(f"--- cProfile of the research run, no database: top 15 by {key} (the profiler slows each call: "
              "read the shares, not the times)", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats(key).print_stats(15)


def ema(x: np.ndarray, period: int) -> np.ndarray:
    # over bars (a few hundred a day): a recursion, not worth vectorising
    alpha, out, v = 2.0 / (period + 1), np.empty_like(x), x[0]
    for i, xi in enumerate(x.tolist()):
        v = v + alpha * (xi - v)
        out[i] = v
    return out


def numpy_pass(ts: np.ndarray, price: np.ndarray) -> dict[str, int]:
    """EMA 10/20 cross on 1-minute bars of the ticks, entry at the first trade after the crossing bar,
    stop and target 3 ATR(20) away, exit at the first trade that touches either (array search)."""
    minute = ts // 60_000_000_000
    starts = np.flatnonzero(np.r_[True, minute[1:] != minute[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    high, low, close = np.maximum.reduceat(price, starts), np.minimum.reduceat(price, starts), price[ends]
    prev = np.r_[close[0], close[:-1]]
    tr = np.maximum(high - low, np.maximum(np.abs(high - prev), np.abs(low - prev)))
    atr = np.convolve(tr, np.ones(20) / 20)[:len(tr)]
    side = np.sign(ema(close, 10) - ema(close, 20))
    cross = np.flatnonzero((side[1:] != side[:-1]) & (side[1:] != 0)) + 1
    cross = cross[(cross >= 20) & (ends[cross] + 1 < len(ts))]
    trades = wins = 0
    free_from = 0  # one position at a time: the next entry waits for the exit
    for b in cross.tolist():
        entry = int(ends[b]) + 1
        if entry < free_from:
            continue
        s, px, dist = side[b], price[entry], 3 * atr[b]
        rest = price[entry + 1:]
        hit = np.flatnonzero((rest >= px + dist) | (rest <= px - dist))
        trades += 1
        if not len(hit):
            break
        exit_at = entry + 1 + int(hit[0])
        wins += int((price[exit_at] - px) * s > 0)
        free_from = exit_at + 1
    return {"bars": len(starts), "trades": trades, "wins": wins}


def numpy_run(data: Path, repeat: int, limit: int | None) -> dict[str, Any]:
    stream = repeated(first(load_stream([data]), limit), repeat)
    ts, price = stream.ts_ns.astype(np.int64), stream.price.astype(float)
    times, cpus, out = [], [], {}
    for _ in range(NUMPY_RUNS):
        t0, c0 = time.perf_counter(), time.process_time()
        out = numpy_pass(ts, price)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    elapsed = statistics.median(times)
    return {"ticks": len(ts), "elapsed_s": elapsed, "ticks_per_s": len(ts) / elapsed, "cpu_s": statistics.median(cpus),
            **out,
            "peak_rss_mb": peak_rss_mb(), "traded": f"{out['trades']:,} trades (median of {NUMPY_RUNS} runs)"}


def child(kind: str, args: argparse.Namespace, profile: bool = False) -> dict[str, Any]:
    """Run ``kind`` in a child process of this script (its own peak RSS) and return its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--repeat", str(args.repeat),
           "--data", str(args.data)] + (["--limit", str(args.limit)] if args.limit else [])
    if profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"bench_research: FAILED, the {kind} run exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def nautilus_run(python: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [str(python), str(NT_SCRIPT), "--data", str(args.data), "--repeat", str(args.repeat)]
    cmd += ["--limit", str(args.limit)] if args.limit else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH)  # not the repository: no project import
    lines = proc.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"bench_research: FAILED, the NautilusTrader run exited with {proc.returncode}")
    out = json.loads(lines[-1])
    out["traded"] = f"{out['orders']:,} orders, {out['filled_orders']:,} filled"
    return out


# ---------------------------------------------------------------- setup, report, main


def setup_nautilus(venv: Path) -> int:
    """NautilusTrader in a virtualenv of its own, for this benchmark only."""
    print(f"creating {venv} with nautilus_trader=={NT_VERSION} (a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "--quiet", f"nautilus_trader=={NT_VERSION}"],
                   check=True)
    print(f"done: bench/bench_research.py --nautilus-python {venv_python(venv)} (the default when it exists)")
    return 0


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):  # Windows has no load average
        return "n/a"


RESEARCH, SQLITE, NAUTILUS, NUMPY = ("research, audit, no database", "research, SQLite + audit",
                                     "NautilusTrader (engine.run)", "numpy, no engine")
LABELS = (RESEARCH, SQLITE, NAUTILUS, NUMPY)


def best(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest round (the one outside load disturbed least), with the slowest, and the most ticks per second
    of CPU time the process used (its own work: time waiting for a core is left out)."""
    if not rounds:
        return None
    top = dict(max(rounds, key=lambda r: r["ticks_per_s"]))
    rates = [r["ticks_per_s"] for r in rounds]
    top["rounds"] = len(rounds)
    top["slowest_ticks_per_s"] = min(rates)
    top["ticks_per_cpu_s"] = max(r["ticks"] / max(r["cpu_s"], 1e-9) for r in rounds)
    top["peak_rss_mb"] = max((r["peak_rss_mb"] for r in rounds if r["peak_rss_mb"] is not None), default=None)
    return top


def report(rows: dict[str, dict[str, Any] | None], nt_missing: str | None) -> None:
    print(f"\n{'engine (fastest round)':<30}{'ticks':>10}{'seconds':>9}{'ticks/s':>13}{'slowest':>13}"
          f"{'ticks/CPU-s':>13}{'peak RSS MB':>13}  traded")
    for label, r in rows.items():
        if r is None:
            print(f"{label:<30}{'not measured':>45}")
            continue
        rss = "n/a" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{label:<30}{r['ticks']:>10,}{r['elapsed_s']:>9.3f}{r['ticks_per_s']:>13,.0f}"
              f"{r['slowest_ticks_per_s']:>13,.0f}{r['ticks_per_cpu_s']:>13,.0f}{rss:>13}  {r['traded']}")
    research, nt, npy = rows[RESEARCH], rows[NAUTILUS], rows[NUMPY]
    assert research is not None and npy is not None
    print()
    if nt is not None:
        print(f"research / NautilusTrader ticks/s = {research['ticks_per_s'] / nt['ticks_per_s']:.2f}")
        print(f"research / NautilusTrader ticks per CPU-second = "
              f"{research['ticks_per_cpu_s'] / nt['ticks_per_cpu_s']:.2f} (less sensitive to outside load)")
        sqlite = rows[SQLITE]
        if sqlite is not None:
            print(f"research with SQLite + audit / NautilusTrader ticks/s = "
                  f"{sqlite['ticks_per_s'] / nt['ticks_per_s']:.2f}")
    else:
        print(f"research / NautilusTrader ticks/s = not measured: {nt_missing}")
    print(f"research / numpy ticks/s = {research['ticks_per_s'] / npy['ticks_per_s']:.4f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="copies of the ticks, one per weekday (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of every run, interleaved; the table shows the fastest of each (default 3)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N ticks of the file (default all)")
    ap.add_argument("--data", type=Path, default=DATA, help="an NT8 tick export (default ES 06-18 of the shared data)")
    ap.add_argument("--nautilus-python", type=Path, default=None,
                    help=f"the interpreter of a virtualenv with nautilus_trader (default {venv_python(NT_VENV)} "
                         "when it exists; a smoke run uses NautilusTrader only when this is given)")
    ap.add_argument("--setup-nautilus", action="store_true",
                    help=f"create {NT_VENV.name} beside this script with nautilus_trader=={NT_VERSION}, then exit")
    ap.add_argument("--no-db", action="store_true", help="skip the research run with SQLite + audit")
    ap.add_argument("--profile", action="store_true",
                    help="print cProfile's top 15 functions (cumulative and own time) of the research run, no database")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    ap.add_argument("--child", choices=["research", "research-db", "numpy"], help=argparse.SUPPRESS)
    args = smoke.parse_args(ap, argv, SMOKE, "the research run places no bracket, or one full copy of the ticks "
                                             "gives another digest than the pinned one")
    if args.repeat < 1 or args.rounds < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--repeat, --rounds and --limit must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_nautilus:
        return setup_nautilus(NT_VENV)
    if not args.data.exists():
        print(f"bench_research: FAILED, no NT8 export at {args.data} (the shared data)", file=sys.stderr)
        return 1
    if args.child:
        out = (numpy_run(args.data, args.repeat, args.limit) if args.child == "numpy" else
               research_run(args.data, args.repeat, args.limit, args.child == "research-db", args.profile))
        print(json.dumps(out))
        return 0

    nt_python = args.nautilus_python
    if nt_python is None and not args.smoke and venv_python(NT_VENV).exists():
        nt_python = venv_python(NT_VENV)
    nt_missing = None
    if nt_python is None:
        nt_missing = ("no NautilusTrader virtualenv; `bench/bench_research.py --setup-nautilus` creates one, "
                      "or give --nautilus-python" if not args.smoke else "smoke run without --nautilus-python")
    elif not Path(nt_python).exists():
        print(f"bench_research: FAILED, --nautilus-python {nt_python} does not exist "
              "(bench/bench_research.py --setup-nautilus creates bench/.venv-nautilus)", file=sys.stderr)
        return 1

    print(f"{args.data.name}, x{args.repeat}" + (f", first {args.limit:,} ticks" if args.limit else "")
          + f"; config {CONFIG.relative_to(REPO)}; load average before: {load_average()}")
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in LABELS}
    for r in range(args.rounds):  # interleaved: a burst of outside load falls on one round of each, not on one engine
        if args.rounds > 1:
            print(f"round {r + 1}/{args.rounds}, load average {load_average()}", flush=True)
        runs[RESEARCH].append(child("research", args, profile=args.profile and r == 0))
        if not args.no_db:
            runs[SQLITE].append(child("research-db", args))
        if nt_python is not None:
            runs[NAUTILUS].append(nautilus_run(Path(nt_python), args))
        runs[NUMPY].append(child("numpy", args))
    rows = {label: best(rs) for label, rs in runs.items()}
    print(f"load average after: {load_average()}")
    report(rows, nt_missing)
    if args.json:
        print(json.dumps(rows))

    problems = []
    for label in (RESEARCH, SQLITE):
        for r in runs[label]:
            if r["brackets"] == 0:
                problems.append(f"{label}: no bracket placed")
            if r["one_copy_full"] and r["one_copy_digest"] != PINNED_DIGEST:
                problems.append(f"{label}: one copy gives digest {r['one_copy_digest']}, not the pinned "
                                f"{PINNED_DIGEST} (another decision path would be timed)")
    if problems:
        print("bench_research: FAILED, " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
