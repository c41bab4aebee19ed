"""What the sidecar loads to trade a registered model: checked artifacts, ONNX sessions, the guard.

Only onnxruntime and numpy are needed here (no torch, no training libraries): the registry checks
the artifacts' SHA-256 and the expiry, the ensemble's sessions are created once and warmed up, and
the model's own feature and label configuration comes from its metadata, so the sidecar computes
exactly the features it was trained on and places the bracket at the label's distances.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.features import FeatureConfig
from ml.labels import LabelConfig


# The costs a trade is charged in training's evaluation and in the shadow comparison: one tick of slippage
# a side (the fill model's market and stop fills) and its commission per contract a side.
SLIPPAGE_TICKS = 1.0
COMMISSION = 2.09


def round_trip_cost(tick_size: float, point_value: float, slippage_ticks: float = SLIPPAGE_TICKS,
                    commission: float = COMMISSION) -> float:
    """A round trip's cost in price units of one contract."""
    return 2.0 * (slippage_ticks * tick_size + commission / point_value)


def side_of(p: float, resolved_share: float, barrier_atr: float, cost_atr: float, margin: float = 0.0) -> int:
    """+1 long, -1 short, 0 none: the side whose win probability (``p`` for a long, ``1 - p`` for a short,
    times the resolved share) gives a positive Kelly fraction after the round-trip cost, i.e. beats
    ``(d + c) / 2d`` for barriers ``d`` and cost ``c`` in ATRs, by ``margin``."""
    need = (barrier_atr + cost_atr) / (2.0 * barrier_atr) + margin
    if p * resolved_share > need:
        return 1
    if (1.0 - p) * resolved_share > need:
        return -1
    return 0


@dataclass
class LoadedModel:
    model_id: str
    path: Path
    meta: dict[str, Any]
    ensemble: Any  # ml.inference.OnnxEnsemble
    guard: Any | None  # ml.drift.DissimilarityGuard, or None when switched off
    features: FeatureConfig
    labels: LabelConfig

    @property
    def resolved_share(self) -> float:
        return float(self.meta["resolved_share"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["manifest"]["seq_len"] or 1)


def registry_folder(configured: str = "") -> Path:
    """The registry folder: the configured one, else ``models`` beside the default database."""
    if configured:
        return Path(configured)
    from bridge.storage.database import default_db_url
    return Path(default_db_url().removeprefix("sqlite:///")).parent / "models"


def _config(cls: type, values: dict[str, Any]) -> Any:
    """A frozen config dataclass from its JSON form (tuples came back as lists)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_model(registry_root: Path, model_id: str, db_url: str | None = None,
               di_quantile: float = 0.995) -> LoadedModel:
    """Load ``model_id`` (or ``"champion"``) for trading; raises ml.registry errors naming what is wrong
    (unknown id, no champion, a changed or missing artifact, an expired model). ``di_quantile``: the
    dissimilarity guard withholds rows whose index is above this quantile of training rows' (0: off)."""
    from ml.inference import OnnxEnsemble
    from ml.registry import Registry

    registry = Registry(Path(registry_root), db_url)
    record = registry.load_checked(None if model_id == "champion" else model_id, now_ns=time.time_ns())
    path = Path(record.path)
    meta = json.loads((path / "model.json").read_text())
    ensemble = OnnxEnsemble.load(path, meta["manifest"])
    guard = None
    if di_quantile > 0:
        from ml.drift import DissimilarityGuard, DriftReference
        guard = DissimilarityGuard(DriftReference.load(path / "reference.npz"), quantile=di_quantile)
    return LoadedModel(record.model_id, path, meta, ensemble, guard,
                       _config(FeatureConfig, meta["feature_config"]), _config(LabelConfig, meta["label_config"]))
