"""ml.onnx_export: one input/output convention, parity with the native models, the ensemble on disk."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ml.models import StackingMetaModel
from ml.onnx_export import OPSET, check_parity, export_ensemble, to_onnx
from tests.unit.test_ml_models import MODELS, N_FEATURES, ROW_MODELS, SEQ_LEN, fit_members, member_inputs

PARITY = 1e-5


@pytest.fixture(scope="module")
def fitted() -> dict:
    return fit_members()


def meta_on_holdout(fitted: dict) -> tuple[StackingMetaModel, np.ndarray]:
    """A meta-model fitted on the members' probabilities over the held-out part, and those probabilities."""
    split = fitted["split"]
    P = np.column_stack(
        [m.predict_proba(member_inputs(name, fitted)[split:])[:, 1] for name, m in fitted["members"].items()]
    )
    return StackingMetaModel().fit(P, fitted["y"][split:]), P


def export(name: str, fitted: dict) -> onnx.ModelProto:
    return to_onnx(fitted["members"][name], N_FEATURES, None if name in ROW_MODELS else SEQ_LEN)


@pytest.mark.parametrize("name", MODELS)
def test_member_graph_convention(name: str, fitted: dict) -> None:
    proto = export(name, fitted)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.name == "probability" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    expected_rank = 2 if name in ROW_MODELS else 3
    assert len(inp.type.tensor_type.shape.dim) == expected_rank
    assert {op.domain: op.version for op in proto.opset_import}[""] >= OPSET >= 17
    # batch sizes 1 and 7 both work (the batch dimension is dynamic) and give (batch, 1)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    X = member_inputs(name, fitted)[-7:].astype(np.float32)
    assert session.run(None, {"input": X[:1]})[0].shape == (1, 1)
    assert session.run(None, {"input": X})[0].shape == (7, 1)


@pytest.mark.parametrize("name", MODELS)
def test_member_parity_on_held_out_data(name: str, fitted: dict) -> None:
    model, proto = fitted["members"][name], export(name, fitted)
    X = member_inputs(name, fitted)[fitted["split"] :]
    assert check_parity(model, proto, X) < PARITY
    assert check_parity(model, proto, X[:1]) < PARITY


@pytest.mark.parametrize("name", ROW_MODELS)
def test_tree_parity_with_a_skewed_base_rate(name: str) -> None:
    # XGBoost starts boosting from the label's base rate, stored in its config; the converter must read it
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, N_FEATURES))
    y = (X[:, 0] + rng.normal(size=2000) > 1.2).astype(np.int64)  # about 20% wins
    model = MODELS[name]().fit(X[:1500], y[:1500])
    assert check_parity(model, to_onnx(model, N_FEATURES), X[1500:]) < PARITY


def test_meta_model_parity(fitted: dict) -> None:
    meta, P = meta_on_holdout(fitted)
    proto = to_onnx(meta, P.shape[1])
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["probability"]
    assert check_parity(meta, proto, P) < PARITY
    # members that say exactly 0 or 1 are clipped alike in numpy and in the graph
    certain = np.array([[0.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.0, 0.2]])
    assert check_parity(meta, proto, certain) < PARITY


def test_unfitted_and_unknown_models_are_refused() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        to_onnx(StackingMetaModel(), 2)
    with pytest.raises(TypeError, match="no ONNX export"):
        to_onnx(object(), 2)
    with pytest.raises(ValueError, match="seq_len"):
        to_onnx(fit_members()["members"]["lstm"], N_FEATURES)


def test_export_ensemble_writes_files_and_manifest(fitted: dict, tmp_path) -> None:
    meta, _ = meta_on_holdout(fitted)
    manifest = export_ensemble(fitted["members"], meta, tmp_path)
    json.dumps(manifest)  # serialisable as it is
    assert manifest["member_order"] == list(MODELS)
    assert manifest["n_features"] == N_FEATURES and manifest["seq_len"] == SEQ_LEN
    for name, entry in manifest["members"].items():
        assert entry["file"] == f"members/{name}.onnx"
        assert entry["input"] == ("row" if name in ROW_MODELS else "sequence")
        assert entry["seq_len"] == (None if name in ROW_MODELS else SEQ_LEN)
        assert hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    for part in ("meta", "fused"):
        entry = manifest[part]
        assert hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["meta"]["n_inputs"] == len(MODELS)


def test_fused_graph_matches_the_separate_graphs(fitted: dict, tmp_path) -> None:
    meta, _ = meta_on_holdout(fitted)
    manifest = export_ensemble(fitted["members"], meta, tmp_path)
    split = fitted["split"]
    rows = fitted["rows"][split:].astype(np.float32)
    windows = fitted["windows"][split:].astype(np.float32)

    def run(file: str, feeds: dict) -> list[np.ndarray]:
        session = ort.InferenceSession(str(tmp_path / file), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    members = np.column_stack(
        [
            run(e["file"], {"input": rows if e["input"] == "row" else windows})[0].ravel()
            for e in manifest["members"].values()
        ]
    )
    (separate,) = run(manifest["meta"]["file"], {"input": members})
    fused_p, fused_members = run(manifest["fused"]["file"], {"row": rows, "window": windows})
    np.testing.assert_allclose(fused_members, members, atol=1e-6)
    np.testing.assert_allclose(fused_p, separate, atol=1e-6)


def test_export_ensemble_checks_its_inputs(fitted: dict, tmp_path) -> None:
    meta, _ = meta_on_holdout(fitted)
    members = dict(fitted["members"])
    with pytest.raises(ValueError, match="reads 4 members"):
        export_ensemble({"lgbm": members["lgbm"]}, meta, tmp_path)
    with pytest.raises(ValueError, match="bad member name"):
        export_ensemble({**{k: v for k, v in list(members.items())[:3]}, "meta": members["xgb"]}, meta, tmp_path)
