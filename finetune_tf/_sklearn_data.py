"""The data side of the scikit-learn estimators (`finetune_tf.sklearn`).

`validate` checks `X` (and `y`) with scikit-learn's own `validate_data`, with
the allowances a backbone needs: images and other N-D arrays, and strings for
a text backbone. `input_scaler` is the estimators' `scale` parameter: the
`Normalization` layer it puts in front of the backbone, or None.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.utils.validation import check_array, validate_data

from finetune_tf.model.backbone import Backbone

__all__ = ["LARGE_SCALE", "input_scaler", "validate"]


def validate(estimator, X, y="no_validation", *, reset: bool, **y_checks) -> tuple:
    """`(X, y)` checked by scikit-learn's `validate_data` (`y` None when not given).

    scikit-learn's rules and messages hold: sparse, complex, NaN or infinite,
    empty and 1-D numeric `X` are refused, `n_features_in_` and
    `feature_names_in_` are recorded on `fit` (`reset=True`) and compared
    afterwards. Allowed beyond them: N-D arrays (images; `n_features_in_` is
    for 2-D `X` only), a 1-D array of strings for a text backbone,
    and object arrays (a DataFrame of mixed columns) read as numbers, or as
    strings when every item is one. Integers become float32. `y_checks` go to
    `validate_data` (`multi_output`, `y_numeric`).
    """
    # X.ndim or np.asarray, not np.ndim: an array-like may refuse __array_function__.
    ndim = X.ndim if hasattr(X, "ndim") else np.asarray(X).ndim
    text = ndim == 1 and _all_strings(np.asarray(X))
    checked = validate_data(
        estimator,
        X,
        y,
        reset=reset,
        dtype=None,  # numbers as they are, or strings
        allow_nd=True,
        ensure_2d=ndim <= 2 and not text,  # also: n_features_in_ for 2-D X only
        **y_checks,
    )
    X, y = checked if isinstance(checked, tuple) else (checked, None)
    if X.dtype.kind == "O":
        X = X.astype(str) if text else _from_objects(estimator, X)
    elif X.dtype.kind in "biu":
        X = X.astype("float32")
    return X, y


def _all_strings(X: np.ndarray) -> bool:
    """Whether every item of `X` is a str or bytes."""
    if X.dtype.kind in "US":
        return True
    return X.dtype.kind == "O" and all(isinstance(item, (str, bytes)) for item in X.ravel())


def _from_objects(estimator, X: np.ndarray) -> np.ndarray:
    """An object array as numbers, then checked finite by scikit-learn (which checks
    object arrays for NaN only), or as text when every item is a string and some
    string is not a number."""
    try:
        numbers = X.astype("float32")  # objects that are not numbers: TypeError
    except ValueError:  # a string that does not read as a number
        if not _all_strings(X):
            raise
        return X.astype(str)
    return check_array(numbers, ensure_2d=False, allow_nd=True, estimator=estimator, input_name="X")


_NORMALISING_LAYERS = (
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
)

LARGE_SCALE = 10.0  # columns whose mean or spread exceeds this are "raw units"


def input_scaler(scale, backbone: Backbone, X: np.ndarray):
    """The `Normalization` layer `scale` ("auto", True or False) asks for on this `X`, or None.

    `"auto"` standardises numeric tabular inputs (2-D `X`) whose columns are
    in large raw units (some column's mean or standard deviation above 10:
    prices, counts, wine's proline in the hundreds) when the backbone has no
    normalisation of its own (no preprocessing, and no Normalization,
    Rescaling or BatchNormalization/LayerNormalization layer before its first
    layer with weights). Columns already on a small scale (centimetres,
    pixels in [0, 1], standardised data) are left as they are: a backbone
    pretrained on them expects them so.
    """
    tabular = X.ndim == 2 and X.dtype.kind in "biuf"
    if isinstance(scale, str):  # "auto", the one string the estimators allow
        if not tabular or _normalises(backbone):
            return None
        columns = X.astype("float64")
        if max(np.abs(columns.mean(axis=0)).max(), columns.std(axis=0).max()) <= LARGE_SCALE:
            return None
    elif not scale:
        return None
    elif not tabular:
        raise ValueError(
            "`scale=True` standardises the columns of tabular data, but `X` has shape "
            f'{X.shape} and dtype {X.dtype}. Pass scale=False (or "auto") for images or '
            "text, and put their preprocessing in the backbone."
        )
    scaler = keras.layers.Normalization(name="input_scaler")
    scaler.adapt(X.astype("float32"))
    return scaler


def _normalises(backbone: Backbone) -> bool:
    """Whether the backbone scales its own inputs (see `input_scaler`)."""
    if backbone.preprocessing is not None:
        return True
    for layer in backbone.model._flatten_layers(include_self=False):
        if isinstance(layer, _NORMALISING_LAYERS):
            return True
        if layer.weights and not isinstance(layer, keras.Model):
            return False
    return False
