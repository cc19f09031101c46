"""Single-label classification: softmax over the classes (`Head.classifier`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from finetune_tf.model.head.losses import LabelCrossentropy
from finetune_tf.model.head.metrics import LabelAccuracy
from finetune_tf.model.head.task import Task, check_class_rows, register_task, target_text
from finetune_tf.outputs.report import Report
from finetune_tf.training.data_checks import batch_of, check_finite, shapes_compatible

__all__ = ["MulticlassTask"]


@register_task
class MulticlassTask(Task):
    """One class per example out of `units`; integer class ids, or one-hot or soft rows."""

    name = "multiclass"
    constructor = "classifier"
    units_arg = "num_classes"
    label_kind = "classes"

    @property
    def activation(self) -> str | None:
        return None if self.logits else "softmax"

    @property
    def num_classes(self) -> int:
        return self.units

    @property
    def label_count(self) -> int:
        return self.num_classes

    def default_loss(self):
        return LabelCrossentropy(from_logits=self.logits)

    def default_metrics(self, prediction_rank: int = 2) -> list:
        return [LabelAccuracy(from_logits=self.logits)]

    def check_targets(self, array, prediction_shape, argname, method):
        """Integer class ids (`(n, ...)` or `(n, ..., 1)`), or one-hot or soft rows
        (`(n, ..., classes)`) that are probability distributions."""
        classes = self.num_classes
        lead = prediction_shape[:-1]
        sample = tuple(array.shape[1:])
        rows = shapes_compatible(sample, (*lead, classes))
        if not (rows or shapes_compatible(sample, lead) or shapes_compatible(sample, (*lead, 1))):
            raise ValueError(
                f"`{argname}` has shape {array.shape}; a {classes}-class head takes integer labels "
                f"of shape {batch_of(lead)} or one-hot labels of shape "
                f"{batch_of((*lead, classes))}."
            )
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"`{argname}` holds {array.dtype} labels; the model needs integer class ids "
                f"0..{classes - 1} or one-hot rows. Encode them first, e.g. with "
                "sklearn.preprocessing.LabelEncoder."
            )
        if rows:
            check_class_rows(array, argname, classes)
            return
        check_finite(array, argname, method)
        self.check_class_ids(array, argname, depth=1 + len(lead))

    def check_class_ids(self, array: np.ndarray, argname: str, depth: int) -> None:
        """Whole numbers 0..classes-1 (finite); `depth` axes index an example's row."""
        classes = self.num_classes
        bad = (array < 0) | (array >= classes) | (array != np.round(array))
        if bad.any():
            row = tuple(int(i) for i in np.argwhere(bad)[0][:depth])
            raise ValueError(
                f"`{argname}` has labels outside the integer range 0..{classes - 1} of this "
                f"{classes}-class head (e.g. {target_text(argname, array, row)}). Check the "
                "labels, or build the head with the right num_classes."
            )

    def class_ids(self, predictions: np.ndarray) -> np.ndarray:
        """The predicted class of each prediction (the batch and position axes, flat)."""
        if predictions.shape[-1] == 1:
            return (predictions.reshape(-1) > self.threshold).astype(int)
        return np.argmax(predictions, axis=-1).reshape(-1)

    def true_class_ids(self, y: np.ndarray, lead: tuple) -> np.ndarray:
        """The class of each target (flat): a row's argmax, so a soft row counts as
        the class it gives the most, else the class id."""
        if y.ndim == len(lead) + 2 and y.shape[-1] == self.num_classes:
            return np.argmax(y, axis=-1).reshape(-1)
        ids = y.reshape(len(y), *lead, -1)[..., 0].reshape(-1)
        # Whole class ids stay; a binary head's soft target p is class 1 when p > 0.5
        # (rint rounds 0.5 to even: 0, as argmax of [0.5, 0.5] is 0).
        return np.rint(ids).astype(int)

    def report(self, predictions, y, names) -> Report:
        truth = self.true_class_ids(y, predictions.shape[1:-1])
        return Report.for_classes(
            truth,
            self.class_ids(predictions),
            class_names=names,
            labels=list(range(self.num_classes)),
        )

    def serving_outputs(self, scores, labels) -> dict:
        if scores.shape[-1] == 1:
            class_id = tf.cast(scores[..., 0] > self.threshold, tf.int32)
        else:
            class_id = tf.argmax(scores, axis=-1, output_type=tf.int32)
        return {"class_id": class_id, "label": tf.gather(labels, class_id)}
