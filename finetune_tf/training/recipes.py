"""The budgets of the default recipe: how many epochs `fine_tune`'s stages run.

`fine_tune(head_epochs="auto", epochs="auto")` sizes each stage in optimizer
steps, not epochs: ten epochs of 50 examples are 20 steps, far too few for a
head to learn or for a backbone to adapt at a gentle rate (docs/recipes.md has
the numbers behind these constants). The estimators size their head-only stage
the same way.
"""

from __future__ import annotations

from finetune_tf._checks import check_int
from finetune_tf.training.fit_args import FitArgs

__all__ = [
    "FINE_TUNE_MAX_EPOCHS",
    "FINE_TUNE_MIN_EPOCHS",
    "FINE_TUNE_STEPS",
    "HEAD_MAX_EPOCHS",
    "HEAD_MIN_EPOCHS",
    "HEAD_STEPS",
    "fine_tune_budget",
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


def head_stage_epochs(head_epochs, x, fit_kwargs: dict) -> int:
    """Resolve `head_epochs="auto"` for this data (see `FineTuner.fine_tune`)."""
    steps = FitArgs(fit_kwargs).steps_per_epoch(x)
    return _auto_epochs(
        head_epochs, "head_epochs", steps, HEAD_STEPS, HEAD_MIN_EPOCHS, HEAD_MAX_EPOCHS
    )


def fine_tune_budget(head_epochs, epochs, early_stopping, x, fit_kwargs: dict):
    """Resolve `fine_tune(head_epochs="auto", epochs="auto", early_stopping="auto")`."""
    steps = FitArgs(fit_kwargs).steps_per_epoch(x)
    head_epochs = _auto_epochs(
        head_epochs, "head_epochs", steps, HEAD_STEPS, HEAD_MIN_EPOCHS, HEAD_MAX_EPOCHS
    )
    epochs = _auto_epochs(
        epochs, "epochs", steps, FINE_TUNE_STEPS, FINE_TUNE_MIN_EPOCHS, FINE_TUNE_MAX_EPOCHS
    )
    if early_stopping == "auto":
        validated = FitArgs(fit_kwargs).has_validation
        early_stopping = max(3, epochs // 10) if validated and isinstance(epochs, int) else None
    elif isinstance(early_stopping, str):
        raise ValueError(
            '`fine_tune(early_stopping)` is a patience in epochs, None or "auto". '
            f"Received: early_stopping={early_stopping!r}."
        )
    return head_epochs, epochs, early_stopping
