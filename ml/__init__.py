"""The ML ensemble: features, labels, honest training, ONNX inference, registry, drift, A/B.

Shape (scikit-learn's): every model is an estimator with ``fit(X, y)``, ``predict_proba(X)``
(an ``(n, 2)`` array, column 1 the win probability) and ``get_params()``; no hidden state
beyond what ``fit`` learns. The sidecar needs onnxruntime and numpy only; training needs the
``train`` extra (xgboost, torch, onnx converters).

Modules, each with one job:

- ``features``   one definition, two evaluations: ``OnlineFeatures`` (O(1) per bar, in the
                 sidecar) and ``offline_features`` (vectorised over history, for training);
                 they agree to 1e-9 on real data. ``TickFlow`` classifies ticks into buy and
                 sell volume per bar (quote rule where quotes exist, tick rule otherwise).
- ``labels``     triple-barrier labels with the bracket's own distances (``LabelConfig``).
- ``cv``         walk-forward splits with purging and an embargo.
- ``models``     LightGBM, XGBoost, LSTM, Transformer and the stacking meta-model.
- ``onnx_export`` every fitted model to ONNX, with a parity check against its native model.
- ``inference``  ``OnnxEnsemble``: sessions created once, one thread each, warmed up.
- ``registry``   versioned artifacts on disk and in the database; champion and challengers.
- ``drift``      PSI, KS, Wasserstein per feature; the dissimilarity-index guard.
- ``evaluate``   out-of-sample scores and signal P&L after costs (Sharpe, deflated Sharpe).
- ``ab``         the champion against a challenger in shadow, with a statistical decision.
- ``train``      the end-to-end training run behind ``nt8bridge train``.
- ``retrain``    the apscheduler job that trains challengers.

May import: the ground floor of ``bridge`` (``core``, ``protocol``, ``data``, ``storage``) and
``reports``; never the engine, transport, NT8 hosting or CLI of ``bridge`` (its commands live in
``bridge.cli.ml``).

The contract between them
-------------------------
- A *bar frame* is a DataFrame with ``ts_ns`` (int64 UTC ns, end of bar), ``open``, ``high``,
  ``low``, ``close``, ``volume`` and optionally ``buy_volume``, ``sell_volume`` (NaN when the
  bar's ticks were not classified), one instrument, strictly increasing ``ts_ns``.
- A *feature row* is a finite float64 vector in ``FEATURE_NAMES`` order; until an instrument
  is warmed up there is no row (None online, a NaN row offline, dropped before training).
- The label is 1 when the upper barrier is hit first, 0 when the lower one is, and time-outs
  are kept out of training (barriers are symmetric, so one model serves both sides: a long
  wins with p, a short with 1 - p; the share of samples that resolved before the time-out is
  kept in the model's metadata and scales p into a win probability for Kelly).
- Sequence models read the last ``SEQUENCE_LENGTH`` feature rows, shape ``(1, T, k)``; tree
  models and the meta-model read one row, shape ``(1, k)``; every ONNX input is float32.
"""
