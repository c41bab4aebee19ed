"""The operator console in real browsers: how fast an event reaches the page, and what the browsers cost the
sidecar's answer to NT8, against the same workload with no browser, in the same run.

    .venv/bin/python bench/bench_console.py [--ticks N] [--rate R] [--batch B] [--browsers K] [--rounds M]
                                            [--view V] [--json] [--keep] [--smoke]

What runs, all on this machine: ``nt8bridge serve`` (a child process: storage, audit trail, event stream; the
plumbing configuration, so the momentum strategy trades one contract per bracket), ``nt8bridge console`` (a
child process, for the whole run), headless Chromium (Debian's, under Selenium) showing the console's
``--view`` (default Sessions: its last prices and tick ages change with every event), and this process as
NT8: real ES trades (ES 06-18.Last.txt.gz, 74,907 of them, repeated on the following weekdays as often as
``--ticks`` needs) paced at ``--rate`` ticks a second in TICKS messages of ``--batch`` ticks, as NT8 sends a
burst, in lockstep (every message acknowledged, so a BRACKET is known to answer the message it came after),
with the playback's fill model (``SimBroker``) filling the brackets and reporting orders, fills and
positions back, as NT8 does.

The run is in phases, each with a new sidecar on the same endpoints (the console and the pages follow it)
and the same ticks from the start in a new NT8 session, so each phase's figures are its own. ``--rounds``
times, in this order (so that a drift of the machine's load hits every kind alike):

1. no browser (the baseline);
2. one browser: event at the sidecar -> DOM painted;
3. ``--browsers`` browsers at normal priority;
4. as many at idle priority (SCHED_IDLE on Linux, as ``chrt --idle 0``; the IDLE priority class on
   Windows): how docs/console.md tells desks to run a console browser on the sidecar's machine;

then no browser once more (the spread of the baselines shows the machine's noise). The phases of one
kind are pooled.

Figures, per phase:

* tick -> ack: this process's send of a TICKS message to the sidecar's acknowledgement (every message);
* tick -> BRACKET as NT8 sees it: the send of the message whose ticks made the sidecar decide, to the
  BRACKET's arrival here;
* the sidecar's own ``tick_to_bracket`` (from reading the message to handing the BRACKET to ZeroMQ), as
  its snapshot reports it for the phase (its histogram: a percentile is its bucket's upper bound, within
  about 10%);
* event -> DOM painted: for each WebSocket message that changed the page, ``painted_ms - ts_ns / 1e6``
  from the page's ``window.__paintLog`` (the sidecar's wall clock when it published the event, and the
  browser's when the frame showing it had been painted); paints per second per browser;
* CPU: seconds of CPU per second of the phase (cores) of the sidecar, the console, the browsers and this
  process (Linux, from /proc).

The baseline is the no-browser phases, their samples pooled (the sidecar's own figure: the mean of
theirs). Goals: event -> DOM painted p99 under 250 ms with one browser; tick -> BRACKET p99 with the
browsers within 5% of the baseline. Nothing is tuned to meet them: the table says what was measured.

It fails (exit code 1) when a phase's ticks are not all acknowledged, when a page paints no event, when a
page never hears the sidecar, or (not in a smoke run, whose few hundred ticks come long before the
strategy's first decision) when no BRACKET was sent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bench_ingest import DEFAULT_DATA, INSTRUMENT, real_ticks  # noqa: E402 - the same real ticks, repeated

from bridge.core.config import load_config  # noqa: E402
from bridge.nt8.client import ClientError, Nt8Client  # noqa: E402
from bridge.nt8.fillmodel import SimBroker  # noqa: E402
from bridge.protocol.messages import (  # noqa: E402
    CancelOrder,
    ChangeOrder,
    Error,
    Flatten,
    Heartbeat,
    SubmitBracket,
    Tick,
    TickBatch,
    TickKind,
)
from bridge.transport.sidecar import SidecarProcess  # noqa: E402
from tests.integration.console_support import (  # noqa: E402
    ConsoleProcess,
    browser_pids,
    chromium_missing,
    clean_env,
    cpu_seconds,
    drain_paint_log,
    free_port,
    read,
    start_chromium,
    wait_for,
)

PLUMBING = ROOT / "tests" / "plumbing.toml"
GOAL_PAINT_P99_MS = 250.0
GOAL_T2B_RATIO = 1.05
MAX_IN_FLIGHT = 2000  # messages sent and not yet acknowledged before the client waits (the sidecar fell behind)
SMOKE = {"ticks": 600, "rate": 600, "browsers": 1, "rounds": 1, "settle": 0.5}


@dataclass
class Phase:
    name: str
    browsers: int = 0
    idle: bool = False
    round: int = 1
    ticks: int = 0
    seconds: float = 0.0
    ack_us: list[float] = field(default_factory=list)
    t2b_us: list[float] = field(default_factory=list)
    brackets_other: int = 0  # BRACKETs answering NT8's own reports (a fill), not market data: not timed
    errors: int = 0
    sidecar_t2b: list[dict[str, Any]] = field(default_factory=list)  # the sidecar's figures, one per phase run
    paint_ms: list[float] = field(default_factory=list)
    paints_per_s: list[float] = field(default_factory=list)  # per browser
    cpu: dict[str, float | None] = field(default_factory=dict)  # cores, per process group

    @property
    def rate(self) -> float:
        return self.ticks / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------------------------- NT8's side


def drive(endpoint: str, ticks, rate: float, batch: int, instance_id: str, fill_config) -> Phase:
    """Send ``ticks`` paced at ``rate`` in TICKS of ``batch`` to a lockstep session; fill its brackets."""
    out = Phase(instance_id)
    client = Nt8Client(endpoint, instance_id=instance_id, account="Sim101", instruments=[INSTRUMENT], lockstep=True,
                       timeout_s=60.0)
    broker = SimBroker([INSTRUMENT], fill_config)
    ts, price, size = ticks.ts, ticks.price, ticks.size
    n = len(ts)
    nan = math.nan
    last = int(TickKind.LAST)
    sent: dict[int, int] = {}  # seq of a market-data message -> perf_counter_ns at its send
    last_ack = 0
    i = 0
    client.connect()
    sock = client.sock
    clock = time.perf_counter_ns

    def send_events(events: list) -> None:
        for event in events:
            client.send(event)

    def receive(timeout_ms: int) -> None:
        nonlocal last_ack
        if not sock.poll(timeout_ms):
            return
        while (msg := client.recv(0)) is not None:
            now = clock()
            if isinstance(msg, Heartbeat):
                for seq in range(last_ack + 1, msg.ack_seq + 1):
                    t = sent.pop(seq, None)
                    if t is not None:
                        out.ack_us.append((now - t) / 1000)
                last_ack = max(last_ack, msg.ack_seq)
                continue
            answered = last_ack + 1  # the sidecar answers in order and acknowledges after the replies
            k = max(i - 1, 0)
            if isinstance(msg, SubmitBracket):
                if answered in sent:
                    out.t2b_us.append((now - sent[answered]) / 1000)
                else:
                    out.brackets_other += 1
                send_events(broker.submit_bracket(msg, ts[k], 4 * k + 3))  # live from the next trade on
            elif isinstance(msg, CancelOrder):
                send_events(broker.cancel(msg, ts[k]))
            elif isinstance(msg, ChangeOrder):
                send_events(broker.change(msg, ts[k]))
            elif isinstance(msg, Flatten):
                send_events(broker.flatten(msg, ts[k], 4 * k + 3))
            elif isinstance(msg, Error):
                out.errors += 1

    t0 = clock()
    try:
        while i < n:
            due = t0 + int(i / rate * 1e9)
            now = clock()
            if now < due or client.seq - last_ack >= MAX_IN_FLIGHT:
                # wait for the sidecar or for the next send, at least a millisecond (no busy loop)
                receive(max(1, math.ceil((due - now) / 1e6)) if now < due else 100)
                continue
            end = min(n, i + batch)
            burst = [Tick(0, last, price[j], size[j], nan, nan, ts[j], ts[j]) for j in range(i, end)]
            seq = client.send(TickBatch(burst) if batch > 1 else burst[0])
            sent[seq] = clock()
            events = []
            for j in range(i, end):
                events.extend(broker.on_trade(0, price[j], nan, nan, ts[j], 4 * j))
            i = end
            send_events(events)
        out.seconds = (clock() - t0) / 1e9  # the sending: the rate achieved
        deadline = time.monotonic() + 60
        while last_ack < client.seq:
            if time.monotonic() > deadline:
                raise ClientError(f"{client.seq - last_ack} messages never acknowledged")
            receive(100)
        out.ticks = n
    finally:
        client.close(reason="benchmark phase finished" if out.ticks else None)
    return out


# --------------------------------------------------------------------------------------------- the run


def percentiles(xs: list[float]) -> tuple[float, float, int]:
    if not xs:
        return math.nan, math.nan, 0
    a = np.asarray(xs, dtype=float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), len(a)


def sidecar_t2b(console_url: str, brackets: int, timeout_s: float = 15.0) -> dict[str, Any] | None:
    """The sidecar's own tick_to_bracket for its whole run (this phase), once its snapshot counts them all."""
    import httpx

    got: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            live = httpx.get(console_url + "api/v1/latency", timeout=10).json().get("live") or {}
        except httpx.HTTPError:
            live = {}
        got = (live.get("since_start") or {}).get("tick_to_bracket")
        if got and got.get("count", 0) >= brackets:
            return got
        if not brackets and live:
            return got or {"p50_us": None, "p99_us": None, "count": 0}
        time.sleep(0.25)
    return got


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    config_file = folder / "sidecar.toml"
    config_file.write_text(PLUMBING.read_text(encoding="utf-8")
                           + f'\n[audit]\nkey_path = "{(folder / "audit-key.pem").as_posix()}"\n', encoding="utf-8")
    fill_config = load_config(config_file, env={}).fill_model
    ticks = real_ticks(args.data, args.ticks)
    db_url = f"sqlite:///{folder / 'console-bench.sqlite'}"
    control, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = clean_env(folder)
    console = ConsoleProcess(folder, db_url=db_url, events=events, control=control, config=config_file, env=env)
    many = f"{args.browsers} browser{'s' if args.browsers > 1 else ''}"
    kinds = [("no browser", 0, False)] + ([("1 browser", 1, False)] if args.browsers > 1 else []) + [
        (many, args.browsers, False), (f"{many}, idle priority", args.browsers, True)]
    # rounds of every kind, then the baseline once more: a drift of the machine's load over the run hits
    # every kind alike, and the baselines at both ends show how large it was
    plan = [Phase(name, browsers=b, idle=idle, round=r) for r in range(1, args.rounds + 1) for name, b, idle in kinds]
    plan.append(Phase("no browser", round=args.rounds + 1))
    failures: list[str] = []
    print(f"bench_console: {ticks.description}; {len(ticks):,} ticks a phase paced at {args.rate:,.0f}/s in TICKS of "
          f"{args.batch}, lockstep; the console's {args.view} view; {os.cpu_count()} CPUs", flush=True)
    console.start()
    try:
        for number, phase in enumerate(plan, 1):
            sidecar = SidecarProcess(db_url, config_file, log_path=folder / f"sidecar-{number}.log",
                                     extra_args=("--control-bind", control, "--events-bind", events))
            sidecar.start()
            drivers = []
            try:
                for _ in range(phase.browsers):
                    driver = start_chromium(idle=phase.idle)
                    drivers.append(driver)
                    driver.get(f"{console.url}#{args.view}")
                for d in drivers:
                    wait_for(lambda d=d: [s for s in read(d, "sidecar-state") if s.get("up") == "true"],
                             "a page hears the sidecar", timeout_s=60)
                    drain_paint_log(d)
                time.sleep(args.settle)
                pids = {"sidecar": [sidecar.proc.pid], "console": [console.proc.pid],
                        "browsers": [p for d in drivers for p in browser_pids(d)], "this process": [os.getpid()]}
                cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
                wall0 = time.perf_counter()
                start_ns = time.time_ns()
                got = drive(sidecar.endpoint, ticks, args.rate, args.batch, f"bench-console-{number}", fill_config)
                wall = time.perf_counter() - wall0
                pids["browsers"] = [p for d in drivers for p in browser_pids(d)] or pids["browsers"]
                for k, v in pids.items():
                    end = cpu_seconds(v)
                    phase.cpu[k] = None if end is None or cpu0[k] is None else (end - cpu0[k]) / wall
                for f in ("ticks", "seconds", "ack_us", "t2b_us", "brackets_other", "errors"):
                    setattr(phase, f, getattr(got, f))
                side = sidecar_t2b(console.url, len(phase.t2b_us))
                phase.sidecar_t2b = [side] if side else []
                end_ns = time.time_ns()
                for d in drivers:
                    log = [e for e in drain_paint_log(d) if e.get("ts_ns") and start_ns <= e["ts_ns"] <= end_ns]
                    phase.paint_ms += [e["painted_ms"] - e["ts_ns"] / 1e6 for e in log]
                    phase.paints_per_s.append(len({e["painted_ms"] for e in log}) / ((end_ns - start_ns) / 1e9))
                    if not log:
                        failures.append(f"{phase.name}: a page painted no event during the phase")
            except ClientError as exc:
                failures.append(f"{phase.name}: {exc}")
            finally:
                for d in drivers:
                    d.quit()
                code = sidecar.stop()
                if code != 0:
                    failures.append(f"{phase.name}: the sidecar exited with code {code}")
            report_phase(phase, number, len(plan))
    finally:
        console.stop()
    if "Traceback" in console.log():
        failures.append("the console logged a traceback")
    if not args.smoke and not any(p.t2b_us for p in plan):
        failures.append("no BRACKET in the whole run: tick -> BRACKET was not measured")
    return {"phases": plan, "failures": failures}


# --------------------------------------------------------------------------------------------- the report


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def report_phase(p: Phase, number: int, total: int) -> None:
    a50, a99, an = percentiles(p.ack_us)
    b50, b99, bn = percentiles(p.t2b_us)
    print(f"  [{number}/{total}] {p.name} (round {p.round}): {p.ticks:,} ticks at {p.rate:,.0f}/s; tick->ack p50 "
          f"{fmt(a50)} p99 {fmt(a99)} us (n={an:,}); tick->BRACKET p50 {fmt(b50)} p99 {fmt(b99)} us (n={bn})",
          flush=True)


def pooled(phases: list[Phase]) -> Phase:
    """The phases of one kind as one: samples pooled, the sidecar's figures and CPU per phase kept."""
    first = phases[0]
    out = Phase(first.name, first.browsers, first.idle, len(phases))
    for p in phases:
        out.ticks += p.ticks
        out.seconds += p.seconds
        out.ack_us += p.ack_us
        out.t2b_us += p.t2b_us
        out.paint_ms += p.paint_ms
        out.paints_per_s += p.paints_per_s
        out.sidecar_t2b += p.sidecar_t2b
        out.brackets_other += p.brackets_other
        out.errors += p.errors
    for k in first.cpu:
        got = [p.cpu.get(k) for p in phases if p.cpu.get(k) is not None]
        out.cpu[k] = float(np.mean(got)) if got else None
    return out


def sidecar_figure(p: Phase, key: str) -> float:
    """The mean over the kind's phases of the sidecar's own figure (its histograms cannot be pooled here)."""
    got = [s[key] for s in p.sidecar_t2b if s.get(key) is not None]
    return float(np.mean(got)) if got else math.nan


def report(phases: list[Phase], args: argparse.Namespace) -> dict[str, Any]:
    kinds: dict[str, list[Phase]] = {}
    for p in phases:
        kinds.setdefault(p.name, []).append(p)
    rows = [pooled(v) for v in kinds.values()]
    base = rows[0]  # "no browser": every round's and the closing one
    base_ack50, base_ack99, _ = percentiles(base.ack_us)
    base_t2b50, base_t2b99, _ = percentiles(base.t2b_us)
    base_side99 = sidecar_figure(base, "p99_us")
    w = 27
    print(f"\nper kind of phase, the samples of its {args.rounds} round(s) pooled (baseline: also the closing phase); "
          "the sidecar's own figure is the mean of its phases'")
    print(f"{'phase':{w}s} {'runs':>4s} {'ticks/s':>8s} {'tick->ack p50/p99 us':>21s} "
          f"{'tick->BRACKET (NT8) p50/p99 us':>31s} {'n':>4s} {'sidecar tick_to_bracket p50/p99 us':>35s} {'n':>4s}")
    for p in rows:
        a50, a99, _ = percentiles(p.ack_us)
        b50, b99, bn = percentiles(p.t2b_us)
        count = sum(s.get("count", 0) or 0 for s in p.sidecar_t2b)
        print(f"{p.name:{w}s} {p.round:4d} {p.rate:8,.0f} {fmt(a50):>10s} / {fmt(a99):>8s} {fmt(b50):>19s} / "
              f"{fmt(b99):>9s} {bn:4d} {fmt(sidecar_figure(p, 'p50_us')):>23s} / "
              f"{fmt(sidecar_figure(p, 'p99_us')):>9s} "
              f"{count:4d}")

    print(f"\n{'phase':{w}s} {'event -> DOM painted p50/p99/max ms':>37s} {'n':>7s} {'paints/s/browser':>17s} "
          f"{'CPU cores: sidecar':>19s} {'console':>8s} {'browsers':>9s} {'bench':>6s}")
    for p in rows:
        e50, e99, en = percentiles(p.paint_ms)
        mx = max(p.paint_ms) if p.paint_ms else math.nan
        pps = fmt(float(np.mean(p.paints_per_s)), 1) if p.paints_per_s else "-"
        c = p.cpu
        print(f"{p.name:{w}s} {fmt(e50, 1):>17s} / {fmt(e99, 1):>7s} / {fmt(mx, 1):>7s} {en:7,d} {pps:>17s} "
              f"{fmt(c.get('sidecar'), 2):>19s} {fmt(c.get('console'), 2):>8s} {fmt(c.get('browsers'), 2):>9s} "
              f"{fmt(c.get('this process'), 2):>6s}")

    print()
    figures: dict[str, Any] = {"baseline": {"tick_ack_p50_us": base_ack50, "tick_ack_p99_us": base_ack99,
                                            "t2b_p50_us": base_t2b50, "t2b_p99_us": base_t2b99,
                                            "t2b_n": len(base.t2b_us), "sidecar_t2b_p99_us": base_side99}}
    one = next((p for p in rows if p.browsers == 1 and not p.idle), None)
    if one is not None:
        e50, e99, en = percentiles(one.paint_ms)
        met = "not measured" if not en else "met" if e99 < GOAL_PAINT_P99_MS else "NOT met"
        print(f"{'event -> DOM painted, 1 browser':{w + 10}s} n={en:6,d} p50 {fmt(e50, 1)} ms p99 {fmt(e99, 1)} ms   "
              f"goal p99 < {GOAL_PAINT_P99_MS:g} ms: {met}")
        figures["paint_1_browser"] = {"p50_ms": e50, "p99_ms": e99, "n": en}
    for p in rows:
        if not p.browsers:
            continue
        _, b99, bn = percentiles(p.t2b_us)
        _, a99, _ = percentiles(p.ack_us)
        r_client = b99 / base_t2b99 if bn and base_t2b99 else math.nan
        r_side = sidecar_figure(p, "p99_us") / base_side99
        r_ack = a99 / base_ack99 if base_ack99 else math.nan
        met = ("not measured (no BRACKET)" if math.isnan(r_client) and math.isnan(r_side) else
               "met" if r_client <= GOAL_T2B_RATIO and r_side <= GOAL_T2B_RATIO else "NOT met")
        print(f"{p.name + ' / baseline':{w + 10}s} tick->BRACKET p99: NT8 {fmt(r_client, 2)}x, sidecar "
              f"{fmt(r_side, 2)}x; tick->ack p99 {fmt(r_ack, 2)}x   goal <= {GOAL_T2B_RATIO:.2f}x: {met}")
        figures[p.name] = {"t2b_ratio_nt8": r_client, "t2b_ratio_sidecar": r_side, "ack_p99_ratio": r_ack,
                           "paint_p50_ms": percentiles(p.paint_ms)[0], "paint_p99_ms": percentiles(p.paint_ms)[1]}
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ticks", type=int, default=450_000, help="ticks sent in each phase (default 450,000: the file "
                   "six times, 45 s at 10,000/s)")
    p.add_argument("--rate", type=float, default=10_000.0, help="ticks per second (default 10,000)")
    p.add_argument("--batch", type=int, default=10, help="ticks per TICKS message (default 10; 1 sends TICK)")
    p.add_argument("--browsers", type=int, default=10, help="browsers in the busy phases (default 10)")
    p.add_argument("--view", default="sessions", help="the console view the browsers show (default sessions)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the phases (default 2), interleaved")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between the pages' start and the ticks")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NT8 tick export (default the team's ES 06-18)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (database, logs)")
    args = smoke.parse_args(p, argv, SMOKE, "a phase's ticks are not all acknowledged, a page paints no event or "
                            "never hears the sidecar")
    if args.ticks < 1 or args.rate <= 0 or args.batch < 1 or args.browsers < 1 or args.rounds < 1:
        p.error("--ticks, --rate, --batch, --browsers and --rounds must be positive")
    missing = chromium_missing()
    if missing:
        print(f"bench_console: FAILED: {missing}", file=sys.stderr)
        return 1
    if not args.data.exists():
        print(f"bench_console: FAILED: no data file {args.data} (the team's ../shared/data)", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="nt8bridge-console-bench-"))
    try:
        out = run(args, folder)
    finally:
        if args.keep:
            print(f"work folder kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    figures = report(out["phases"], args)
    if args.json:
        print(json.dumps({"figures": figures, "phases": [{k: v for k, v in asdict(p).items()
                                                          if k not in ("ack_us", "t2b_us", "paint_ms")}
                                                         for p in out["phases"]]}, indent=2, default=str))
    if out["failures"]:
        print("bench_console: FAILED: " + "; ".join(out["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
