"""`Placement`: where one tuner computes: its strategy, that strategy's devices and
the dtype policy of its layers, resolved once from the user's arguments.

Examples:
    >>> from finetune_tf.runtime.placement import Placement
    >>> placement = Placement(strategy=None, mixed_precision=None, memory_growth=None)
    >>> placement.precision is None, len(placement.devices) >= 1
    (True, True)
"""

from __future__ import annotations

import contextlib
import functools

import tensorflow as tf

from finetune_tf.runtime.devices import (
    configure_memory_growth,
    is_chief,
    resolve_strategy,
    strategy_devices,
)
from finetune_tf.runtime.multi_worker import multi_worker_compat
from finetune_tf.runtime.precision import dtype_policy_scope, resolve_precision

__all__ = ["Placement", "in_scope"]


class Placement:
    """The strategy, devices and precision of a tuner (see `FineTuner`'s arguments).

    The code that trains and writes asks it, not the environment, whether XLA
    helps and whether this process writes files, so a test can stand in for a
    GPU or a non-chief worker by replacing those two methods on one object.

    Attributes:
        strategy: the `tf.distribute.Strategy` (`resolve_strategy`).
        devices: list of str. The devices that strategy computes on.
        precision: str or None. The dtype policy (`resolve_precision`); None is float32.
    """

    def __init__(self, strategy="auto", mixed_precision="auto", memory_growth=True):
        configure_memory_growth(memory_growth)
        self.strategy: tf.distribute.Strategy = resolve_strategy(strategy)
        self.devices: list[str] = strategy_devices(self.strategy)
        self.precision: str | None = resolve_precision(mixed_precision, self.devices)

    def is_chief(self) -> bool:
        """Whether this process writes the files a user asks for (all but non-chief
        multi-workers)."""
        return is_chief(self.strategy)

    def xla_helps(self) -> bool:
        """Whether `jit_compile="auto"` turns XLA on: on GPUs and TPUs, not on CPUs."""
        return any(kind in d.upper() for d in self.devices for kind in ("GPU", "TPU"))

    @contextlib.contextmanager
    def scope(self):
        """The strategy's scope (when it is not the current one), mended for multi-worker
        Keras (`multi_worker_compat`)."""
        with contextlib.ExitStack() as stack:
            if self.strategy is not tf.distribute.get_strategy():
                stack.enter_context(self.strategy.scope())
            stack.enter_context(multi_worker_compat(self.strategy))
            yield

    @contextlib.contextmanager
    def building(self):
        """`scope()`, with new layers computing in `precision`."""
        with self.scope(), dtype_policy_scope(self.precision):
            yield


def in_scope(method):
    """Runs a method of an object with a `placement` (a FineTuner) in that `Placement`'s
    `scope()`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.placement.scope():
            return method(self, *args, **kwargs)

    return wrapper
