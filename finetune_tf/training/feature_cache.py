"""The feature cache: a frozen bottom of the model runs once, then only the rest trains.

When the backbone, or its bottom, is frozen (BatchNorm in inference mode) and
nothing random or trainable precedes it, every epoch would feed the same
images through the same function. The cache computes the activations at a cut
once and trains the rest of the model on them: same layers, same optimizer,
same loss, at the cost of one pass through the frozen part instead of one per
epoch. Arrays in memory are read in the batches and order Keras' `fit` would read
them (`seeding.in_keras_order`: found with Keras' own array pipeline, then served
from a plain `tf.data` pipeline of the rows), and a `tf.data` pipeline that does not
shuffle, or shuffles with `reshuffle_each_iteration=False`, gives its batches in the
order the cache saw: then the result is the same within float tolerance. A pipeline that reshuffles
each epoch (and arrays spilled to disk) cannot be replayed: the cached run draws
its own order, seeded by the tuner's `seed`, so its result equals a run without
the cache only in distribution (the progress line says so). With the
whole backbone frozen the cut is its output and only the head trains; with a
frozen bottom (`FreezePolicy.bottom(n)`, `fine_tune`'s second stage under a
chosen policy) it is the deepest single-tensor point below the first trainable
layer (`training.frozen_prefix`).

Activations stay in memory up to `FeatureCache.memory_limit` bytes and spill
to a file on disk beyond it, in float16 or bfloat16 if `FeatureCache(dtype=)`
allows. The cache turns itself off, with a log line saying why, when the data
may be random (augmentation layers in the model, random ops in a `tf.data`
pipeline, Python code whose randomness it cannot see), when a trainable layer
comes before every cut, or when the activations would not fit the memory and
disk limits.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from finetune_tf._checks import check_choice, check_int
from finetune_tf._utils import directory_path, require_writable
from finetune_tf.model.tuned_model import TunedModel
from finetune_tf.runtime.multi_worker import in_multi_worker_mode
from finetune_tf.runtime.progress import say
from finetune_tf.training.feature_store import (
    NotCacheable,
    as_fit_data,
    compute_features,
    split_cached,
)
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.frozen_prefix import FrozenPrefix, frozen_prefix

__all__ = ["FeatureCache", "cache_decision", "fit_on_cached_features"]

_DEFAULT_MEMORY_LIMIT = 2 * 1024**3
_MODES = ("auto", True, False)
_DTYPES = (None, "float16", "bfloat16")
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
    """How frozen stages cache the backbone's outputs (or its frozen bottom's).

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
        disk_limit: int, optional. Bytes of features allowed on disk; when the
            features would need more, the cache turns itself off and the stage
            trains without it. Defaults to `None`: the free space of the disk.
        dtype: `None`, `"float16"` or `"bfloat16"`. Store the features at this
            precision (half the memory and disk of float32, results no longer
            equal to training without the cache). Defaults to `None`: as the
            model computes them.

    Examples:
        >>> from finetune_tf import FeatureCache
        >>> FeatureCache(memory_limit=512 * 1024**2).mode
        'auto'
        >>> FeatureCache(dtype="bfloat16").dtype
        'bfloat16'
    """

    mode: str | bool = "auto"
    memory_limit: int = _DEFAULT_MEMORY_LIMIT
    directory: str | None = None
    disk_limit: int | None = None
    dtype: str | None = None

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
        if self.disk_limit is not None:
            check_int(
                self.disk_limit,
                "disk_limit",
                minimum=0,
                where="FeatureCache",
                meaning="a number of bytes (0 never spills to disk)",
                type_error=ValueError,
            )
        check_choice(
            self.dtype,
            "dtype",
            _DTYPES,
            where="FeatureCache",
            hint="None keeps the computed precision; 'float16' or 'bfloat16' halve the size.",
        )
        if self.directory is not None:
            directory = directory_path(self.directory, "FeatureCache(directory)")
            require_writable(directory, "FeatureCache(directory)")
            object.__setattr__(self, "directory", directory)

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


def _dataset_nodes(dataset: tf.data.Dataset) -> list:
    """The nodes of `dataset`'s graph, those of the functions it calls included."""
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(dataset._as_serialized_graph().numpy())
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes.extend(function.node_def)
    return nodes


def _dataset_ops(dataset: tf.data.Dataset) -> set[str]:
    return {node.op for node in _dataset_nodes(dataset)}


def _reshuffles(dataset: tf.data.Dataset) -> bool:
    """Whether `dataset` gives its elements in a new order each epoch: it shuffles, and not
    with `reshuffle_each_iteration=False` (then every epoch has the order the cache saw)."""
    for node in _dataset_nodes(dataset):
        if "Shuffle" in node.op:
            setting = node.attr.get("reshuffle_each_iteration")
            if setting is None or setting.b:
                return True
    return False


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


def cache_decision(assembly, x, args: FitArgs, setting: FeatureCache) -> FrozenPrefix | str:
    """The split of `assembly`'s model (`training.frozen_prefix`) whose frozen bottom this
    stage can cache, else why not ("" when nothing below the head is frozen: no message)."""
    if setting.mode is False:
        return ""
    if not assembly.backbone_layer.inference_mode or not assembly.freeze_report.frozen_layers:
        return ""  # the whole backbone trains, or its BatchNorm does: nothing is fixed
    if assembly.augmentation is not None:
        return "the model has augmentation layers"
    reasons = [_data_randomness(x)]
    validation = args.validation_data
    if validation is not None:
        reasons.append(
            _data_randomness(validation[0] if isinstance(validation, tuple) else validation)
        )
    for reason in reasons:
        if reason == "opaque" and setting.mode is True:
            continue
        if reason is not None:
            return _REASONS[reason]
    return frozen_prefix(assembly)


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


def _compiled_tail(loop, head_model: keras.Model, steps: int, head_only: bool) -> keras.Model:
    """The tail of the split (the head alone, or the top of the backbone and the head),
    compiled like the full model and sharing its optimizer (one state)."""
    steps_per_execution = min(_HEAD_STEPS_PER_EXECUTION, max(1, steps))  # not beyond an epoch
    if not head_only:
        # The top of a backbone takes long enough a step: batch callbacks as compiled.
        steps_per_execution = loop.model.steps_per_execution
    if in_multi_worker_mode(loop.strategy):
        steps_per_execution = 1  # Keras 3.15's multi-step loop fails under multi-worker
    key = (loop.compiler.count, steps_per_execution)
    if getattr(head_model, "_finetune_tf_compiled_for", None) != key:
        compile_args = loop.compiler.keras_args()
        optimizer = compile_args["optimizer"] = loop.model.optimizer
        compile_args.setdefault("steps_per_execution", steps_per_execution)
        if isinstance(head_model, TunedModel):  # the backbone's weight penalty, as in the model
            head_model.weight_penalty = loop.model.weight_penalty
        if not optimizer.built:
            # Its slots in the order the full model makes them (a checkpoint holds them).
            with loop.strategy.scope():
                optimizer.build(loop.model.trainable_variables)
        head_model.compile(**compile_args)
        head_model._finetune_tf_compiled_for = key
    return head_model


def fit_on_cached_features(loop, x, y, args: FitArgs, setting: FeatureCache, split: FrozenPrefix):
    """Trains the tail of `split` (of `loop`'s model) on the cached activations of its frozen
    prefix (with `loop.keras_fit`); returns the `History`, or None when the data turns out
    not to be cacheable (then nothing has trained)."""
    verbose = args.verbose
    from_dataset = not isinstance(x, (np.ndarray, tf.Tensor))
    batch_size, sample_weight, shuffle = args.batch_size, args.sample_weight, args.shuffle
    if isinstance(x, tf.data.Dataset):  # keep its batching; reshuffle if it reshuffles
        shuffle = _reshuffles(x)
    elif isinstance(x, keras.utils.PyDataset):
        shuffle = "batch" if shuffle else False
    validation, validation_split = args.validation_data, args.validation_split
    # The head trains on the features: these describe the raw data, set anew below.
    args = args.replace(
        batch_size=None,
        sample_weight=None,
        shuffle=None,
        validation_data=None,
        validation_split=None,
    )
    if isinstance(y, tf.Tensor):
        y = y.numpy()

    if from_dataset and validation_split:
        return None  # Keras refuses validation_split for datasets; let it say so
    if split.prefix_model is loop.assembly.feature_model:
        say("feature cache: running the frozen backbone once over the training data", verbose)
    else:
        say(
            f"feature cache: running the frozen bottom of the backbone (up to {split.where}) "
            "once over the training data",
            verbose,
        )
    cached_validation = None
    try:
        cached = compute_features(
            split.prefix_model,
            loop.strategy,
            x,
            y,
            sample_weight,
            max(batch_size, _FEATURE_BATCH),
            setting,
        )
        if validation is not None:
            vx, vy, vw = (
                keras.utils.unpack_x_y_sample_weight(validation)
                if isinstance(validation, tuple)
                else (validation, None, None)
            )
            cached_validation = compute_features(
                split.prefix_model, loop.strategy, vx, vy, vw, _FEATURE_BATCH, setting
            )
    except NotCacheable as reason:
        say(f"feature cache off: {reason}", verbose)
        return None
    try:
        nbytes = cached.store.nbytes + (cached_validation.store.nbytes if cached_validation else 0)
        where = f"on disk ({cached.store.path})" if cached.store.spilled else "in memory"
        shape = "x".join(str(size) for size in split.shape)
        say(
            f"feature cache: {nbytes / 1024**2:.1f} MiB of features {where}: "
            f"{cached.store.dtype} {shape} an example at {split.where}",
            verbose,
        )
        if validation_split:
            cached, cached_validation = split_cached(cached, validation_split)
        as_arrays = not from_dataset and not cached.store.spilled
        if from_dataset:
            batch_size = cached.batch_size
        if shuffle and not as_arrays:
            seeded = "seeded by the tuner's seed" if loop.seed is not None else "not seeded"
            say(
                f"feature cache: the data is reshuffled each epoch; the cached run draws its own "
                f"order ({seeded}), so it equals a run without the cache only in distribution",
                verbose,
            )
        fx, fy, fw = as_fit_data(cached, batch_size, shuffle, as_arrays, seed=loop.seed)
        if cached_validation is not None:
            validation = as_fit_data(
                cached_validation, cached_validation.batch_size, False, as_arrays
            )
            if as_arrays:
                # As batches of a dataset: Keras' array pipeline makes two iterators an
                # evaluation, which cost more than evaluating the head (same batches).
                vx, vy, vw = validation
                rows = (vx, vy) if vw is None else (vx, vy, vw)
                size = args.get("validation_batch_size") or batch_size
                validation = tf.data.Dataset.from_tensor_slices(rows).batch(size)
                args = args.replace(validation_batch_size=None)
            args = args.replace(validation_data=validation if as_arrays else validation[0])
        if as_arrays:
            args = args.replace(batch_size=batch_size, shuffle=shuffle, sample_weight=fw)
        else:
            args = args.replace(shuffle=False)  # the dataset shuffles itself
        steps = -(-len(cached.features) // batch_size)
        head_model = _compiled_tail(
            loop,
            split.tail_model,
            args.get("steps_per_epoch") or steps,
            head_only=split.prefix_model is loop.assembly.feature_model,
        )
        model = loop.model
        model.stop_training = False
        args = args.replace(callbacks=[_OnFullModel(c, model) for c in args.callbacks])
        history = loop.keras_fit(head_model, fx, fy, args, one_pipeline=as_arrays)
        history.set_model(model)
        model.history = history
        return history
    finally:
        cached.close()
        if cached_validation is not None:
            cached_validation.close()
