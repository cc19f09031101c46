"""Seeds: reproducible initialisation and an epoch-keyed data order.

`FineTuner(seed=...)` seeds Python, NumPy and TensorFlow before building
(`keras.utils.set_random_seed`), so the head's initial weights and every
layer's random stream (dropout, augmentation made afterwards) repeat. Keras
shuffles arrays with a stateful op whose order depends on how many epochs
the dataset has served, so a run resumed at epoch 5 would see other batches
than the run it continues. With a seed, arrays are therefore fed as a
`tf.data.Dataset` whose order in epoch `e` is a stateless shuffle keyed by
`(seed, e)`: the same in an uninterrupted and in a resumed run.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from finetune_tf._checks import check_int
from finetune_tf.training.fit_args import FitArgs, split_index

__all__ = [
    "check_seed",
    "epoch_keyed",
    "in_keras_order",
    "keras_array_order",
    "steps_per_execution_for",
]


def check_seed(seed) -> int | None:
    """`seed` as an int, or a TypeError/ValueError naming it."""
    return check_int(
        seed,
        "seed",
        minimum=0,
        maximum=2**32 - 1,
        allow_none=True,
        meaning="NumPy and Python's generators take 32-bit seeds",
        hint="Pass e.g. seed=42.",
    )


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor))


def epoch_keyed(x, y, args: FitArgs, seed: int) -> tuple:
    """`(x, y, args)` for `keras.Model.fit`, with arrays ordered by `(seed, epoch)`.

    Applies when `x` (and `y`, `sample_weight`) are arrays and `shuffle` is on;
    otherwise returns the arguments unchanged. `validation_split` is taken
    as Keras takes it (the last examples, before shuffling).

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.fit_args import FitArgs
        >>> from finetune_tf.training.seeding import epoch_keyed
        >>> x, y = np.arange(10.0)[:, None], np.arange(10)
        >>> data, _, args = epoch_keyed(x, y, FitArgs({"batch_size": 4, "epochs": 2}), seed=0)
        >>> args.get("steps_per_epoch"), len(list(data))  # 3 batches an epoch, 2 epochs
        (3, 6)
    """
    shuffle, sample_weight = args.shuffle, args.sample_weight
    if not (
        shuffle
        and _is_array(x)
        and _is_array(y)
        and (sample_weight is None or _is_array(sample_weight))
        and not args.get("steps_per_epoch")
    ):
        return x, y, args
    arrays = [x, y] + ([sample_weight] if sample_weight is not None else [])
    count = int(x.shape[0])
    validation_data = args.validation_data
    if args.validation_split:
        at = split_index(count, args.validation_split)
        if validation_data is None:
            validation_data = tuple(a[at:] for a in arrays)
        arrays, count = [a[:at] for a in arrays], at
    batch_size = args.batch_size
    first, last = args.initial_epoch, args.epochs
    tensors = tuple(tf.convert_to_tensor(a) for a in arrays)
    by_batch = shuffle == "batch"
    key = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        seed_pair = tf.stack([key, epoch])
        if by_batch:  # whole batches in a new order, as Keras' shuffle="batch"
            batches = -(-count // batch_size)
            order = tf.random.experimental.stateless_shuffle(
                tf.range(batches, dtype=tf.int64), seed=seed_pair
            )
            return tf.data.Dataset.from_tensor_slices(order).map(
                lambda b: tf.range(b * batch_size, tf.minimum((b + 1) * batch_size, count))
            )
        indices = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=seed_pair
        )
        return tf.data.Dataset.from_tensor_slices(indices).batch(batch_size)

    def take(indices):
        return tuple(tf.gather(t, indices) for t in tensors)

    dataset = tf.data.Dataset.range(first, max(first, last)).flat_map(one_epoch)
    keyed = args.replace(
        validation_split=None,
        validation_data=validation_data,
        batch_size=None,
        sample_weight=None,
        shuffle=False,  # the dataset orders itself
        steps_per_epoch=max(1, -(-count // batch_size)),
    )
    return dataset.map(take).prefetch(2), None, keyed


def keras_array_order(count: int, batch_size: int, shuffle) -> np.ndarray | str:
    """The order in which `keras.Model.fit` reads `count` array rows each epoch, found by
    running Keras' own array pipeline over the row numbers (it draws its permutation
    from the row count alone, not from the values).

    Returns the permutation when it is the same every epoch (no shuffling; or, in
    Keras 3.10 to 3.15, shuffling after `keras.utils.set_random_seed`: each epoch's
    fresh iterator draws the same seeded permutation), `"random"` when no global seed
    is set (Keras draws a new order each epoch; any uniform permutation an epoch is as
    good), else `"keras"`: leave the arrays to Keras.

    Examples:
        >>> import keras
        >>> from finetune_tf.training.seeding import keras_array_order
        >>> keras_array_order(5, 2, shuffle=False).tolist()
        [0, 1, 2, 3, 4]
    """
    if not shuffle:
        return np.arange(count)
    if shuffle is not True:
        return "keras"  # shuffle="batch": its order is not replayed here
    if count == 0:
        return np.arange(0)
    if _global_seed() is None:
        # Unseeded, Keras draws a new order each epoch (two probes of a few rows could
        # agree by chance, so the seed decides, not the probes).
        return "random"
    try:  # Keras' private array pipeline: any change in it leaves the order to Keras
        from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

        dataset = ArrayDataAdapter(
            np.arange(count), shuffle=True, batch_size=batch_size
        ).get_tf_dataset()
        whole = dataset.unbatch().batch(count)  # an epoch's row numbers in one element

        def one_epoch():  # a fresh iterator of Keras' pipeline, as Keras makes each epoch
            return np.asarray(tf.nest.flatten(next(iter(whole)))[0])

        first, second = one_epoch(), one_epoch()
    except Exception:  # noqa: BLE001 - a Keras whose pipeline differs: Keras orders
        return "keras"
    if first.shape == (count,) and np.array_equal(first, second):
        return first
    return "keras"


def _global_seed() -> int | None:
    """TensorFlow's global seed (`tf.random.set_seed`), read without drawing an op seed
    (`tf.compat.v1.get_seed` would advance the eager op-seed counter)."""
    try:
        from tensorflow.python.eager import context

        return context.global_seed()
    except Exception:  # noqa: BLE001 - a TensorFlow that moved it
        return 0  # unknown: treat as seeded, so Keras keeps the order unless probes agree


def in_keras_order(x, y, args: FitArgs) -> tuple:
    """`(x, y, args)` for `keras.Model.fit` that read arrays in the batches and order
    Keras would (`keras_array_order`), from a plain `tf.data` pipeline of the rows: Keras'
    own array pipeline costs more each epoch (two new iterators, each starting a
    permutation and a parallel map) than a small model's epoch of training.

    Unchanged when the order is Keras' to draw, for `validation_split` and for
    `steps_per_epoch`. Each epoch iterates the pipeline anew, as Keras does its own,
    so Keras runs its steps per execution as with arrays.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.fit_args import FitArgs
        >>> from finetune_tf.training.seeding import in_keras_order
        >>> x, y = np.arange(10.0)[:, None], np.arange(10)
        >>> data, _, args = in_keras_order(x, y, FitArgs({"batch_size": 4, "shuffle": False}))
        >>> [len(batch[0]) for batch in data]
        [4, 4, 2]
    """
    sample_weight = args.sample_weight
    if not (
        _is_array(x)
        and _is_array(y)
        and (sample_weight is None or _is_array(sample_weight))
        and not args.get("steps_per_epoch")
        and not args.validation_split
    ):
        return x, y, args
    count, batch_size = int(x.shape[0]), args.batch_size
    if any(len(a) != count for a in (y, sample_weight) if a is not None):
        return x, y, args  # Keras raises its own error naming the lengths
    order = keras_array_order(count, batch_size, args.shuffle)
    if isinstance(order, str) and order == "keras":
        return x, y, args
    arrays = [x, y] + ([sample_weight] if sample_weight is not None else [])
    tensors = tuple(tf.convert_to_tensor(a) for a in arrays)
    if isinstance(order, str):  # "random": a new order each epoch, as Keras unseeded
        rows = tf.data.Dataset.range(count).shuffle(count, reshuffle_each_iteration=True)
    else:
        rows = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))

    @tf.autograph.experimental.do_not_convert  # no control flow to convert
    def take(indices):
        return tuple(tf.gather(t, indices) for t in tensors)

    dataset = rows.batch(batch_size).map(take).prefetch(2)
    return dataset, None, args.replace(batch_size=None, sample_weight=None, shuffle=False)


def steps_per_execution_for(steps_per_epoch: int, steps_per_execution: int) -> int:
    """The largest number of steps per execution, at most `steps_per_execution`, that divides
    `steps_per_epoch`.

    Keras runs whole executions: with `steps_per_epoch=40` and
    `steps_per_execution=32` an epoch would take 64 batches from an
    epoch-keyed dataset, which holds its epochs back to back, so every epoch
    after the first would start in the wrong place and training would run out
    of data.

    Examples:
        >>> from finetune_tf.training.seeding import steps_per_execution_for
        >>> steps_per_execution_for(40, 32), steps_per_execution_for(64, 32)
        (20, 32)
    """
    limit = max(1, min(steps_per_execution, steps_per_epoch))
    return next(n for n in range(limit, 0, -1) if steps_per_epoch % n == 0)
