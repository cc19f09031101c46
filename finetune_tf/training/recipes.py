"""The default recipe: `fine_tune`'s two stages and how many epochs each runs.

`fine_tune(head_epochs="auto", epochs="auto")` sizes each stage in optimizer
steps, not epochs: ten epochs of 50 examples are 20 steps, far too few for a
head to learn or for a backbone to adapt at a gentle rate (docs/recipes.md has
the numbers behind these constants). The estimators size their head-only stage
the same way.
"""

from __future__ import annotations

from finetune_tf._checks import check_int
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.training.compile import check_learning_rate
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.stages import Stage

__all__ = [
    "FINE_TUNE_MAX_EPOCHS",
    "FINE_TUNE_MIN_EPOCHS",
    "FINE_TUNE_STEPS",
    "HEAD_MAX_EPOCHS",
    "HEAD_MIN_EPOCHS",
    "HEAD_STEPS",
    "fine_tune_budget",
    "fine_tune_schedule",
    "head_stage_epochs",
]

HEAD_STEPS = 500  # the least number of optimizer steps `head_epochs="auto"` gives stage 1
HEAD_MIN_EPOCHS = 30
HEAD_MAX_EPOCHS = 500
FINE_TUNE_STEPS = 300  # the least number of optimizer steps `epochs="auto"` gives stage 2
FINE_TUNE_MIN_EPOCHS = 10
FINE_TUNE_MAX_EPOCHS = 200


def _auto_epochs(value, argname: str, steps: int | None, least_steps, least, most) -> int:
    """`value`, or for "auto" the epochs that make `least_steps` optimizer steps,
    between `least` and `most` epochs (`least` when the data's length is unknown)."""
    if value == "auto":
        if not steps:
            return least
        return min(most, max(least, -(-least_steps // steps)))
    return check_int(
        value,
        argname,
        also='"auto"',
        meaning="a number of epochs",
        hint='"auto" sizes the stage from the data.',
        type_error=ValueError,
    )


def head_stage_epochs(head_epochs, x, args: FitArgs) -> int:
    """Resolve `head_epochs="auto"` for this data (see `FineTuner.fine_tune`)."""
    steps = args.steps_per_epoch(x)
    return _auto_epochs(
        head_epochs, "head_epochs", steps, HEAD_STEPS, HEAD_MIN_EPOCHS, HEAD_MAX_EPOCHS
    )


def fine_tune_budget(head_epochs, epochs, early_stopping, x, args: FitArgs):
    """Resolve `fine_tune(head_epochs="auto", epochs="auto", early_stopping="auto")`."""
    steps = args.steps_per_epoch(x)
    head_epochs = _auto_epochs(
        head_epochs, "head_epochs", steps, HEAD_STEPS, HEAD_MIN_EPOCHS, HEAD_MAX_EPOCHS
    )
    epochs = _auto_epochs(
        epochs, "epochs", steps, FINE_TUNE_STEPS, FINE_TUNE_MIN_EPOCHS, FINE_TUNE_MAX_EPOCHS
    )
    if early_stopping == "auto":
        validated = args.has_validation
        early_stopping = max(3, epochs // 10) if validated and isinstance(epochs, int) else None
    elif isinstance(early_stopping, str):
        raise ValueError(
            '`fine_tune(early_stopping)` is a patience in epochs, None or "auto". '
            f"Received: early_stopping={early_stopping!r}."
        )
    return head_epochs, epochs, early_stopping


def fine_tune_schedule(
    policy: FreezePolicy,
    chosen: bool,
    x,
    args: FitArgs,
    *,
    head_epochs,
    epochs,
    learning_rate: float,
    fine_tune_learning_rate: float,
    layerwise_lr_decay: float | None,
    early_stopping,
) -> list[Stage]:
    """`fine_tune`'s stages: the head on the frozen backbone, then `policy` (the whole
    backbone unless the user `chose` one) at a gentler rate (see `FineTuner.fine_tune`).

    Examples:
        >>> import numpy as np
        >>> from finetune_tf import FreezePolicy
        >>> from finetune_tf.training.fit_args import FitArgs
        >>> from finetune_tf.training.recipes import fine_tune_schedule
        >>> stages = fine_tune_schedule(
        ...     FreezePolicy.all(), False, np.zeros((50, 4)), FitArgs({}), head_epochs="auto",
        ...     epochs="auto", learning_rate=3e-3, fine_tune_learning_rate=3e-4,
        ...     layerwise_lr_decay=0.8, early_stopping="auto")
        >>> [(s.name, s.epochs, s.freeze) for s in stages]
        [('head', 250, FreezePolicy.all()), ('fine_tune', 150, FreezePolicy.none())]
    """
    for name, rate in (
        ("learning_rate", learning_rate),
        ("fine_tune_learning_rate", fine_tune_learning_rate),
    ):
        check_learning_rate(rate, where="FineTuner.fine_tune", name=name)
    head_epochs, epochs, early_stopping = fine_tune_budget(
        head_epochs, epochs, early_stopping, x, args
    )
    batchnorm = policy.batchnorm
    return [
        Stage(head_epochs, FreezePolicy.all(batchnorm=batchnorm), learning_rate, name="head"),
        Stage(
            epochs,
            policy if chosen else FreezePolicy.none(batchnorm=batchnorm),
            fine_tune_learning_rate,
            layerwise_lr_decay=layerwise_lr_decay,
            early_stopping=early_stopping,
            name="fine_tune",
        ),
    ]
