"""Two-class classification with one sigmoid unit (`Head.binary`)."""

from __future__ import annotations

import numpy as np

from finetune_tf.model.head.classifier import MulticlassTask
from finetune_tf.model.head.task import check_unit_interval, register_task

__all__ = ["BinaryTask"]


@register_task
class BinaryTask(MulticlassTask):
    """Classes 0 and 1 from one sigmoid unit; labels 0/1 (or the probability of
    class 1, a soft target, in [0, 1]) or rows over the two classes."""

    name = "binary"
    constructor = "binary"
    units_arg = None

    @property
    def activation(self) -> str | None:
        return None if self.logits else "sigmoid"

    @property
    def num_classes(self) -> int:
        return 2

    def check_class_ids(self, array: np.ndarray, argname: str, depth: int) -> None:
        """0/1, or a soft target in between (binary cross-entropy takes it as is)."""
        check_unit_interval(
            array,
            argname,
            depth,
            "binary",
            "A binary head takes 0/1 labels, or the probability of class 1 in between.",
        )
