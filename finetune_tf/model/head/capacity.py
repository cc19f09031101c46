"""How big a head may be: its Dense layers checked against TensorFlow's tensor limit and
this machine's memory before any weight is made (`Head.classifier(10**9)` would
otherwise run out of memory while building)."""

from __future__ import annotations

import os

__all__ = ["check_dense_size"]

# The most weights one Dense kernel may hold: TensorFlow indexes a tensor's elements with
# int32 in many kernels, and a head this size would not fit a training step in memory.
_MAX_KERNEL_SIZE = 2**31 - 1
# Bytes a float32 weight takes while training with Adam: itself, its gradient, 2 slots.
_TRAINING_BYTES_PER_WEIGHT = 16


def _memory_bytes() -> int | None:
    """This machine's physical memory, where the platform tells."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_dense_size(features, widths: list[int], hidden_units: tuple) -> None:
    """A ValueError, before any weight is made, when a head's Dense layers on `features`
    inputs would not fit: a kernel over TensorFlow's 2**31 - 1 elements, or weights
    that training could not hold in this machine's memory.

    Examples:
        >>> from finetune_tf.model.head.capacity import check_dense_size
        >>> check_dense_size(1280, [10], ())
        >>> check_dense_size(1280, [10**9], ())
        Traceback (most recent call last):
        ...
        ValueError: The head's predictions layer would be a Dense kernel of 1280 x 1000000000 ...
    """
    if features is None:
        return
    memory, total, inputs = _memory_bytes(), 0, int(features)
    for index, width in enumerate(widths):
        layer = f"hidden_units[{index}]={width}" if index < len(hidden_units) else "units"
        name = "predictions" if index == len(hidden_units) else f"hidden_{index + 1}"
        total += (inputs + 1) * width
        too_big = inputs * width > _MAX_KERNEL_SIZE
        if too_big or (memory and total * _TRAINING_BYTES_PER_WEIGHT > memory):
            raise ValueError(
                f"The head's {name} layer would be a Dense kernel of {inputs} x {width} "
                f"({inputs * width:,} weights; the head {total:,}, about "
                f"{total * _TRAINING_BYTES_PER_WEIGHT / 2**30:.1f} GiB to train with Adam), "
                + (
                    "over TensorFlow's limit of 2**31 - 1 elements a tensor"
                    if too_big
                    else f"more than this machine's {memory / 2**30:.1f} GiB of memory"
                )
                + f". Check {layer} (a classifier's num_classes is its units), or pool the "
                "backbone's features (pooling='avg') instead of flattening them."
            )
        inputs = width
