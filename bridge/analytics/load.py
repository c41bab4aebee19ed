"""Loading NT8 text exports (bridge/data/nt8files.py) into the analytics store.

A file's rows are tagged with a ``source`` naming the file *and its content* (``nt8:NAME#SHA256[:16]``): the
same file loaded twice is recognised (all its rows already there: skipped; some: its batches sent again, and
the store's insert deduplication drops those that arrived), and an edited file is a new source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bridge.analytics.store import AnalyticsStore, quote
from bridge.core.digest import sha256_file
from bridge.data.nt8files import Nt8Format, read_nt8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    path: str
    instrument: str
    format: str
    table: str
    rows: int          # rows the file holds (good ones)
    sent: int          # rows sent to the store (0 when the file was already there)
    bad_rows: int      # lines skipped as unreadable (each logged)
    skipped: bool      # already fully loaded


def source_of(path: Path) -> str:
    return f"nt8:{path.name}#{sha256_file(path)[:16]}"


def _frames(df: pd.DataFrame, fmt: Nt8Format, instrument: str) -> list[tuple[str, pd.DataFrame]]:
    n = len(df)
    base = {"instrument": np.full(n, instrument, dtype=object), "ts": df["ts_ns"].to_numpy(dtype=np.int64),
            "session_id": np.zeros(n, dtype=np.uint64)}  # no sidecar session: an export
    seq = np.arange(n, dtype=np.uint64)  # the file's order: breaks ties between ticks with one stamp
    if fmt in (Nt8Format.TICK, Nt8Format.TICK_REPLAY):
        out = [("ticks", pd.DataFrame({**base, "seq": seq, "price": df["price"].to_numpy(),
                                       "volume": df["volume"].to_numpy(dtype=np.uint64)}))]
        if fmt is Nt8Format.TICK_REPLAY:
            unknown = pd.array([None] * n, dtype="UInt64")  # NT8's replay export carries no sizes
            out.append(("quotes", pd.DataFrame({**base, "seq": seq, "bid": df["bid"].to_numpy(),
                                                "ask": df["ask"].to_numpy(), "bid_size": unknown,
                                                "ask_size": unknown.copy()})))
        return out
    period = 60 if fmt is Nt8Format.MINUTE else 86_400
    return [("bars", pd.DataFrame({**base, "period_s": np.full(n, period, dtype=np.uint32),
                                   **{c: df[c].to_numpy() for c in ("open", "high", "low", "close")},
                                   "volume": df["volume"].to_numpy(dtype=np.uint64),
                                   "tick_count": pd.array([None] * n, dtype="UInt32"),
                                   "built_by": np.full(n, "nt8", dtype=object)}))]


def load_nt8_file(store: AnalyticsStore, path: str | Path, *, instrument: str | None = None) -> list[LoadResult]:
    """Load one NT8 export (ticks, tick replay, minute or day bars). Unreadable lines are skipped, counted and
    logged with their line number; a file that is not an NT8 export raises DataFileError."""
    p = Path(path)
    df = read_nt8(p, on_error="skip")
    fmt = Nt8Format(df.attrs["format"])
    inst = instrument or df.attrs["instrument"]
    bad = df.attrs["bad_rows"]
    for number, text, reason in bad[:20]:
        log.warning("%s: line %d skipped: %s (%r)", p, number, reason, text[:80])
    if len(bad) > 20:
        log.warning("%s: %d more unreadable lines skipped", p, len(bad) - 20)
    source = source_of(p)
    results = []
    for table, frame in _frames(df, fmt, inst):
        have = store.count(table, f"source = {quote(source)}")
        skipped = have == len(frame)
        sent = 0 if skipped else store.insert(table, frame, source=source)
        results.append(LoadResult(str(p), inst, fmt.value, table, len(frame), sent, len(bad), skipped))
    return results
