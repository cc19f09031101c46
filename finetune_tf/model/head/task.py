"""`Task`: what a head's task means, in one place.

A head's task decides everything that depends on what its predictions mean:
the activation of the predictions layer, the default loss and metrics, which
targets it takes (and the error when they are wrong), how its predictions
become classes for a report, and what a served model returns beside the
predictions. Each task is one small class in this folder, registered by name
with `register_task`; `Head(task=name, ...)` finds it there. A new task is a
new module with one class: nothing else changes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from finetune_tf._checks import check_choice
from finetune_tf.outputs.report import Report
from finetune_tf.training.data_checks import batch_of, check_finite, shapes_compatible

__all__ = [
    "ROW_SUM_TOLERANCE",
    "Task",
    "check_class_rows",
    "check_unit_interval",
    "get_task",
    "register_task",
    "target_text",
    "task_names",
]

# How far from 1 a target row's sum may be (float32 rounding, smoothed labels
# written with a few decimals).
ROW_SUM_TOLERANCE = 1e-3

_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: makes `cls` the task `Head(task=cls.name)` uses."""
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> tuple[str, ...]:
    """The names of the registered tasks, in registration order."""
    return tuple(_REGISTRY)


def get_task(name) -> type[Task]:
    """The task class registered as `name`, or a ValueError listing the names."""
    return _REGISTRY[check_choice(name, "task", task_names())]


class Task:
    """Base class: what the predictions of a head with `units` outputs mean.

    Subclasses set `name` (the value of `Head.task`), `constructor` (the
    `Head` class method that builds one, for `repr`) and `units_arg` (its
    argument naming the units, or None), and override what differs.

    Args:
        units: int. Width of the predictions layer.
        logits: bool. Whether predictions are logits (no final activation).
    """

    name: ClassVar[str]
    constructor: ClassVar[str]
    units_arg: ClassVar[str | None] = None
    label_kind: ClassVar[str | None] = None  # what `class_names` names: "classes", "labels"
    takes_logits: ClassVar[bool] = True  # whether `logits=True` changes the predictions

    def __init__(self, units: int, logits: bool):
        self.units = units
        self.logits = logits

    # === Layers ===

    @property
    def activation(self) -> str | None:
        """The activation of the predictions layer."""
        return None

    @property
    def threshold(self) -> float:
        """Where a sigmoid output turns from no to yes: 0 for logits, else 0.5."""
        return 0.0 if self.logits else 0.5

    # === Labels ===

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a classification task, else None."""
        return None

    @property
    def label_count(self) -> int | None:
        """How many names `class_names` takes (None: the task has no classes)."""
        return None

    # === Training ===

    def default_loss(self):
        raise NotImplementedError

    def default_metrics(self, prediction_rank: int = 2) -> list:
        raise NotImplementedError

    def check_targets(self, array: np.ndarray, prediction_shape: tuple, argname: str, method: str):
        """A ValueError naming `argname` when `array` is not a target of this task."""
        raise NotImplementedError

    # === Outputs ===

    def report(self, predictions: np.ndarray, y: np.ndarray, names: list | None) -> Report:
        raise NotImplementedError

    def serving_outputs(self, scores, labels) -> dict:
        """Named outputs a served model returns beside `predictions` (tf tensors)."""
        return {}

    def repr_args(self) -> list[str]:
        """The arguments of `repr(head)` that this task owns."""
        return [f"{self.units_arg}={self.units}"] if self.units_arg else []


def check_real_targets(
    array: np.ndarray, prediction_shape: tuple, argname: str, method: str, what: str, task: str
) -> None:
    """Targets of the predictions' shape (one value per output), as numbers."""
    out = prediction_shape
    sample = tuple(array.shape[1:])
    accepted = [out] + ([out[:-1]] if out[-1] == 1 else [])
    if not any(shapes_compatible(sample, shape) for shape in accepted):
        raise ValueError(
            f"`{argname}` has shape {array.shape}; this {what} {task} head predicts "
            f"{out} per example, so it takes targets of shape {batch_of(out)}."
            + (" Pass one column per label (0/1 each)." if task == "multilabel" else "")
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{argname}` holds {array.dtype} values; a {task} head needs numbers. "
            "Convert them first, e.g. y.astype('float32')."
        )
    check_finite(array, argname, method)


def check_class_rows(array: np.ndarray, argname: str, classes: int) -> None:
    """Rows over the last axis that are probability distributions over `classes`:
    finite entries >= 0 that sum to 1 (within `ROW_SUM_TOLERANCE`). One-hot rows
    are; so are soft ones (label smoothing, mixup, a teacher's probabilities)."""
    sums = array.sum(axis=-1, dtype="float64")  # no float64 copy of a large array
    nonfinite = ~np.isfinite(array).all(axis=-1)
    negative = (array < 0).any(axis=-1)
    bad = nonfinite | negative | ~(np.abs(sums - 1) <= ROW_SUM_TOLERANCE)
    if not bad.any():
        return
    row = tuple(int(i) for i in np.argwhere(bad)[0])
    if nonfinite[row]:
        problem = "holds NaN or inf"
        fix = "Drop or repair those examples, e.g. keep = np.isfinite(y).all(axis=-1)."
    elif negative[row]:
        problem = "has a negative entry"
        fix = (
            "Check how the targets were made (mixup weights must be in [0, 1]), or clip and "
            "normalise: y = np.clip(y, 0, None); y = y / y.sum(axis=-1, keepdims=True)."
        )
    else:
        problem = f"sums to {sums[row]:.4g}"
        fix = "Normalise them, e.g. y = y / y.sum(axis=-1, keepdims=True)."
    raise ValueError(
        f"`{argname}` has target rows that are not probability distributions over the "
        f"{classes} classes ({int(bad.sum())} of {bad.size}; the first: "
        f"{target_text(argname, array, row)} {problem}). A {classes}-class head takes one-hot "
        f"or soft rows: entries >= 0 that sum to 1 (within {ROW_SUM_TOLERANCE:g}). {fix}"
    )


def check_unit_interval(
    array: np.ndarray, argname: str, depth: int, what: str, meaning: str
) -> None:
    """Targets in [0, 1] (0/1, or soft), NaN refused; `depth` leading axes index an
    example's row (the batch axis and any per-position axes)."""
    bad = ~((array >= 0) & (array <= 1))
    if not bad.any():
        return
    row = tuple(int(i) for i in np.argwhere(bad)[0][:depth])
    raise ValueError(
        f"`{argname}` has {what} targets outside [0, 1] ({int(bad.sum())} of {bad.size} "
        f"values; the first in {target_text(argname, array, row)}). {meaning} Clip them, e.g. "
        "y = np.clip(y, 0, 1), or check how they were made."
    )


def target_text(argname: str, array: np.ndarray, index: tuple) -> str:
    """The targets of `array` at `index` for a message, e.g. "`y[3]` = [0.5, 0.5, 0. ]"."""
    values = np.array2string(
        np.asarray(array[index]), precision=4, separator=", ", threshold=12, edgeitems=3
    )
    return f"`{argname}[{', '.join(map(str, index))}]` = {values}"
