"""Heads: the new task layers on top of a backbone, and what their tasks mean.

`Head` builds the layers; each task (`multiclass`, `binary`, `multilabel`,
`regression`) is one small `Task` class in a module of this folder. A new
task is a new module with a `Task` subclass decorated `@register_task`,
imported below.
"""

from finetune_tf.model.head import binary, classifier, multilabel, regression  # noqa: F401 (registers)
from finetune_tf.model.head.head import Head
from finetune_tf.model.head.task import Task, register_task

__all__ = ["Head", "Task", "register_task"]
