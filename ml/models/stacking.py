"""The stacking meta-model: the ensemble's final, calibrated win probability.

It reads the members' out-of-fold probabilities (one column per member, in the manifest's
``member_order``), turns them into logits, and fits a logistic regression on them. On the logit
scale a logistic regression is Platt scaling generalised to several inputs: it both weights the
members and recalibrates their combined score, so its output is the probability the sidecar uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ml.models.trees import check_binary_xy

__all__ = ["StackingMetaModel", "probability_logits"]


def probability_logits(P: Any, eps: float) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[eps, 1 - eps]`` (float64).

    Parameters
    ----------
    P : array-like
        Probabilities.
    eps : float
        Clip; keeps a member that says exactly 0 or 1 from producing an infinite input.
    """
    p = np.clip(np.asarray(P, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


class StackingMetaModel(ClassifierMixin, BaseEstimator):
    """Logistic regression on the logits of the members' probabilities.

    Parameters
    ----------
    C : float
        Inverse L2 strength; the default is mild, since members are few and their logits correlated.
    eps : float
        Probability clip before the logit (the ONNX graph uses the same float32 clip).
    random_state : int
        Passed to the solver (lbfgs is deterministic; kept for a uniform interface).

    Attributes
    ----------
    model_ : sklearn.linear_model.LogisticRegression
        The fitted regression on logits (what ``ml.onnx_export`` converts).
    coef_ : numpy.ndarray of shape (m,)
        Weight of each member's logit.
    intercept_ : float
        Bias.
    classes_ : numpy.ndarray
        ``[0, 1]``.
    n_features_in_ : int
        ``m``, the number of members.
    """

    def __init__(self, *, C: float = 1.0, eps: float = 1e-6, random_state: int = 0) -> None:
        self.C = C
        self.eps = eps
        self.random_state = random_state

    def fit(self, P: Any, y: Any) -> StackingMetaModel:
        """Fit on the members' out-of-fold probabilities ``P`` ``(n, m)`` and labels ``y``; returns ``self``."""
        from sklearn.linear_model import LogisticRegression

        P, y = check_binary_xy(P, y, ndim=2)
        if ((P < 0) | (P > 1)).any():
            raise ValueError("member probabilities must lie in [0, 1]")
        self.model_ = LogisticRegression(C=self.C, random_state=self.random_state, max_iter=1000)
        self.model_.fit(probability_logits(P, self.eps), y)
        self.coef_ = self.model_.coef_.ravel().copy()
        self.intercept_ = float(self.model_.intercept_[0])
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = P.shape[1]
        return self

    def predict_proba(self, P: Any) -> np.ndarray:
        """``(n, 2)`` calibrated probabilities of loss and win from member probabilities ``(n, m)``."""
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != self.n_features_in_:
            raise ValueError(f"P must have shape (n, {self.n_features_in_}), got {P.shape}")
        return self.model_.predict_proba(probability_logits(P, self.eps))

    def predict(self, P: Any) -> np.ndarray:
        """Labels 0/1 at a probability threshold of 0.5."""
        return (self.predict_proba(P)[:, 1] > 0.5).astype(np.int64)
