"""The default metric of classification heads."""

from __future__ import annotations

import keras
from keras import ops

from finetune_tf.model.head.labels import binary_targets, known_rank, sparse_targets

__all__ = ["LabelAccuracy", "label_accuracy"]


@keras.saving.register_keras_serializable(package="finetune_tf")
def label_accuracy(y_true, y_pred, from_logits=False):
    """Per-example accuracy for integer ids or one-hot or soft rows, softmax or sigmoid heads.

    The true class of a soft target is the class it gives the most: a row's
    argmax, or class 1 when a sigmoid head's target is above 0.5.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = known_rank(ops.convert_to_tensor(y_true), y_pred)
    if y_pred.shape[-1] == 1:
        threshold = 0.0 if from_logits else 0.5
        predicted = ops.cast(y_pred > threshold, "float32")
        # ops.equal, not `==`: TensorFlow's `==` on shapes (None, 1) and (4, 1)
        # gives a tensor of unknown rank in graph mode.
        truth = ops.cast(binary_targets(y_true, predicted) > 0.5, "float32")
        hits = ops.equal(predicted, truth)
        return ops.squeeze(ops.cast(hits, "float32"), -1)
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    hits = ops.equal(predicted, ops.cast(sparse_targets(y_true, y_pred), "int32"))
    return ops.cast(hits, "float32")


@keras.saving.register_keras_serializable(package="finetune_tf")
class LabelAccuracy(keras.metrics.MeanMetricWrapper):
    """Accuracy that takes integer class ids, one-hot rows or soft rows.

    A soft target (label smoothing, mixup, a teacher's probabilities) counts
    as the class it gives the most: its argmax, or for a one-unit sigmoid
    head class 1 when the target is above 0.5.

    Args:
        from_logits: bool. Whether predictions are logits (a sigmoid head
            then thresholds at 0 instead of 0.5). Defaults to `False`.
        name: str. Defaults to `"accuracy"`.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf import LabelAccuracy
        >>> metric = LabelAccuracy()
        >>> metric.update_state(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]))
        >>> float(metric.result())
        0.5
        >>> soft = np.array([[0.2, 0.8], [0.7, 0.3]])  # classes 1 and 0
        >>> metric.reset_state()
        >>> metric.update_state(soft, np.array([[0.9, 0.1], [0.6, 0.4]]))
        >>> float(metric.result())
        0.5
    """

    def __init__(self, from_logits: bool = False, name: str = "accuracy", dtype=None):
        super().__init__(fn=label_accuracy, name=name, dtype=dtype, from_logits=from_logits)
        self.from_logits = from_logits

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "from_logits": self.from_logits}
