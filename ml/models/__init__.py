"""Ensemble members and the stacking meta-model, all scikit-learn estimators.

Row models read ``(n, k)`` feature rows; sequence models read ``(n, T, k)`` windows built by
:func:`make_sequences`; the meta-model reads the members' probabilities ``(n, m)``. Importing this
package needs neither torch nor the boosting libraries: each is imported where it is used.
"""

from ml.models.sequence import LSTMClassifier, TransformerClassifier, make_sequences
from ml.models.stacking import StackingMetaModel, probability_logits
from ml.models.trees import LightGBMClassifierModel, XGBoostClassifierModel

__all__ = [
    "LSTMClassifier",
    "LightGBMClassifierModel",
    "StackingMetaModel",
    "TransformerClassifier",
    "XGBoostClassifierModel",
    "make_sequences",
    "probability_logits",
]
