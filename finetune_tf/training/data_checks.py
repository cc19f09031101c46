"""Checks of training data that Keras accepts silently but that spoil training.

Each looks at what is already in memory (or the first batch of a
`tf.data.Dataset`) before the first step and warns once, saying what to do:

- `value_range_warning`: inputs on another scale than the backbone's
  preprocessing expects (digits in 0..16, or images in [0, 1], fed to a
  network whose preprocessing takes 0..255).
- `ordered_split_warning`: `validation_split` on data sorted by class. Keras
  takes the *last* fraction of the examples, before shuffling, so sorted data
  validates on the last classes only. It warns only when such a split would be
  very unlikely (below 1 in 1,000) were the data in random order, so an
  imbalanced but shuffled data set does not trip it.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from finetune_tf.model.preprocessing import ApplicationPreprocessing
from finetune_tf.model.tuned_model import as_tensor_if_text
from finetune_tf.training.fit_args import FitArgs

__all__ = [
    "DataGate",
    "batch_of",
    "check_finite",
    "expected_input_range",
    "first_batch",
    "ordered_split_warning",
    "peek",
    "shapes_compatible",
    "value_range_warning",
]

# A split less likely than this under random order means data sorted by label.
_CHANCE_OF_RANDOM_ORDER = 1e-3
# A first batch whose largest value is this many times below (or above) the top of the
# expected range is on another scale, not merely dark (or bright) images.
_SCALE_FACTOR = 4.0


def shapes_compatible(data_shape: tuple, model_shape: tuple) -> bool:
    """Whether a sample shape fits a model shape (None matches any size)."""
    return len(data_shape) == len(model_shape) and all(
        m is None or d is None or d == m for d, m in zip(data_shape, model_shape, strict=True)
    )


def batch_of(shape: tuple) -> str:
    """`(3,)` as "(n, 3)", `()` as "(n,)": a shape with its batch axis, for messages."""
    return "(" + ", ".join(["n", *map(str, shape)]) + ("" if shape else ",") + ")"


def check_finite(array, argname: str, method: str) -> None:
    """A ValueError if a float array holds NaN or inf (they would poison every weight)."""
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    bad = ~np.isfinite(array)
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"`FineTuner.{method}` got `{argname}` with {int(bad.sum())} NaN or inf values "
        f"(the first at index {where}). One would make the loss and then every weight NaN. "
        "Clean or impute them first (e.g. with np.nan_to_num), or drop those examples."
    )


def expected_input_range(preprocessing, model: keras.Model) -> tuple[float, float] | None:
    """The raw input range a backbone's preprocessing is made for, if it says.

    `keras.applications` preprocessing takes pixels in [0, 255]. A
    `Rescaling(scale, offset)` layer (the backbone's `preprocessing`, or the
    first layer of its model) maps its inputs to [0, 1] (offset >= 0) or
    [-1, 1], so it takes `(target - offset) / scale`. Otherwise: None.

    Examples:
        >>> import keras
        >>> from finetune_tf.training.data_checks import expected_input_range
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        >>> expected_input_range(keras.layers.Rescaling(1 / 127.5, offset=-1), model)
        (0.0, 255.0)
        >>> expected_input_range(None, model) is None
        True
    """
    if isinstance(preprocessing, ApplicationPreprocessing):
        return 0.0, 255.0
    rescaling = preprocessing
    if rescaling is None:
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        rescaling = layers[0] if layers else None
    if not isinstance(rescaling, keras.layers.Rescaling):
        return None
    scale, offset = np.asarray(rescaling.scale), np.asarray(rescaling.offset)
    if scale.size != 1 or offset.size != 1 or float(scale) <= 0:
        return None  # per-channel normalisation: no single range to compare
    scale, offset = float(scale), float(offset)
    low_target = 0.0 if offset >= 0 else -1.0
    return (low_target - offset) / scale, (1.0 - offset) / scale


def peek(x) -> tuple | None:
    """The first batch of a `tf.data.Dataset` or `keras.utils.PyDataset` as
    `(inputs, targets)` (numpy where they are tensors; targets None when it has no
    labels), or None for other data and for data that yields nothing. A dataset is
    read again from its start by the next pass, so the pipeline runs up to its first
    batch once more (docs/robustness.md says what that costs).

    Examples:
        >>> import numpy as np, tensorflow as tf
        >>> from finetune_tf.training.data_checks import peek
        >>> data = tf.data.Dataset.from_tensor_slices((np.zeros((6, 2)), np.arange(6))).batch(4)
        >>> inputs, targets = peek(data)
        >>> inputs.shape, targets.tolist()
        ((4, 2), [0, 1, 2, 3])
    """
    if isinstance(x, tf.data.Dataset):
        element = next(iter(x.take(1)), None)
    elif isinstance(x, keras.utils.PyDataset):
        count = x.num_batches
        element = x[0] if count is None or count > 0 else None
    else:
        return None
    if element is None:
        return None
    if isinstance(element, (tuple, list)):
        inputs, targets = element[0], (element[1] if len(element) > 1 else None)
    else:
        inputs, targets = element, None
    return _as_numpy(inputs), _as_numpy(targets)


def _as_numpy(value):
    return value.numpy() if isinstance(value, tf.Tensor) else value


def first_batch(x, limit: int = 256) -> np.ndarray | None:
    """Up to `limit` examples of `x` as numpy (arrays, tensors, a dataset's first batch),
    else None."""
    if isinstance(x, (np.ndarray, tf.Tensor)):
        return np.asarray(x[:limit])
    batch = peek(x) if isinstance(x, tf.data.Dataset) else None
    if batch is not None and isinstance(batch[0], np.ndarray):
        return batch[0][:limit]
    return None


def value_range_warning(batch: np.ndarray | None, expected: tuple | None) -> str | None:
    """A message when `batch`'s values are on another scale than `expected`, else None.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.data_checks import value_range_warning
        >>> print(value_range_warning(np.array([0.0, 16.0]), (0.0, 255.0)))  # doctest: +ELLIPSIS
        `x` holds values in [0, 16], but the backbone's preprocessing expects about [0, 255]...
        >>> value_range_warning(np.array([0.0, 230.0]), (0.0, 255.0)) is None
        True
    """
    if batch is None or expected is None or batch.dtype.kind not in "fiu" or batch.size == 0:
        return None
    low, high = float(np.min(batch)), float(np.max(batch))
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    top = max(abs(expected[0]), abs(expected[1]))
    peak = max(abs(low), abs(high))
    if peak == 0 or top / _SCALE_FACTOR <= peak <= top * _SCALE_FACTOR:
        return None
    # The map of [low, high] onto the expected range (a scale, and a shift when needed).
    factor = (expected[1] - expected[0]) / (high - low) if high > low else top / peak
    offset = expected[0] - low * factor if high > low else 0.0
    shift = f" {'+' if offset > 0 else '-'} {abs(offset):.4g}" if abs(offset) > 1e-6 * top else ""
    return (
        f"`x` holds values in [{low:g}, {high:g}], but the backbone's preprocessing expects "
        f"about [{expected[0]:g}, {expected[1]:g}]: the pretrained features would see another "
        f"scale than they were trained on. Rescale your inputs before fit, evaluate and "
        f"predict, e.g. x = x * {factor:.4g}{shift}."
    )


def ordered_split_warning(y, validation_split) -> str | None:
    """A message when Keras' `validation_split` would validate on classes the training part
    lacks (or on one class only), as happens with data sorted by label; else None.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.data_checks import ordered_split_warning
        >>> print(ordered_split_warning(np.repeat([0, 1, 2, 3, 4], 10), 0.2))  # doctest: +ELLIPSIS
        validation_split=0.2 validates on the last 10 examples, ... only class 4...
        >>> ordered_split_warning(np.arange(50) % 5, 0.2) is None
        True
    """
    if not validation_split or not isinstance(y, (np.ndarray, tf.Tensor, list)):
        return None
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        labels = labels.argmax(axis=1)
    if labels.ndim != 1 or labels.dtype.kind not in "iub" or len(labels) < 2:
        return None  # regression targets, multi-label rows, strings handled by the caller
    count = len(labels)
    split_at = int(math.floor(count * (1.0 - validation_split)))
    train, validation = set(labels[:split_at].tolist()), set(labels[split_at:].tolist())
    if not validation or not train:
        return None
    unseen = validation - train
    # How likely the split would be in data in random order: small only when it is sorted.
    # A single class in the validation part: (its share)^(validation size). Classes that only
    # the validation part has: (validation share)^(their count), for each.
    share = (count - split_at) / count
    chance = 1.0
    if len(validation) == 1 and len(train) > 1:
        (only,) = validation
        chance = min(chance, float(np.mean(labels == only)) ** (count - split_at))
    if unseen:
        chance = min(chance, share ** int(np.isin(labels, list(unseen)).sum()))
    if chance > _CHANCE_OF_RANDOM_ORDER:
        return None
    shown = sorted(validation)[:5]
    what = f"only class {shown[0]}" if len(validation) == 1 else f"classes {shown}"
    return (
        f"validation_split={validation_split} validates on the last "
        f"{len(labels) - split_at} examples, which Keras takes before shuffling: {what}"
        + (f" ({len(unseen)} of {len(validation)} never seen in training)" if unseen else "")
        + ". Your data looks sorted by class. Shuffle it first (e.g. "
        "sklearn.utils.shuffle(x, y, random_state=0)), or pass validation_data=."
    )


class DataGate:
    """Where data enters a FineTuner: checked against its model, text made tensors.

    `check` refuses data the model cannot take (shapes, dtypes, targets the
    head cannot learn) at the call that received it; `for_fit` also checks
    `validation_data` and warns about what Keras takes silently but spoils
    training (the scale of the inputs, looked at once; a sorted
    `validation_split`).

    The head's target checks are the contract of the head's own loss; with a loss the
    user compiled with, which defines its own targets (an `ignore_class`, masked rows),
    only the number of labels is checked.

    Args:
        assembly: the `Assembly` whose model the data is for.
        compiler: its `Compiler` (which loss the targets are for).
    """

    def __init__(self, assembly, compiler):
        self.assembly = assembly
        self.compiler = compiler
        self._range_checked = False  # the scale of the data does not change: look once

    def check(self, x, y, method: str):
        """`x` ready for Keras (text as a tensor), after checking `x` and `y` for `method`."""
        x = as_tensor_if_text(x)
        self.assembly.check_inputs(x, "x", method)
        self.assembly.check_targets(x, y, "y", method, by_head=self.compiler.uses_head_loss)
        if method != "predict":
            self._check_first_batch(x, method)
        return x

    def _check_first_batch(self, x, method: str) -> None:
        """A dataset's first batch, checked as arrays would be: labels out of range or
        NaN inputs fail here, at the call, not deep in TensorFlow after some steps."""
        batch = peek(x)
        if batch is None:
            return
        inputs, targets = batch
        try:
            self.assembly.check_inputs(inputs, "x", method)
            if targets is not None:
                by_head = self.compiler.uses_head_loss
                self.assembly.check_targets(inputs, targets, "y", method, by_head=by_head)
        except (TypeError, ValueError) as error:
            kind = "tf.data.Dataset" if isinstance(x, tf.data.Dataset) else "PyDataset, x[0]"
            raise type(error)(
                f"The first batch of `x` (a {kind}; `x` and `y` below are its inputs and "
                f"labels), read to check it first: {error}"
            ) from None

    def for_fit(self, x, y, args: FitArgs) -> tuple:
        """`(x, args)` ready for training, after every check of `fit`'s data."""
        x = self.check(x, y, "fit")
        self._warn(x, y, args.validation_split)
        validation = args.validation_data
        if isinstance(validation, tuple) and len(validation) >= 2:
            validation = (as_tensor_if_text(validation[0]), *validation[1:])
            self.assembly.check_inputs(validation[0], "validation_data[0]", "fit")
            self.assembly.check_targets(
                validation[0],
                validation[1],
                "validation_data[1]",
                "fit",
                by_head=self.compiler.uses_head_loss,
            )
            args = args.replace(validation_data=validation)
        return x, args

    def _warn(self, x, y, validation_split):
        messages = [ordered_split_warning(y, validation_split)]
        if not self._range_checked:
            self._range_checked = True
            backbone = self.assembly.backbone
            expected = expected_input_range(backbone.preprocessing, backbone.model)
            if expected is not None:
                messages.append(value_range_warning(first_batch(x), expected))
        for message in filter(None, messages):
            warnings.warn(f"FineTuner.fit: {message}", UserWarning, stacklevel=5)
