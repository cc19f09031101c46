"""Real-valued outputs with mean squared error (`Head.regressor`)."""

from __future__ import annotations

import keras

from finetune_tf.model.head.task import Task, check_real_targets, register_task
from finetune_tf.outputs.report import Report

__all__ = ["RegressionTask"]


@register_task
class RegressionTask(Task):
    """`units` real numbers per example; targets of the predictions' shape."""

    name = "regression"
    constructor = "regressor"
    units_arg = "num_outputs"
    takes_logits = False  # no activation either way

    def default_loss(self):
        return keras.losses.MeanSquaredError()

    def default_metrics(self, prediction_rank: int = 2) -> list:
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def check_targets(self, array, prediction_shape, argname, method):
        check_real_targets(
            array, prediction_shape, argname, method, f"{self.units}-output", self.name
        )

    def report(self, predictions, y, names) -> Report:
        return Report.for_values(y, predictions)
