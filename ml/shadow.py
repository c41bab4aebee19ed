"""The challenger in shadow on the live stream, beside the champion that trades.

At every bar where the champion scores an instrument, the challenger scores the same feature row
and window; both probabilities are recorded under one event id. The event's label comes from the
market itself, online, with the label's own rule (``ml.labels``): the first barrier among the next
``horizon_bars`` bars of that instrument, a bar touching both counting as the lower one; a time-out
has no label. What each model's signal would have made (its side by the same break-even rule the
training evaluation uses, the barrier's return less the round-trip cost, in ATRs) goes with it.

:class:`ml.ab.ShadowComparison` turns the pairs into a decision; every ``decide_every`` labels the
result is written to ``<registry>/.ab/<challenger>.json``, which ``nt8bridge model ab`` shows and
the retrainer's promotion gate reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.ab import ShadowComparison
from ml.serving import side_of

AB_FOLDER = ".ab"


@dataclass
class _Pending:
    event_id: tuple[int, int]
    upper: float
    lower: float
    bars_left: int
    side_champion: int
    side_challenger: int
    cost_atr: float


@dataclass
class ShadowRunner:
    """Pairs the champion's and a challenger's predictions and labels them from the bars that follow."""

    registry_root: Path
    champion_id: str
    challenger: Any  # ml.serving.LoadedModel
    decide_every: int = 100
    comparison: ShadowComparison = field(init=False)
    _pending: dict[int, list[_Pending]] = field(default_factory=dict)
    labelled: int = 0

    def __post_init__(self) -> None:
        self.comparison = ShadowComparison(self.champion_id, self.challenger.model_id)

    def on_bar(self, iid: int, high: float, low: float) -> None:
        """Resolve this instrument's pending events with the bar that just closed (call before scoring it)."""
        pending = self._pending.get(iid)
        if not pending:
            return
        still = []
        for ev in pending:
            hit_low, hit_high = low <= ev.lower, high >= ev.upper
            if hit_low or hit_high:
                label = 0 if hit_low else 1  # both in one bar: the lower one, as the labels say
                move = self.challenger.labels.barrier_atr * (1 if label else -1)
                self.comparison.resolve(ev.event_id, label, *(side * move - ev.cost_atr if side else 0.0
                                                              for side in (ev.side_champion, ev.side_challenger)))
                self.labelled += 1
                if self.labelled % self.decide_every == 0:
                    self.save()
            elif ev.bars_left > 1:
                ev.bars_left -= 1
                still.append(ev)
        self._pending[iid] = still

    def score(self, iid: int, ts_ns: int, row: Any, window: Any, p_champion: float, close: float, atr: float,
              cost_price: float, champion_share: float) -> float:
        """The challenger's probability for the event the champion just scored; records the pair."""
        p = self.challenger.ensemble.predict(row, window).probability
        labels = self.challenger.labels
        if not (atr > 0 and math.isfinite(atr)):
            return p
        cost_atr = cost_price / atr
        event_id = (iid, ts_ns)
        self.comparison.record(event_id, p_champion, p)
        d = labels.barrier_atr * atr
        self._pending.setdefault(iid, []).append(_Pending(
            event_id, close + d, close - d, labels.horizon_bars,
            side_of(p_champion, champion_share, labels.barrier_atr, cost_atr),
            side_of(p, self.challenger.resolved_share, labels.barrier_atr, cost_atr), cost_atr))
        return p

    def save(self) -> Path:
        """Write the comparison's current decision where the registry's users look for it."""
        return write_ab_result(self.registry_root, self.challenger.model_id, self.comparison.decide())


def ab_result_path(registry_root: Path, challenger_id: str) -> Path:
    return Path(registry_root) / AB_FOLDER / f"{challenger_id}.json"


def write_ab_result(registry_root: Path, challenger_id: str, result: Any) -> Path:
    path = ab_result_path(registry_root, challenger_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dataclasses.asdict(result)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(doc, default=str, indent=2), encoding="utf-8")
    os.replace(partial, path)
    return path


def read_ab_result(registry_root: Path, challenger_id: str) -> dict[str, Any] | None:
    path = ab_result_path(registry_root, challenger_id)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_ab_decision(registry_root: Path, challenger_id: str) -> str | None:
    """The latest shadow decision for this challenger (None: it never ran in shadow)."""
    result = read_ab_result(registry_root, challenger_id)
    return None if result is None else str(result["decision"])
