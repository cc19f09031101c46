"""The whole plan of a `fit` call, checked before its first step.

A schedule trains stage after stage, and each stage reads the data again. A
bad argument of a later stage (an unknown optimizer, a freeze policy naming
no layer, a cosine shape with no float rate to shape), data that a later
stage cannot read again (a Python generator) or a split that leaves nothing
to train on would otherwise fail after the earlier stages trained for
minutes. `check_plan` walks the plan as the loop will run it, compiling and
training nothing, and raises at the call. Its parts each check one thing:
the data's `validation_split` (`check_split`), a generator read by several
stages (`check_rereadable`), and each stage's freeze policy, optimizer and
learning rate in the order the stages compile (`check_stages`).

The arguments of `fit` themselves are checked where they are parsed
(`FitArgs.checked`), the data's first batch where it enters (`DataGate`),
and `checkpoint_dir`'s writability where it is resolved
(`run_state.check_checkpoint_dir`).
"""

from __future__ import annotations

import collections.abc

import keras
import numpy as np
import tensorflow as tf

from finetune_tf.model.assembly import first_array
from finetune_tf.training.compile import next_optimizer
from finetune_tf.training.fit_args import FitArgs, split_index
from finetune_tf.training.stages import Stage, compile_rate, stage_name

__all__ = ["check_plan", "check_rereadable", "check_split", "check_stages", "is_generator"]


def check_plan(assembly, compiler, x, args: FitArgs, schedule) -> list[Stage] | None:
    """`schedule` as a list of `Stage`s (None for a one-stage fit), after checking that
    every stage of it can run on `x` with `args`; a ValueError or TypeError naming
    the stage and the argument otherwise.

    Args:
        assembly: the `Assembly` whose backbone the freeze policies apply to.
        compiler: the `Compiler`; the stages compile after its current settings.
        x: the training data, as `fit` received it.
        args: the `FitArgs` of the call.
        schedule: None, a `Stage` or a list of them.
    """
    check_split(x, args)
    if schedule is None:
        return None
    stages = [schedule] if isinstance(schedule, Stage) else schedule
    if isinstance(stages, collections.abc.Iterable) and not isinstance(stages, (str, bytes)):
        stages = list(stages)  # a tuple or a generator of stages too
    if (
        not isinstance(stages, list)
        or not stages
        or not all(isinstance(stage, Stage) for stage in stages)
    ):
        raise ValueError(
            "`schedule` must be a non-empty list of finetune_tf.Stage. "
            f"Received: schedule={schedule!r}."
        )
    for argument in ("epochs", "initial_epoch"):
        if argument in args:
            raise ValueError(
                f"`fit(schedule=...)` got `{argument}`={args.get(argument)!r}, but a "
                "schedule sets the epochs of each stage. Remove it, or set Stage(epochs=...)."
            )
    check_rereadable(x, args, len(stages))
    check_stages(stages, assembly, compiler, args.steps_per_epoch(x))
    return stages


def check_stages(stages: list[Stage], assembly, compiler, steps: int | None) -> None:
    """Each stage's freeze policy against the backbone, and its optimizer and learning
    rate as it will compile them after the stages before it."""
    previous = compiler.spec.optimizer if compiler.compiled else None
    planned = {}  # the LoRA adapters the stages add, as the loop will add them
    for index, stage in enumerate(stages):
        name = stage_name(stage, index)
        try:
            if stage.freeze is not None:
                stage.freeze.check(assembly.backbone, planned)
            rate = compile_rate(stage, name, previous, steps)
            previous = next_optimizer(previous, stage.optimizer, rate)
        except (TypeError, ValueError) as error:
            message = str(error)
            if name not in message:
                message = f"Stage {name!r} (stage {index + 1} of {len(stages)}): {message}"
            raise type(error)(
                f"{message} Nothing was trained: the whole schedule is checked first."
            ) from None


def is_generator(x) -> bool:
    """Whether `x` is a Python iterator (a generator): data that can be read only once.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.plan import is_generator
        >>> is_generator(batch for batch in [1, 2]), is_generator(np.zeros(3))
        (True, False)
    """
    return isinstance(x, collections.abc.Iterator) and not isinstance(
        x, (tf.data.Dataset, keras.utils.PyDataset, np.ndarray, tf.Tensor)
    )


def check_rereadable(x, args: FitArgs, stage_count: int) -> None:
    """A ValueError when several stages would read a Python generator that ends."""
    if stage_count < 2 or not is_generator(x) or args.get("steps_per_epoch"):
        return
    raise ValueError(
        f"`x` is a Python generator, which can be read only once, but this schedule has "
        f"{stage_count} stages that each read the data: the second would get nothing. "
        "Pass something that can be read again: a tf.data.Dataset (e.g. "
        "tf.data.Dataset.from_generator(make_batches, output_signature=...)), a "
        "keras.utils.PyDataset, or arrays. An endless generator works too, with "
        "steps_per_epoch=... saying how many batches make an epoch."
    )


def check_split(x, args: FitArgs) -> None:
    """A ValueError when `validation_split` leaves no example to train on, or none to
    validate on.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.fit_args import FitArgs
        >>> from finetune_tf.training.plan import check_split
        >>> check_split(np.zeros((10, 2)), FitArgs({"validation_split": 0.2}))
        >>> check_split(np.zeros((3, 2)), FitArgs({"validation_split": 0.9}))
        Traceback (most recent call last):
        ...
        ValueError: `validation_split`=0.9 of 3 examples leaves none to train on ...
    """
    split = args.validation_split
    array = first_array(x)
    if array is None and isinstance(x, (list, tuple)) and x:  # several inputs
        array = first_array(x[0])
    if array is None and isinstance(x, dict) and x:
        array = first_array(next(iter(x.values())))
    if not split or array is None or len(np.shape(array)) == 0:
        return
    count = int(np.shape(array)[0])
    index = split_index(count, split)
    if 0 < index < count:
        return
    part = "to train on" if index < 1 else "to validate on"
    raise ValueError(
        f"`validation_split`={split} of {count} examples leaves none {part} (Keras keeps "
        f"the last {count - index} apart for validation and trains on the first {index}). "
        "Use a split that leaves examples on both sides, e.g. validation_split=0.2, or pass "
        "validation_data=(x_val, y_val)."
    )
