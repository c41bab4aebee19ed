"""Recorded sessions for the fake TWS to stream: the team's real NT8 files turned into a sequence of prints
(price, size) with the bid and ask around each.

The files hold trades only, no quotes, so the quotes are inferred from the trades by the tick rule: a print
above the previous one lifted the offer (ask = print, bid one tick below), a print below hit the bid (bid =
print, ask one tick above), an unchanged print left the quote as it was. Minute-bar files (NQ, MES, MYM)
have no trades at all: each bar becomes four prints, open, the extreme on the far side from the close, the
other extreme, close, its volume shared among them. Say so wherever a test leans on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bridge.data.nt8files import Nt8Format, read_nt8

# the team's files per root (../shared/data/README.md): ES has real ticks, the others minute bars
RECORDED_FILES = {
    "ES": "nt8/ES 06-18.Last.txt.gz",
    "NQ": "nt8/NQ 12-23.Last.txt",
    "MES": "nt8/MES 12-23.Last.txt",
    "MYM": "nt8/MYM 12-23.Last.txt",
}
TICK_SIZES = {"ES": 0.25, "NQ": 0.25, "MES": 0.25, "MYM": 1.0, "YM": 1.0, "MNQ": 0.25, "RTY": 0.1, "M2K": 0.1}


@dataclass
class Print:
    index: int      # position in the recorded sequence
    price: float
    size: int
    bid: float
    ask: float


@dataclass
class ReplaySource:
    """One root's recorded prints, streamed from a cursor that survives reconnections: the fake keeps
    playing the session where it left off, as the market does while a client is away."""

    root: str
    prices: np.ndarray
    sizes: np.ndarray
    tick: float
    cursor: int = 0
    _bid: float = field(default=float("nan"), repr=False)
    _ask: float = field(default=float("nan"), repr=False)
    _prev: float = field(default=float("nan"), repr=False)

    def __len__(self) -> int:
        return len(self.prices)

    def next(self) -> Print:
        """The next print (the sequence starts over at its end), with the quote the tick rule gives."""
        i = self.cursor % len(self.prices)
        self.cursor += 1
        price, size = float(self.prices[i]), int(self.sizes[i])
        first = self._prev != self._prev  # NaN: nothing printed yet
        if first or price > self._prev:
            self._bid, self._ask = price - self.tick, price
        elif price < self._prev:
            self._bid, self._ask = price, price + self.tick
        # unchanged: the quote stands
        self._prev = price
        return Print(i, price, max(size, 1), self._bid, self._ask)


def _bars_to_prints(df) -> tuple[np.ndarray, np.ndarray]:
    o, h, lo, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    up = c >= o  # rising bar: its low came first, then its high
    first = np.where(up, lo, h)
    second = np.where(up, h, lo)
    prices = np.stack([o, first, second, c], axis=1).reshape(-1)
    share = np.maximum(v // 4, 1)
    sizes = np.repeat(share, 4)
    return prices.astype(np.float64), sizes.astype(np.int64)


def load_source(shared_data: Path, root: str, limit: int = 20_000) -> ReplaySource:
    """The recorded prints of ``root`` from the team's data folder, at most ``limit`` of them."""
    path = shared_data / RECORDED_FILES[root]
    df = read_nt8(path)
    if df.attrs["format"] in (Nt8Format.TICK.value, Nt8Format.TICK_REPLAY.value):
        prices, sizes = df["price"].to_numpy(np.float64), df["volume"].to_numpy(np.int64)
    else:
        prices, sizes = _bars_to_prints(df.head(limit // 4 + 1))
    return ReplaySource(root, prices[:limit].copy(), sizes[:limit].copy(), TICK_SIZES[root])


def load_sources(shared_data: Path, roots: list[str] | None = None, limit: int = 20_000) -> dict[str, ReplaySource]:
    return {r: load_source(shared_data, r, limit) for r in (roots or list(RECORDED_FILES))}
