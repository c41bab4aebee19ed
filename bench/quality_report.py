"""Quality-gate verdicts on the real data in ../shared/data/nt8: the false-positive rate.

Runs the gate the sidecar uses (default configuration) over every file, exactly as the pipeline
would see it (trades as TICK, minute bars as BAR messages, as in playback), and prints the
refusals and flags by reason. The real files are taken as clean except SPY's ten prints that the vendor flagged
(SPY.suspicious.csv), which are counted apart as true positives.

    python bench/quality_report.py [--data ../shared/data/nt8] [--events N] [--json] [--smoke]

It fails (exit code 1) when there is nothing to report on: no data file found, or a file with no
event gated. ``--smoke`` gates the first 20,000 events of each file, for that check alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from bridge.core.config import QualityConfig  # noqa: E402
from bridge.core.instruments import InstrumentMaster  # noqa: E402
from bridge.nt8.playback import load_stream  # noqa: E402
from bridge.protocol.messages import Bar, Tick  # noqa: E402
from bridge.engine.quality import QualityGate  # noqa: E402

# --smoke: the head of every file (SPY alone has 1.9 million events); options given explicitly win
SMOKE = {"events": 20_000}


def gate_file(path: Path, master: InstrumentMaster, config: QualityConfig, events: int | None) -> dict:
    """The gate's verdicts on the file's first ``events`` events (all of them when None)."""
    stream = load_stream([path])
    name = stream.names[0]
    spec = master.resolve(name)
    gate = QualityGate(config)
    gate.add_instrument(0, spec, spec.tick_size)
    refused = Counter()
    flagged = Counter()
    refused_at: list[int] = []
    head = slice(events)
    ts, price, bid, ask, size = (stream.ts_ns[head].tolist(), stream.price[head].tolist(), stream.bid[head].tolist(),
                                 stream.ask[head].tolist(), stream.size[head].tolist())
    is_bar, o, h, lo = (stream.is_bar[head].tolist(), stream.open[head].tolist(), stream.high[head].tolist(),
                        stream.low[head].tolist())
    t0 = time.perf_counter()
    for i in range(len(ts)):
        if is_bar[i]:  # minute files reach the sidecar as BAR messages, as in playback
            v = gate.check_bar(Bar(0, 60, o[i], h[i], lo[i], price[i], size[i], ts[i]))
        else:
            v = gate.check_tick(Tick(0, 0, price[i], size[i], bid[i], ask[i], ts[i], ts[i]))
        if v is not None:
            (refused if v.reject else flagged)[str(v.reason)] += 1
            if v.reject:
                refused_at.append(i)
    elapsed = time.perf_counter() - t0
    n = len(ts)
    return {"file": path.name, "instrument": name, "ticks": n, "refused": sum(refused.values()),
            "refused_rate": sum(refused.values()) / max(n, 1), "refused_by_reason": dict(refused),
            "flagged_by_reason": dict(flagged), "ns_per_tick": round(elapsed / max(n, 1) * 1e9),
            "_refused_at": refused_at, "_stream": stream}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nt8"),
                    help="folder of NT8 exports (default ../shared/data/nt8)")
    ap.add_argument("--events", type=int, default=None, help="gate at most the first N events of each file "
                    "(default: all of them)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    args = smoke.parse_args(ap, argv, SMOKE, 'there is nothing to report on')
    if args.events is not None and args.events < 1:
        ap.error("--events must be positive")
    return args


def suspicious_caught(row: dict, suspicious_csv: Path) -> tuple[int, int]:
    """(known suspicious prints, how many of them the gate refused)."""
    import pandas as pd

    sus = pd.read_csv(suspicious_csv)
    stream = row["_stream"]
    refused_prices = {(int(stream.ts_ns[i]), float(stream.price[i]), int(stream.size[i])) for i in row["_refused_at"]}
    caught = 0
    for _, r in sus.iterrows():
        d, t, f = r["nt8_time_utc"].split()
        ts = int(np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}", "ns").astype(np.int64)) \
            + int(f) * 100
        caught += (ts, float(r["price"]), int(r["size"])) in refused_prices
    return len(sus), caught


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    master = InstrumentMaster.default()
    config = QualityConfig()
    rows = []
    for path in sorted(data.glob("*.Last.txt*")):
        row = gate_file(path, master, config, args.events)
        if row["instrument"] == "SPY" and (data / "SPY.suspicious.csv").exists():
            known, caught = suspicious_caught(row, data / "SPY.suspicious.csv")
            row["suspicious_known"] = known
            row["suspicious_refused"] = caught
            row["false_positive_rate"] = (row["refused"] - caught) / max(row["ticks"] - known, 1)
        else:
            row["false_positive_rate"] = row["refused_rate"]
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    problems = [f"no NT8 export (*.Last.txt*) in {data}"] if not rows else []
    problems += [f"no event gated in {r['file']}" for r in rows if not r["ticks"]]
    if problems:
        print("quality_report: FAILED, nothing to report on: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def print_table(rows: list[dict]) -> None:
    print(f"{'file':<24}{'events':>11}{'refused':>9}{'FP rate':>10}  {'ns/tick':>8}  refused by reason / flagged")
    for r in rows:
        extra = f"  known bad {r['suspicious_refused']}/{r['suspicious_known']} refused" if "suspicious_known" in r else ""
        print(f"{r['file']:<24}{r['ticks']:>11,}{r['refused']:>9,}{r['false_positive_rate']:>10.4%}  {r['ns_per_tick']:>8}"
              f"  {r['refused_by_reason']} / {r['flagged_by_reason']}{extra}")


if __name__ == "__main__":
    sys.exit(main())
