"""Mixed precision for one FineTuner's model, without touching the global Keras policy.

Keras sets mixed precision process-wide (`keras.config.set_dtype_policy`),
which would change every model a notebook builds afterwards. A FineTuner
instead builds its own layers under a policy that is set only while they are
created (`dtype_policy_scope`), so the policy lives in those layers (and in
their saved configs) and nowhere else.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from finetune_tf._checks import check_choice

__all__ = ["POLICIES", "dtype_policy_scope", "gpu_benefits_from_float16", "resolve_precision"]

POLICIES = ("mixed_float16", "mixed_bfloat16")


def gpu_benefits_from_float16(device_names: list[str]) -> bool:
    """Whether every GPU among `device_names` has Tensor Cores (compute capability >= 7.0)."""
    gpus = [d for d in device_names if "GPU" in d.upper()]
    if not gpus:
        return False
    details = [tf.config.experimental.get_device_details(g) for g in _physical_gpus(gpus)]
    return bool(details) and all(
        tuple(d.get("compute_capability", (0, 0))) >= (7, 0) for d in details
    )


def _physical_gpus(names: list[str]):
    indexes = {tf.DeviceSpec.from_string(n).device_index for n in names}
    physical = tf.config.list_physical_devices("GPU")
    return [physical[i] for i in sorted(indexes) if i is not None and i < len(physical)]


def resolve_precision(mixed_precision, device_names: list[str]) -> str | None:
    """The dtype policy name for a FineTuner's layers, or None for float32.

    `"auto"` is `"mixed_float16"` on GPUs with compute capability 7.0 or more
    (where Tensor Cores make it about twice as fast), `"mixed_bfloat16"` on
    TPUs, and float32 elsewhere (CPUs and older GPUs gain nothing).

    Examples:
        >>> from finetune_tf.runtime.precision import resolve_precision
        >>> resolve_precision("auto", ["/job:localhost/replica:0/task:0/device:CPU:0"]) is None
        True
        >>> resolve_precision("mixed_bfloat16", [])
        'mixed_bfloat16'
    """
    check_choice(
        mixed_precision,
        "mixed_precision",
        ("auto", None, *POLICIES, "float32", False),
        hint="Use mixed_float16 on NVIDIA GPUs, mixed_bfloat16 on TPUs and recent CPUs.",
    )
    if mixed_precision is None or mixed_precision in ("float32", False):
        return None
    if mixed_precision == "auto":
        if any("TPU" in d.upper() for d in device_names):
            return "mixed_bfloat16"
        return "mixed_float16" if gpu_benefits_from_float16(device_names) else None
    return mixed_precision


@contextlib.contextmanager
def dtype_policy_scope(policy: str | None):
    """Layers created in the block take `policy`; the global policy is restored after."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
