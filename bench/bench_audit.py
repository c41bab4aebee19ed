"""Benchmark the tamper-evident audit chain (bridge/audit/chain.py).

    .venv/bin/python bench/bench_audit.py [--appends N] [--verify-records M] [--block B] [--json] [--keep]
                                          [--smoke]

Prints:
* append: per-call latency p50/p99/max (us) and throughput (records/s) of ``AuditChain.append`` with
  its default settings (background fsync every 0.2 s, a signed checkpoint every 1000 records) on a
  realistic ~300-byte decision payload;
* baselines measured in the same run, in interleaved blocks of ``--block`` calls so that outside
  load hits both alike: the same canonical JSON of the same record (the module's prebuilt encoder)
  plus one ``os.write`` to a JSON-lines file, no hashing, no chain; and the same with a plain
  ``json.dumps(..., sort_keys=True, ...)`` per record, as a naive JSON-lines logger would do;
  the ratio append / baseline;
* verify: the time to verify a journal of ``--verify-records`` records (default 1,000,000, written
  by the chain first, checkpoints and signatures included) with ``verify_journal``, and records/s.

Goals (from the design brief): append well under 20 us on this 2-core machine; 1,000,000 records
verified well under a minute. Nothing fails on a threshold: the figures, the goal and whether it
is met are printed. The machine is shared: compare runs by the ratio to the baseline.

It fails (exit code 1) when the workload no longer does what is measured: the journal does not hold
every appended record, or the verified journal does not verify whole with its signed checkpoints.
``--smoke`` runs it at tiny sizes in a second or two for that check alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.audit.chain import AuditChain, _encode, read_checkpoints, verify_journal  # noqa: E402

# --smoke: a few blocks of appends and a journal with two signed checkpoints; options given explicitly win
SMOKE = {"appends": 300, "warmup": 50, "block": 100, "verify_records": 2500}


def make_payloads(n: int) -> list[dict[str, Any]]:
    """n realistic decision payloads (~300 bytes of canonical JSON each), values varying per record."""
    out = []
    for i in range(n):
        price = 5321.25 + (i % 40) * 0.25
        out.append({"decision_id": f"D-20240611-{i:06d}", "strategy": "breakout_v3", "instrument": "ES 06-24",
                    "side": "BUY" if i % 2 else "SELL", "quantity": 1 + i % 3, "entry_price": price,
                    "stop_price": price - 5.75, "target_price": price + 11.5, "algorithm_id": "breakout-3.2.1+a1b2c3d",
                    "rationale": "20-bar channel high broken, ATR 4.75",
                    "limits": {"max_qty": 5, "max_position": 10}})
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def bench_append(folder: Path, payloads: list[dict[str, Any]], n: int, block: int, warmup: int) -> dict[str, Any]:
    chain = AuditChain(folder / "bench.audit.jsonl", folder / "bench.audit.checkpoints.jsonl",
                       folder / "bench_ed25519.pem")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
    fd_enc = os.open(folder / "baseline_encoder.jsonl", flags, 0o600)
    fd_dumps = os.open(folder / "baseline_dumps.jsonl", flags, 0o600)
    np_ = len(payloads)
    clock = time.perf_counter_ns
    append = chain.append
    write = os.write
    now_us = time.time_ns
    dumps = json.dumps

    def run_chain(start: int, count: int, samples: list[int] | None) -> int:
        t_all = clock()
        for i in range(start, start + count):
            p = payloads[i % np_]
            t0 = clock()
            append("decision", p["decision_id"], 42, p)
            t1 = clock()
            if samples is not None:
                samples.append(t1 - t0)
        return clock() - t_all

    def run_encoder(start: int, count: int, samples: list[int] | None) -> int:
        t_all = clock()
        for i in range(start, start + count):
            p = payloads[i % np_]
            t0 = clock()
            write(fd_enc, (_encode({"kind": "decision", "payload": p, "seq": i, "session_id": 42,
                                    "subject_id": p["decision_id"], "ts_us": now_us() // 1000}) + "\n").encode())
            t1 = clock()
            if samples is not None:
                samples.append(t1 - t0)
        return clock() - t_all

    def run_dumps(start: int, count: int, samples: list[int] | None) -> int:
        t_all = clock()
        for i in range(start, start + count):
            p = payloads[i % np_]
            t0 = clock()
            write(fd_dumps, (dumps({"kind": "decision", "payload": p, "seq": i, "session_id": 42,
                                    "subject_id": p["decision_id"], "ts_us": now_us() // 1000}, sort_keys=True,
                                   separators=(",", ":"), ensure_ascii=False) + "\n").encode())
            t1 = clock()
            if samples is not None:
                samples.append(t1 - t0)
        return clock() - t_all

    runners = {"chain": run_chain, "encoder": run_encoder, "dumps": run_dumps}
    samples: dict[str, list[int]] = {k: [] for k in runners}
    totals = dict.fromkeys(runners, 0)
    for name, run in runners.items():
        run(0, warmup, None)
    done = 0
    while done < n:
        count = min(block, n - done)
        for name, run in runners.items():  # interleaved: a burst of outside load hits all three alike
            totals[name] += run(warmup + done, count, samples[name])
        done += count
    chain.close()
    os.close(fd_enc)
    os.close(fd_dumps)
    journal = folder / "bench.audit.jsonl"
    line_bytes = journal.stat().st_size / (n + warmup)
    payload_bytes = sum(len(_encode(p).encode()) for p in payloads) / np_
    with open(journal, "rb") as f:
        records = sum(1 for _ in f)
    out: dict[str, Any] = {"n": n, "journal_line_bytes": round(line_bytes), "payload_bytes": round(payload_bytes),
                           "checkpoints": len(read_checkpoints(folder / "bench.audit.checkpoints.jsonl")),
                           "journal_records": records, "appended": n + warmup}
    for name in runners:
        s = samples[name]
        out[name] = {"p50_us": percentile(s, 50) / 1000, "p99_us": percentile(s, 99) / 1000,
                     "max_us": max(s) / 1000, "mean_us": sum(s) / len(s) / 1000,
                     "records_s": n / (totals[name] / 1e9)}
    return out


def bench_verify(folder: Path, payloads: list[dict[str, Any]], n: int) -> dict[str, Any]:
    journal = folder / "verify.audit.jsonl"
    checkpoints = folder / "verify.audit.checkpoints.jsonl"
    t0 = time.perf_counter()
    with AuditChain(journal, checkpoints, folder / "bench_ed25519.pem") as chain:
        np_ = len(payloads)
        for i in range(n):
            p = payloads[i % np_]
            chain.append("decision", p["decision_id"], 42, p)
        public_key = chain.public_key
        checkpoint_every = chain.checkpoint_every
    write_s = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    result = verify_journal(journal, checkpoints, public_key)
    verify_s = time.perf_counter() - t0
    return {"n": n, "write_s": write_s, "verify_s": verify_s, "records_s": n / verify_s,
            "journal_mb": journal.stat().st_size / 1e6, "checkpoints_verified": result.checkpoints_verified,
            "checkpoints_expected": n // checkpoint_every, "ok": result.ok, "records": result.records,
            "reason": result.reason}


def workload_problems(figures: dict[str, Any]) -> list[str]:
    """Why the figures would not measure what they say, if they would not."""
    problems = []
    a = figures["append"]
    if a["journal_records"] != a["appended"]:
        problems.append(f"the chain's journal holds {a['journal_records']} records of the {a['appended']} appended")
    v = figures.get("verify")
    if v is not None:
        if not v["ok"] or v["records"] != v["n"]:
            problems.append(f"the untouched journal did not verify: {v['records']} of {v['n']} records ({v['reason']})")
        if v["checkpoints_verified"] < v["checkpoints_expected"]:
            problems.append(f"{v['checkpoints_verified']} signed checkpoints verified, "
                            f"{v['checkpoints_expected']} expected")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=100_000, help="timed appends per variant (default 100000)")
    parser.add_argument("--warmup", type=int, default=2000, help="untimed appends per variant first (default 2000)")
    parser.add_argument("--block", type=int, default=1000, help="calls per interleaved block (default 1000)")
    parser.add_argument("--verify-records", type=int, default=1_000_000,
                        help="journal size for the verify benchmark (default 1000000; 0 skips it)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (journals, checkpoints, key)")
    args = smoke.parse_args(parser, argv, SMOKE, 'the chain no longer records or verifies what is measured')
    if args.appends < 1 or args.block < 1 or args.warmup < 0 or args.verify_records < 0:
        parser.error("--appends and --block must be positive, --warmup and --verify-records not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="nt8bridge-bench-audit-"))
    payloads = make_payloads(1000)
    figures: dict[str, Any] = {}
    try:
        a = bench_append(folder, payloads, args.appends, args.block, args.warmup)
        figures["append"] = a
        c, e, d = a["chain"], a["encoder"], a["dumps"]
        print(f"append: {a['n']} timed calls per variant, ~{a['payload_bytes']} B payloads, "
              f"~{a['journal_line_bytes']} B journal lines, "
              f"{a['checkpoints']} checkpoints, interleaved blocks of {args.block}")
        print(f"{'':34s} {'p50 us':>8s} {'p99 us':>8s} {'max us':>9s} {'mean us':>8s} {'records/s':>11s}")
        for label, f in (("AuditChain.append", c), ("baseline: encoder + os.write", e),
                         ("baseline: json.dumps + os.write", d)):
            print(f"{label:34s} {f['p50_us']:8.2f} {f['p99_us']:8.2f} {f['max_us']:9.1f} {f['mean_us']:8.2f} "
                  f"{f['records_s']:11,.0f}")
        ratio_p50 = c["p50_us"] / e["p50_us"]
        ratio_rate = e["records_s"] / c["records_s"]
        figures["append"]["ratio_p50_vs_encoder"] = ratio_p50
        figures["append"]["ratio_throughput_vs_encoder"] = ratio_rate
        figures["append"]["ratio_p50_vs_dumps"] = c["p50_us"] / d["p50_us"]
        print(f"ratio append / (same JSON + os.write): p50 {ratio_p50:.2f}x, time per record {ratio_rate:.2f}x; "
              f"vs json.dumps + os.write: p50 {c['p50_us'] / d['p50_us']:.2f}x")
        print(f"goal append p50 well under 20 us: {c['p50_us']:.1f} us -> {'met' if c['p50_us'] < 15 else 'NOT met'}")
        if args.verify_records > 0:
            v = bench_verify(folder, payloads, args.verify_records)
            figures["verify"] = v
            print(f"verify: {v['n']:,} records ({v['journal_mb']:.0f} MB journal, written in {v['write_s']:.1f} s, "
                  f"{v['checkpoints_verified']} signed checkpoints)")
            print(f"verify_journal: {v['verify_s']:.2f} s, {v['records_s']:,.0f} records/s")
            scaled = v["verify_s"] * 1_000_000 / v["n"]
            print(f"goal 1,000,000 records well under 60 s: {scaled:.1f} s per million -> "
                  f"{'met' if scaled < 30 else 'NOT met'}")
        if args.json:
            print(json.dumps(figures, indent=2))
    finally:
        if args.keep:
            print(f"work folder kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    problems = workload_problems(figures)
    if problems:
        print("bench_audit: FAILED, the workload no longer does what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
