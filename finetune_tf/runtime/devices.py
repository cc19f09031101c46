"""Where a FineTuner trains: the `tf.distribute` strategy, its devices, GPU memory.

`resolve_strategy("auto")` picks what a user would pick by hand:

- inside a user's `with strategy.scope():`, that strategy;
- `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster of
  workers (created when `finetune_tf` is imported, because TensorFlow only
  accepts it before its runtime starts);
- `TPUStrategy` when TPU devices are attached (or `TPU_NAME` names one);
- `MirroredStrategy` over all local GPUs when there are several, or over the
  CPU's logical devices when there is no GPU and the CPU was split into several;
- otherwise TensorFlow's default strategy: plain device placement, which runs
  on the one GPU when there is one and on the CPU when there is none.
"""

from __future__ import annotations

import json
import os
import warnings

import tensorflow as tf
from tensorflow.python.distribute import distribute_lib as _distribute_lib
from tensorflow.python.eager import context as _context

__all__ = [
    "configure_memory_growth",
    "describe",
    "is_chief",
    "is_default",
    "multi_worker_strategy",
    "resolve_strategy",
    "runtime_started",
    "strategy_devices",
    "tf_config_workers",
]

_multi_worker_strategy = None  # created once per process: TensorFlow allows no second one


def tf_config_workers(environ=None) -> int:
    """How many workers `TF_CONFIG` describes (0 when it describes none, or a PS cluster).

    Examples:
        >>> from finetune_tf.runtime.devices import tf_config_workers
        >>> cluster = '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}'
        >>> tf_config_workers({"TF_CONFIG": cluster})
        2
    """
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"The TF_CONFIG environment variable is not valid JSON ({error}). Received: "
            f"TF_CONFIG={raw[:200]!r}. Expected e.g. "
            '{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:23456"]}, '
            '"task": {"type": "worker", "index": 0}}.'
        ) from None
    if "ps" in cluster:
        return 0  # a parameter-server cluster: the user's own strategy, not ours
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def runtime_started() -> bool:
    """Whether TensorFlow's eager runtime is initialised (devices can no longer be configured)."""
    return _context.context()._context_handle is not None


def multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """This process's `MultiWorkerMirroredStrategy` from `TF_CONFIG`, created once.

    TensorFlow configures collective ops only before its runtime starts, so
    this must first run before any other TensorFlow work; `import finetune_tf`
    does it when `TF_CONFIG` describes several workers; `FineTuner(strategy="auto")`
    then uses it. See `examples/multi_worker.py` for a whole run.
    """
    global _multi_worker_strategy
    if _multi_worker_strategy is None:
        if runtime_started():
            raise RuntimeError(
                "TF_CONFIG describes a multi-worker cluster, but TensorFlow's runtime had "
                "already started when finetune_tf tried to create the "
                "MultiWorkerMirroredStrategy (TensorFlow allows that only at program start). "
                "Import finetune_tf before any other TensorFlow work, or create "
                "tf.distribute.MultiWorkerMirroredStrategy() first thing and pass it as "
                "FineTuner(strategy=...)."
            )
        _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return _multi_worker_strategy


def configure_memory_growth(enabled: bool | None) -> None:
    """Lets TensorFlow grow GPU memory as needed instead of taking it all (`None`: leave as is).

    Must run before TensorFlow first uses the GPUs; afterwards it warns and
    changes nothing, since TensorFlow cannot change it then.

    Examples:
        >>> from finetune_tf.runtime.devices import configure_memory_growth
        >>> configure_memory_growth(True)  # what FineTuner(memory_growth=True) does first
    """
    if enabled is None:
        return
    if not isinstance(enabled, bool):
        raise TypeError(
            "`memory_growth` must be True (grow GPU memory as needed), False (take it all "
            f"at once) or None (leave the setting alone). Received: memory_growth={enabled!r}."
        )
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if tf.config.experimental.get_memory_growth(gpu) != enabled:
                tf.config.experimental.set_memory_growth(gpu, enabled)
        except RuntimeError:
            warnings.warn(
                f"finetune_tf could not set GPU memory growth to {enabled}: TensorFlow has "
                "already initialised the GPUs in this process. Create the FineTuner before "
                "other TensorFlow work, or pass memory_growth=None to leave the setting alone.",
                RuntimeWarning,
                stacklevel=3,
            )
            return


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME"))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def resolve_strategy(strategy="auto") -> tf.distribute.Strategy:
    """The strategy a FineTuner trains under (see the module docstring for `"auto"`).

    `None` is the strategy in effect where the FineTuner is created
    (TensorFlow's default one outside any `strategy.scope()`).

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.devices import resolve_strategy
        >>> resolve_strategy(None) is tf.distribute.get_strategy()
        True
    """
    if strategy is None or (isinstance(strategy, str) and strategy == "auto"):
        if strategy is None or tf.distribute.has_strategy():
            return tf.distribute.get_strategy()
        if tf_config_workers() > 1:
            return multi_worker_strategy()
        if tf.config.list_logical_devices("TPU") or os.environ.get("TPU_NAME"):
            return _tpu_strategy()
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        cpus = tf.config.list_logical_devices("CPU")
        if not gpus and len(cpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in cpus])
        return tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    raise TypeError(
        '`strategy` must be "auto", None or a tf.distribute.Strategy, e.g. '
        f"tf.distribute.MirroredStrategy(). Received: strategy={strategy!r}."
    )


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is TensorFlow's default one (plain device placement, no scope).

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.devices import is_default
        >>> is_default(tf.distribute.get_strategy()), is_default(tf.distribute.MirroredStrategy())
        (True, False)
    """
    return isinstance(strategy, _distribute_lib._DefaultDistributionStrategy)


def strategy_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """The devices `strategy` computes on, as full TensorFlow device names.

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.devices import strategy_devices
        >>> strategy_devices(tf.distribute.OneDeviceStrategy("/cpu:0"))
        ['/job:localhost/replica:0/task:0/device:CPU:0']
    """
    if not is_default(strategy):
        return [tf.DeviceSpec.from_string(d).to_string() for d in strategy.extended.worker_devices]
    # The default strategy: TensorFlow places ops on the first GPU, else the CPU.
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    spec = tf.DeviceSpec.from_string(devices[0].name)
    local = tf.DeviceSpec(job="localhost", replica=0, task=0)
    return [local.make_merged_spec(spec).to_string()]


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line saying where training runs.

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.devices import describe
        >>> describe(tf.distribute.OneDeviceStrategy("/cpu:0"))
        '1 device (CPU:0), OneDeviceStrategy'
    """
    devices = strategy_devices(strategy)
    short = ", ".join(d.split("device:")[-1] for d in devices)
    kind = "default strategy" if is_default(strategy) else type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        kind = f"MultiWorkerMirroredStrategy, {resolver.task_type} {resolver.task_id}"
        kind += f" of {tf_config_workers()}"
    return f"{len(devices)} device{'s' if len(devices) != 1 else ''} ({short}), {kind}"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes files: always, except on non-chief multi-workers.

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.devices import is_chief
        >>> is_chief(tf.distribute.get_strategy())
        True
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    if not strategy.extended._in_multi_worker_mode():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief
