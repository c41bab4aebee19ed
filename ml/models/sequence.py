"""Sequence members of the ensemble: a small LSTM and a small Transformer encoder on ``(n, T, k)``.

torch is imported inside ``fit``/``predict_proba``/the module builders only, so ``import ml.models``
works in a process without torch (the sidecar runs the exported ONNX graphs, never these classes).

Both networks carry the feature standardisation (mean and std learned in ``fit``) as buffers of
the module, so the exported ONNX graph takes the raw feature rows and nothing has to be kept in
step between training and serving. Training is minibatch AdamW with early stopping
on the time-ordered tail of the training set (the last ``validation_fraction`` of the samples, in
the order given: the caller passes samples in time order), on ``n_threads`` threads, seeded, so equal
``random_state`` gives identical weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ml.models.trees import check_binary_xy

__all__ = ["LSTMClassifier", "TransformerClassifier", "make_sequences"]


def make_sequences(
    X_rows: Any, T: int, group_ids: Any = None, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the last ``T`` feature rows ending at each row.

    Rows are taken in the order given (time order within an instrument). A window is valid when
    its ``T`` rows all belong to the same contiguous run of ``group_ids`` as its last row (no
    window crosses from one instrument's history into another's) and are all finite (warm-up rows
    are NaN, see ``ml``'s contract).

    Parameters
    ----------
    X_rows : array-like of shape (n, k)
        Feature rows in time order (instruments may be concatenated one after another).
    T : int
        Sequence length (``SEQUENCE_LENGTH``).
    group_ids : array-like of shape (n,), optional
        Instrument (or any segment) id of each row; ``None`` means one group.
    dtype : numpy dtype
        Dtype of the windows; float32 by default, what the networks and ONNX use, and half the
        memory of float64 (100k windows of 32 x 24 are 300 MB in float32).

    Returns
    -------
    X_seq : numpy.ndarray of shape (n, T, k)
        ``X_seq[i]`` is rows ``i - T + 1 .. i``; invalid windows are filled with NaN so that a
        caller who forgets the mask fails loudly in ``fit``.
    valid_mask : numpy.ndarray of shape (n,), bool
        True where the window is valid.
    """
    X = np.asarray(X_rows, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X_rows must be (n, k), got shape {X.shape}")
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    n, k = X.shape
    groups = np.zeros(n, dtype=np.int64) if group_ids is None else np.asarray(group_ids)
    if groups.shape != (n,):
        raise ValueError(f"group_ids must have shape ({n},), got {groups.shape}")

    idx = np.arange(n)
    # start of each row's contiguous group run: the last index where the group changed
    change = np.ones(n, dtype=bool)
    change[1:] = groups[1:] != groups[:-1]
    run_start = np.maximum.accumulate(np.where(change, idx, 0))
    # likewise the last non-finite row at or before each row
    bad = ~np.isfinite(X).all(axis=1)
    last_bad = np.maximum.accumulate(np.where(bad, idx, -1)) if n else np.zeros(0, dtype=np.int64)
    first = idx - T + 1
    valid = (first >= run_start) & (last_bad < first)

    X_seq = np.full((n, T, k), np.nan, dtype=dtype)
    if n >= T:
        windows = np.lib.stride_tricks.sliding_window_view(X, T, axis=0)  # (n - T + 1, k, T)
        ends = np.flatnonzero(valid)
        X_seq[ends] = windows[ends - T + 1].transpose(0, 2, 1)
    return X_seq, valid


def _feature_moments(X: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and sample std over all windows and steps of ``X`` ``(n, T, k)``, as float32.

    Two passes in float64 over chunks: a float64 copy of 100k windows would be 400 MB, and the
    one-pass sum of squares loses precision when a feature's mean is large against its spread.
    """
    k = X.shape[2]
    count = X.shape[0] * X.shape[1]
    mean = np.zeros(k)
    for lo in range(0, len(X), chunk):
        mean += X[lo : lo + chunk].sum(axis=(0, 1), dtype=np.float64)
    mean /= count
    squares = np.zeros(k)
    for lo in range(0, len(X), chunk):
        squares += ((X[lo : lo + chunk] - mean) ** 2).sum(axis=(0, 1))
    std = np.sqrt(squares / max(count - 1, 1))
    return mean.astype(np.float32), std.astype(np.float32)


def _build_lstm(n_features: int, hidden_size: int, num_layers: int, dropout: float) -> Any:
    import torch
    from torch import nn

    class LSTMNet(nn.Module):
        """Standardise, LSTM over the window, linear head on the last step, sigmoid."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("std", torch.ones(n_features))
            self.lstm = nn.LSTM(
                n_features,
                hidden_size,
                num_layers=num_layers,
                batch_first=True,
                dropout=dropout if num_layers > 1 else 0.0,
            )
            self.head = nn.Linear(hidden_size, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Logit of a win, shape (batch, 1)."""
            z, _ = self.lstm((x - self.mean) / self.std)
            return self.head(z[:, -1, :])

    return LSTMNet()


def _build_transformer(
    n_features: int,
    seq_len: int,
    d_model: int,
    n_heads: int,
    num_layers: int,
    dim_feedforward: int,
    dropout: float,
    pooling: str,
) -> Any:
    import torch
    from torch import nn

    class EncoderBlock(nn.Module):
        """Pre-norm self-attention + feed-forward block written out with plain ops.

        nn.TransformerEncoderLayer would do, but in eval mode it takes a fused "fast path" kernel
        whose ONNX export depends on the torch version; plain matmuls export the same everywhere.
        """

        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.norm2 = nn.LayerNorm(d_model)
            self.ff = nn.Sequential(
                nn.Linear(d_model, dim_feedforward), nn.GELU(), nn.Linear(dim_feedforward, d_model)
            )
            self.drop = nn.Dropout(dropout)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            b, t, _ = h.shape
            q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
            # (b, heads, t, d_head)
            q, k, v = (a.reshape(b, t, n_heads, d_model // n_heads).transpose(1, 2) for a in (q, k, v))
            att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d_model // n_heads), dim=-1)
            a = (att @ v).transpose(1, 2).reshape(b, t, d_model)
            h = h + self.drop(self.proj(a))
            return h + self.drop(self.ff(self.norm2(h)))

    class TransformerNet(nn.Module):
        """Standardise, project to d_model, add a learned position embedding, encode, pool, head."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("std", torch.ones(n_features))
            self.inp = nn.Linear(n_features, d_model)
            self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
            nn.init.normal_(self.pos, std=0.02)
            self.blocks = nn.ModuleList(EncoderBlock() for _ in range(num_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Logit of a win, shape (batch, 1)."""
            h = self.inp((x - self.mean) / self.std) + self.pos
            for block in self.blocks:
                h = block(h)
            h = self.norm(h)
            return self.head(h[:, -1, :] if pooling == "last" else h.mean(dim=1))

    return TransformerNet()


class _SequenceClassifierBase(ClassifierMixin, BaseEstimator):
    """Training loop, prediction and the estimator contract shared by the two networks."""

    def _build(self, n_features: int, seq_len: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> _SequenceClassifierBase:
        """Fit on windows ``X`` ``(n, T, k)`` in time order and binary labels ``y``; returns ``self``.

        The last ``validation_fraction`` of the samples is held out for early stopping (patience
        ``patience`` epochs on validation log-loss); the weights of the best epoch are kept.
        """
        import torch

        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        X, y = check_binary_xy(X, y, ndim=3)
        X = np.ascontiguousarray(X, dtype=np.float32)
        n, seq_len, n_features = X.shape
        n_val = int(round(n * self.validation_fraction))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(f"{n} samples are too few for a validation tail of {self.validation_fraction}")
        n_train = n - n_val

        previous_threads, previous_rng = torch.get_num_threads(), torch.get_rng_state()
        torch.set_num_threads(self.n_threads)
        try:
            # seeded initialisation; the caller's global torch RNG state is restored afterwards
            torch.manual_seed(self.random_state)
            gen = torch.Generator().manual_seed(self.random_state)
            net = self._build(n_features, seq_len)
            xt = torch.from_numpy(X)
            yt = torch.from_numpy(y.astype(np.float32)).unsqueeze(1)
            train_x, train_y = xt[:n_train], yt[:n_train]
            val_x, val_y = xt[n_train:], yt[n_train:]
            # standardisation statistics from the training part only (the tail is "the future")
            mean, std = _feature_moments(X[:n_train])
            net.mean.copy_(torch.from_numpy(mean))
            # a constant feature would divide by zero; leave it unscaled
            net.std.copy_(torch.from_numpy(np.where(std > 1e-8, std, 1.0).astype(np.float32)))

            opt = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            loss_fn = torch.nn.BCEWithLogitsLoss()
            best_loss, best_state, best_epoch, history = math.inf, None, -1, []
            for epoch in range(self.max_epochs):
                net.train()
                order = torch.randperm(n_train, generator=gen)
                for start in range(0, n_train, self.batch_size):
                    batch = order[start : start + self.batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(net(train_x[batch]), train_y[batch])
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                val_loss = float(loss_fn(self._logits(net, val_x), val_y))
                history.append(val_loss)
                if val_loss < best_loss - 1e-5:
                    best_loss, best_epoch = val_loss, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                elif epoch - best_epoch >= self.patience:
                    break
            if best_state is None:
                raise ValueError(f"training diverged: validation log-loss per epoch {history}")
            net.load_state_dict(best_state)
            net.eval()
        finally:
            torch.set_num_threads(previous_threads)
            torch.set_rng_state(previous_rng)

        self.module_ = net
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = n_features
        self.seq_len_ = seq_len
        self.best_epoch_ = best_epoch
        self.validation_loss_ = history
        return self

    def __getstate__(self) -> dict[str, Any]:
        # the networks' classes are built inside functions (torch stays a lazy import), so pickle
        # cannot name them: pickle the weights and rebuild the network on load
        state = super().__getstate__()
        if "module_" in state:
            state = dict(state, module_={k: v.clone() for k, v in state["module_"].state_dict().items()})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if isinstance(state.get("module_"), dict):
            net = self._build(self.n_features_in_, self.seq_len_)
            net.load_state_dict(state["module_"])
            self.module_ = net.eval()

    def _logits(self, net: Any, x: Any) -> Any:
        import torch

        net.eval()
        with torch.inference_mode():
            return torch.cat([net(x[i : i + 4096]) for i in range(0, len(x), 4096)])

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, 2)`` probabilities of loss and win for windows ``X`` ``(n, T, k)``."""
        import torch

        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 3 or X.shape[1:] != (self.seq_len_, self.n_features_in_):
            raise ValueError(f"X must have shape (n, {self.seq_len_}, {self.n_features_in_}), got {X.shape}")
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.n_threads)
        try:
            logits = self._logits(self.module_, torch.from_numpy(np.ascontiguousarray(X)))
        finally:
            torch.set_num_threads(previous_threads)
        p = torch.sigmoid(logits).double().numpy().ravel()
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """Labels 0/1 at a probability threshold of 0.5."""
        return (self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)


class LSTMClassifier(_SequenceClassifierBase):
    """A small LSTM on windows ``(n, T, k)``; the head reads the last time step.

    Parameters
    ----------
    hidden_size : int
        LSTM state size.
    num_layers : int
        Stacked LSTM layers.
    dropout : float
        Dropout between stacked layers (only with ``num_layers > 1``).
    learning_rate, weight_decay : float
        AdamW settings.
    batch_size : int
        Minibatch size.
    max_epochs : int
        Upper bound on epochs; the ``quick`` knob (3-5 epochs on 100k windows take seconds).
    patience : int
        Epochs without a validation improvement before stopping.
    validation_fraction : float
        Time-ordered tail held out for early stopping.
    n_threads : int
        torch threads during fit and predict (restored afterwards). One by default: on the shared
        two-core machines, with other work running, two threads trained 4-5 times slower than one
        (measured: 188 against 39 us per sample and epoch for the LSTM, batch 512).
    random_state : int
        Seed of initialisation and shuffling.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network (outputs the win logit; standardisation inside).
    seq_len_, n_features_in_ : int
        ``T`` and ``k`` seen in ``fit``.
    best_epoch_ : int
        Epoch whose weights were kept.
    validation_loss_ : list of float
        Validation log-loss per epoch.
    """

    def __init__(
        self,
        *,
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 512,
        max_epochs: int = 20,
        patience: int = 3,
        validation_fraction: float = 0.2,
        n_threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.n_threads = n_threads
        self.random_state = random_state

    def _build(self, n_features: int, seq_len: int) -> Any:
        return _build_lstm(n_features, self.hidden_size, self.num_layers, self.dropout)


class TransformerClassifier(_SequenceClassifierBase):
    """A small Transformer encoder on windows ``(n, T, k)`` with learned position embeddings.

    Parameters
    ----------
    d_model : int
        Width of the encoder.
    n_heads : int
        Attention heads (must divide ``d_model``); two train about 1.6 times faster than four.
    num_layers : int
        Encoder blocks.
    dim_feedforward : int
        Width of each block's feed-forward layer.
    dropout : float
        Dropout in the blocks during training. Off by default: on CPU it doubled the training time
        (measured), and weight decay with early stopping already hold the small network back.
    pooling : {"last", "mean"}
        What the head reads: the last position's encoding (the current bar, which attends to the
        whole window) or the mean over positions.
    learning_rate, weight_decay, batch_size, max_epochs, patience, validation_fraction, n_threads, random_state
        As for :class:`LSTMClassifier`.

    Attributes
    ----------
    module_, seq_len_, n_features_in_, best_epoch_, validation_loss_
        As for :class:`LSTMClassifier`.
    """

    def __init__(
        self,
        *,
        d_model: int = 32,
        n_heads: int = 2,
        num_layers: int = 1,
        dim_feedforward: int = 64,
        dropout: float = 0.0,
        pooling: str = "last",
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 512,
        max_epochs: int = 20,
        patience: int = 3,
        validation_fraction: float = 0.2,
        n_threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.num_layers = num_layers
        self.dim_feedforward = dim_feedforward
        self.dropout = dropout
        self.pooling = pooling
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.n_threads = n_threads
        self.random_state = random_state

    def _build(self, n_features: int, seq_len: int) -> Any:
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {self.pooling!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        return _build_transformer(
            n_features,
            seq_len,
            self.d_model,
            self.n_heads,
            self.num_layers,
            self.dim_feedforward,
            self.dropout,
            self.pooling,
        )
