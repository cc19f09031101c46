"""Progress lines: what finetune_tf is doing when Keras' progress bar is not running.

One line per stage of a schedule, and one before and after long preparation
work (building the feature cache, downloading a Hub handle), so a notebook
cell is never silent for minutes. They follow the `verbose` argument of the
call that does the work (0: none).
"""

from __future__ import annotations

__all__ = ["say"]


def say(message: str, verbose=1) -> None:
    """Prints `finetune_tf: message` unless `verbose` is 0.

    Examples:
        >>> from finetune_tf.runtime.progress import say
        >>> say("stage 'head': 30 epochs")
        finetune_tf: stage 'head': 30 epochs
        >>> say("not shown", verbose=0)
    """
    if verbose != 0:
        print(f"finetune_tf: {message}", flush=True)
