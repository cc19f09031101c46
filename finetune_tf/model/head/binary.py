"""Two-class classification with one sigmoid unit (`Head.binary`)."""

from __future__ import annotations

from finetune_tf.model.head.classifier import MulticlassTask
from finetune_tf.model.head.task import register_task

__all__ = ["BinaryTask"]


@register_task
class BinaryTask(MulticlassTask):
    """Classes 0 and 1 from one sigmoid unit; labels 0/1 or one-hot rows of two."""

    name = "binary"
    constructor = "binary"
    units_arg = None

    @property
    def activation(self) -> str | None:
        return None if self.logits else "sigmoid"

    @property
    def num_classes(self) -> int:
        return 2
