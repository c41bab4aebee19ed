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
from typing import Any, Callable

import numpy as np

from bridge.core.config import Config
from bridge.data.nt8files import Nt8Format, detect_format, instrument_from_filename, read_nt8
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


def load_stream(files: list[Path], instrument: str | None = None) -> TickStream:
    names: list[str] = []
    parts: list[dict[str, np.ndarray]] = []
    for path in files:
        path = Path(path)
        if not path.exists():
            raise PlaybackError(f"data file {path} does not exist")
        fmt = detect_format(path)
        if fmt is Nt8Format.DAY:
            raise PlaybackError(f"{path}: day bars are too coarse to play back; export ticks or minute bars")
        name = instrument if (instrument and len(files) == 1) else instrument_from_filename(path)
        df = read_nt8(path, fmt)
        n = len(df)
        nan = np.full(n, np.nan)
        if fmt is Nt8Format.MINUTE:
            cols = {"price": df["close"].to_numpy(float), "bid": nan, "ask": nan, "is_bar": np.ones(n, bool),
                    "open": df["open"].to_numpy(float), "high": df["high"].to_numpy(float),
                    "low": df["low"].to_numpy(float)}
        else:
            cols = {"price": df["price"].to_numpy(float), "bid": df["bid"].to_numpy(float),
                    "ask": df["ask"].to_numpy(float), "is_bar": np.zeros(n, bool), "open": nan, "high": nan, "low": nan}
        cols["ts_ns"] = df["ts_ns"].to_numpy(np.int64)
        cols["size"] = df["volume"].to_numpy(np.int64)
        if name not in names:
            names.append(name)
        cols["instrument"] = np.full(n, names.index(name), dtype=np.int32)
        parts.append(cols)
    if not parts:
        raise PlaybackError("no data files given: pass --data FILE (an NT8 export)")
    ts = np.concatenate([p["ts_ns"] for p in parts])
    order = np.argsort(ts, kind="stable")  # stable: same-stamp events keep their file order

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])[order]

    return TickStream(names, cat("instrument"), ts[order], cat("price"), cat("bid"), cat("ask"), cat("size"),
                      cat("is_bar"), cat("open"), cat("high"), cat("low"), [str(f) for f in files])


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

    @property
    def ticks_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else repr(round(x, 10))


def run_playback(stream: TickStream, endpoint: str, config: Config, master: InstrumentMaster, *,
                 window: int = 256, instance_id: str | None = None,
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
    ``secret``: a sidecar in remote mode (every message authenticated; the trading is the same).
    ``instance_id``: each run is a strategy instance of its own by default (``playback-<random>``): a new
    playback of history must not resume the brackets of an earlier run stored in the same database.
    ``link``: something with the client's ``connect``, ``send``, ``wait_acks`` and ``close`` to use instead of a
    socket to ``endpoint`` (the in-process research engine, bridge/research/inprocess.py).
    """
    instance_id = instance_id or f"playback-{uuid.uuid4().hex[:12]}"
    if window < 1:
        raise ValueError("window must be at least 1")
    decls = []
    for name in stream.names:
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
    start = time.perf_counter()
    if link is None:
        link = Nt8Client(endpoint, instance_id=instance_id, account="Playback101", instruments=decls, secret=secret)
    with link as client:
        welcome = client.connect()
        iids, tss, prices, bids, asks, sizes = (stream.instrument.tolist(), stream.ts_ns.tolist(),
                                                stream.price.tolist(), stream.bid.tolist(), stream.ask.tolist(),
                                                stream.size.tolist())
        is_bar, opens, highs, lows = (stream.is_bar.tolist(), stream.open.tolist(), stream.high.tolist(),
                                      stream.low.tolist())

        def message(k: int) -> Message:
            if is_bar[k]:
                return Bar(iids[k], 60, opens[k], highs[k], lows[k], prices[k], sizes[k], tss[k])
            return Tick(iids[k], 0, prices[k], sizes[k], bids[k], asks[k], tss[k], tss[k])

        def trades(k: int) -> tuple[float, ...]:
            return bar_path(opens[k], highs[k], lows[k], prices[k]) if is_bar[k] else (prices[k],)
        n = len(stream)
        pending: list[Message] = []  # NT8 events waiting to be reported

        def apply(replies: list[Message], ts: int, index: int) -> None:
            nonlocal brackets
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

        i = 0
        while i < n:
            end = i + 1 if (pending or broker.has_live_orders()) else min(n, i + window)
            sent: list[tuple[int, int]] = []  # (seq, tick index; -1 for an NT8 event)
            for event in pending:
                sent.append((client.send(event), -1))
            pending.clear()
            for k in range(i, end):
                sent.append((client.send(message(k)), k))
            replies = client.wait_acks(sent[-1][0])
            # The fill model counts trades as 4k + j (j-th trade of event k; a bar has four), so an
            # order placed on event k goes live from event k + 1, and exits placed on a fill at a
            # bar's open can fill later in the same bar.
            for seq, k in sent:
                if k < 0:  # replies to reported events belong to the last event before the batch
                    apply(replies.get(seq, ()), tss[i - 1] if i else tss[0], 4 * i - 1)
                    continue
                fills_before = len(broker.fills)
                for j, price in enumerate(trades(k)):
                    pending.extend(broker.on_trade(iids[k], price, bids[k], asks[k], tss[k], 4 * k + j))
                for fill in broker.fills[fills_before:]:
                    digest.update(f"F|{fill.tick_index}|{bracket_ordinal.get(fill.bracket_id, fill.bracket_id)}|"
                                  f"{fill.role}|{fill.side}|{fill.quantity}|{_fmt(fill.price)}\n".encode())
                apply(replies.get(seq, ()), tss[k], 4 * k + 3)
            if progress is not None and (i >> 14) != (end >> 14):
                progress(end)
            i = end
        if pending:  # the last fills' reports
            last = [client.send(event) for event in pending]
            pending.clear()
            apply([m for g in client.wait_acks(last[-1]).values() for m in g], tss[-1], 4 * n - 1)
        if progress is not None:
            progress(n)
    elapsed = time.perf_counter() - start
    realized = broker.realized_pnl()
    return PlaybackResult(
        session_id=welcome.session_id, ticks_read=n - int(stream.is_bar.sum()), bars_read=int(stream.is_bar.sum()), rejected_by_reason=dict(sorted(rejected.items())),
        bars_rejected_by_reason=dict(sorted(rejected_bars.items())),
        brackets=brackets, fills=len(broker.fills), refused_commands=broker.refused,
        realized_pnl={stream.names[i]: round(v, 2) for i, v in realized.items()},
        commission=round(broker.account.commission, 2),
        final_position={stream.names[i]: p for i, p in broker.account.positions.items()},
        digest=digest.hexdigest(), elapsed_s=elapsed,
        fills_detail=[(int(stream.ts_ns[min(f.tick_index // 4, n - 1)]) if f.tick_index >= 0 else int(stream.ts_ns[0]), f)
                      for f in broker.fills],
        bracket_algorithms=algorithms, commands=commands,
    )
