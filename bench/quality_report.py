"""Quality-gate verdicts on the real data in ../shared/data/nt8: the false-positive rate.

Runs the gate the sidecar uses (default configuration) over every file, exactly as the pipeline
would see it (trades as TICK, minute bars as BAR messages, as in playback), and prints the
refusals and flags by reason. The real files are taken as clean except SPY's ten prints that the vendor flagged
(SPY.suspicious.csv), which are counted apart as true positives.

    python bench/quality_report.py [--data ../shared/data/nt8] [--json]
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

from bridge.core.config import QualityConfig  # noqa: E402
from bridge.core.instruments import InstrumentMaster  # noqa: E402
from bridge.nt8.playback import load_stream  # noqa: E402
from bridge.protocol.messages import Bar, Tick  # noqa: E402
from bridge.engine.quality import QualityGate  # noqa: E402


def gate_file(path: Path, master: InstrumentMaster, config: QualityConfig) -> dict:
    stream = load_stream([path])
    name = stream.names[0]
    spec = master.resolve(name)
    gate = QualityGate(config)
    gate.add_instrument(0, spec, spec.tick_size)
    refused = Counter()
    flagged = Counter()
    refused_at: list[int] = []
    ts, price, bid, ask, size = (stream.ts_ns.tolist(), stream.price.tolist(), stream.bid.tolist(),
                                 stream.ask.tolist(), stream.size.tolist())
    is_bar, o, h, lo = stream.is_bar.tolist(), stream.open.tolist(), stream.high.tolist(), stream.low.tolist()
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
            "refused_rate": sum(refused.values()) / n, "refused_by_reason": dict(refused),
            "flagged_by_reason": dict(flagged), "ns_per_tick": round(elapsed / n * 1e9),
            "_refused_at": refused_at, "_stream": stream}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nt8"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = Path(args.data)
    master = InstrumentMaster.default()
    config = QualityConfig()
    rows = []
    for path in sorted(data.glob("*.Last.txt*")):
        row = gate_file(path, master, config)
        if row["instrument"] == "SPY" and (data / "SPY.suspicious.csv").exists():
            import pandas as pd
            sus = pd.read_csv(data / "SPY.suspicious.csv")
            stream = row["_stream"]
            refused_prices = {(int(stream.ts_ns[i]), float(stream.price[i]), int(stream.size[i]))
                              for i in row["_refused_at"]}
            caught = 0
            for _, r in sus.iterrows():
                d, t, f = r["nt8_time_utc"].split()
                ts = int(np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}", "ns").astype(np.int64)) \
                    + int(f) * 100
                caught += (ts, float(r["price"]), int(r["size"])) in refused_prices
            row["suspicious_known"] = len(sus)
            row["suspicious_refused"] = caught
            row["false_positive_rate"] = (row["refused"] - caught) / (row["ticks"] - len(sus))
        else:
            row["false_positive_rate"] = row["refused_rate"]
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'file':<24}{'events':>11}{'refused':>9}{'FP rate':>10}  {'ns/tick':>8}  refused by reason / flagged")
    for r in rows:
        extra = f"  known bad {r['suspicious_refused']}/{r['suspicious_known']} refused" if "suspicious_known" in r else ""
        print(f"{r['file']:<24}{r['ticks']:>11,}{r['refused']:>9,}{r['false_positive_rate']:>10.4%}  {r['ns_per_tick']:>8}"
              f"  {r['refused_by_reason']} / {r['flagged_by_reason']}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
