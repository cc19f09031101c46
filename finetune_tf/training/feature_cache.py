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

import keras
import numpy as np
import tensorflow as tf

from finetune_tf._checks import check_choice, check_int
from finetune_tf._utils import directory_path, require_writable
from finetune_tf.runtime.multi_worker import in_multi_worker_mode
from finetune_tf.runtime.progress import say
from finetune_tf.training.feature_store import (
    NotCacheable,
    as_fit_data,
    compute_features,
    split_cached,
)
from finetune_tf.training.fit_args import FitArgs

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


def cache_decision(assembly, x, args: FitArgs, setting: FeatureCache) -> str | None:
    """None if the current stage of `assembly`'s model can train on cached features, else
    why not (or "" if it is not a frozen stage, which needs no message)."""
    if setting.mode is False:
        return ""
    if assembly.feature_model.trainable_weights or not assembly.backbone_layer.inference_mode:
        return ""  # something before the head trains: not a frozen stage
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
    return None


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


def fit_on_cached_features(loop, x, y, args: FitArgs, setting: FeatureCache):
    """Trains the head of `loop`'s model on cached backbone outputs (with `loop.keras_fit`);
    returns the `History`, or None when
    the data turns out not to be cacheable (then nothing has trained)."""
    verbose = args.verbose
    from_dataset = not isinstance(x, (np.ndarray, tf.Tensor))
    batch_size, sample_weight, shuffle = args.batch_size, args.sample_weight, args.shuffle
    if isinstance(x, tf.data.Dataset):  # keep its batching; reshuffle if it shuffled
        shuffle = any("Shuffle" in op for op in _dataset_ops(x))
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
    say("feature cache: running the frozen backbone once over the training data", verbose)
    cached_validation = None
    try:
        cached = compute_features(
            loop.assembly.feature_model,
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
                loop.assembly.feature_model, loop.strategy, vx, vy, vw, _FEATURE_BATCH, setting
            )
    except NotCacheable as reason:
        say(f"feature cache off: {reason}", verbose)
        return None
    try:
        nbytes = cached.store.nbytes + (cached_validation.store.nbytes if cached_validation else 0)
        where = "on disk" if cached.store.spilled else "in memory"
        say(f"feature cache: {nbytes / 1024**2:.1f} MiB of features {where}", verbose)
        if validation_split:
            cached, cached_validation = split_cached(cached, validation_split)
        as_arrays = not from_dataset and not cached.store.spilled
        if from_dataset:
            batch_size = cached.batch_size
        fx, fy, fw = as_fit_data(cached, batch_size, shuffle, as_arrays)
        if cached_validation is not None:
            validation = as_fit_data(
                cached_validation, cached_validation.batch_size, False, as_arrays
            )
            args = args.replace(validation_data=validation if as_arrays else validation[0])
        if as_arrays:
            args = args.replace(batch_size=batch_size, shuffle=shuffle, sample_weight=fw)
        else:
            args = args.replace(shuffle=False)  # the dataset shuffles itself
        steps = -(-len(cached.features) // batch_size)
        head_model = _compiled_head_model(loop, args.get("steps_per_epoch") or steps)
        model = loop.model
        model.stop_training = False
        args = args.replace(callbacks=[_OnFullModel(c, model) for c in args.callbacks])
        history = loop.keras_fit(head_model, fx, fy, args)
        history.set_model(model)
        model.history = history
        return history
    finally:
        cached.close()
        if cached_validation is not None:
            cached_validation.close()
