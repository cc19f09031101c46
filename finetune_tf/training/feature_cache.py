"""The feature cache: a frozen backbone runs once, then only the head trains.

When the whole backbone is frozen (BatchNorm in inference mode) and nothing
random or trainable precedes it, every epoch would feed the same images
through the same function. The cache computes the backbone's outputs once
and trains the head on them: same head layers, same optimizer, same loss,
same batches, so the same result within float tolerance, at the cost of one
backbone pass instead of one per epoch.

Features stay in memory up to `FeatureCache.memory_limit` bytes and spill to
a file on disk beyond it. The cache turns itself off, with a log line, when
the data may be random: augmentation layers in the model, random ops in a
`tf.data` pipeline, or Python code whose randomness it cannot see.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from finetune_tf._checks import check_choice, check_int
from finetune_tf._utils import directory_path
from finetune_tf.runtime.multi_worker import in_multi_worker_mode
from finetune_tf.runtime.progress import say
from finetune_tf.training.fit_args import KERAS_BATCH_SIZE, split_index

__all__ = ["FeatureCache", "cache_decision", "fit_on_cached_features"]

_DEFAULT_MEMORY_LIMIT = 2 * 1024**3
_MODES = ("auto", True, False)
# Arrays go through the backbone this many at a time (fewer, larger calls are faster).
_FEATURE_BATCH = 256
# The head alone takes little time a step, so Keras' per-step Python overhead would
# dominate: the cached head runs this many steps per call (unless compile() set it).
_HEAD_STEPS_PER_EXECUTION = 32
_HOOKS = [
    f"on_{phase}_{event}"
    for phase in ("train", "test", "predict")
    for event in ("begin", "end", "batch_begin", "batch_end")
] + ["on_epoch_begin", "on_epoch_end"]


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """How frozen stages cache the backbone's outputs.

    `fit(..., feature_cache=...)` and `fine_tune(..., feature_cache=...)`
    take `"auto"` (the default), `True`, `False` or a `FeatureCache`.

    Args:
        mode: `"auto"`: cache frozen stages when the data is known to be the
            same every epoch (numpy arrays, tensors, `tf.data` pipelines
            without random ops). `True`: also trust data whose randomness
            cannot be inspected (`keras.utils.PyDataset`, `tf.data` with
            `py_function`). `False`: never cache. Detected augmentation
            always turns the cache off.
        memory_limit: int. Bytes of features kept in memory; beyond it they
            spill to a file in `directory`. Defaults to 2 GiB.
        directory: str or path, optional. Where spilled features go (a temporary
            directory, removed after the stage, when `None`).

    Examples:
        >>> from finetune_tf import FeatureCache
        >>> FeatureCache(memory_limit=512 * 1024**2).mode
        'auto'
    """

    mode: str | bool = "auto"
    memory_limit: int = _DEFAULT_MEMORY_LIMIT
    directory: str | None = None

    def __post_init__(self):
        check_choice(self.mode, "mode", _MODES, where="FeatureCache")
        check_int(
            self.memory_limit,
            "memory_limit",
            minimum=0,
            where="FeatureCache",
            meaning="a number of bytes (0 always spills to disk)",
            type_error=ValueError,
        )
        if self.directory is not None:
            object.__setattr__(
                self, "directory", directory_path(self.directory, "FeatureCache(directory)")
            )

    @classmethod
    def get(cls, value) -> FeatureCache:
        """`value` as a `FeatureCache` (`"auto"`, `True` and `False` are modes)."""
        if isinstance(value, FeatureCache):
            return value
        return cls(
            mode=check_choice(value, "feature_cache", _MODES, also="a finetune_tf.FeatureCache")
        )


# --- Can this stage be cached? -------------------------------------------------


_RANDOM_OPS = ("Random", "Rng")
_OPAQUE_OPS = ("PyFunc", "EagerPyFunc", "NumpyFunction")


def _dataset_ops(dataset: tf.data.Dataset) -> set[str]:
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def _data_randomness(x) -> str | None:
    """Why `x` may differ from epoch to epoch ("random", "opaque"), or None."""
    if isinstance(x, tf.data.Dataset):
        if x.cardinality() == tf.data.INFINITE_CARDINALITY:
            return "infinite"
        ops = _dataset_ops(x)
        if any(marker in op for op in ops for marker in _RANDOM_OPS):
            return "random"
        if any(op in _OPAQUE_OPS for op in ops):
            return "opaque"
        return None
    if isinstance(x, keras.utils.PyDataset):
        return "opaque"
    if isinstance(x, (np.ndarray, tf.Tensor)):
        return None
    return "unsupported"


_REASONS = {
    "random": "the tf.data pipeline has random ops (augmentation?)",
    "opaque": "the data comes from Python code that may be random; pass feature_cache=True "
    "if it is not",
    "infinite": "the dataset repeats forever",
    "unsupported": "this kind of input is not cached (numpy, tensors, tf.data and PyDataset are)",
}


def cache_decision(assembly, x, fit_kwargs: dict, setting: FeatureCache) -> str | None:
    """None if the current stage of `assembly`'s model can train on cached features, else
    why not (or "" if it is not a frozen stage, which needs no message)."""
    if setting.mode is False:
        return ""
    if assembly.feature_model.trainable_weights or not assembly.backbone_layer.inference_mode:
        return ""  # something before the head trains: not a frozen stage
    if assembly.augmentation is not None:
        return "the model has augmentation layers"
    reasons = [_data_randomness(x)]
    validation = fit_kwargs.get("validation_data")
    if validation is not None:
        reasons.append(
            _data_randomness(validation[0] if isinstance(validation, tuple) else validation)
        )
    for reason in reasons:
        if reason == "opaque" and setting.mode is True:
            continue
        if reason is not None:
            return _REASONS[reason]
    return None


# --- Computing and storing features ------------------------------------------------


class _Store:
    """Feature batches appended in order: in memory up to a limit, then in a file."""

    def __init__(self, memory_limit: int, directory: str | None):
        self.memory_limit = memory_limit
        self.directory = directory
        self.chunks, self.nbytes, self.count = [], 0, 0
        self.path = self._tempdir = None
        self._file = None

    def append(self, batch: np.ndarray):
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


def _batches(x, y, sample_weight, batch_size):
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
class _Cached:
    features: np.ndarray
    targets: np.ndarray | None
    sample_weight: np.ndarray | None
    batch_size: int
    store: _Store

    def close(self):
        self.store.close()


def _compute(loop, x, y, sample_weight, batch_size, setting) -> _Cached:
    store = _Store(setting.memory_limit, setting.directory)
    targets, weights, sizes = [], [], []
    feature_model = loop.assembly.feature_model
    extract = feature_model.predict_on_batch
    if loop.strategy.num_replicas_in_sync > 1:
        # predict_on_batch would run the whole batch on every replica and concatenate
        # the copies; one call in cross-replica context reads the mirrored weights once.
        extract = tf.function(lambda inputs: feature_model(inputs, training=False))
    try:
        for inputs, batch_y, batch_w in _batches(x, y, sample_weight, batch_size):
            features = extract(inputs)
            store.append(np.asarray(features))
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
        raise _NotCacheable("the dataset's batches have varying sizes")
    return _Cached(
        features=store.array(),
        targets=np.concatenate(targets) if targets else None,
        sample_weight=np.concatenate(weights) if weights else None,
        batch_size=sizes[0] if sizes else batch_size,
        store=store,
    )


class _NotCacheable(Exception):
    pass


def _feature_dataset(cached: _Cached, batch_size: int, shuffle) -> tf.data.Dataset:
    """Batches read from the (possibly on-disk) features, reshuffled each epoch if asked."""
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
        dataset = dataset.shuffle(-(-count // batch_size), reshuffle_each_iteration=True)
    elif shuffle:
        dataset = dataset.shuffle(count, reshuffle_each_iteration=True).batch(batch_size)
    else:
        dataset = dataset.batch(batch_size)
    return dataset.map(take).prefetch(2)


# --- Training the head on cached features ------------------------------------------------


class _OnFullModel(keras.callbacks.Callback):
    """Runs a user callback as if the full model were training (it sees `tuner.model`)."""

    def __init__(self, callback, full_model):
        super().__init__()
        self.callback, self.full_model = callback, full_model
        callback.set_model(full_model)
        for hook in _HOOKS:
            setattr(self, hook, self._forward(hook))

    def set_model(self, model):
        self.head_model = model

    def set_params(self, params):
        self.callback.set_params(params)

    def _forward(self, hook):
        def call(*args, **kwargs):
            getattr(self.callback, hook)(*args, **kwargs)
            if self.full_model.stop_training:
                self.head_model.stop_training = True

        return call


def _split(cached: _Cached, validation_split: float):
    """Keras' `validation_split`: the last fraction of the examples, before shuffling."""
    split_at = split_index(len(cached.features), validation_split)

    def piece(rows: slice) -> _Cached:
        def take(array):
            return None if array is None else array[rows]

        return _Cached(
            cached.features[rows],
            take(cached.targets),
            take(cached.sample_weight),
            cached.batch_size,
            cached.store,
        )

    return piece(slice(0, split_at)), piece(slice(split_at, None))


def _as_fit_data(cached: _Cached, batch_size, shuffle, as_arrays: bool):
    """What `keras.Model.fit` takes for cached features: arrays when they are in memory and
    came from arrays (Keras then batches and shuffles exactly as it would have), else a
    `tf.data.Dataset` reading them."""
    if as_arrays:
        return cached.features, cached.targets, cached.sample_weight
    return _feature_dataset(cached, batch_size, shuffle), None, None


def _compiled_head_model(loop, steps: int) -> keras.Model:
    """The head alone, compiled like the full model and sharing its optimizer (one state)."""
    head_model = loop.assembly.head_model()
    steps_per_execution = min(_HEAD_STEPS_PER_EXECUTION, max(1, steps))  # not beyond an epoch
    if in_multi_worker_mode(loop.strategy):
        steps_per_execution = 1  # Keras 3.15's multi-step loop fails under multi-worker
    key = (loop.compiler.count, steps_per_execution)
    if getattr(head_model, "_finetune_tf_compiled_for", None) != key:
        compile_args = loop.compiler.keras_args()
        compile_args["optimizer"] = loop.model.optimizer
        compile_args.setdefault("steps_per_execution", steps_per_execution)
        head_model.compile(**compile_args)
        head_model._finetune_tf_compiled_for = key
    return head_model


def fit_on_cached_features(loop, x, y, fit_kwargs: dict, setting: FeatureCache):
    """Trains the head of `loop`'s model on cached backbone outputs (with `loop.keras_fit`);
    returns the `History`, or None when
    the data turns out not to be cacheable (then nothing has trained)."""
    kwargs = dict(fit_kwargs)
    verbose = kwargs.get("verbose", "auto")
    from_dataset = not isinstance(x, (np.ndarray, tf.Tensor))
    batch_size = kwargs.pop("batch_size", None) or KERAS_BATCH_SIZE
    sample_weight = kwargs.pop("sample_weight", None)
    shuffle = kwargs.pop("shuffle", True)
    if isinstance(x, tf.data.Dataset):  # keep its batching; reshuffle if it shuffled
        shuffle = any("Shuffle" in op for op in _dataset_ops(x))
    elif isinstance(x, keras.utils.PyDataset):
        shuffle = "batch" if shuffle else False
    validation = kwargs.pop("validation_data", None)
    validation_split = kwargs.pop("validation_split", 0.0)
    if isinstance(y, tf.Tensor):
        y = y.numpy()

    if from_dataset and validation_split:
        return None  # Keras refuses validation_split for datasets; let it say so
    say("feature cache: running the frozen backbone once over the training data", verbose)
    cached_validation = None
    try:
        cached = _compute(loop, x, y, sample_weight, max(batch_size, _FEATURE_BATCH), setting)
        if validation is not None:
            vx, vy, vw = (
                keras.utils.unpack_x_y_sample_weight(validation)
                if isinstance(validation, tuple)
                else (validation, None, None)
            )
            cached_validation = _compute(loop, vx, vy, vw, _FEATURE_BATCH, setting)
    except _NotCacheable as reason:
        say(f"feature cache off: {reason}", verbose)
        return None
    try:
        nbytes = cached.store.nbytes + (cached_validation.store.nbytes if cached_validation else 0)
        where = "on disk" if cached.store.spilled else "in memory"
        say(f"feature cache: {nbytes / 1024**2:.1f} MiB of features {where}", verbose)
        if validation_split:
            cached, cached_validation = _split(cached, validation_split)
        as_arrays = not from_dataset and not cached.store.spilled
        if from_dataset:
            batch_size = cached.batch_size
        fx, fy, fw = _as_fit_data(cached, batch_size, shuffle, as_arrays)
        if cached_validation is not None:
            validation = _as_fit_data(
                cached_validation, cached_validation.batch_size, False, as_arrays
            )
            kwargs["validation_data"] = validation if as_arrays else validation[0]
        if as_arrays:
            kwargs.update(batch_size=batch_size, shuffle=shuffle, sample_weight=fw)
        else:
            kwargs["shuffle"] = False  # the dataset shuffles itself
        steps = -(-len(cached.features) // batch_size)
        head_model = _compiled_head_model(loop, kwargs.get("steps_per_epoch") or steps)
        model = loop.model
        model.stop_training = False
        kwargs["callbacks"] = [
            _OnFullModel(callback, model) for callback in kwargs.get("callbacks") or []
        ]
        history = loop.keras_fit(head_model, fx, fy, kwargs)
        history.set_model(model)
        model.history = history
        return history
    finally:
        cached.close()
        if cached_validation is not None:
            cached_validation.close()
