"""Where the feature cache keeps the backbone's outputs, and how it reads them back.

`compute_features` runs a feature model once over arrays, a `tf.data.Dataset`
or a `keras.utils.PyDataset` into a `FeatureStore` (in memory up to a limit,
then in a file on disk); `as_fit_data` gives them back to `keras.Model.fit`
as arrays or as a dataset that reshuffles each epoch (in its own, seeded order,
not the one the raw pipeline would have drawn), `split_cached` takes Keras'
`validation_split` from them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from finetune_tf.training.fit_args import split_index

__all__ = [
    "Cached",
    "FeatureStore",
    "NotCacheable",
    "as_fit_data",
    "compute_features",
    "feature_dataset",
    "split_cached",
]


class FeatureStore:
    """Feature batches appended in order: in memory up to a limit, then in a file (up to
    `disk_limit` bytes, None: the disk's free space); `NotCacheable` beyond both."""

    def __init__(self, memory_limit: int, directory: str | None, disk_limit: int | None = None):
        self.memory_limit = memory_limit
        self.directory = directory
        if disk_limit is None:
            disk_limit = shutil.disk_usage(_existing_parent(directory)).free
        self.disk_limit = disk_limit
        self.chunks, self.nbytes, self.count = [], 0, 0
        self.path = self._tempdir = None
        self._file = None

    def append(self, batch: np.ndarray):
        if self.nbytes + batch.nbytes > self.memory_limit + self.disk_limit:
            raise NotCacheable(
                f"the features would take more than {self.memory_limit / 1024**2:.1f} MiB of "
                f"memory and {self.disk_limit / 1024**2:.1f} MiB of disk (FeatureCache's "
                "memory_limit and disk_limit)"
            )
        self.nbytes += batch.nbytes
        self.count += len(batch)
        self.shape, self.dtype = batch.shape[1:], batch.dtype
        if self._file is None and self.nbytes > self.memory_limit:
            if self.directory is None:
                self._tempdir = tempfile.mkdtemp(prefix="finetune_tf_features_")
            else:
                os.makedirs(self.directory, exist_ok=True)
            directory = self.directory or self._tempdir
            fd, self.path = tempfile.mkstemp(suffix=".features", dir=directory)
            self._file = os.fdopen(fd, "wb")
            for chunk in self.chunks:
                self._file.write(np.ascontiguousarray(chunk).tobytes())
            self.chunks = []
        if self._file is not None:
            self._file.write(np.ascontiguousarray(batch).tobytes())
        else:
            self.chunks.append(batch)

    @property
    def spilled(self) -> bool:
        return self.path is not None

    def array(self) -> np.ndarray:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count, *self.shape))
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0,))

    def close(self):
        if self._file is not None:
            self._file.close()
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)


def _existing_parent(directory: str | None) -> str:
    path = os.path.abspath(directory or tempfile.gettempdir())
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def batches(x, y, sample_weight, batch_size):
    """(inputs, targets, sample_weight) batches of any supported input, in order."""
    if isinstance(x, tf.data.Dataset):
        for element in x.as_numpy_iterator():
            yield keras.utils.unpack_x_y_sample_weight(element)
    elif isinstance(x, keras.utils.PyDataset):
        for index in range(len(x)):
            yield keras.utils.unpack_x_y_sample_weight(x[index])
    else:
        for start in range(0, len(x), batch_size):
            part = slice(start, start + batch_size)
            yield (
                x[part],
                None if y is None else y[part],
                None if sample_weight is None else sample_weight[part],
            )


@dataclasses.dataclass
class Cached:
    features: np.ndarray
    targets: np.ndarray | None
    sample_weight: np.ndarray | None
    batch_size: int
    store: FeatureStore

    def close(self):
        self.store.close()


def compute_features(
    feature_model: keras.Model, strategy, x, y, sample_weight, batch_size, setting
) -> Cached:
    """`feature_model`'s outputs over `x` (with `y` and `sample_weight` beside them), kept
    as `setting` (a `FeatureCache`) says; `NotCacheable` when the batches vary in size."""
    store = FeatureStore(setting.memory_limit, setting.directory, setting.disk_limit)
    dtype = None if setting.dtype is None else tf.as_dtype(setting.dtype).as_numpy_dtype
    targets, weights, sizes = [], [], []
    extract = feature_model.predict_on_batch
    if strategy.num_replicas_in_sync > 1:
        # predict_on_batch would run the whole batch on every replica and concatenate
        # the copies; one call in cross-replica context reads the mirrored weights once.
        extract = tf.function(lambda inputs: feature_model(inputs, training=False))
    try:
        for inputs, batch_y, batch_w in batches(x, y, sample_weight, batch_size):
            size = len(keras.tree.flatten(inputs)[0])
            if sizes and size < sizes[0]:
                # The last, smaller batch, padded to the first's size: a new batch size
                # would trace the feature model again, which costs more than the rows.
                padded = keras.tree.map_structure(lambda a: _pad_rows(a, sizes[0]), inputs)
                features = np.asarray(extract(padded))[:size]
            else:
                features = np.asarray(extract(inputs))
            store.append(features if dtype is None else features.astype(dtype))
            sizes.append(len(features))
            if batch_y is not None:
                targets.append(np.asarray(batch_y))
            if batch_w is not None:
                weights.append(np.asarray(batch_w))
    except BaseException:
        store.close()
        raise
    uniform = all(size == sizes[0] for size in sizes[:-1]) if sizes else True
    if not uniform:
        store.close()
        raise NotCacheable("the dataset's batches have varying sizes")
    return Cached(
        features=store.array(),
        targets=np.concatenate(targets) if targets else None,
        sample_weight=np.concatenate(weights) if weights else None,
        batch_size=sizes[0] if sizes else batch_size,
        store=store,
    )


def _pad_rows(array, rows: int) -> np.ndarray:
    """`array` with its last row repeated up to `rows` rows (each example is computed on its
    own in inference mode, so the extra rows change nothing)."""
    array = np.asarray(array)
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


class NotCacheable(Exception):
    pass


def feature_dataset(
    cached: Cached, batch_size: int, shuffle, seed: int | None = None
) -> tf.data.Dataset:
    """Batches read from the (possibly on-disk) features, reshuffled each epoch if asked, in
    an order of their own (repeatable with `seed`; not the order the raw data would have
    had: a reshuffling pipeline cannot be replayed)."""
    count = len(cached.features)
    features = cached.features
    spec = tf.TensorSpec((None, *features.shape[1:]), tf.as_dtype(features.dtype))

    def read(indices):
        return features[indices]

    def take(indices):
        if cached.store.spilled:
            indices = tf.sort(indices)  # sequential reads from the file
        batch = tf.numpy_function(read, [indices], spec.dtype)
        element = [tf.ensure_shape(batch, spec.shape)]
        for extra in (cached.targets, cached.sample_weight):
            if extra is not None:
                element.append(tf.gather(extra, indices))
        return tuple(element) if len(element) > 1 else element[0]

    dataset = tf.data.Dataset.range(count)
    if shuffle == "batch":  # whole batches in a new order, as Keras shuffles a PyDataset
        dataset = dataset.batch(batch_size)
        dataset = dataset.shuffle(-(-count // batch_size), seed=seed, reshuffle_each_iteration=True)
    elif shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size)
    else:
        dataset = dataset.batch(batch_size)
    return dataset.map(take).prefetch(2)


def split_cached(cached: Cached, validation_split: float):
    """Keras' `validation_split`: the last fraction of the examples, before shuffling."""
    split_at = split_index(len(cached.features), validation_split)

    def piece(rows: slice) -> Cached:
        def take(array):
            return None if array is None else array[rows]

        return Cached(
            cached.features[rows],
            take(cached.targets),
            take(cached.sample_weight),
            cached.batch_size,
            cached.store,
        )

    return piece(slice(0, split_at)), piece(slice(split_at, None))


def as_fit_data(cached: Cached, batch_size, shuffle, as_arrays: bool, seed: int | None = None):
    """What `keras.Model.fit` takes for cached features: arrays when they are in memory and
    came from arrays (Keras then batches and shuffles exactly as it would have), else a
    `tf.data.Dataset` reading them (shuffled with `seed`)."""
    if as_arrays:
        return cached.features, cached.targets, cached.sample_weight
    return feature_dataset(cached, batch_size, shuffle, seed), None, None
