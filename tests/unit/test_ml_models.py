"""ml.models: the estimator contract, determinism, learning a planted signal, sequence windows."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from ml.models import (
    LightGBMClassifierModel,
    LSTMClassifier,
    StackingMetaModel,
    TransformerClassifier,
    XGBoostClassifierModel,
    make_sequences,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 8
SEQ_LEN = 16


def synthetic(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, windows and labels with a signal in the current row and in the last 4 rows.

    The label depends on feature 1 now (what a row model can see) and on the mean of feature 0
    over the last 4 rows (what a sequence model can see), plus unit noise. Only samples with a
    full window are returned, in time order.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    score = 2.0 * np.convolve(X[:, 0], np.ones(4) / 4, "full")[:n] + X[:, 1]
    y = (score + rng.normal(size=n) > 0).astype(np.int64)
    windows, valid = make_sequences(X, SEQ_LEN)
    return X[valid], windows[valid], y[valid]


# small settings that keep each fit to about a second
ROW_MODELS = {
    "lgbm": lambda seed=0: LightGBMClassifierModel(n_estimators=50, random_state=seed),
    "xgb": lambda seed=0: XGBoostClassifierModel(n_estimators=50, random_state=seed),
}
SEQUENCE_MODELS = {
    "lstm": lambda seed=0: LSTMClassifier(max_epochs=4, batch_size=256, random_state=seed),
    "transformer": lambda seed=0: TransformerClassifier(max_epochs=4, batch_size=256, random_state=seed),
}
MODELS = {**ROW_MODELS, **SEQUENCE_MODELS}


@functools.cache
def fit_members(seed: int = 0) -> dict:
    """Fit every member on the first 3/4 of the synthetic data (once per test session; read-only).

    Returns a dict with the fitted ``members``, the data (``rows``, ``windows``, ``y``) and
    ``split``, the first held-out index.
    """
    rows, windows, y = synthetic(seed=seed)
    split = len(y) * 3 // 4
    members = {}
    for name, make in MODELS.items():
        X = rows if name in ROW_MODELS else windows
        members[name] = make().fit(X[:split], y[:split])
    return {"members": members, "rows": rows, "windows": windows, "y": y, "split": split}


def member_inputs(name: str, data: dict) -> np.ndarray:
    return data["rows"] if name in ROW_MODELS else data["windows"]


@pytest.fixture(scope="module")
def fitted() -> dict:
    return fit_members()


@pytest.mark.parametrize("name", MODELS)
def test_estimator_contract(name: str, fitted: dict) -> None:
    model = MODELS[name]()
    params = model.get_params()
    assert params["random_state"] == 0
    # clone builds an unfitted twin from get_params: __init__ stores its arguments unchanged
    twin = clone(model)
    assert twin.get_params() == params
    assert not [a for a in vars(twin) if a.endswith("_")]

    X = member_inputs(name, fitted)[: fitted["split"]]
    assert model.fit(X, fitted["y"][: fitted["split"]]) is model
    proba = model.predict_proba(X[:100])
    assert proba.shape == (100, 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert list(model.classes_) == [0, 1]
    assert set(model.predict(X[:100])) <= {0, 1}


@pytest.mark.parametrize("name", MODELS)
def test_learns_the_planted_signal(name: str, fitted: dict) -> None:
    split = fitted["split"]
    p = fitted["members"][name].predict_proba(member_inputs(name, fitted)[split:])[:, 1]
    assert roc_auc_score(fitted["y"][split:], p) > 0.6


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model(name: str, fitted: dict) -> None:
    split = fitted["split"]
    X, y = member_inputs(name, fitted), fitted["y"]
    again = MODELS[name]().fit(X[:split], y[:split])
    np.testing.assert_array_equal(
        again.predict_proba(X[split:]), fitted["members"][name].predict_proba(X[split:])
    )


@pytest.mark.parametrize("name", ["lgbm", "lstm", "transformer"])
def test_another_seed_another_model(name: str, fitted: dict) -> None:
    split = fitted["split"]
    X, y = member_inputs(name, fitted), fitted["y"]
    other = MODELS[name](seed=1).fit(X[:split], y[:split])
    assert not np.array_equal(other.predict_proba(X[split:]), fitted["members"][name].predict_proba(X[split:]))


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_model_pickles(name: str, fitted: dict) -> None:
    model = fitted["members"][name]
    restored = pickle.loads(pickle.dumps(model))
    X = fitted["windows"][-50:]
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_model_standardises_inside(name: str, fitted: dict) -> None:
    net = fitted["members"][name].module_
    train = fitted["windows"][: fitted["split"] * 4 // 5].reshape(-1, N_FEATURES)
    np.testing.assert_allclose(net.mean.numpy(), train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(net.std.numpy(), train.std(axis=0, ddof=1), rtol=1e-4)


def test_bad_training_sets_are_refused() -> None:
    X = np.zeros((10, 3))
    model = LightGBMClassifierModel()
    with pytest.raises(ValueError, match="labels 0 and 1"):
        model.fit(X, np.full(10, 2))
    with pytest.raises(ValueError, match="labels 0 and 1"):
        model.fit(X, np.zeros(10))
    with pytest.raises(ValueError, match="non-finite"):
        model.fit(np.full((10, 3), np.nan), np.arange(10) % 2)
    with pytest.raises(ValueError, match="dimensions"):
        LSTMClassifier().fit(X, np.arange(10) % 2)
    with pytest.raises(ValueError, match="samples"):
        model.fit(X, np.arange(9) % 2)


def test_wrong_input_shape_at_predict(fitted: dict) -> None:
    with pytest.raises(ValueError, match="shape"):
        fitted["members"]["lgbm"].predict_proba(np.zeros((2, N_FEATURES + 1)))
    with pytest.raises(ValueError, match="shape"):
        fitted["members"]["lstm"].predict_proba(np.zeros((2, SEQ_LEN - 1, N_FEATURES)))


def test_meta_model_is_logistic_on_logits() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    y = rng.integers(0, 2, n)
    # two members with real but different skill, one of them badly calibrated (overconfident)
    z1 = 1.0 * (2 * y - 1) + rng.normal(size=n)
    z2 = 3.0 * ((2 * y - 1) + rng.normal(size=n) * 1.5)
    P = 1.0 / (1.0 + np.exp(-np.column_stack([z1, z2])))
    meta = StackingMetaModel()
    assert meta.fit(P, y) is meta
    assert clone(meta).get_params() == meta.get_params()
    out = meta.predict_proba(P)
    clipped = np.clip(P, meta.eps, 1 - meta.eps)  # the overconfident member reaches 0 and 1 in float64
    logits = np.log(clipped) - np.log1p(-clipped)
    by_hand = 1.0 / (1.0 + np.exp(-(logits @ meta.coef_ + meta.intercept_)))
    np.testing.assert_allclose(out[:, 1], by_hand, atol=1e-12)
    # calibrated: in each probability decile the mean prediction is close to the win rate
    order = np.argsort(out[:, 1])
    for chunk in np.array_split(order, 10):
        assert abs(out[chunk, 1].mean() - y[chunk].mean()) < 0.08
    with pytest.raises(ValueError, match="lie in"):
        StackingMetaModel().fit(P * 2, y)


def test_meta_model_clips_certain_members() -> None:
    P = np.array([[0.0, 1.0], [1.0, 0.0], [0.3, 0.7], [0.8, 0.1]])
    meta = StackingMetaModel().fit(P, np.array([0, 1, 1, 0]))
    assert np.isfinite(meta.predict_proba(P)).all()


def test_windows_end_at_each_row_and_never_cross_groups() -> None:
    n, k, T = 30, 3, 4
    X = np.arange(n * k, dtype=np.float64).reshape(n, k)
    groups = np.array([7] * 10 + [3] * 3 + [7] * 17)  # a short group, and a group id that comes back
    windows, valid = make_sequences(X, T, groups)
    assert windows.shape == (n, T, k) and windows.dtype == np.float32
    expected = np.zeros(n, dtype=bool)
    expected[T - 1 : 10] = True  # first run of 7: rows 3..9
    expected[13 + T - 1 :] = True  # second run of 7 starts afresh at row 13: rows 16..29
    np.testing.assert_array_equal(valid, expected)
    for i in np.flatnonzero(valid):
        np.testing.assert_array_equal(windows[i], X[i - T + 1 : i + 1])
        assert len(set(groups[i - T + 1 : i + 1])) == 1
    assert np.isnan(windows[~valid]).all()


def test_windows_skip_warm_up_rows() -> None:
    X = np.ones((12, 2))
    X[:3] = np.nan  # warm-up
    X[7, 1] = np.inf
    _, valid = make_sequences(X, 3)
    np.testing.assert_array_equal(np.flatnonzero(valid), [5, 6, 10, 11])


def test_windows_shorter_history_than_T() -> None:
    windows, valid = make_sequences(np.ones((3, 2)), 5)
    assert windows.shape == (3, 5, 2) and not valid.any()
    with pytest.raises(ValueError, match="group_ids"):
        make_sequences(np.ones((3, 2)), 2, group_ids=[1, 2])


def test_importing_ml_models_needs_no_torch() -> None:
    # a finder that refuses torch, as if it were not installed (sys.modules['torch'] = None would
    # do too, but scipy, which scikit-learn imports, trips over a None module when it probes for torch)
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import ml.models, ml.models.sequence\n"
        "print(ml.models.make_sequences(__import__('numpy').ones((5, 2)), 3)[1].sum())\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
