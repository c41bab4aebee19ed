"""Playback with the Python engine: replay NT8 files tick by tick through a sidecar, in lockstep.

Files (tick, tick-replay or minute bars; one or several instruments) are merged in time order.
Trades reach the sidecar as TICK messages; minute bars as BAR messages, as NT8 sends a bar series,
and the fill model walks each bar's open, high, low and close (see ``bar_path``).
Every message is acknowledged by the sidecar (lockstep), so a run is deterministic: the digest of
orders and fills is the same run after run on the same data, configuration and window.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import numpy as np

from bridge.core.config import Config
from bridge.data.nt8files import Nt8Format, detect_format, instrument_from_filename, iter_nt8, read_nt8
from bridge.core.instruments import InstrumentMaster
from bridge.nt8.client import Nt8Client
from bridge.nt8.fillmodel import Fill, SimBroker
from bridge.protocol.messages import (
    CancelOrder,
    Bar,
    ChangeOrder,
    Error,
    ErrorCode,
    Flatten,
    InstrumentDecl,
    Message,
    MsgType,
    SubmitBracket,
    Tick,
)

_NS = 1_000_000_000


class PlaybackError(RuntimeError):
    """The playback cannot run as asked; the message says what to change."""


@dataclass
class TickStream:
    """Market events of one or more instruments merged in time order (numpy columns).

    An event is a trade (``is_bar`` False: price, bid, ask, size) or a closed minute bar (``is_bar``
    True: open, high, low, close in ``price``, volume in ``size``, stamped at its end as NT8 does).
    """

    names: list[str]
    instrument: np.ndarray  # int, index into names
    ts_ns: np.ndarray
    price: np.ndarray  # the trade, or the bar's close
    bid: np.ndarray
    ask: np.ndarray
    size: np.ndarray
    is_bar: np.ndarray
    open: np.ndarray  # bars only (NaN for trades)
    high: np.ndarray
    low: np.ndarray
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts_ns)

    def before(self, ts_ns: int) -> TickStream:
        """The events stamped before ``ts_ns`` (a walk-forward window)."""
        m = self.ts_ns < ts_ns
        return self._select(m)

    def between(self, start_ns: int, end_ns: int) -> TickStream:
        """The events stamped in ``[start_ns, end_ns)`` (a walk-forward window that does not start at the data's
        start)."""
        lo, hi = np.searchsorted(self.ts_ns, [start_ns, end_ns], side="left")  # ts_ns is sorted (load_stream)
        return self._select(slice(int(lo), int(hi)))

    def _select(self, m: Any) -> TickStream:
        return TickStream(self.names, self.instrument[m], self.ts_ns[m], self.price[m], self.bid[m], self.ask[m],
                          self.size[m], self.is_bar[m], self.open[m], self.high[m], self.low[m], self.sources)


def bar_path(o: float, h: float, lo: float, c: float) -> tuple[float, float, float, float]:
    """The order in which the fill model assumes a bar traded: open, the nearer extreme, the other
    extreme, close; a rising bar is taken to have gone down first (NT8's historical fills assume
    the same), which is the pessimistic order for a long bracket's stop."""
    return (o, lo, h, c) if c >= o else (o, h, lo, c)


def _instrument_names(files: list[Path], instrument: str | None) -> list[str]:
    for path in files:
        if not path.exists():
            raise PlaybackError(f"data file {path} does not exist")
    if not files:
        raise PlaybackError("no data files given: pass --data FILE (an NT8 export)")
    names: list[str] = []
    for path in files:
        name = instrument if (instrument and len(files) == 1) else instrument_from_filename(_strip_parquet(path))
        if name not in names:
            names.append(name)
    return names


def _strip_parquet(path: Path) -> Path:
    return path.with_name(path.name[: -len(".parquet")]) if path.name.endswith(".parquet") else path


def _columns(df: Any, is_bars: bool, iid: int) -> dict[str, np.ndarray]:
    """A file's frame (``read_nt8``'s columns) as the stream's columns."""
    n = len(df)
    nan = np.full(n, np.nan)
    if is_bars:
        cols = {"price": df["close"].to_numpy(float), "bid": nan, "ask": nan, "is_bar": np.ones(n, bool),
                "open": df["open"].to_numpy(float), "high": df["high"].to_numpy(float),
                "low": df["low"].to_numpy(float)}
    else:
        cols = {"price": df["price"].to_numpy(float),
                "bid": df["bid"].to_numpy(float) if "bid" in df else nan,
                "ask": df["ask"].to_numpy(float) if "ask" in df else nan,
                "is_bar": np.zeros(n, bool), "open": nan, "high": nan, "low": nan}
    cols["ts_ns"] = df["ts_ns"].to_numpy(np.int64)
    cols["size"] = df["volume"].to_numpy(np.int64)
    cols["instrument"] = np.full(n, iid, dtype=np.int32)
    return cols


def _frames(path: Path, chunk_bytes: int | None) -> Iterator[tuple[Any, bool]]:
    """A file's frames with whether they are bars: the whole file, or pieces of about ``chunk_bytes``. Parquet
    (``.parquet``: ``read_nt8``'s columns, ticks or bars) is read in row groups of the same size."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        is_bars = "open" in pf.schema_arrow.names
        rows = max(1, (chunk_bytes or (1 << 62)) // 48)
        for batch in pf.iter_batches(batch_size=min(rows, 1 << 30)):
            yield batch.to_pandas(), is_bars
        return
    fmt = detect_format(path)
    if fmt is Nt8Format.DAY:
        raise PlaybackError(f"{path}: day bars are too coarse to play back; export ticks or minute bars")
    is_bars = fmt is Nt8Format.MINUTE
    if chunk_bytes is None:
        yield read_nt8(path, fmt), is_bars
    else:
        for df in iter_nt8(path, fmt, chunk_bytes=chunk_bytes):
            yield df, is_bars


def _stream(names: list[str], parts: list[dict[str, np.ndarray]], sources: list[str]) -> TickStream:
    ts = np.concatenate([p["ts_ns"] for p in parts])
    order = np.argsort(ts, kind="stable")  # stable: same-stamp events keep their file order

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])[order]

    return TickStream(names, cat("instrument"), ts[order], cat("price"), cat("bid"), cat("ask"), cat("size"),
                      cat("is_bar"), cat("open"), cat("high"), cat("low"), sources)


def load_stream(files: list[Path], instrument: str | None = None) -> TickStream:
    """Every event of ``files`` (NT8 exports or Parquet) in memory, merged in time order."""
    paths = [Path(f) for f in files]
    names = _instrument_names(paths, instrument)
    parts = []
    for path in paths:
        iid = names.index(instrument if (instrument and len(paths) == 1) else instrument_from_filename(_strip_parquet(path)))
        parts += [_columns(df, is_bars, iid) for df, is_bars in _frames(path, None)]
    return _stream(names, parts, [str(f) for f in files])


def iter_stream(files: list[Path], instrument: str | None = None, *, chunk_bytes: int = 32 << 20) -> Iterator[TickStream]:
    """The events of ``files`` merged in time order, as consecutive pieces: memory holds about ``chunk_bytes`` of
    each file's text at a time, however large the files. ``run_playback`` takes the pieces and trades as on
    ``load_stream``'s whole stream (same-stamp events of several files keep the file order, as there). Each file
    must be in time order, as NT8 writes exports; one that is not is named (load it whole with ``load_stream``)."""
    paths = [Path(f) for f in files]
    names = _instrument_names(paths, instrument)
    readers = []
    for path in paths:
        iid = names.index(instrument if (instrument and len(paths) == 1) else instrument_from_filename(_strip_parquet(path)))
        readers.append((path, iid, _frames(path, chunk_bytes)))
    held: list[dict[str, np.ndarray] | None] = [None] * len(readers)
    done = [False] * len(readers)
    last_seen = [np.iinfo(np.int64).min] * len(readers)

    def read_more(r: int) -> None:
        path, iid, frames = readers[r]
        for df, is_bars in frames:
            cols = _columns(df, is_bars, iid)
            ts = cols["ts_ns"]
            if len(ts) and (ts[0] < last_seen[r] or np.any(ts[1:] < ts[:-1])):
                raise PlaybackError(f"{path} is not in time order: read it whole (load_stream) instead of in pieces")
            if len(ts):
                last_seen[r] = int(ts[-1])
                held[r] = cols if held[r] is None else {k: np.concatenate((held[r][k], v)) for k, v in cols.items()}
                return
        done[r] = True

    while True:
        for r in range(len(readers)):
            if not done[r] and (held[r] is None or not len(held[r]["ts_ns"])):
                read_more(r)
        open_ends = [int(held[r]["ts_ns"][-1]) for r in range(len(readers)) if not done[r] and held[r] is not None]
        # events before the earliest last stamp of a file still being read are final; events at that stamp may
        # have same-stamp company in that file's next piece, so they wait
        cutoff = min(open_ends) if open_ends else None
        parts = []
        for r, cols in enumerate(held):
            if cols is None or not len(cols["ts_ns"]):
                continue
            k = len(cols["ts_ns"]) if cutoff is None else int(np.searchsorted(cols["ts_ns"], cutoff, side="left"))
            if k:
                parts.append({key: v[:k] for key, v in cols.items()})
                held[r] = {key: v[k:] for key, v in cols.items()}
        if parts:
            yield _stream(names, parts, [str(p) for p in paths])
        elif cutoff is None:
            return
        else:  # nothing before the cutoff: the files ending on it read further
            for r in range(len(readers)):
                if not done[r] and held[r] is not None and len(held[r]["ts_ns"]) and int(held[r]["ts_ns"][-1]) == cutoff:
                    read_more(r)


@dataclass
class PlaybackResult:
    session_id: int
    ticks_read: int
    bars_read: int
    rejected_by_reason: dict[str, int]
    bars_rejected_by_reason: dict[str, int]
    brackets: int
    fills: int
    refused_commands: list[str]
    realized_pnl: dict[str, float]
    commission: float
    final_position: dict[str, int]
    digest: str
    elapsed_s: float
    fills_detail: list[tuple[int, Fill]] = field(default_factory=list)  # (event time, fill), in order
    bracket_algorithms: dict[str, str] = field(default_factory=dict)  # client order id -> algorithm id
    commands: list[tuple[int, str]] = field(default_factory=list)  # (event index, BRACKET/CANCEL/CHANGE/FLATTEN)
    instruments: list[str] = field(default_factory=list)  # the stream's names, instrument id order

    @property
    def ticks_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else repr(round(x, 10))


def run_playback(stream: TickStream | Iterable[TickStream], endpoint: str, config: Config, master: InstrumentMaster,
                 *, window: int = 256, instance_id: str | None = None,
                 progress: Callable[[int], None] | None = None, secret: bytes | None = None,
                 link: Any = None) -> PlaybackResult:
    """Replay ``stream`` through the sidecar at ``endpoint`` in lockstep; deterministic for a given window.

    Messages go out in batches and every one is acknowledged; replies are attributed to the
    message that caused them, and the fill model then walks the batch in tick order, so an order
    goes live on the first trade after the one that triggered it, whatever the batch size. A batch
    is one tick whenever an order is live or NT8 events are waiting to be reported (exact
    lockstep); while nothing is live it is up to ``window`` ticks, and the reports of a bracket
    placed and filled inside such a batch reach the sidecar at its end. ``window=1`` is exact
    lockstep throughout. The batch boundaries depend only on the data, so runs are repeatable.
    ``stream`` may be one TickStream or consecutive pieces of one (``iter_stream``: files larger than memory);
    a batch never ends at a piece's end, so the pieces give the orders and fills of the whole.
    ``secret``: a sidecar in remote mode (every message authenticated; the trading is the same).
    ``instance_id``: each run is a strategy instance of its own by default (``playback-<random>``): a new
    playback of history must not resume the brackets of an earlier run stored in the same database.
    ``link``: something with the client's ``connect``, ``send``, ``wait_acks`` and ``close`` to use instead of a
    socket to ``endpoint`` (the in-process research engine, bridge/research/inprocess.py).
    """
    instance_id = instance_id or f"playback-{uuid.uuid4().hex[:12]}"
    if window < 1:
        raise ValueError("window must be at least 1")
    pieces = iter((stream,)) if isinstance(stream, TickStream) else iter(stream)
    first = next(pieces, None)
    if first is None:
        raise PlaybackError("no market data to play back")
    names = first.names
    decls = []
    for name in names:
        spec = master.resolve(name)
        decls.append(InstrumentDecl(name, spec.tick_size, spec.point_value))
    broker = SimBroker(decls, config.fill_model)
    digest = hashlib.sha256()
    rejected: Counter = Counter()  # refused ticks (and other messages), by reason
    rejected_bars: Counter = Counter()
    brackets = 0
    bracket_ordinal: dict[str, int] = {}
    algorithms: dict[str, str] = {}
    commands: list[tuple[int, str]] = []
    fill_times: list[int] = []  # the event time of each fill, in order
    counts = {"events": 0, "bars": 0}
    start = time.perf_counter()
    if link is None:
        link = Nt8Client(endpoint, instance_id=instance_id, account="Playback101", instruments=decls, secret=secret)
    with link as client:
        welcome = client.connect()
        cols: dict[str, list] = {}
        base = 0  # the whole stream's index of the first event held in ``cols``
        first_ts = int(first.ts_ns[0]) if len(first) else 0
        prev_ts = first_ts  # the time of the event before the first one held (the first event's, at the start)

        def take(piece: TickStream | None, keep_from: int) -> None:
            """Hold the events from ``keep_from`` on and the next piece's after them."""
            nonlocal base, prev_ts
            if keep_from:
                prev_ts = cols["ts"][keep_from - 1]
            base += keep_from
            fresh = {} if piece is None else {
                "iid": piece.instrument.tolist(), "ts": piece.ts_ns.tolist(), "price": piece.price.tolist(),
                "bid": piece.bid.tolist(), "ask": piece.ask.tolist(), "size": piece.size.tolist(),
                "bar": piece.is_bar.tolist(), "open": piece.open.tolist(), "high": piece.high.tolist(),
                "low": piece.low.tolist()}
            for key in ("iid", "ts", "price", "bid", "ask", "size", "bar", "open", "high", "low"):
                cols[key] = cols.get(key, [])[keep_from:] + fresh.get(key, [])
            if piece is not None:
                if piece.names != names:
                    raise PlaybackError(f"a piece of the stream names instruments {piece.names}, the first {names}")
                counts["events"] += len(piece)
                counts["bars"] += int(piece.is_bar.sum())

        take(first, 0)
        exhausted = isinstance(stream, TickStream)
        pending: list[Message] = []  # NT8 events waiting to be reported

        def note_fills(before: int, ts: int) -> None:
            fill_times.extend([ts] * (len(broker.fills) - before))

        def apply(replies: list[Message], ts: int, index: int) -> None:
            nonlocal brackets
            if not replies:
                return
            before = len(broker.fills)
            for r in replies:
                if isinstance(r, (SubmitBracket, CancelOrder, ChangeOrder, Flatten)):
                    commands.append((index // 4, type(r).TYPE.name))
                if isinstance(r, SubmitBracket):
                    brackets += 1
                    bracket_ordinal[r.client_order_id] = brackets
                    algorithms[r.client_order_id] = r.algorithm_id
                    digest.update(f"B|{index}|{brackets}|{r.side}|{r.quantity}|{r.entry_type}|{_fmt(r.entry_price)}|"
                                  f"{_fmt(r.stop_price)}|{_fmt(r.target_price)}\n".encode())
                    pending.extend(broker.submit_bracket(r, ts, index))
                elif isinstance(r, CancelOrder):
                    pending.extend(broker.cancel(r, ts))
                elif isinstance(r, ChangeOrder):
                    pending.extend(broker.change(r, ts))
                elif isinstance(r, Flatten):
                    pending.extend(broker.flatten(r, ts, index))
                elif isinstance(r, Error):
                    name = ErrorCode(r.code).name if r.code in ErrorCode._value2member_map_ else str(r.code)
                    (rejected_bars if r.offending_type == MsgType.BAR else rejected)[name] += 1
            note_fills(before, ts)

        i = 0  # index into ``cols`` of the next event to send
        while True:
            iids, tss, prices, bids, asks, sizes = (cols["iid"], cols["ts"], cols["price"], cols["bid"], cols["ask"],
                                                    cols["size"])
            is_bar, opens, highs, lows = cols["bar"], cols["open"], cols["high"], cols["low"]
            n = len(tss)
            size = 1 if (pending or broker.has_live_orders()) else window
            if i + size > n and not exhausted:  # the batch would end at the piece's end: bring in the next piece
                piece = next(pieces, None)
                exhausted = piece is None
                take(piece, i)
                i = 0
                continue
            if i >= n:
                break
            end = min(n, i + size)
            sent: list[tuple[int, int]] = []  # (seq, index in cols; -1 for an NT8 event)
            for event in pending:
                sent.append((client.send(event), -1))
            pending.clear()
            for k in range(i, end):
                if is_bar[k]:
                    msg: Message = Bar(iids[k], 60, opens[k], highs[k], lows[k], prices[k], sizes[k], tss[k])
                else:
                    msg = Tick(iids[k], 0, prices[k], sizes[k], bids[k], asks[k], tss[k], tss[k])
                sent.append((client.send(msg), k))
            replies = client.wait_acks(sent[-1][0])
            # The fill model counts trades as 4k + j (j-th trade of event k; a bar has four), so an
            # order placed on event k goes live from event k + 1, and exits placed on a fill at a
            # bar's open can fill later in the same bar.
            g0 = base + i  # the whole stream's index of the batch's first event
            for seq, k in sent:
                if k < 0:  # replies to reported events belong to the last event before the batch
                    before_ts = tss[i - 1] if i else (prev_ts if g0 else tss[0])
                    apply(replies.get(seq, ()), before_ts, 4 * g0 - 1)
                    continue
                g = base + k
                fills_before = len(broker.fills)
                trades = bar_path(opens[k], highs[k], lows[k], prices[k]) if is_bar[k] else (prices[k],)
                for j, price in enumerate(trades):
                    pending.extend(broker.on_trade(iids[k], price, bids[k], asks[k], tss[k], 4 * g + j))
                if len(broker.fills) != fills_before:
                    for fill in broker.fills[fills_before:]:
                        digest.update(f"F|{fill.tick_index}|{bracket_ordinal.get(fill.bracket_id, fill.bracket_id)}|"
                                      f"{fill.role}|{fill.side}|{fill.quantity}|{_fmt(fill.price)}\n".encode())
                    note_fills(fills_before, tss[k])
                apply(replies.get(seq, ()), tss[k], 4 * g + 3)
            if progress is not None and ((base + i) >> 14) != ((base + end) >> 14):
                progress(base + end)
            i = end
        n_total = counts["events"]
        last_ts = cols["ts"][-1] if cols["ts"] else prev_ts
        if pending:  # the last fills' reports
            last = [client.send(event) for event in pending]
            pending.clear()
            apply([m for g in client.wait_acks(last[-1]).values() for m in g], last_ts, 4 * n_total - 1)
        if progress is not None:
            progress(n_total)
    elapsed = time.perf_counter() - start
    realized = broker.realized_pnl()
    bars = counts["bars"]
    return PlaybackResult(
        session_id=welcome.session_id, ticks_read=n_total - bars, bars_read=bars,
        rejected_by_reason=dict(sorted(rejected.items())), bars_rejected_by_reason=dict(sorted(rejected_bars.items())),
        brackets=brackets, fills=len(broker.fills), refused_commands=broker.refused,
        realized_pnl={names[i]: round(v, 2) for i, v in realized.items()},
        commission=round(broker.account.commission, 2),
        final_position={names[i]: p for i, p in broker.account.positions.items()},
        digest=digest.hexdigest(), elapsed_s=elapsed,
        fills_detail=list(zip(fill_times, broker.fills)),
        bracket_algorithms=algorithms, commands=commands, instruments=list(names),
    )
