"""Moved to `finetune_tf.model.head` in 0.3: `from finetune_tf.head import Head` still works.

Examples:
    >>> from finetune_tf.head import Head
    >>> Head.binary().num_classes
    2
"""

from finetune_tf.model.head import Head, Task, register_task

__all__ = ["Head", "Task", "register_task"]
