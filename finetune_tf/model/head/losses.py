"""The default loss of classification heads."""

from __future__ import annotations

import keras
from keras import ops

from finetune_tf.model.head.labels import binary_targets, is_class_rows, known_rank, sparse_targets

__all__ = ["LabelCrossentropy"]


@keras.saving.register_keras_serializable(package="finetune_tf")
class LabelCrossentropy(keras.losses.Loss):
    """Cross-entropy that takes integer class ids, one-hot rows or soft rows.

    For a softmax head (several outputs) it is categorical cross-entropy:
    integer class ids go through `keras.losses.sparse_categorical_crossentropy`,
    rows of one value per class (one-hot, or soft: label smoothing, mixup, a
    teacher's probabilities) through `keras.losses.categorical_crossentropy`,
    so a soft row trains on its probabilities, not on its argmax. A one-hot
    row gives the loss of its class id (equal within float32 rounding).
    For a one-unit sigmoid head it is binary cross-entropy, with targets
    given as 0/1 (or the probability of class 1) or as rows over the two
    classes.

    Args:
        from_logits: bool. Whether predictions are logits. Defaults to `False`.

    Examples:
        >>> import keras
        >>> import numpy as np
        >>> from finetune_tf import LabelCrossentropy
        >>> loss = LabelCrossentropy()
        >>> probs = np.array([[0.9, 0.1], [0.2, 0.8]], "float32")
        >>> sparse = float(loss(np.array([0, 1]), probs))
        >>> one_hot = float(loss(np.eye(2, dtype="float32"), probs))
        >>> round(sparse, 4) == round(one_hot, 4)
        True
        >>> soft = np.array([[0.7, 0.3], [0.1, 0.9]], "float32")
        >>> expected = keras.losses.CategoricalCrossentropy()(soft, probs)
        >>> round(float(loss(soft, probs)), 4) == round(float(expected), 4)
        True
        >>> round(float(loss(soft, probs)), 4) == round(one_hot, 4)
        False
    """

    def __init__(
        self,
        from_logits: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "label_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = known_rank(ops.convert_to_tensor(y_true), y_pred)
        if y_pred.shape[-1] == 1:
            losses = keras.losses.binary_crossentropy(
                binary_targets(y_true, y_pred), y_pred, from_logits=self.from_logits
            )
            return losses
        if is_class_rows(y_true, y_pred):
            return keras.losses.categorical_crossentropy(
                ops.cast(y_true, y_pred.dtype), y_pred, from_logits=self.from_logits
            )
        return keras.losses.sparse_categorical_crossentropy(
            sparse_targets(y_true, y_pred), y_pred, from_logits=self.from_logits
        )

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}
