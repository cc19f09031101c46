"""Keras 3 under `tf.distribute.MultiWorkerMirroredStrategy`: the known breakages, mended.

Keras 3.15's TensorFlow trainer cannot `fit`, `evaluate` or `predict` under a
`MultiWorkerMirroredStrategy` in multi-worker mode (keras-team/keras#20585,
tensorflow/tensorflow#72388). Two places break:

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first batch from the
   distributed iterator to build the model. Under multi-worker that batch is a
   `PerReplica` which Keras' `tree` flattens into its components, so the check
   "every leaf is distributed" is false and the `PerReplica` itself reaches
   `convert_to_tensor`: "Attempt to convert a value (PerReplica...) with an
   unsupported type". The build needs shapes only, so we build from this
   worker's first local replica.
2. `reduce_per_replica(..., reduction="mean")` reduces the logs of each step
   with `strategy.reduce("MEAN", v, axis=0)`. The logs are scalars (loss and
   metric results), which have no axis 0. Metric results are already the same
   on every replica (their variables are synchronised on read), so the mean
   over replicas (`axis=None`) is the right value.

`multi_worker_compat(strategy)` swaps in the mended versions for the duration
of one call and puts the originals back afterwards, also on error; it does
nothing for any other strategy. `tests/system/test_distribute.py` also runs plain
Keras without it and expects the known failure, so the suite tells us when
upstream is fixed and this module can go.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as _tf_trainer

__all__ = ["UPSTREAM_ISSUE", "in_multi_worker_mode", "multi_worker_compat"]

UPSTREAM_ISSUE = "https://github.com/keras-team/keras/issues/20585"
_lock = threading.RLock()
_depth = 0


def in_multi_worker_mode(strategy) -> bool:
    """Whether `strategy` is a MultiWorkerMirroredStrategy spanning more than one worker."""
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _first_local_replica(strategy, batch):
    def first(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(first, batch)


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = _first_local_replica(self.distribute_strategy, next(it))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


_original_reduce_per_replica = _tf_trainer.reduce_per_replica
_original_maybe_symbolic_build = _tf_trainer.TensorFlowTrainer._maybe_symbolic_build


def _reduce_per_replica(values, strategy, reduction):
    if reduction in ("auto", "mean") and in_multi_worker_mode(strategy):

        def mean(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.reduce("MEAN", value, axis=None)
            return value

        return tf.nest.map_structure(mean, values)
    return _original_reduce_per_replica(values, strategy, reduction)


@contextlib.contextmanager
def multi_worker_compat(strategy):
    """Mend Keras 3 for `strategy` while the block runs (nested use is fine).

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.multi_worker import multi_worker_compat
        >>> with multi_worker_compat(tf.distribute.get_strategy()):  # not multi-worker: no-op
        ...     pass
    """
    global _depth
    if not in_multi_worker_mode(strategy):
        yield
        return
    with _lock:
        if _depth == 0:
            _tf_trainer.reduce_per_replica = _reduce_per_replica
            _tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _tf_trainer.reduce_per_replica = _original_reduce_per_replica
                _tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _original_maybe_symbolic_build
