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

__all__ = ["NTXent", "ProjectionHead"]


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


class ProjectionHead(Head):
    """Contrastive pre-training's projection MLP on the pooled features, trained with `NTXent`.

    Features are averaged over positions (as the default head pools them), then
    `Dense(hidden_units, relu)` and a linear `Dense(units)`, the projections.

    Args:
        units: int. The width of the projections. Defaults to 64.
        hidden_units: int. The width of the hidden layer. Defaults to 128.
        temperature: float > 0. `NTXent`'s temperature. Defaults to 0.2.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.head.projection import ProjectionHead
        >>> head = ProjectionHead(32)
        >>> head(keras.Input((2, 2, 16))).shape, head.default_loss().name
        ((None, 32), 'nt_xent')
    """

    def __init__(self, units: int = 64, hidden_units: int = 128, temperature: float = 0.2):
        super().__init__("regression", units, hidden_units=(hidden_units,), logits=True)
        self.temperature = NTXent(temperature).temperature

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
            f"temperature={self.temperature})"
        )
