"""Feature scale: give a ReLU backbone's pooled features a standard deviation of about 1.

Contrastive losses compare directions only, so after contrastive pre-training a
small network's features may be tiny (a standard deviation of 0.01 to 0.04 on
digits). A head trained on them for a few hundred steps then stays far from the
weights it needs (docs/benchmarks.md). When the backbone ends in a convolution or
`Dense` layer with a ReLU or no activation, followed only by layers that scale
with their input (pooling, ReLU, flatten, reshape, dropout), multiplying that
layer's kernel and bias by `c` multiplies the features by `c` and changes nothing
else: `rescale_features` does so. Other backbones are left as they are.
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["FEATURE_SCALE", "last_scalable_layer", "rescale_features"]

FEATURE_SCALE = 1.0  # the features' standard deviation, averaged over features, after

# Layers whose output is c times their output for c times their input (c > 0).
_SCALING = (
    keras.layers.InputLayer,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
)
_KERNELS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Dense,
)


def _scales(layer) -> bool:
    if isinstance(layer, _SCALING):
        return True
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return config.get("max_value") is None and not config.get("threshold")
    if isinstance(layer, keras.layers.Activation):
        return layer.get_config()["activation"] in ("relu", "linear")
    return False


def last_scalable_layer(model: keras.Model):
    """The convolution or `Dense` layer whose kernel and bias scale `model`'s output, or
    None (see the module docstring).

    Examples:
        >>> import keras
        >>> from finetune_tf.training.feature_scale import last_scalable_layer
        >>> model = keras.Sequential([keras.Input((8, 8, 1)),
        ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        ...     keras.layers.MaxPooling2D()])
        >>> last_scalable_layer(model).name
        'conv'
        >>> last_scalable_layer(keras.Sequential([keras.Input((3,)),
        ...     keras.layers.Dense(2, activation="tanh")])) is None
        True
    """
    for layer in reversed(model.layers):
        if _scales(layer):
            continue
        if isinstance(layer, _KERNELS) and layer.get_config()["activation"] in ("relu", "linear"):
            return layer
        return None
    return None


def rescale_features(model: keras.Model, x, target: float = FEATURE_SCALE) -> float | None:
    """Scales `model`'s last scalable layer so that its output, averaged over positions,
    has a standard deviation of `target` averaged over features (on inputs `x`); returns
    the factor applied, or None when the model's output does not scale so.

    Args:
        model: keras.Model. The backbone's model, changed in place.
        x: array of inputs (a sample suffices).
        target: float > 0. Defaults to 1.0.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf.training.feature_scale import rescale_features
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        >>> factor = rescale_features(model, x)
        >>> round(float(model.predict(x, verbose=0).std(axis=0).mean()), 3)
        1.0
    """
    layer = last_scalable_layer(model)
    if layer is None:
        return None
    features = np.asarray(model.predict(x, verbose=0), "float64")
    if features.ndim > 2:
        features = features.mean(axis=tuple(range(1, features.ndim - 1)))
    spread = float(features.std(axis=0).mean())
    if not np.isfinite(spread) or spread <= 0:
        return None
    factor = target / spread
    for weight in (layer.kernel, getattr(layer, "bias", None)):
        if weight is not None:
            weight.assign(weight * factor)
    return factor
