"""`ProjectionHead` and `NTXent`: contrastive pre-training's head and loss.

SimCLR trains a backbone so that the features of two random views of an input
(`TwoViews`) agree, and differ from those of the other inputs of the batch. A
small MLP (the projection head) maps the pooled features to the space where the
loss compares them; the backbone's features under it are what fine-tuning uses.
The head sits where a task head sits, so the FineTuner machinery trains it; its
loss, `NTXent`, ignores the targets and compares the batch's predictions.
"""

from __future__ import annotations

import keras

from finetune_tf._checks import check_number
from finetune_tf.model.head.head import Head

__all__ = ["NTXent", "ProjectionHead", "VarianceFloor"]


@keras.saving.register_keras_serializable(package="finetune_tf")
class NTXent(keras.losses.Loss):
    """The normalized temperature-scaled cross-entropy of SimCLR, over a batch of pairs.

    The predictions are `2n` projections: rows `i` and `i + n` are two views of the same
    input (as `TwoViews` stacks them). Each row's loss is the cross-entropy of picking its
    pair among the other `2n - 1` rows by cosine similarity divided by `temperature`. The
    targets are ignored.

    Args:
        temperature: float > 0. Divides the cosine similarities. Defaults to 0.2.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.model.head.projection import NTXent
        >>> z = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
        >>> pairs, strangers = np.concatenate([z, z]), np.concatenate([z, -z])
        >>> ignored = np.zeros(8)
        >>> bool(NTXent()(ignored, pairs) < NTXent()(ignored, strangers))
        True
    """

    def __init__(self, temperature: float = 0.2, name: str = "nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = check_number(
            temperature,
            "temperature",
            low=0,
            low_inclusive=False,
            where="NTXent",
            type_error=ValueError,
        )

    def call(self, y_true, y_pred):
        z = keras.ops.cast(y_pred, "float32")
        z = z / (keras.ops.norm(z, axis=1, keepdims=True) + 1e-12)
        count = keras.ops.shape(z)[0]
        half = count // 2
        logits = keras.ops.matmul(z, keras.ops.transpose(z)) / self.temperature
        logits = logits - 1e9 * keras.ops.eye(count, dtype="float32")  # not itself
        pairs = keras.ops.concatenate([keras.ops.arange(half, count), keras.ops.arange(0, half)])
        return keras.losses.sparse_categorical_crossentropy(pairs, logits, from_logits=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="finetune_tf")
class VarianceFloor(keras.layers.Layer):
    """Passes features through; in training, penalises features that vary too little.

    VICReg's variance term: `weight` times the mean over features of
    `max(0, target - std)`, each feature's standard deviation taken over the batch,
    added to the model's loss (`add_loss`). Contrastive losses compare directions
    only, so without it the backbone's features may shrink or some stop varying;
    a head trained on them later then learns slowly (docs/benchmarks.md).

    Args:
        weight: float >= 0. The penalty's weight (0: none). Defaults to 1.0.
        target: float > 0. The standard deviation each feature should reach.
            Defaults to 1.0.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.model.head.projection import VarianceFloor
        >>> layer = VarianceFloor()
        >>> x = np.zeros((4, 3), "float32")
        >>> _ = layer(x, training=True)
        >>> [round(float(loss), 1) for loss in layer.losses]  # constant features: std 0
        [1.0]
    """

    def __init__(self, weight: float = 1.0, target: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = check_number(
            weight, "weight", low=0, where="VarianceFloor", type_error=ValueError
        )
        self.target = check_number(
            target,
            "target",
            low=0,
            low_inclusive=False,
            where="VarianceFloor",
            type_error=ValueError,
        )

    def call(self, inputs, training=None):
        if training and self.weight:
            x = keras.ops.cast(inputs, "float32")
            std = keras.ops.sqrt(keras.ops.var(x, axis=0) + 1e-4)
            self.add_loss(self.weight * keras.ops.mean(keras.ops.relu(self.target - std)))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "weight": self.weight, "target": self.target}


class ProjectionHead(Head):
    """Contrastive pre-training's projection MLP on the pooled features, trained with `NTXent`.

    Features are averaged over positions (as the default head pools them), kept from
    shrinking by `VarianceFloor` (`variance`), then `Dense(hidden_units)`,
    batch normalization and ReLU, and a `Dense(units)` with batch normalization, the
    projections (SimCLR v2's head; `batch_norm=False`: SimCLR's, without them).

    Args:
        units: int. The width of the projections. Defaults to 128.
        hidden_units: int. The width of the hidden layer. Defaults to 128.
        temperature: float > 0. `NTXent`'s temperature. Defaults to 0.2.
        batch_norm: bool. Batch normalization after both Dense layers. Defaults to True.
        variance: float >= 0. The weight of `VarianceFloor`'s penalty on the pooled
            features (0: none). Defaults to 1.0.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.head.projection import ProjectionHead
        >>> head = ProjectionHead(32)
        >>> head(keras.Input((2, 2, 16))).shape, head.default_loss().name
        ((None, 32), 'nt_xent')
    """

    def __init__(
        self,
        units: int = 128,
        hidden_units: int = 128,
        temperature: float = 0.2,
        batch_norm: bool = True,
        variance: float = 1.0,
    ):
        super().__init__("regression", units, hidden_units=(hidden_units,), logits=True)
        self.temperature = NTXent(temperature).temperature
        self.batch_norm = bool(batch_norm)
        self.variance = VarianceFloor(variance).weight

    def __call__(self, features):
        x = self._pool(features)
        x = VarianceFloor(self.variance, name="variance_floor")(x)
        norm = self.batch_norm
        x = keras.layers.Dense(self.hidden_units[0], use_bias=not norm, name="hidden_1")(x)
        if norm:
            x = keras.layers.BatchNormalization(name="hidden_1_norm")(x)
        x = keras.layers.ReLU(name="hidden_1_relu")(x)
        if not norm:
            return keras.layers.Dense(self.units, dtype="float32", name="predictions")(x)
        x = keras.layers.Dense(self.units, use_bias=False, name="projection")(x)
        return keras.layers.BatchNormalization(center=False, dtype="float32", name="predictions")(x)

    def default_loss(self) -> keras.losses.Loss:
        return NTXent(self.temperature)

    def default_metrics(self, prediction_rank: int = 2) -> list:
        return []  # the targets are not compared with the projections

    def check_targets(self, y, prediction_shape, argname="y", method="fit") -> None:
        """Any targets: `NTXent` ignores them."""

    def get_config(self) -> dict:
        raise NotImplementedError(
            "A pre-training model is not saved as a FineTuner: keep the pre-trained "
            "`Pretrainer.backbone` (e.g. backbone.model.save(path))."
        )

    def __repr__(self):
        return (
            f"ProjectionHead(units={self.units}, hidden_units={self.hidden_units[0]}, "
            f"temperature={self.temperature}, batch_norm={self.batch_norm}, "
            f"variance={self.variance})"
        )
