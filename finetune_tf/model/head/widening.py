"""Widening a trained head with new classes, keeping what it learned (`FineTuner.add_classes`).

A head grows by rebuilding the model with a wider `"predictions"` layer: every
other layer is the same object (the backbone) or takes its old weights (hidden
layers, an input adapter), and the predictions layer keeps its old kernel
columns and biases exactly, so the old classes' logits are unchanged.

What each kind of head becomes:

- a softmax classifier of k classes: k + n classes. The new columns start
  small (`NEW_KERNEL_SCALE` times the spread of the old ones) with the mean
  old bias, so before training the old classes keep their ranking and a new
  class scores about as an average old one on average features.
- a binary head (one sigmoid unit, logit z): a softmax classifier of 2 + n
  classes with logits `[0, z, new...]`, which gives the same probabilities
  for classes 0 and 1 (`softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]`).
- a multi-label head of k labels: k + n sigmoid units, each independent; a
  new label starts at logit about `NEW_LABEL_BIAS` (rarely on).
- a regression head has no classes to add: refused.
"""

from __future__ import annotations

import keras
import numpy as np

from finetune_tf.model.head.head import Head

__all__ = [
    "NEW_KERNEL_SCALE",
    "NEW_LABEL_BIAS",
    "check_class_names",
    "classes_to_add",
    "grown_head",
    "widen_predictions",
    "widened_assembly",
]

NEW_KERNEL_SCALE = 0.1  # new kernel columns: this times the old columns' standard deviation
NEW_LABEL_BIAS = -2.0  # a new multi-label unit starts at sigmoid(-2) ~ 0.12


def _names(names, argname: str, where: str) -> list[str]:
    """`names` as a list of distinct, non-empty str, or a ValueError naming `argname`."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise ValueError(
            f"`{where}({argname})` must be a list of str, one name per class. Received: "
            f"{argname}={names!r} of type {type(names).__name__}."
        )
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(
            f"`{where}({argname})` must hold non-empty str names. Received: {bad[0]!r} in "
            f"{argname}={list(names)!r}. Convert them first, e.g. [str(n) for n in names]."
        )
    seen = sorted({name for name in names if list(names).count(name) > 1})
    if seen:
        raise ValueError(
            f"`{where}({argname})` names {seen[0]!r} more than once: each class needs its own "
            f"name. Received: {argname}={list(names)!r}."
        )
    return list(names)


def check_class_names(head: Head, names) -> list[str]:
    """`names` checked as the class (or label) names of `head`: distinct str, one each.

    Examples:
        >>> from finetune_tf import Head
        >>> from finetune_tf.model.head.widening import check_class_names
        >>> check_class_names(Head.binary(), ["no", "yes"])
        ['no', 'yes']
    """
    return head.label_names(_names(names, "class_names", "FineTuner"))


def classes_to_add(new, head: Head, names: list[str] | None) -> tuple[int, list[str] | None]:
    """How many classes `add_classes(new)` adds to `head`, and all the class names after it
    (None when the tuner has none and `new` is a count). `names` are the tuner's names, or
    None for "0", "1", ...

    Examples:
        >>> from finetune_tf import Head
        >>> from finetune_tf.model.head.widening import classes_to_add
        >>> classes_to_add(2, Head.classifier(3), None)
        (2, None)
        >>> classes_to_add(["five"], Head.binary(), None)
        (1, ['0', '1', 'five'])
    """
    _check_growable(head)
    if isinstance(new, (int, np.integer)) and not isinstance(new, bool):
        if new < 1:
            raise ValueError(
                "`FineTuner.add_classes(new)` must add at least one class. Received: "
                f"new={new!r}. Pass a count >= 1 or a list of the new classes' names."
            )
        if names is not None:
            raise ValueError(
                f"`FineTuner.add_classes(new)` got a count (new={new}), but this tuner names "
                f"its classes ({names[:3]}...). Pass the new classes' names instead, e.g. "
                f"add_classes([{', '.join(repr(f'class_{i}') for i in range(min(new, 2)))}"
                f"{', ...' if new > 2 else ''}])."
            )
        return int(new), None
    added = _names(new, "new", "FineTuner.add_classes")
    if not added:
        raise ValueError(
            "`FineTuner.add_classes(new)` got an empty list. Pass the new classes' names, "
            "or their count."
        )
    names = head.label_names(names)
    clash = [name for name in added if name in names]
    if clash:
        raise ValueError(
            f"`FineTuner.add_classes(new)` names {clash[0]!r}, which is already a class of this "
            f"tuner ({names}). Give each new class a name of its own."
        )
    return len(added), [*names, *added]


def _check_growable(head: Head) -> None:
    if head.task == "regression":
        raise ValueError(
            f"`FineTuner.add_classes` widens classification and multi-label heads; this "
            f"tuner's head is {head!r}, which has no classes. For more outputs, build a new "
            "FineTuner with Head.regressor(num_outputs) on the trained backbone."
        )


def grown_head(head: Head, count: int) -> Head:
    """The head `head` becomes with `count` more classes (or labels), same settings.

    Examples:
        >>> from finetune_tf import Head
        >>> from finetune_tf.model.head.widening import grown_head
        >>> grown_head(Head.classifier(5, dropout=0.1), 5)
        Head.classifier(num_classes=10, pooling='avg', dropout=0.1)
        >>> grown_head(Head.binary(), 1)
        Head.classifier(num_classes=3, pooling='avg')
        >>> grown_head(Head.multilabel(2), 1)
        Head.multilabel(num_labels=3, pooling='avg')
    """
    _check_growable(head)
    config = head.get_config()
    if head.task == "binary":
        config["task"], config["units"] = "multiclass", 2 + count
    else:
        config["units"] = head.units + count
    return Head.from_config(config)


def widen_predictions(old: keras.layers.Dense, new: keras.layers.Dense, task: str) -> None:
    """Sets the weights of `new`, the wider predictions layer, from `old`'s: old columns
    and biases exactly, new ones as the module docstring says. `task` is the old head's.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf.model.head.widening import widen_predictions
        >>> old, new = keras.layers.Dense(2), keras.layers.Dense(3)
        >>> old.build((None, 4)), new.build((None, 4))
        (None, None)
        >>> widen_predictions(old, new, "multiclass")
        >>> bool(np.array_equal(new.get_weights()[0][:, :2], old.get_weights()[0]))
        True
    """
    kernel, bias = (np.asarray(w, "float64") for w in old.get_weights())
    inputs, units = new.kernel.shape
    if task == "binary":  # one logit z becomes the logits [0, z] of a softmax
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.concatenate([np.zeros_like(bias), bias])
    added = units - kernel.shape[1]
    spread = float(kernel.std()) or 1.0 / np.sqrt(inputs)
    rng = np.random.default_rng(0)  # the same start for the same trained head
    new_kernel = rng.normal(0.0, NEW_KERNEL_SCALE * spread, (inputs, added))
    new_bias = np.full(added, NEW_LABEL_BIAS if task == "multilabel" else float(bias.mean()))
    new.set_weights(
        [
            np.concatenate([kernel, new_kernel], axis=1).astype(new.kernel.dtype),
            np.concatenate([bias, new_bias]).astype(new.bias.dtype),
        ]
    )


def widened_assembly(assembly, placement, count: int):
    """A new `Assembly` like `assembly` (an `model.assembly.Assembly`, built under
    `placement`) with `count` more classes: the same backbone, augmentation and preprocessing
    layers, the other head layers' and the input adapter's weights copied, and the
    predictions layer widened (`widen_predictions`)."""
    head = grown_head(assembly.head, count)
    old = assembly.model
    # On the backbone as placed already: the same object.
    grown = assembly.rebuilt(placement, head=head, skip=("predictions",))
    with placement.building():
        widen_predictions(
            old.get_layer("predictions"), grown.model.get_layer("predictions"), assembly.head.task
        )
    return grown
