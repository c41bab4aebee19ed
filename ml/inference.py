"""ONNX inference of the ensemble in the sidecar: numpy and onnxruntime only, never torch.

``OnnxEnsemble.load`` creates one ``onnxruntime.InferenceSession`` per member and one for the
meta-model, once, each on one thread (the sidecar shares two cores with the NT8 link, storage and
the strategies; a thread pool per session would only add wake-up latency to a batch of one),
sequential execution, all graph optimisations, warmed up by a few dummy runs so the first real
bar does not pay for lazy allocations.

The single-sample path allocates nothing per call beyond the returned result: the input row and
window are copied into preallocated float32 buffers that the sessions read through I/O bindings,
and each member writes its probability straight into its column of the meta-model's preallocated
input. Consequently one ``OnnxEnsemble`` must not be used from two threads at once.

Optionally the fused graph written by ``ml.onnx_export.export_ensemble`` (every member and the
meta-model in one graph) is loaded too: ``predict_fused`` runs it in one session call, with no
per-member timing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["EnsemblePrediction", "OnnxEnsemble", "session_options"]

INPUT_NAME = "input"
OUTPUT_NAME = "probability"
_WARMUP_RUNS = 5
# batch size of predict_batch: bounds the memory of a (batch, T, k) window block
_BATCH_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class EnsemblePrediction:
    """One ensemble evaluation.

    Attributes
    ----------
    probability : float
        The meta-model's calibrated P(win).
    members : dict of str to float
        Each member's P(win), in ``member_order``.
    member_us : dict of str to float
        Wall time of each member's session run, microseconds (empty from ``predict_fused``).
    total_us : float
        Wall time of the whole call, copies and meta-model included, microseconds.
    """

    probability: float
    members: dict[str, float]
    member_us: dict[str, float]
    total_us: float


def session_options() -> ort.SessionOptions:
    """Options of every session: one intra-op and one inter-op thread, sequential, all optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _session(model_dir: Path, entry: Mapping[str, Any], verify: bool) -> ort.InferenceSession:
    data = (model_dir / entry["file"]).read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{entry['file']}: SHA-256 differs from the manifest's (corrupt or replaced file)")
    return ort.InferenceSession(data, sess_options=session_options(), providers=["CPUExecutionProvider"])


def _bind(binding: ort.IOBinding, name: str, array: np.ndarray, output: bool) -> None:
    """Bind a preallocated C-contiguous float32 array (or a view into one) to a session's input or output."""
    args = (name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
    if output:
        binding.bind_output(*args)
    else:
        binding.bind_input(*args)


class OnnxEnsemble:
    """The exported ensemble, ready for single-sample inference; build it with :meth:`load`.

    Attributes
    ----------
    member_order : tuple of str
        Member names, the meta-model's input column order.
    member_inputs : dict of str to str
        ``"row"`` or ``"sequence"`` per member.
    n_features : int
        ``k``.
    seq_len : int or None
        ``T``, None when no member reads a sequence.
    fused : bool
        Whether the fused single-graph session is loaded (for :meth:`predict_fused`).
    """

    def __init__(
        self,
        members: dict[str, tuple[ort.InferenceSession, str]],
        meta: ort.InferenceSession,
        n_features: int,
        seq_len: int | None,
        fused: ort.InferenceSession | None,
    ) -> None:
        self.member_order = tuple(members)
        self.member_inputs = {name: kind for name, (_, kind) in members.items()}
        self.n_features = n_features
        self.seq_len = seq_len
        self.fused = fused is not None
        self._sessions = {name: session for name, (session, _) in members.items()}
        self._meta = meta
        self._fused = fused

        m = len(members)
        self._row = np.zeros((1, n_features), dtype=np.float32)
        self._window = np.zeros((1, seq_len or 1, n_features), dtype=np.float32)
        # the meta-model's input row: member j's output binding writes into column j
        self._member_p = np.zeros((1, m), dtype=np.float32)
        self._meta_p = np.zeros((1, 1), dtype=np.float32)
        self._bindings: list[tuple[str, ort.InferenceSession, ort.IOBinding]] = []
        for j, name in enumerate(self.member_order):
            session = self._sessions[name]
            binding = session.io_binding()
            source = self._row if self.member_inputs[name] == "row" else self._window
            _bind(binding, INPUT_NAME, source, output=False)
            _bind(binding, OUTPUT_NAME, self._member_p[:, j : j + 1], output=True)
            self._bindings.append((name, session, binding))
        self._meta_binding = meta.io_binding()
        _bind(self._meta_binding, INPUT_NAME, self._member_p, output=False)
        _bind(self._meta_binding, OUTPUT_NAME, self._meta_p, output=True)

        self._fused_binding: ort.IOBinding | None = None
        if fused is not None:
            self._fused_p = np.zeros((1, 1), dtype=np.float32)
            self._fused_members = np.zeros((1, m), dtype=np.float32)
            binding = fused.io_binding()
            fused_inputs = {i.name for i in fused.get_inputs()}
            for name, array in (("row", self._row), ("window", self._window)):
                if name in fused_inputs:
                    _bind(binding, name, array, output=False)
            _bind(binding, OUTPUT_NAME, self._fused_p, output=True)
            _bind(binding, "members", self._fused_members, output=True)
            self._fused_binding = binding

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        manifest: Mapping[str, Any] | str | Path,
        *,
        fused: bool = False,
        verify: bool = True,
    ) -> OnnxEnsemble:
        """Create the sessions of an exported ensemble and warm them up.

        Parameters
        ----------
        model_dir : str or pathlib.Path
            The folder ``export_ensemble`` wrote (files in the manifest are relative to it).
        manifest : mapping, or a path to its JSON file
            The manifest ``export_ensemble`` returned.
        fused : bool
            Also load the fused single graph (``manifest["fused"]``) for :meth:`predict_fused`.
        verify : bool
            Check each file's SHA-256 against the manifest before loading it.

        Returns
        -------
        OnnxEnsemble
        """
        model_dir = Path(model_dir)
        if not isinstance(manifest, Mapping):
            manifest = json.loads(Path(manifest).read_text())
        members = {}
        for name in manifest["member_order"]:
            entry = manifest["members"][name]
            if entry["input"] not in ("row", "sequence"):
                raise ValueError(f"member {name}: unknown input kind {entry['input']!r}")
            members[name] = (_session(model_dir, entry, verify), entry["input"])
        meta = _session(model_dir, manifest["meta"], verify)
        fused_session = _session(model_dir, manifest["fused"], verify) if fused else None
        ensemble = cls(members, meta, int(manifest["n_features"]), manifest.get("seq_len"), fused_session)
        ensemble._warm_up()
        return ensemble

    def _warm_up(self) -> None:
        for _ in range(_WARMUP_RUNS):
            self._run()
            if self._fused_binding is not None:
                self._fused.run_with_iobinding(self._fused_binding)

    def _load_inputs(self, row: np.ndarray, window: np.ndarray | None) -> None:
        row = np.asarray(row)
        if row.shape != (self.n_features,):
            raise ValueError(f"row must have shape ({self.n_features},), got {row.shape}")
        self._row[0] = row
        if self.seq_len is not None:
            if window is None:
                raise ValueError("this ensemble has sequence members: a window is required")
            window = np.asarray(window)
            # checked explicitly: numpy would broadcast a single row into the whole window
            if window.shape != (self.seq_len, self.n_features):
                raise ValueError(f"window must have shape ({self.seq_len}, {self.n_features}), got {window.shape}")
            self._window[0] = window

    def _run(self) -> dict[str, float]:
        clock = time.perf_counter_ns
        member_us = {}
        for name, session, binding in self._bindings:
            start = clock()
            session.run_with_iobinding(binding)
            member_us[name] = (clock() - start) / 1000.0
        self._meta.run_with_iobinding(self._meta_binding)
        return member_us

    def predict(self, row: np.ndarray, window: np.ndarray | None = None) -> EnsemblePrediction:
        """Evaluate every member and the meta-model on one sample.

        Parameters
        ----------
        row : numpy.ndarray of shape (k,)
            The latest feature row (for row members).
        window : numpy.ndarray of shape (T, k)
            The last ``T`` feature rows, oldest first, ``row`` last (for sequence members); may be
            omitted when no member reads sequences.

        Returns
        -------
        EnsemblePrediction
        """
        start = time.perf_counter_ns()
        self._load_inputs(row, window)
        member_us = self._run()
        members = dict(zip(self.member_order, self._member_p[0].tolist()))
        probability = float(self._meta_p[0, 0])
        return EnsemblePrediction(probability, members, member_us, (time.perf_counter_ns() - start) / 1000.0)

    def predict_fused(self, row: np.ndarray, window: np.ndarray | None = None) -> EnsemblePrediction:
        """As :meth:`predict`, through the fused single graph (load with ``fused=True``); no ``member_us``."""
        if self._fused_binding is None:
            raise RuntimeError("the fused graph is not loaded (OnnxEnsemble.load(..., fused=True))")
        start = time.perf_counter_ns()
        self._load_inputs(row, window)
        self._fused.run_with_iobinding(self._fused_binding)
        members = dict(zip(self.member_order, self._fused_members[0].tolist()))
        probability = float(self._fused_p[0, 0])
        return EnsemblePrediction(probability, members, {}, (time.perf_counter_ns() - start) / 1000.0)

    def predict_batch(self, rows: np.ndarray, windows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Evaluate the ensemble on many samples (offline evaluation; allocates freely).

        Parameters
        ----------
        rows : numpy.ndarray of shape (n, k)
            Feature rows.
        windows : numpy.ndarray of shape (n, T, k)
            The matching windows (``windows[i, -1] == rows[i]``); may be omitted when no member
            reads sequences.

        Returns
        -------
        probability : numpy.ndarray of shape (n,)
            The meta-model's calibrated P(win), float64.
        members : numpy.ndarray of shape (n, m)
            The members' P(win) in ``member_order``, float64.
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows must have shape (n, {self.n_features}), got {rows.shape}")
        n = len(rows)
        if self.seq_len is not None:
            if windows is None:
                raise ValueError("this ensemble has sequence members: windows are required")
            windows = np.ascontiguousarray(windows, dtype=np.float32)
            if windows.shape != (n, self.seq_len, self.n_features):
                raise ValueError(
                    f"windows must have shape ({n}, {self.seq_len}, {self.n_features}), got {windows.shape}"
                )
        member_p = np.zeros((n, len(self.member_order)), dtype=np.float32)
        probability = np.zeros(n, dtype=np.float32)
        for lo in range(0, n, _BATCH_CHUNK):
            hi = min(lo + _BATCH_CHUNK, n)
            for j, name in enumerate(self.member_order):
                source = rows if self.member_inputs[name] == "row" else windows
                (out,) = self._sessions[name].run([OUTPUT_NAME], {INPUT_NAME: source[lo:hi]})
                member_p[lo:hi, j] = out.ravel()
            (meta_out,) = self._meta.run([OUTPUT_NAME], {INPUT_NAME: member_p[lo:hi]})
            probability[lo:hi] = meta_out.ravel()
        return probability.astype(np.float64), member_p.astype(np.float64)
