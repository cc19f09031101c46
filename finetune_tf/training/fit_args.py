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
import tensorflow as tf

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
            return len(x)
        if isinstance(x, dict) and x:
            x = next(iter(x.values()))
        elif isinstance(x, (list, tuple)) and x:
            x = x[0]
        if hasattr(x, "shape") and len(x.shape) > 0:
            examples = split_index(int(x.shape[0]), self.validation_split)
            return max(1, -(-examples // self.batch_size))
        return None
