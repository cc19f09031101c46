"""Independent yes/no labels, one sigmoid each (`Head.multilabel`)."""

from __future__ import annotations

import keras

from finetune_tf.model.head.task import (
    Task,
    check_real_targets,
    check_unit_interval,
    register_task,
)
from finetune_tf.outputs.report import Report

__all__ = ["MultilabelTask"]


@register_task
class MultilabelTask(Task):
    """`units` labels that each apply or not; multi-hot (or soft, in [0, 1]) targets."""

    name = "multilabel"
    constructor = "multilabel"
    units_arg = "num_labels"
    label_kind = "labels"

    @property
    def activation(self) -> str | None:
        return None if self.logits else "sigmoid"

    @property
    def label_count(self) -> int:
        return self.units

    def default_loss(self):
        return keras.losses.BinaryCrossentropy(from_logits=self.logits)

    def default_metrics(self, prediction_rank: int = 2) -> list:
        # Per-position predictions pool every position and label into one AUC.
        return [
            keras.metrics.BinaryAccuracy(threshold=self.threshold, name="binary_accuracy"),
            keras.metrics.AUC(
                multi_label=prediction_rank == 2, from_logits=self.logits, name="auc"
            ),
        ]

    def check_targets(self, array, prediction_shape, argname, method):
        check_real_targets(
            array, prediction_shape, argname, method, f"{self.units}-label", self.name
        )
        check_unit_interval(
            array,
            argname,
            len(prediction_shape),
            "multi-label",
            "Each column is 1 when the label applies and 0 when not, or a probability in between.",
        )

    def report(self, predictions, y, names) -> Report:
        units = predictions.shape[-1]
        labels = (y.reshape(-1, units) >= 0.5).astype(int)  # soft targets count at 0.5
        active = (predictions.reshape(-1, units) > self.threshold).astype(int)
        return Report.for_labels(labels, active, class_names=names)

    def serving_outputs(self, scores, labels) -> dict:
        return {"active": scores > self.threshold}
