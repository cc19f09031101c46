"""The parameter side of the scikit-learn estimators (`finetune_tf.sklearn`).

Their `_parameter_constraints`, which scikit-learn checks when `fit` starts (with
its own messages): `SHARED_CONSTRAINTS` (every estimator's), `ESTIMATOR_CONSTRAINTS`
(the classifier's and the regressor's), and `Range`, scikit-learn's `Interval`
without bools. `pristine_backbone` is what the `backbone` parameter becomes at
`fit`: a `Backbone` whose training cannot touch the caller's weights. The data side
is `_sklearn_data`.
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import keras
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from finetune_tf.model.backbone import Backbone
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.model.head.head import POOLINGS

__all__ = ["ESTIMATOR_CONSTRAINTS", "SHARED_CONSTRAINTS", "Range", "pristine_backbone"]


def pristine_backbone(backbone) -> Backbone:
    """A Backbone whose training cannot touch the caller's weights."""
    loaded = Backbone.load(backbone)
    if isinstance(backbone, (Backbone, keras.Model)):
        return loaded.copy()  # the caller's object: train a copy
    return loaded  # loaded afresh from a name, a file or a handle


class Range(Interval):
    """scikit-learn's `Interval` without bools: True is an int to Python, but never an
    epoch count, a size, a seed or a rate here (FineTuner refuses it too)."""

    def is_satisfied_by(self, val):
        return not isinstance(val, bool) and super().is_satisfied_by(val)


_POSITIVE = Range(Integral, 1, None, closed="left")
SHARED_CONSTRAINTS = {  # checked by `fit` (`_fit_context`) with scikit-learn's messages
    # What `Backbone.load` takes: a Backbone, a Keras (or tf_keras) model, a
    # keras.applications name, a file or a Hub handle. Not None: it is required.
    "backbone": [Backbone, HasMethods(["get_weights", "predict"]), str, os.PathLike],
    "input_shape": [tuple, list, _POSITIVE, None],
    "batch_size": [_POSITIVE, None],
}
_EPOCHS = [_POSITIVE, StrOptions({"auto"})]
_RATE = [
    Range(Real, 0, None, closed="neither"),
    keras.optimizers.schedules.LearningRateSchedule,
]
ESTIMATOR_CONSTRAINTS = {  # FineTunerClassifier's and FineTunerRegressor's
    **SHARED_CONSTRAINTS,
    "freeze": [FreezePolicy, None],
    "pooling": [StrOptions(set(POOLINGS))],
    "hidden_units": ["array-like", _POSITIVE],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    "head_epochs": _EPOCHS,
    "epochs": _EPOCHS,
    "learning_rate": _RATE,
    "fine_tune_learning_rate": _RATE,
    "scale": [StrOptions({"auto"}), "boolean"],
    # Not scikit-learn's "random_state": a RandomState cannot seed TensorFlow.
    "random_state": [Range(Integral, 0, 2**32 - 1, closed="both"), None],  # 32-bit seeds
    "verbose": ["verbose", StrOptions({"auto"})],  # Keras' verbosity
}
