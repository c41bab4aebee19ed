"""Gradient-boosted tree members of the ensemble: LightGBM and XGBoost on one feature row.

Both wrap the library's own scikit-learn estimator so that the fitted object is exactly what the
ONNX converters (onnxmltools) understand; the wrapper adds the project's conventions: binary labels
(1 = win), a fixed small thread count (the sidecar's machine has two cores shared with everything
else) and bit-for-bit reproducible fits for one ``random_state``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["LightGBMClassifierModel", "XGBoostClassifierModel", "check_binary_xy"]


def check_binary_xy(X: Any, y: Any, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a training set: ``X`` float with ``ndim`` dimensions, ``y`` binary 0/1 of the same length.

    Parameters
    ----------
    X : array-like
        Features, ``(n, k)`` for row models or ``(n, T, k)`` for sequence models.
    y : array-like of shape (n,)
        Labels, 1 = win, 0 = loss.
    ndim : int
        The number of dimensions ``X`` must have.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``X`` as float64 (row models) or float32 (sequence models keep their dtype) and ``y`` as int64.

    Raises
    ------
    ValueError
        On a shape mismatch, non-finite features or labels other than 0 and 1 (both classes needed).
    """
    X = np.asarray(X)
    if X.ndim != ndim:
        raise ValueError(f"X must have {ndim} dimensions, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    y = np.asarray(y).ravel()
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    if not np.isfinite(X).all():
        raise ValueError("X has non-finite values (warm-up rows must be dropped before training)")
    labels = np.unique(y)
    if not np.array_equal(labels, [0, 1]):
        raise ValueError(f"y must hold both labels 0 and 1 and nothing else, got {labels.tolist()}")
    return X, y.astype(np.int64)


def _rows(X: Any, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"X must have shape (n, {n_features}), got {X.shape}")
    return X


class LightGBMClassifierModel(ClassifierMixin, BaseEstimator):
    """LightGBM gradient-boosted trees on a feature row ``(n, k)``.

    Parameters
    ----------
    n_estimators : int
        Number of boosting rounds (trees).
    learning_rate : float
        Shrinkage of each tree.
    num_leaves : int
        Maximum leaves per tree.
    max_depth : int
        Maximum tree depth, -1 for none.
    min_child_samples : int
        Minimum samples in a leaf; large values keep the trees from fitting noise.
    subsample : float
        Row fraction per tree (bagging every round when below 1).
    colsample_bytree : float
        Feature fraction per tree.
    reg_lambda : float
        L2 penalty on leaf values.
    n_jobs : int
        Training threads; small, since the training box is shared.
    random_state : int
        Seed of the bagging and feature sampling; equal seeds give identical models.

    Attributes
    ----------
    model_ : lightgbm.LGBMClassifier
        The fitted LightGBM estimator (what ``ml.onnx_export`` converts).
    classes_ : numpy.ndarray
        ``[0, 1]``.
    n_features_in_ : int
        ``k``, the number of features seen in ``fit``.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> LightGBMClassifierModel:
        """Fit the trees on rows ``X`` ``(n, k)`` and binary labels ``y``; returns ``self``."""
        import lightgbm as lgb

        X, y = check_binary_xy(X, y, ndim=2)
        self.model_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            max_depth=self.max_depth,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            # bagging only happens when a frequency is set; every round is LightGBM's usual choice
            subsample_freq=1 if self.subsample < 1.0 else 0,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            # deterministic + row-wise histograms: same seed, same trees, whatever the thread timing
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
        self.model_.fit(X, y)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, 2)`` probabilities of loss and win for rows ``X`` ``(n, k)``."""
        return self.model_.predict_proba(_rows(X, self.n_features_in_))

    def predict(self, X: Any) -> np.ndarray:
        """Labels 0/1 at a probability threshold of 0.5."""
        return (self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)


class XGBoostClassifierModel(ClassifierMixin, BaseEstimator):
    """XGBoost gradient-boosted trees on a feature row ``(n, k)``.

    Parameters
    ----------
    n_estimators : int
        Number of boosting rounds (trees).
    learning_rate : float
        Shrinkage of each tree.
    max_depth : int
        Maximum tree depth.
    min_child_weight : float
        Minimum hessian sum in a leaf.
    subsample : float
        Row fraction per tree.
    colsample_bytree : float
        Feature fraction per tree.
    reg_lambda : float
        L2 penalty on leaf values.
    n_jobs : int
        Training threads.
    random_state : int
        Seed; the ``hist`` method with equal seeds gives identical models.

    Attributes
    ----------
    model_ : xgboost.XGBClassifier
        The fitted XGBoost estimator (what ``ml.onnx_export`` converts).
    classes_ : numpy.ndarray
        ``[0, 1]``.
    n_features_in_ : int
        ``k``.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        max_depth: int = 5,
        min_child_weight: float = 5.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> XGBoostClassifierModel:
        """Fit the trees on rows ``X`` ``(n, k)`` and binary labels ``y``; returns ``self``."""
        import xgboost as xgb

        X, y = check_binary_xy(X, y, ndim=2)
        self.model_ = xgb.XGBClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            min_child_weight=self.min_child_weight,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            tree_method="hist",
            objective="binary:logistic",
            device="cpu",
        )
        self.model_.fit(X, y)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, 2)`` probabilities of loss and win for rows ``X`` ``(n, k)``."""
        return self.model_.predict_proba(_rows(X, self.n_features_in_)).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """Labels 0/1 at a probability threshold of 0.5."""
        return (self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)
