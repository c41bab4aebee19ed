"""ml.inference: the ONNX ensemble agrees with its batch path, with the meta-model by hand, and runs without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml.inference import EnsemblePrediction, OnnxEnsemble
from ml.models import StackingMetaModel
from ml.onnx_export import export_ensemble
from tests.unit.test_ml_models import MODELS, N_FEATURES, SEQ_LEN, fit_members, member_inputs

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Members fitted on the first 3/4, the meta-model on the members' held-out probabilities, all exported."""
    fitted = fit_members()
    split = fitted["split"]
    P = np.column_stack(
        [m.predict_proba(member_inputs(name, fitted)[split:])[:, 1] for name, m in fitted["members"].items()]
    )
    meta = StackingMetaModel().fit(P, fitted["y"][split:])
    model_dir = tmp_path_factory.mktemp("ensemble")
    manifest = export_ensemble(fitted["members"], meta, model_dir)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return {**fitted, "meta": meta, "dir": model_dir, "manifest": manifest}


@pytest.fixture(scope="module")
def ensemble(exported: dict) -> OnnxEnsemble:
    return OnnxEnsemble.load(exported["dir"], exported["manifest"], fused=True)


def samples(exported: dict, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    split = exported["split"]
    return exported["rows"][split : split + n], exported["windows"][split : split + n]


def test_load_describes_the_ensemble(ensemble: OnnxEnsemble) -> None:
    assert ensemble.member_order == tuple(MODELS)
    assert ensemble.n_features == N_FEATURES and ensemble.seq_len == SEQ_LEN
    assert ensemble.member_inputs == {"lgbm": "row", "xgb": "row", "lstm": "sequence", "transformer": "sequence"}


def test_predict_equals_predict_batch_and_the_meta_model_by_hand(exported: dict, ensemble: OnnxEnsemble) -> None:
    rows, windows = samples(exported)
    batch_p, batch_members = ensemble.predict_batch(rows, windows)
    assert batch_p.shape == (len(rows),) and batch_members.shape == (len(rows), len(MODELS))
    for i in range(len(rows)):
        result = ensemble.predict(rows[i], windows[i])
        assert isinstance(result, EnsemblePrediction)
        assert list(result.members) == list(MODELS) and list(result.member_us) == list(MODELS)
        assert all(us > 0 for us in result.member_us.values())
        assert result.total_us >= sum(result.member_us.values())
        # batch 1 and batch n take different kernels in ONNX Runtime: equal to float32 rounding
        np.testing.assert_allclose(list(result.members.values()), batch_members[i], atol=1e-6)
        assert result.probability == pytest.approx(batch_p[i], abs=1e-6)
        by_hand = exported["meta"].predict_proba(np.array([list(result.members.values())]))[0, 1]
        assert result.probability == pytest.approx(by_hand, abs=1e-5)


def test_members_agree_with_the_native_models(exported: dict, ensemble: OnnxEnsemble) -> None:
    rows, windows = samples(exported)
    _, members = ensemble.predict_batch(rows, windows)
    for j, (name, model) in enumerate(exported["members"].items()):
        X = rows if ensemble.member_inputs[name] == "row" else windows
        native = model.predict_proba(X.astype(np.float32).astype(np.float64))[:, 1]
        np.testing.assert_allclose(members[:, j], native, atol=1e-5)


def test_fused_graph_gives_the_same_answer(exported: dict, ensemble: OnnxEnsemble) -> None:
    rows, windows = samples(exported, 10)
    for row, window in zip(rows, windows, strict=True):
        separate, fused = ensemble.predict(row, window), ensemble.predict_fused(row, window)
        assert fused.member_us == {}
        assert fused.probability == pytest.approx(separate.probability, abs=1e-6)
        np.testing.assert_allclose(list(fused.members.values()), list(separate.members.values()), atol=1e-6)


def test_predict_does_not_keep_the_callers_arrays(exported: dict, ensemble: OnnxEnsemble) -> None:
    rows, windows = samples(exported, 2)
    row, window = rows[0].copy(), windows[0].copy()
    first = ensemble.predict(row, window)
    row[:] = 0.0
    window[:] = 0.0
    ensemble.predict(rows[1], windows[1])
    assert ensemble.predict(rows[0], windows[0]).probability == first.probability


def test_bad_shapes_are_refused(exported: dict, ensemble: OnnxEnsemble) -> None:
    rows, windows = samples(exported, 1)
    with pytest.raises(ValueError, match="window must have shape"):
        ensemble.predict(rows[0], rows[0])  # a row would broadcast into the whole window
    with pytest.raises(ValueError, match="window is required"):
        ensemble.predict(rows[0])
    with pytest.raises(ValueError, match="row must have shape"):
        ensemble.predict(rows[0][:-1], windows[0])
    with pytest.raises(ValueError, match="windows must have shape"):
        ensemble.predict_batch(rows, windows[:, 1:])


def test_manifest_from_a_file_and_sha256_checked(exported: dict, tmp_path: Path) -> None:
    OnnxEnsemble.load(exported["dir"], exported["dir"] / "manifest.json")
    manifest = json.loads(json.dumps(exported["manifest"]))
    manifest["members"]["xgb"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="SHA-256"):
        OnnxEnsemble.load(exported["dir"], manifest)
    with pytest.raises(RuntimeError, match="fused graph is not loaded"):
        OnnxEnsemble.load(exported["dir"], exported["manifest"]).predict_fused(*samples(exported, 1))


def test_inference_runs_without_torch(exported: dict, ensemble: OnnxEnsemble) -> None:
    rows, windows = samples(exported, 5)
    np.save(exported["dir"] / "rows.npy", rows)
    np.save(exported["dir"] / "windows.npy", windows)
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None  # any import of torch now raises ImportError\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from ml.inference import OnnxEnsemble\n"
        "d = Path(sys.argv[1])\n"
        "ens = OnnxEnsemble.load(d, d / 'manifest.json')\n"
        "rows, windows = np.load(d / 'rows.npy'), np.load(d / 'windows.npy')\n"
        "out = [ens.predict(r, w).probability for r, w in zip(rows, windows)]\n"
        "assert sys.modules['torch'] is None\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(exported["dir"])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = [ensemble.predict(r, w).probability for r, w in zip(rows, windows, strict=True)]
    assert json.loads(result.stdout) == pytest.approx(expected, abs=1e-7)
