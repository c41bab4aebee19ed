"""What the ML ensemble costs per decision: ONNX inference of each member and of the whole ensemble.

    .venv/bin/python bench/bench_inference.py [--samples 100000] [--epochs 3] [--trees 200] [--calls 5000]
                                              [--native-calls 500] [--json] [--smoke]

Trains the four members on synthetic data shaped like the real use (k features: as many as
``ml.features.FEATURE_NAMES`` when that module exists, else 24; T = 32 bars
per window, 200 trees per tree member; the label depends on the current row and on the last few
rows), the stacking meta-model on the members' held-out probabilities, exports everything with
``ml.onnx_export.export_ensemble`` and loads it with ``ml.inference.OnnxEnsemble`` (the sidecar's
path). Reports the training time of each member on ``--samples`` samples.

Then single-sample latency (``time.perf_counter_ns``, p50/p99 in microseconds), interleaved call by
call so that a burst of outside load hits every row alike:

- baseline: a bare onnxruntime session running an identity graph on a (1, 24) float32 input (the
  floor of one session call; bound buffers, as the ensemble uses);
- each member's session run inside ``OnnxEnsemble.predict`` (its ``member_us``);
- the whole ensemble, ``OnnxEnsemble.predict`` (copies, every member, the meta-model, the result),
  as it reports itself (``total_us``), as the caller sees it, and as this thread's CPU time (which
  leaves out time spent preempted by other processes on the shared cores);
- the same through the fused single graph, ``OnnxEnsemble.predict_fused``;
- the ensemble after an online feature update (``ml.features.OnlineFeatures.on_partner_bar`` and
  ``on_bar``, the window append and stack the ML strategy does), when ``ml.features`` exists;
- each model's native ``predict_proba`` on one sample, for comparison (fewer calls).

Goal: the ensemble's p99 under 1 ms. Figures, ratios and whether the goal is met are printed; the
benchmark never fails on a threshold. It fails (exit code 1) when the workload no longer computes
what is measured: a probability that is not in [0, 1], a member that was not run, or the online
feature update not running as the ML strategy calls it. ``--smoke`` trains tiny models on a few
thousand samples and times a few calls, for that check alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file
from ml.inference import OnnxEnsemble, session_options  # noqa: E402
from ml.models import (  # noqa: E402
    LightGBMClassifierModel,
    LSTMClassifier,
    StackingMetaModel,
    TransformerClassifier,
    XGBoostClassifierModel,
    make_sequences,
)
from ml.onnx_export import export_ensemble  # noqa: E402

T = 32
# --smoke: tiny models and a few calls; options given explicitly win
SMOKE = {"samples": 2000, "epochs": 1, "trees": 10, "calls": 50, "native_calls": 5}
try:
    from ml.features import FEATURE_NAMES

    # the real feature set's width, so that the online-feature row fits the models
    K = len(FEATURE_NAMES)
except ImportError:
    K = 24
GOAL_P99_US = 1000.0


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, windows and labels; the label reads feature 1 now and the last 8 values of feature 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + T - 1, K))
    score = 1.5 * np.convolve(X[:, 0], np.ones(8) / 8, "full")[: len(X)] + 0.7 * X[:, 1] + 0.3 * X[:, 2] * X[:, 3]
    y = (score + rng.normal(size=len(X)) > 0).astype(np.int64)
    windows, valid = make_sequences(X, T)
    return X[valid].astype(np.float32), windows[valid], y[valid]


def identity_session() -> tuple[object, object, np.ndarray]:
    """A session of a one-node Identity graph (1, K) -> (1, K), bound to preallocated buffers."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, K])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    inp, out = np.zeros((1, K), dtype=np.float32), np.zeros((1, K), dtype=np.float32)
    binding = session.io_binding()
    binding.bind_input("input", "cpu", 0, np.float32, [1, K], inp.ctypes.data)
    binding.bind_output("output", "cpu", 0, np.float32, [1, K], out.ctypes.data)
    return session, binding, inp


def online_features_step() -> tuple[object | None, str]:
    """A callable doing one bar of the ML strategy's feature work, or None and why not."""
    try:
        from ml.features import FeatureConfig, OnlineFeatures
    except ImportError as exc:
        return None, f"ml.features is not available ({exc})"
    try:
        # with a partner instrument, as ES and NQ have: its bars feed the cross features
        features = OnlineFeatures(FeatureConfig(), True)
        rng = np.random.default_rng(1)
        window: deque = deque(maxlen=T)
        state = {"price": 4500.0, "partner": 15500.0, "ts": 1_700_000_000 * 10**9}

        def step() -> tuple[np.ndarray | None, np.ndarray | None]:
            o = state["price"]
            c = o + rng.normal() * 0.75
            state["price"], state["ts"] = c, state["ts"] + 60 * 10**9
            state["partner"] += rng.normal() * 2.5
            features.on_partner_bar(state["ts"], state["partner"])
            row = features.on_bar(state["ts"], o, max(o, c) + 0.25, min(o, c) - 0.25, c, float(rng.integers(100, 5000)))
            if row is None:
                return None, None
            window.append(row.astype(np.float32))
            return (row, np.stack(window)) if len(window) == T else (None, None)

        for _ in range(2000):  # warm up the features and fill the window
            row, _ = step()
        if row is None:
            return None, "ml.features.OnlineFeatures gave no row after 2000 synthetic bars"
        if len(row) != K:
            return None, f"ml.features rows have {len(row)} features, the benchmark's models {K}"
        return step, ""
    except Exception as exc:  # an API still in the making: say what failed instead of stopping the benchmark
        return None, f"ml.features.OnlineFeatures did not run as the ML strategy calls it ({exc!r})"


def pct(values: list[float] | np.ndarray) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def workload_problems(probabilities: list[float], member_us: dict[str, list[float]], calls: int,
                      feature_skip: str) -> list[str]:
    """Why the figures would not measure what they say, if they would not."""
    problems = []
    bad = [p for p in probabilities if not 0.0 <= p <= 1.0]  # NaN fails the comparison too
    if bad:
        problems.append(f"{len(bad)} of {len(probabilities)} ensemble probabilities are not in [0, 1] ({bad[0]})")
    problems += [f"member {name} ran {len(us)} of {calls} times" for name, us in member_us.items() if len(us) != calls]
    if feature_skip:
        problems.append(f"the online feature update did not run: {feature_skip}")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100_000, help="training samples (default 100000)")
    ap.add_argument("--epochs", type=int, default=3, help="max epochs of the sequence members (default 3)")
    ap.add_argument("--trees", type=int, default=200, help="trees per tree member (default 200)")
    ap.add_argument("--calls", type=int, default=5000, help="timed single-sample calls (default 5000)")
    ap.add_argument("--native-calls", type=int, default=500, help="timed native predict_proba calls (default 500)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = smoke.parse_args(ap, argv, SMOKE, 'the ensemble no longer computes what is measured')
    if min(args.samples, args.epochs, args.trees, args.calls, args.native_calls) < 1:
        ap.error("sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, windows, y = synthetic(args.samples + 20_000)
    fit_end, meta_end = args.samples, args.samples + 10_000
    members = {
        "lightgbm": LightGBMClassifierModel(n_estimators=args.trees),
        "xgboost": XGBoostClassifierModel(n_estimators=args.trees),
        "lstm": LSTMClassifier(max_epochs=args.epochs),
        "transformer": TransformerClassifier(max_epochs=args.epochs),
    }
    sequence = {"lstm", "transformer"}
    # torch's first import takes seconds; it is not the LSTM's training time
    start = time.perf_counter()
    import torch  # noqa: F401

    print(f"importing torch: {time.perf_counter() - start:.1f} s")
    train_s = {}
    print(f"training on {args.samples} samples (k={K}, T={T}, {args.trees} trees, <= {args.epochs} epochs), "
          "1 thread each")
    for name, model in members.items():
        X = windows if name in sequence else rows
        start = time.perf_counter()
        model.fit(X[:fit_end], y[:fit_end])
        train_s[name] = time.perf_counter() - start
        print(f"  {name:<12} {train_s[name]:6.1f} s")

    def member_probs(lo: int, hi: int) -> np.ndarray:
        return np.column_stack(
            [m.predict_proba((windows if n in sequence else rows)[lo:hi])[:, 1] for n, m in members.items()]
        )

    from sklearn.metrics import roc_auc_score

    meta = StackingMetaModel().fit(member_probs(fit_end, meta_end), y[fit_end:meta_end])
    test_p = member_probs(meta_end, len(y))
    auc = {n: roc_auc_score(y[meta_end:], test_p[:, j]) for j, n in enumerate(members)}
    auc["ensemble"] = roc_auc_score(y[meta_end:], meta.predict_proba(test_p)[:, 1])
    print("held-out AUC: " + ", ".join(f"{n} {v:.3f}" for n, v in auc.items()))

    load_before = os.getloadavg()[0]
    out_dir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    manifest = export_ensemble(members, meta, out_dir)
    ensemble = OnnxEnsemble.load(out_dir, manifest, fused=True)
    id_session, id_binding, _ = identity_session()
    feature_step, feature_skip = online_features_step()

    # timed: interleaved per call; inputs cycle over held-out samples
    n = args.calls
    test_rows, test_windows = rows[meta_end:], windows[meta_end:]
    m = len(test_rows)
    warm = 200
    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    baseline, total, outer, on_cpu, fused, with_features = [], [], [], [], [], []
    member_us: dict[str, list[float]] = {name: [] for name in members}
    probabilities: list[float] = []  # of every timed call, to show that they compute something
    gc.disable()  # the sidecar's hot path does not allocate enough to trigger collections either
    try:
        for i in range(warm + n):
            j = i % m
            t0 = perf()
            id_session.run_with_iobinding(id_binding)
            c1 = cpu()
            t1 = perf()
            result = ensemble.predict(test_rows[j], test_windows[j])
            t2 = perf()
            c2 = cpu()
            fused_result = ensemble.predict_fused(test_rows[j], test_windows[j])
            t3 = perf()
            if feature_step is not None:
                row, window = feature_step()
                featured = ensemble.predict(row, window)
                t4 = perf()
            if i < warm:
                continue
            probabilities += [result.probability, fused_result.probability]
            baseline.append((t1 - t0) / 1000)
            outer.append((t2 - t1) / 1000)
            on_cpu.append((c2 - c1) / 1000)
            total.append(result.total_us)
            fused.append((t3 - t2) / 1000)
            if feature_step is not None:
                with_features.append((t4 - t3) / 1000)
                probabilities.append(featured.probability)
            for name, us in result.member_us.items():
                member_us[name].append(us)
    finally:
        gc.enable()

    native: dict[str, list[float]] = {name: [] for name in members}
    for i in range(args.native_calls):
        j = i % m
        for name, model in members.items():
            x = test_windows[j : j + 1] if name in sequence else test_rows[j : j + 1]
            t0 = perf()
            model.predict_proba(x)
            native[name].append((perf() - t0) / 1000)

    figures: dict[str, object] = {"train_seconds": train_s, "auc": auc}
    print(f"\nsingle-sample latency, {n} calls (us)          p50      p99")
    rows_out: list[tuple[str, tuple[float, float]]] = [("baseline: identity graph, 1 session run", pct(baseline))]
    rows_out += [(f"member {name} (ONNX session run)", pct(v)) for name, v in member_us.items()]
    rows_out += [
        ("ensemble: OnnxEnsemble.predict (total_us)", pct(total)),
        ("ensemble: OnnxEnsemble.predict, caller's view", pct(outer)),
        ("ensemble: the same, this thread's CPU time", pct(on_cpu)),
        ("ensemble: fused graph, predict_fused", pct(fused)),
    ]
    if feature_step is not None:
        rows_out.append(("online feature update + window + predict", pct(with_features)))
    for label, (p50, p99) in rows_out:
        print(f"  {label:<46} {p50:8.1f} {p99:8.1f}")
    if feature_step is None:
        print(f"  online feature update + predict: skipped, {feature_skip}")
    print(f"\nnative predict_proba, one sample, {args.native_calls} calls (us)")
    for name, v in native.items():
        p50, p99 = pct(v)
        print(f"  {name:<46} {p50:8.1f} {p99:8.1f}")

    print(f"\n1-minute load average {load_before:.1f} before the timed calls, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} CPUs): wall-clock p99 above the CPU-time p99 is time spent preempted")
    sum_members_p50 = sum(pct(v)[0] for v in member_us.values())
    per_call_sum = np.sum([member_us[name] for name in members], axis=0)
    ratio = float(np.median(np.asarray(total) / per_call_sum))
    p99_total = pct(total)[1]
    p50_base = pct(baseline)[0]
    print(f"\nensemble / sum of members (median of per-call ratios): {ratio:.2f}")
    print(f"ensemble p50 / identity-graph p50: {pct(total)[0] / p50_base:.1f}; fused / separate p50: "
          f"{pct(fused)[0] / pct(outer)[0]:.2f}")
    print(f"goal: ensemble p99 under {GOAL_P99_US:.0f} us: {p99_total:.0f} us, "
          f"{'met' if p99_total < GOAL_P99_US else 'NOT met'}")
    figures.update({
        "latency_us": {label: {"p50": p50, "p99": p99} for label, (p50, p99) in rows_out},
        "native_us": {name: dict(zip(("p50", "p99"), pct(v), strict=True)) for name, v in native.items()},
        "ensemble_over_sum_of_members": ratio,
        "sum_of_member_p50_us": sum_members_p50,
        "load_average": [load_before, os.getloadavg()[0]],
        "online_features": "measured" if feature_step is not None else f"skipped: {feature_skip}",
        "goal_met": p99_total < GOAL_P99_US,
    })
    if args.json:
        print(json.dumps(figures, indent=2))
    problems = workload_problems(probabilities, member_us, n, feature_skip)
    if problems:
        print("bench_inference: FAILED, the workload no longer computes what is measured: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
