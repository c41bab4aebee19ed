"""The end-to-end training run behind ``nt8bridge train``: honest by construction.

1. **Data**: NT8 minute (or tick, turned into minute bars with their buy/sell volume) exports,
   one instrument per file; features from ``ml.features`` (offline, the same definition the
   sidecar evaluates online), with each instrument's partner where the files include it.
2. **Labels**: triple-barrier outcomes with the bracket's own distances (``ml.labels``).
3. **Split in time**: the last ``test_fraction`` of the time span is the out-of-sample test,
   never seen by any fit; training rows whose label ends inside it are purged, and an embargo
   separates the two.
4. **Members and meta-model**: out-of-fold member probabilities from purged, embargoed
   walk-forward splits of the training window fit the stacking meta-model (so it learns how
   much to trust each member on data that member did not see); then every member is refit on
   the whole training window.
5. **Evaluation** on the test window: log-loss, Brier, calibration, accuracy per member and for
   the ensemble, and the P&L of the ensemble's signals after costs, traded one at a time per
   instrument (no overlapping trades), with Sharpe and the deflated Sharpe ratio.
6. **Export**: every model to ONNX, checked against its native predictions on test rows; the
   drift reference; the report; registered as a *challenger* (promotion is a separate, named act).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ml.features import PARTNERS, FEATURE_SET_VERSION, FeatureConfig, feature_names, offline_features
from ml.labels import LabelConfig, triple_barrier
from ml.serving import COMMISSION, SLIPPAGE_TICKS, round_trip_cost, side_of

log = logging.getLogger("nt8bridge.ml.train")

_NS = 1_000_000_000
MEMBERS = ("lightgbm", "xgboost", "lstm", "transformer")
Progress = Callable[[str, float], None]  # (stage description, fraction of the whole run done)


@dataclass(frozen=True)
class TrainConfig:
    """How a training run is shaped. ``quick`` shrinks the models and the folds, never the rigour:
    the same split, purging, embargo and out-of-sample test."""

    quick: bool = False
    test_fraction: float = 0.2
    cv_splits: int = 4
    embargo_bars: int = 60
    seq_len: int = 32
    trees: int = 300
    epochs: int = 12
    signal_margin: float = 0.0  # trade when the win probability beats break-even after costs by this much
    slippage_ticks: float = SLIPPAGE_TICKS  # per side, as the fill model charges market and stop fills
    commission: float = COMMISSION  # per contract per side (the fill model's default)
    expires_days: float = 14.0
    window_days: float | None = None  # train on the newest this many days of the data (None: all of it)
    # Fit on every n-th training row: neighbouring minutes share most of their label's path, so the
    # rows in between add little information and most of the cost. The test window keeps every row.
    sample_every: int = 1
    seed: int = 7
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # Barriers of 3 ATRs over an hour: a round trip costs ~0.7 ATR of a minute bar on ES (one tick of
    # slippage a side and commissions), so tighter brackets need a win rate no model reaches.
    labels: LabelConfig = field(default_factory=lambda: LabelConfig(barrier_atr=3.0, horizon_bars=60))

    def effective(self) -> TrainConfig:
        if not self.quick:
            return self
        return replace(self, cv_splits=3, trees=100, epochs=2, sample_every=5)


@dataclass
class Dataset:
    """Every warm bar of every instrument, in time order: features, sequences, labels, costs."""

    X: np.ndarray  # (n, k) float32
    X_seq: np.ndarray  # (n, T, k) float32
    t0: np.ndarray  # int64 ns, the bar's close (entry time)
    t1: np.ndarray  # int64 ns, the label's exit time
    y: np.ndarray  # float64: 1 / 0 resolved, NaN time-out
    exit_ret: np.ndarray  # signed return of a long at exit, in ATR units
    cost_atr: np.ndarray  # round-trip cost of one contract, in ATR units
    group: np.ndarray  # instrument index
    roots: list[str]
    names: tuple[str, ...]
    files: list[str]
    data_sha256: str


# ------------------------------------------------------------------------------------------ data


def _file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_bars(paths: list[Path]) -> dict[str, tuple[pd.DataFrame, Any]]:
    """Minute bars per instrument root from NT8 exports (ticks become minute bars with buy/sell volume)."""
    from bridge.data.nt8files import Nt8Format, instrument_from_filename, read_nt8
    from bridge.core.instruments import InstrumentMaster
    from ml.features import ticks_to_flow_bars

    master = InstrumentMaster.default()
    out: dict[str, tuple[pd.DataFrame, Any]] = {}
    for p in paths:
        df = read_nt8(p)
        spec = master.resolve(instrument_from_filename(p))
        if df.attrs.get("format") in (Nt8Format.TICK, Nt8Format.TICK_REPLAY, "tick", "tick_replay"):
            df = ticks_to_flow_bars(df, 60)
        if spec.root in out:
            raise ValueError(f"two files of {spec.root}: {p.name} and another; give one file per instrument")
        out[spec.root] = (df.reset_index(drop=True), spec)
    return out


def build_dataset(paths: list[Path], cfg: TrainConfig) -> Dataset:
    """Features, sequences and labels of every instrument, pooled and sorted by time."""
    from ml.models import make_sequences

    paths = [Path(p) for p in paths]
    bars = load_bars(paths)
    if cfg.window_days:
        newest = max(int(df["ts_ns"].iloc[-1]) for df, _ in bars.values())
        start = newest - int(cfg.window_days * 86_400 * _NS)
        bars = {root: (df[df["ts_ns"] >= start].reset_index(drop=True), spec) for root, (df, spec) in bars.items()}
    names = feature_names(cfg.features)
    parts: list[dict[str, np.ndarray]] = []
    roots = sorted(bars)
    for gi, root in enumerate(roots):
        df, spec = bars[root]
        partner_root = PARTNERS.get(root)
        partner = bars[partner_root][0] if partner_root in bars else None
        feats = offline_features(df, partner, cfg.features)
        X = feats[list(names)].to_numpy(dtype=np.float64)
        atr = feats["atr"].to_numpy(dtype=np.float64)
        lab = triple_barrier(df, atr, cfg.labels)
        seq, valid = make_sequences(X, cfg.seq_len)
        warm = np.isfinite(X).all(axis=1) & valid & np.isfinite(atr) & (atr > 0) & np.isfinite(lab["exit_ret"].to_numpy())
        cost_price = round_trip_cost(spec.tick_size, spec.point_value, cfg.slippage_ticks, cfg.commission)
        parts.append({
            "X": X[warm].astype(np.float32), "X_seq": seq[warm], "t0": df["ts_ns"].to_numpy()[warm],
            "t1": lab["t1_ns"].to_numpy()[warm].astype(np.int64), "y": lab["label"].to_numpy()[warm],
            "exit_ret": lab["exit_ret"].to_numpy()[warm], "cost_atr": cost_price / atr[warm],
            "group": np.full(int(warm.sum()), gi, dtype=np.int64),
        })
        log.info("%s: %d bars, %d usable rows (%s partner)", root, len(df), int(warm.sum()), partner_root
                 if partner is not None else "no")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cat["group"], cat["t0"]))
    cat = {k: v[order] for k, v in cat.items()}
    return Dataset(roots=roots, names=names, files=[p.name for p in paths], data_sha256=_file_sha256(paths), **cat)


# ------------------------------------------------------------------------------------------ models


def make_members(cfg: TrainConfig) -> dict[str, Any]:
    """The four members, unfitted, shaped by the config (small on purpose: tens of thousands of rows of
    noisy minute returns do not support big models)."""
    from ml.models import LightGBMClassifierModel, LSTMClassifier, TransformerClassifier, XGBoostClassifierModel

    return {
        "lightgbm": LightGBMClassifierModel(n_estimators=cfg.trees, learning_rate=0.03, num_leaves=15,
                                            min_child_samples=200, n_jobs=1, random_state=cfg.seed),
        "xgboost": XGBoostClassifierModel(n_estimators=cfg.trees, learning_rate=0.03, max_depth=4,
                                          n_jobs=1, random_state=cfg.seed),
        "lstm": LSTMClassifier(hidden_size=24, max_epochs=cfg.epochs, patience=2, n_threads=1,
                               random_state=cfg.seed),
        "transformer": TransformerClassifier(max_epochs=cfg.epochs, patience=2, n_threads=1, random_state=cfg.seed),
    }


def _inputs(ds: Dataset, name: str, idx: np.ndarray) -> np.ndarray:
    return ds.X_seq[idx] if name in ("lstm", "transformer") else ds.X[idx]


def _fit_members(ds: Dataset, idx: np.ndarray, cfg: TrainConfig) -> dict[str, Any]:
    # make_members builds fresh, unfitted estimators on every call: nothing to clone
    return {name: model.fit(_inputs(ds, name, idx), ds.y[idx]) for name, model in make_members(cfg).items()}


def _member_probs(members: dict[str, Any], ds: Dataset, idx: np.ndarray) -> np.ndarray:
    return np.column_stack([m.predict_proba(_inputs(ds, name, idx))[:, 1] for name, m in members.items()])


# ------------------------------------------------------------------------------------------ split


@dataclass(frozen=True)
class TimeSplit:
    train: np.ndarray  # resolved rows usable for training (purged, before the embargo)
    test: np.ndarray  # every row of the test window (resolved or not: trades need all of them)
    cut_ns: int


def time_split(ds: Dataset, cfg: TrainConfig) -> TimeSplit:
    """The out-of-sample test is the last ``test_fraction`` of the time span; training rows whose label
    ends at or after the cut are purged, and the ``embargo_bars`` minutes before the cut are dropped."""
    lo, hi = int(ds.t0.min()), int(ds.t0.max())
    cut = lo + int((hi - lo) * (1.0 - cfg.test_fraction))
    embargo = cfg.embargo_bars * 60 * _NS
    resolved = np.isfinite(ds.y)
    train = np.flatnonzero(resolved & (ds.t0 < cut - embargo) & (ds.t1 < cut))
    test = np.flatnonzero(ds.t0 >= cut)
    train = train[:: cfg.sample_every]
    if len(train) < 1000 or len(test) < 200:
        raise ValueError(f"not enough data for an honest split: {len(train)} training and {len(test)} test rows "
                         "(give more days of data)")
    return TimeSplit(train, test, cut)


def out_of_fold(ds: Dataset, train: np.ndarray, cfg: TrainConfig, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Member probabilities for training rows predicted by members that never saw them (purged
    walk-forward); returns (rows covered, probabilities (rows, members))."""
    from ml.cv import PurgedWalkForward

    cv = PurgedWalkForward(n_splits=cfg.cv_splits, embargo_bars=cfg.embargo_bars)
    covered, probs = [], []
    for i, (tr, va) in enumerate(cv.split(ds.t0[train], ds.t1[train])):
        progress(f"walk-forward fold {i + 1}/{cfg.cv_splits}", 0.1 + 0.5 * i / cfg.cv_splits)
        members = _fit_members(ds, train[tr], cfg)
        covered.append(train[va])
        probs.append(_member_probs(members, ds, train[va]))
    return np.concatenate(covered), np.vstack(probs)


# ------------------------------------------------------------------------------------------ evaluation


def trade_signals(p: np.ndarray, ds: Dataset, idx: np.ndarray, resolved_share: float, barrier_atr: float,
                  margin: float = 0.0) -> dict[str, Any]:
    """Trade the ensemble on the test rows one position at a time per instrument, as the sidecar would:
    the side :func:`ml.serving.side_of` gives (a positive Kelly fraction after costs, plus ``margin``);
    each trade earns its label's exit return less its round-trip cost, in ATR units. Returns the
    per-trade returns and their entry times."""
    busy_until: dict[int, int] = {}
    rets, times = [], []
    for j, i in enumerate(idx):
        g = int(ds.group[i])
        if ds.t0[i] < busy_until.get(g, -1):
            continue
        side = side_of(float(p[j]), resolved_share, barrier_atr, float(ds.cost_atr[i]), margin)
        if side == 0:
            continue
        rets.append(side * ds.exit_ret[i] - ds.cost_atr[i])
        times.append(int(ds.t0[i]))
        busy_until[g] = int(ds.t1[i])
    return {"returns": np.asarray(rets, dtype=np.float64), "ts_ns": np.asarray(times, dtype=np.int64)}


def _pnl_summary(trades: dict[str, Any], n_trials: int) -> dict[str, Any]:
    from ml.evaluate import deflated_sharpe_ratio
    r = trades["returns"]
    if len(r) < 2 or not np.std(r, ddof=1) > 0:
        return {"trades": int(len(r)), "mean_atr": float(r.mean()) if len(r) else None, "sharpe_per_trade": None,
                "deflated_sharpe": None, "total_atr": float(r.sum()) if len(r) else 0.0}
    sr = float(r.mean() / r.std(ddof=1))
    from scipy.stats import kurtosis, skew
    dsr = deflated_sharpe_ratio(sr, n_trials=n_trials, skew=float(skew(r)), kurtosis=float(kurtosis(r, fisher=False)),
                                n_obs=len(r))
    return {"trades": int(len(r)), "mean_atr": float(r.mean()), "total_atr": float(r.sum()),
            "win_rate": float((r > 0).mean()), "sharpe_per_trade": sr, "deflated_sharpe": float(dsr),
            "equity_atr": np.cumsum(r).round(6).tolist()}


# ------------------------------------------------------------------------------------------ the run


def _code_version() -> str:
    from bridge import __version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def train(paths: list[Path], registry_root: Path, db_url: str | None, cfg: TrainConfig | None = None,
          progress: Progress | None = None) -> Any:
    """Train, evaluate out of sample, export, and register a challenger; returns its registry record."""
    from ml.drift import DriftDetector, DriftReference
    from ml.evaluate import evaluate_probabilities
    from ml.models import StackingMetaModel
    from ml.onnx_export import check_parity, export_ensemble, to_onnx
    from ml.registry import Registry

    cfg = (cfg or TrainConfig()).effective()
    progress = progress or (lambda stage, frac: None)
    started = time.perf_counter()
    progress("reading data and computing features", 0.0)
    ds = build_dataset(paths, cfg)
    split = time_split(ds, cfg)
    # the share of all training-window bars whose label resolved before the time-out (time-outs are kept
    # out of training, so p is a win probability given resolution; p * share is one given nothing)
    resolved_share = float(np.isfinite(ds.y[ds.t0 < split.cut_ns]).mean())

    covered, oof = out_of_fold(ds, split.train, cfg, progress)
    meta = StackingMetaModel(random_state=cfg.seed).fit(oof, ds.y[covered])
    progress("fitting the members on the whole training window", 0.6)
    members = _fit_members(ds, split.train, cfg)

    progress("out-of-sample evaluation", 0.85)
    test = split.test
    member_p = _member_probs(members, ds, test)
    p = meta.predict_proba(member_p)[:, 1]
    resolved_test = np.isfinite(ds.y[test])
    y_test = ds.y[test][resolved_test]
    evaluation = {"ensemble": evaluate_probabilities(y_test, p[resolved_test])}
    for j, name in enumerate(members):
        evaluation[name] = evaluate_probabilities(y_test, member_p[resolved_test, j])
    base_rate = float(ds.y[split.train].mean())
    evaluation["base_rate_model"] = evaluate_probabilities(y_test, np.full(resolved_test.sum(), base_rate))
    trades = trade_signals(p, ds, test, resolved_share, cfg.labels.barrier_atr, cfg.signal_margin)
    pnl = _pnl_summary(trades, n_trials=len(members) + 1)

    progress("exporting to ONNX and checking parity", 0.92)
    staging = Path(tempfile.mkdtemp(prefix="nt8bridge-train-"))
    try:
        manifest = export_ensemble(members, meta, staging)
        rows = test[: min(2000, len(test))]
        parity = {name: float(check_parity(m, to_onnx(m, ds.X.shape[1], getattr(m, "seq_len_", None)),
                                           _inputs(ds, name, rows)))
                  for name, m in members.items()}
        parity["meta"] = float(check_parity(meta, to_onnx(meta, len(members)), member_p[: len(rows)].astype(np.float32)))
        reference = DriftReference.from_training(ds.X[split.train].astype(np.float64), list(ds.names))
        reference.save(staging / "reference.npz")
        test_drift = DriftDetector(reference).check(ds.X[test].astype(np.float64))
        metadata = {
            "feature_names": list(ds.names), "feature_set_version": FEATURE_SET_VERSION,
            "feature_config": _jsonable(asdict(cfg.features)), "label_config": _jsonable(asdict(cfg.labels)),
            "train_config": {k: v for k, v in _jsonable(asdict(cfg)).items() if k not in ("features", "labels")},
            "train_start_ns": int(ds.t0.min()), "train_end_ns": int(split.cut_ns),
            "test_start_ns": int(split.cut_ns), "test_end_ns": int(ds.t0.max()),
            "instruments": ds.roots, "files": ds.files, "data_sha256": ds.data_sha256,
            "code_version": _code_version(), "python": platform.python_version(),
            "rows": {"train": int(len(split.train)), "oof": int(len(covered)), "test": int(len(test)),
                     "test_resolved": int(resolved_test.sum())},
            "resolved_share": resolved_share, "base_rate": base_rate,
            "metrics": {"evaluation": evaluation, "signals": {k: v for k, v in pnl.items() if k != "equity_atr"}},
            "parity_max_abs": parity, "manifest": manifest,
            "expires_ns": time.time_ns() + int(cfg.expires_days * 86_400 * _NS),
            "train_seconds": round(time.perf_counter() - started, 1),
        }
        metadata["test_window_drift"] = {"alert": bool(test_drift.alert), "drifted": test_drift.drifted}
        _write_report(staging, metadata, evaluation, pnl, test_drift)
        record = Registry(registry_root, db_url).register(staging, metadata)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress("registered", 1.0)
    return record


def _write_report(staging: Path, metadata: dict[str, Any], evaluation: dict[str, Any], pnl: dict[str, Any],
                  drift: Any) -> None:
    """report.html: the ensemble's scores beside its members' and the base rate's, calibration, the equity
    of its signals after costs, and the drift of the test window against the training reference."""
    from reports.model_report import render_model_report
    scores = {k: v for k, v in evaluation["ensemble"].items()}
    for name, ev in evaluation.items():
        if name != "ensemble":
            scores[f"log_loss ({name})"] = ev["log_loss"]
            scores[f"auc ({name})"] = ev["auc"]
    r = pnl
    page = render_model_report(metadata, {
        "scores": scores, "n_trades": r["trades"], "pnl_total": r["total_atr"], "pnl_per_trade": r["mean_atr"],
        "hit_rate": r.get("win_rate"), "sharpe_per_trade": r["sharpe_per_trade"],
        "deflated_sharpe": r["deflated_sharpe"], "n_trials": len(MEMBERS) + 1,
        "threshold": "break-even after costs", "cost_per_trade": "per trade, in ATRs", "equity": r.get("equity_atr", [])},
        drift=drift)
    (staging / "report.html").write_text(page, encoding="utf-8")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
