"""Every fitted model of ``ml.models`` to ONNX, with a parity check against its native model.

One convention for every graph, so that the sidecar treats all members alike: ONE float32 input
named ``"input"`` (``(batch, k)`` for row models and the meta-model, ``(batch, T, k)`` for
sequence models) and ONE float32 output named ``"probability"`` of shape ``(batch, 1)``: P(win).
The converters' own outputs (a label and a two-column probability tensor for the tree and
scikit-learn converters, a logit for the torch networks) are turned into that by a small tail
of ONNX nodes (a column slice, or a sigmoid inside the exported module).

Parity and its tolerance. ONNX Runtime computes in float32. The torch networks and the
meta-model run float32 in both worlds (the meta-model's float64 logistic regression differs from
float32 by ~1e-7), so they agree to well under 1e-5. Tree ensembles compare a feature with a split
threshold: ONNX stores the thresholds as float32 and LightGBM keeps float64 ones, so a float64
feature lying between a threshold and its float32 rounding could take another branch. Feeding
float32 inputs to both sides (``check_parity`` casts ``X`` to float32 first, and the sidecar only
ever has float32 inputs) removes most of that; what is left is the float32 sum of 200 leaf values
(~1e-7 on the probability), so trees are held to the same 1e-5.

Training needs this module (onnx, onnxmltools, skl2onnx, torch); the sidecar needs only
``ml.inference`` (onnxruntime and numpy).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper

__all__ = [
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "check_parity",
    "export_ensemble",
    "fuse_ensemble",
    "to_onnx",
]

INPUT_NAME = "input"
OUTPUT_NAME = "probability"
# One default-domain opset for every graph: the fused ensemble graph needs a single version per domain.
OPSET = 17


def _model_kind(model: Any) -> str:
    from ml.models import (
        LightGBMClassifierModel,
        LSTMClassifier,
        StackingMetaModel,
        TransformerClassifier,
        XGBoostClassifierModel,
    )

    kinds = {
        LightGBMClassifierModel: "lightgbm",
        XGBoostClassifierModel: "xgboost",
        LSTMClassifier: "torch",
        TransformerClassifier: "torch",
        StackingMetaModel: "meta",
    }
    for cls, kind in kinds.items():
        if isinstance(model, cls):
            if not hasattr(model, "model_") and not hasattr(model, "module_"):
                raise ValueError(f"{type(model).__name__} is not fitted")
            return kind
    raise TypeError(f"no ONNX export for {type(model).__name__}")


def _win_column_tail(model: onnx.ModelProto, probabilities: str) -> onnx.ModelProto:
    """Replace the graph's outputs by column 1 of ``probabilities`` ``(batch, 2)``, named ``probability``."""
    graph = model.graph
    const = [
        helper.make_tensor(f"win_tail_{name}", TensorProto.INT64, [1], [value])
        for name, value in (("start", 1), ("end", 2), ("axis", 1))
    ]
    graph.initializer.extend(const)
    graph.node.append(
        helper.make_node(
            "Slice",
            [probabilities, *(c.name for c in const)],
            [OUTPUT_NAME],
            name="win_column",
        )
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1]))
    return model


def _probabilities_output(model: onnx.ModelProto) -> str:
    names = [o.name for o in model.graph.output]
    for name in names:
        if "prob" in name.lower():
            return name
    raise ValueError(f"converter produced no probability output (outputs: {names})")


def _tree_to_onnx(model: Any, kind: str, n_features: int) -> onnx.ModelProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    initial = [(INPUT_NAME, FloatTensorType([None, n_features]))]
    # onnxmltools targets opset 15 at most; the graph is lifted to OPSET afterwards (its tree
    # operators live in the ai.onnx.ml domain, which the lift leaves alone)
    if kind == "lightgbm":
        proto = onnxmltools.convert_lightgbm(model.model_, initial_types=initial, target_opset=15, zipmap=False)
    else:
        proto = onnxmltools.convert_xgboost(model.model_, initial_types=initial, target_opset=15)
    if any(node.domain in ("", "ai.onnx") for node in proto.graph.node):
        proto = onnx.version_converter.convert_version(proto, OPSET)
    else:
        # a graph of ai.onnx.ml operators only may import no default domain at all (the XGBoost
        # converter's); the tail's Slice needs it
        kept = [op for op in proto.opset_import if op.domain not in ("", "ai.onnx")]
        del proto.opset_import[:]
        proto.opset_import.extend([*kept, helper.make_opsetid("", OPSET)])
    return _win_column_tail(proto, _probabilities_output(proto))


def _torch_to_onnx(model: Any, n_features: int, seq_len: int) -> onnx.ModelProto:
    import torch

    # the network outputs a logit; the exported graph ends in a sigmoid so it outputs P(win)
    net = torch.nn.Sequential(model.module_, torch.nn.Sigmoid()).eval()
    dummy = torch.zeros(1, seq_len, n_features)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter warns that an LSTM exported with a dynamic batch may fail at other batch
        # sizes; that concerns models with initial states, ours start from zeros, and the tests
        # check parity at batch sizes 1 and n
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        # nn.LSTM's own input-size checks compare shapes, which are fixed for one export
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # the TorchScript exporter: the dynamo one needs onnxscript, which the train extra does not bring
        torch.onnx.export(
            net,
            (dummy,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _meta_to_onnx(model: Any, n_members: int) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    logits = "member_logits"
    proto = convert_sklearn(
        model.model_,
        initial_types=[(logits, FloatTensorType([None, n_members]))],
        options={id(model.model_): {"zipmap": False}},
        target_opset=OPSET,
    )
    graph = proto.graph
    # head: probabilities -> clipped -> logits, the same transform StackingMetaModel applies in numpy
    head_consts = [
        helper.make_tensor("logit_lo", TensorProto.FLOAT, [], [model.eps]),
        helper.make_tensor("logit_hi", TensorProto.FLOAT, [], [1.0 - model.eps]),
        helper.make_tensor("logit_one", TensorProto.FLOAT, [], [1.0]),
    ]
    head = [
        helper.make_node("Clip", [INPUT_NAME, "logit_lo", "logit_hi"], ["logit_p"], name="logit_clip"),
        helper.make_node("Sub", ["logit_one", "logit_p"], ["logit_q"], name="logit_q"),
        helper.make_node("Log", ["logit_p"], ["logit_log_p"], name="logit_log_p"),
        helper.make_node("Log", ["logit_q"], ["logit_log_q"], name="logit_log_q"),
        helper.make_node("Sub", ["logit_log_p", "logit_log_q"], [logits], name="logit"),
    ]
    graph.initializer.extend(head_consts)
    nodes = head + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_members]))
    return _win_column_tail(proto, _probabilities_output(proto))


def to_onnx(model: Any, n_features: int, seq_len: int | None = None) -> onnx.ModelProto:
    """Convert a fitted model of ``ml.models`` to ONNX with the package's input/output convention.

    Parameters
    ----------
    model : estimator
        A fitted ``LightGBMClassifierModel``, ``XGBoostClassifierModel``, ``LSTMClassifier``,
        ``TransformerClassifier`` or ``StackingMetaModel``.
    n_features : int
        ``k`` (for the meta-model: the number of members ``m``).
    seq_len : int, optional
        ``T``, required for the sequence models.

    Returns
    -------
    onnx.ModelProto
        A checked graph: float32 input ``"input"`` ``(batch, k)`` or ``(batch, T, k)``, float32
        output ``"probability"`` ``(batch, 1)``, opset :data:`OPSET`.
    """
    kind = _model_kind(model)
    if kind in ("lightgbm", "xgboost"):
        proto = _tree_to_onnx(model, kind, n_features)
    elif kind == "torch":
        if seq_len is None:
            raise ValueError("seq_len is required for a sequence model")
        proto = _torch_to_onnx(model, n_features, seq_len)
    else:
        proto = _meta_to_onnx(model, n_features)
    proto.graph.name = f"nt8bridge_{kind}"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_parity(model: Any, onnx_model: onnx.ModelProto, X: Any) -> float:
    """Largest absolute difference between native ``predict_proba[:, 1]`` and the ONNX output.

    ``X`` is cast to float32 first and both sides see those same values (see the module's note on
    tree thresholds).

    Parameters
    ----------
    model : estimator
        The fitted native model.
    onnx_model : onnx.ModelProto
        Its export.
    X : array-like
        Samples in the model's input shape.

    Returns
    -------
    float
        ``max |p_native - p_onnx|``.
    """
    import onnxruntime as ort

    x32 = np.ascontiguousarray(X, dtype=np.float32)
    native = model.predict_proba(x32.astype(np.float64))[:, 1]
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x32})
    return float(np.max(np.abs(native - out.astype(np.float64).ravel())))


def fuse_ensemble(
    members: dict[str, onnx.ModelProto], input_kinds: dict[str, str], meta: onnx.ModelProto
) -> onnx.ModelProto:
    """One graph for all members and the meta-model.

    Inputs ``"row"`` ``(batch, k)`` and ``"window"`` ``(batch, T, k)`` (only those some member
    reads); outputs ``"probability"`` ``(batch, 1)`` (the meta-model's) and ``"members"``
    ``(batch, m)`` (the members' probabilities in the order of ``members``). One session run
    instead of ``m + 1``, and no numpy between the members and the meta-model.

    Parameters
    ----------
    members : dict of str to onnx.ModelProto
        Member graphs in ``member_order``, each with the package's convention.
    input_kinds : dict of str to str
        ``"row"`` or ``"sequence"`` per member.
    meta : onnx.ModelProto
        The meta-model's graph.
    """
    prefixed = {name: onnx.compose.add_prefix(proto, f"{name}/") for name, proto in members.items()}
    meta_prefixed = onnx.compose.add_prefix(meta, "meta/")
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    opsets: dict[str, int] = {}
    inputs: dict[str, onnx.ValueInfoProto] = {}

    def take(proto: onnx.ModelProto, prefix: str, source: str) -> None:
        for op in proto.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        initializers.extend(proto.graph.initializer)
        # the prefixed graph's own input becomes an alias of the shared one (ORT removes the Identity)
        nodes.append(helper.make_node("Identity", [source], [f"{prefix}/{INPUT_NAME}"], name=f"{prefix}/feed"))
        nodes.extend(proto.graph.node)

    for name, proto in prefixed.items():
        source = "row" if input_kinds[name] == "row" else "window"
        if source not in inputs:
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            shape = ["batch", *(d.dim_value for d in dims[1:])]
            inputs[source] = helper.make_tensor_value_info(source, TensorProto.FLOAT, shape)
        take(proto, name, source)
    nodes.append(
        helper.make_node("Concat", [f"{name}/{OUTPUT_NAME}" for name in members], ["members"], axis=1, name="members")
    )
    take(meta_prefixed, "meta", "members")
    nodes.append(helper.make_node("Identity", [f"meta/{OUTPUT_NAME}"], [OUTPUT_NAME], name="probability"))
    graph = helper.make_graph(
        nodes,
        "nt8bridge_ensemble",
        list(inputs.values()),
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("members", TensorProto.FLOAT, ["batch", len(members)]),
        ],
        initializer=initializers,
    )
    fused = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        ir_version=max(proto.ir_version for proto in [*prefixed.values(), meta_prefixed]),
    )
    onnx.checker.check_model(fused, full_check=True)
    return fused


def _write(proto: onnx.ModelProto, path: Path) -> str:
    data = proto.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def export_ensemble(members: dict[str, Any], meta: Any, out_dir: Path) -> dict[str, Any]:
    """Write every member, the meta-model and the fused graph as ONNX files, and return the manifest.

    Parameters
    ----------
    members : dict of str to estimator
        Fitted members; the dict's order is ``member_order``, the column order the meta-model was
        fitted on.
    meta : StackingMetaModel
        The fitted meta-model.
    out_dir : pathlib.Path
        Written: ``members/<name>.onnx``, ``meta.onnx``, ``ensemble.onnx`` (the fused graph).

    Returns
    -------
    dict
        The manifest (JSON-serialisable)::

            {"format": 1, "opset": 17, "n_features": k, "seq_len": T or None,
             "member_order": [name, ...],
             "members": {name: {"file": "members/<name>.onnx", "input": "row" | "sequence",
                                "seq_len": T or None, "n_features": k, "sha256": hex}},
             "meta": {"file": "meta.onnx", "n_inputs": m, "sha256": hex},
             "fused": {"file": "ensemble.onnx", "sha256": hex}}

        Files are relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if meta.n_features_in_ != len(members):
        raise ValueError(f"the meta-model reads {meta.n_features_in_} members, {len(members)} given")
    n_features = {m.n_features_in_ for m in members.values()}
    if len(n_features) != 1:
        raise ValueError(f"members disagree on the number of features: {sorted(n_features)}")
    (k,) = n_features
    seq_lens = {m.seq_len_ for m in members.values() if hasattr(m, "seq_len_")}
    if len(seq_lens) > 1:
        raise ValueError(f"sequence members disagree on the sequence length: {sorted(seq_lens)}")
    seq_len = next(iter(seq_lens), None)

    # names become file names and the fused graph's name prefixes
    bad = [name for name in members if not name or "/" in name or name == "meta" or name.startswith(".")]
    if bad:
        raise ValueError(f"bad member name(s) {bad}")

    protos, kinds, entries = {}, {}, {}
    for name, model in members.items():
        member_seq = getattr(model, "seq_len_", None)
        kinds[name] = "row" if member_seq is None else "sequence"
        protos[name] = to_onnx(model, k, member_seq)
        file = f"members/{name}.onnx"
        entries[name] = {
            "file": file,
            "input": kinds[name],
            "seq_len": member_seq,
            "n_features": k,
            "sha256": _write(protos[name], out_dir / file),
        }
    meta_proto = to_onnx(meta, len(members))
    fused = fuse_ensemble(protos, kinds, meta_proto)
    return {
        "format": 1,
        "opset": OPSET,
        "n_features": k,
        "seq_len": seq_len,
        "member_order": list(members),
        "members": entries,
        "meta": {"file": "meta.onnx", "n_inputs": len(members), "sha256": _write(meta_proto, out_dir / "meta.onnx")},
        "fused": {"file": "ensemble.onnx", "sha256": _write(fused, out_dir / "ensemble.onnx")},
    }
