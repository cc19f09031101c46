"""`FitArgs`: the keyword arguments of a `fit` call, and Keras' rules for them, written once.

`keras.Model.fit` has rules that finetune_tf must follow wherever it trains
without handing the arguments straight to Keras (the feature cache, the seeded
data order, the step-sized recipes): `batch_size=None` means 32;
`validation_split` takes the *last* fraction of the examples, before
shuffling; validation happens with `validation_data` or a `validation_split`.
They live here, once.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from finetune_tf._checks import check_choice, check_int, check_number
from finetune_tf._utils import did_you_mean

__all__ = ["KERAS_BATCH_SIZE", "FitArgs", "split_index"]

KERAS_BATCH_SIZE = 32  # what keras.Model.fit uses when batch_size is None


def split_index(count: int, validation_split: float | None) -> int:
    """Where Keras' `validation_split` cuts `count` examples: the training part is
    `[:index]`, the validation part `[index:]`.

    Examples:
        >>> from finetune_tf.training.fit_args import split_index
        >>> split_index(10, 0.25), split_index(10, None)
        (7, 10)
    """
    return int(math.floor(count * (1.0 - (validation_split or 0.0))))


def _count(minimum: int, *, allow_none: bool = True, hint: str = ""):
    def check(value, name, where):
        check_int(value, name, minimum=minimum, allow_none=allow_none, where=where, hint=hint)

    return check


def _validation_split(value, name, where):
    check_number(
        value,
        name,
        low=0,
        high=1,
        high_inclusive=False,
        allow_none=True,
        where=where,
        meaning="the fraction of the examples Keras keeps apart (the last ones) to validate on",
        hint="To validate on other data, pass validation_data=(x_val, y_val).",
    )


def _verbose(value, name, where):
    if value == "auto" or isinstance(value, (bool, np.bool_)):
        return
    check_int(
        value, name, minimum=0, also='"auto"', where=where, hint="0 is silent, 1 a progress bar."
    )


def _shuffle(value, name, where):
    if not isinstance(value, (bool, np.bool_)):
        check_choice(value, name, (True, False, "batch"), where=where)


def _class_weight(value, name, where):
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise TypeError(
            f"`{where}(class_weight)` must be a dict from class index to weight, e.g. "
            f"{{0: 1.0, 1: 5.0}}. Received: class_weight={value!r} of type "
            f"{type(value).__name__}. sklearn.utils.class_weight.compute_class_weight gives "
            "the weights of balanced classes."
        )
    for key, weight in value.items():
        check_int(key, name, minimum=0, where=where, each=value, meaning="class indices")
        check_number(weight, f"{name}[{key!r}]", low=0, where=where, meaning="a class's weight")


def _callbacks(value, name, where):
    if value is None or isinstance(value, (keras.callbacks.Callback, keras.callbacks.CallbackList)):
        return
    items = value if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(item, keras.callbacks.Callback) for item in items):
        bad = (
            value
            if items is None
            else next(item for item in items if not isinstance(item, keras.callbacks.Callback))
        )
        raise TypeError(
            f"`{where}(callbacks)` must be a list of keras.callbacks.Callback (Keras 3), e.g. "
            f"[keras.callbacks.EarlyStopping(patience=3)]. Received: {bad!r} of type "
            f"{type(bad).__name__}. A tf_keras (Keras 2) callback does not work with Keras 3: "
            "use its keras.callbacks counterpart."
        )


def _anything(value, name, where):
    """Checked where the data is (`DataGate`), or by Keras itself."""


# Every keyword argument of keras.Model.fit, and how each is checked.
_KERAS_FIT_ARGUMENTS = {
    "batch_size": _count(1, hint="Typical values are 16 to 256."),
    "epochs": _count(1, allow_none=False, hint="It is the number of passes over the data."),
    "verbose": _verbose,
    "callbacks": _callbacks,
    "validation_split": _validation_split,
    "validation_data": _anything,
    "shuffle": _shuffle,
    "class_weight": _class_weight,
    "sample_weight": _anything,
    "initial_epoch": _count(0, allow_none=False),
    "steps_per_epoch": _count(1),
    "validation_steps": _count(1),
    "validation_batch_size": _count(1),
    "validation_freq": _count(1, allow_none=False),
}


class FitArgs:
    """The keyword arguments of one `fit` call, parsed once, with Keras' defaults.

    Immutable: code that trains differently from the user's call (a stage, the
    feature cache, the seeded order) derives a new one with `replace`, so no
    module changes what another one reads. `keras()` is the dict for
    `keras.Model.fit`.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.fit_args import FitArgs
        >>> args = FitArgs({"validation_split": 0.2})
        >>> args.batch_size, args.has_validation, args.steps_per_epoch(np.zeros((100, 3)))
        (32, True, 3)
        >>> args.replace(epochs=3, validation_split=None).keras()
        {'epochs': 3}
    """

    __slots__ = ("_kwargs",)

    def __init__(self, kwargs: Mapping | None = None):
        self._kwargs = types.MappingProxyType(dict(kwargs or {}))

    @classmethod
    def checked(
        cls, kwargs: Mapping | None = None, *, where: str = "fit", others: tuple = ()
    ) -> FitArgs:
        """The arguments of a user's call, each checked as `keras.Model.fit` would need it
        (`others`: names the caller takes itself, left out).

        Keras takes `epochs=2.5` or `batch_size=0` and fails deep in TensorFlow, or
        trains nothing (`epochs=0`); these are refused here, at the call, naming the
        argument, with the builtin exception that fits.

        Examples:
            >>> from finetune_tf.training.fit_args import FitArgs
            >>> FitArgs.checked({"epochs": 3}).epochs
            3
            >>> FitArgs.checked({"epochs": "3"})
            Traceback (most recent call last):
            ...
            TypeError: `fit(epochs)` must be a whole number >= 1. Received: epochs='3' ...
        """
        kwargs = {name: value for name, value in (kwargs or {}).items() if name not in others}
        for name in kwargs:
            if name not in _KERAS_FIT_ARGUMENTS:
                names = sorted(_KERAS_FIT_ARGUMENTS)
                raise TypeError(
                    f"`{where}()` got an unexpected keyword argument {name!r}."
                    f"{did_you_mean(name, [*names, *others])} It takes "
                    + (f"{', '.join(others)} and " if others else "")
                    + f"the arguments of keras.Model.fit: {', '.join(names)}."
                )
        for name, value in kwargs.items():
            _KERAS_FIT_ARGUMENTS[name](value, name, where)
        epochs, initial_epoch = kwargs.get("epochs"), kwargs.get("initial_epoch")
        if epochs is not None and initial_epoch is not None and initial_epoch > epochs:
            raise ValueError(
                f"`{where}(initial_epoch)` must be at most `epochs`, the index of the last "
                f"epoch: initial_epoch={initial_epoch} with epochs={epochs}. Keras counts "
                f"epochs from 0 to `epochs`; to train 3 more epochs after epoch "
                f"{initial_epoch}, pass epochs={initial_epoch + 3}."
            )
        if kwargs.get("class_weight") == {}:
            del kwargs["class_weight"]  # no weights (Keras fails on an empty dict)
        if isinstance(kwargs.get("callbacks"), keras.callbacks.Callback):
            kwargs["callbacks"] = [kwargs["callbacks"]]  # Keras takes a lone callback too
        return cls(kwargs)

    def keras(self) -> dict:
        """The arguments as `keras.Model.fit` takes them."""
        return dict(self._kwargs)

    def get(self, name: str, default=None):
        return self._kwargs.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self._kwargs

    def __eq__(self, other) -> bool:
        return isinstance(other, FitArgs) and dict(self._kwargs) == dict(other._kwargs)

    __hash__ = None

    def __repr__(self) -> str:
        return f"FitArgs({dict(self._kwargs)!r})"

    def replace(self, **changes) -> FitArgs:
        """A copy with `changes` applied; a change to None removes the argument (Keras'
        default applies)."""
        kwargs = dict(self._kwargs)
        for name, value in changes.items():
            if value is None:
                kwargs.pop(name, None)
            else:
                kwargs[name] = value
        return FitArgs(kwargs)

    # --- Keras' defaults, written once ---------------------------------------------

    @property
    def batch_size(self) -> int:
        return self._kwargs.get("batch_size") or KERAS_BATCH_SIZE

    @property
    def epochs(self) -> int:
        return self._kwargs.get("epochs", 1)

    @property
    def initial_epoch(self) -> int:
        return self._kwargs.get("initial_epoch", 0)

    @property
    def callbacks(self) -> list:
        return list(self._kwargs.get("callbacks") or [])

    @property
    def shuffle(self):
        return self._kwargs.get("shuffle", True)

    @property
    def sample_weight(self):
        return self._kwargs.get("sample_weight")

    @property
    def validation_data(self):
        return self._kwargs.get("validation_data")

    @property
    def validation_split(self) -> float:
        return self._kwargs.get("validation_split") or 0.0

    @property
    def has_validation(self) -> bool:
        """Whether Keras will validate: `validation_data`, or a `validation_split` > 0."""
        return self.validation_data is not None or self.validation_split > 0

    @property
    def verbose(self):
        return self._kwargs.get("verbose", "auto")

    def steps_per_epoch(self, x) -> int | None:
        """How many optimizer steps one epoch of `fit(x, **kwargs)` takes, if knowable."""
        if self._kwargs.get("steps_per_epoch"):
            return int(self._kwargs["steps_per_epoch"])
        if isinstance(x, tf.data.Dataset):
            count = int(x.cardinality())
            return count if count > 0 else None
        if isinstance(x, keras.utils.PyDataset):
            return x.num_batches  # None when endless or unknown
        if isinstance(x, dict) and x:
            x = next(iter(x.values()))
        elif isinstance(x, (list, tuple)) and x:
            x = x[0]
        if hasattr(x, "shape") and len(x.shape) > 0:
            examples = split_index(int(x.shape[0]), self.validation_split)
            return max(1, -(-examples // self.batch_size))
        return None
