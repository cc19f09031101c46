"""What defines a training run, so that a saved state resumes only the run that wrote it.

`fit(..., checkpoint_dir=d)` stores a fingerprint of the call next to its state:
the data (shapes, dtypes and a hash of a bounded sample of the examples: the
first and last few and a few evenly spaced between them; for a `tf.data.Dataset`
its `element_spec` and length, for a `keras.utils.PyDataset` its type and length,
never iterating either), the schedule (each stage's name, epochs, freeze policy,
learning rate, optimizer, ...), the `compile()` settings, the seed, and the
arguments that shape the epochs (`batch_size`, `validation_split`,
`validation_data`, `sample_weight`, `class_weight`, `shuffle`, steps). A state
whose fingerprint differs from the call's is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import json
import re

import keras
import numpy as np
import tensorflow as tf

from finetune_tf.training.stages import Stage

__all__ = ["describe_data", "differences", "run_fingerprint"]

_EDGE = 4  # the first and the last examples hashed
_SPREAD = 16  # and this many evenly spaced between them
# The fit arguments that change which examples an epoch sees, in which order and how
# they count (callbacks and verbose do not).
_FIT_ARGUMENTS = (
    "batch_size",
    "validation_split",
    "shuffle",
    "class_weight",
    "steps_per_epoch",
    "validation_steps",
    "validation_batch_size",
    "validation_freq",
)
_DATA_ARGUMENTS = ("sample_weight", "validation_data")
# How a part is named in the message that refuses another run's state.
_NAMES = {
    "x": "the training data (x)",
    "y": "the targets (y)",
    "sample_weight": "sample_weight",
    "validation_data": "validation_data",
    "schedule": "the schedule (stages: names, epochs, freeze policies, learning rates, "
    "optimizers, early stopping)",
    "compile": "the compile() settings",
    "seed": "the FineTuner's seed",
    "epochs": "epochs",
    "initial_epoch": "initial_epoch",
}


def _sample_indices(count: int) -> np.ndarray:
    spread = np.linspace(0, count - 1, num=min(_SPREAD, count)).astype(np.int64)
    edges = np.r_[np.arange(min(_EDGE, count)), np.arange(max(0, count - _EDGE), count)]
    return np.unique(np.r_[edges, spread])


def _digest(sample: np.ndarray) -> str:
    hasher = hashlib.sha256(f"{sample.dtype.str}{sample.shape}".encode())
    if sample.dtype.kind in "OUS":  # strings (text): their values, not pointers
        for item in sample.ravel():
            hasher.update(repr(item).encode())
            hasher.update(b"\0")
    else:
        hasher.update(np.ascontiguousarray(sample).tobytes())
    return hasher.hexdigest()[:16]


def describe_data(value):
    """`value` (data given to `fit`) as plain data: shapes, dtypes and a hash of a bounded
    sample of its examples; never iterates a dataset.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.run_fingerprint import describe_data
        >>> a = describe_data(np.zeros((1000, 3), "float32"))
        >>> a["shape"], a["dtype"]
        ([1000, 3], 'float32')
        >>> b = np.zeros((1000, 3), "float32"); b[-1, 0] = 1  # the last example changed
        >>> describe_data(b)["sample"] == a["sample"]
        False
    """
    if value is None:
        return None
    if isinstance(value, dict):
        return {"dict": {str(k): describe_data(value[k]) for k in sorted(value, key=str)}}
    if isinstance(value, tuple) or (
        isinstance(value, list) and value and all(hasattr(v, "shape") for v in value)
    ):
        return {"sequence": [describe_data(v) for v in value]}
    if isinstance(value, tf.data.Dataset):
        return {
            "dataset": str(value.element_spec),
            "cardinality": int(value.cardinality()),
        }
    if isinstance(value, keras.utils.PyDataset):
        try:
            length = len(value)
        except Exception:  # a PyDataset of unknown length
            length = None
        return {"pydataset": type(value).__qualname__, "length": length}
    if isinstance(value, (str, bytes, int, float, bool)):
        return {"value": repr(value)}
    if isinstance(value, list):
        value = np.asarray(value)
    if isinstance(value, tf.Tensor) or hasattr(value, "shape") and hasattr(value, "dtype"):
        shape = [None if d is None else int(d) for d in value.shape]
        dtype = value.dtype.name if isinstance(value, tf.Tensor) else str(np.dtype(value.dtype))
        if not shape or shape[0] is None or shape[0] == 0:
            sample = np.asarray(value)
        else:
            indices = _sample_indices(shape[0])
            if isinstance(value, tf.Tensor):
                sample = tf.gather(value, indices).numpy()
            elif hasattr(value, "iloc"):  # pandas
                sample = value.iloc[indices].to_numpy()
            else:
                sample = np.asarray(value[indices])
        return {"shape": shape, "dtype": dtype, "sample": _digest(sample)}
    return {"type": type(value).__qualname__}


_KERAS_OBJECTS = (keras.optimizers.Optimizer, keras.optimizers.schedules.LearningRateSchedule)


def _plain(value):
    """`value` as JSON data (what a saved state compares with)."""

    def default(item):
        if isinstance(item, _KERAS_OBJECTS):
            return keras.saving.serialize_keras_object(item)
        if isinstance(item, np.generic):
            return item.item()
        if hasattr(item, "get_config"):
            return {"class": type(item).__qualname__, "config": item.get_config()}
        return type(item).__qualname__  # never a repr with an address: it would not repeat

    text = json.dumps(_text_keys(value), default=default, sort_keys=True)
    return _without_counters(json.loads(text))


def _text_keys(value):
    """`value` with every dict key as text: JSON takes no numpy keys (`class_weight` built
    from `np.unique(y)`), and sorting fails on keys of mixed types."""
    if isinstance(value, dict):
        return {
            str(k.item() if isinstance(k, np.generic) else k): _text_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_text_keys(v) for v in value]
    return value


def _without_counters(value):
    """Keras names each new object of a kind `adam`, `adam_1`, ...: a process that builds
    one more optimizer than another must not make its run look different."""
    if isinstance(value, list):
        return [_without_counters(v) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: _without_counters(v) for k, v in value.items()}
    config = value.get("config")
    if "class_name" in value and isinstance(config, dict) and isinstance(config.get("name"), str):
        config["name"] = re.sub(r"_\d+$", "", config["name"])  # a Keras object's own name
    return value


def run_fingerprint(x, y, args, *, schedule, compile_config, seed) -> dict:
    """What defines one `fit` call (`args`: its `FitArgs`), as JSON data.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.fit_args import FitArgs
        >>> from finetune_tf.training.run_fingerprint import run_fingerprint
        >>> parts = run_fingerprint(np.zeros((8, 2)), np.zeros(8), FitArgs({"epochs": 3}),
        ...                         schedule=None, compile_config=None, seed=1)
        >>> sorted(parts)
        ['compile', 'epochs', 'initial_epoch', 'seed', 'x', 'y']
    """
    parts = {"x": describe_data(x), "y": describe_data(y)}
    for name in _DATA_ARGUMENTS:
        if args.get(name) is not None:
            parts[name] = describe_data(args.get(name))
    for name in _FIT_ARGUMENTS:
        if args.get(name) is not None:
            parts[name] = args.get(name)
    if schedule is None:
        parts["epochs"], parts["initial_epoch"] = args.epochs, args.initial_epoch
    else:
        stages = [schedule] if isinstance(schedule, Stage) else list(schedule)
        parts["schedule"] = [
            stage.get_config() if isinstance(stage, Stage) else repr(stage) for stage in stages
        ]
    parts["compile"] = compile_config
    parts["seed"] = seed
    return _plain(parts)


def _brief(value) -> str:
    if isinstance(value, dict) and "shape" in value:
        return f"shape {tuple(value['shape'])} {value['dtype']}"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def differences(saved: dict, now: dict) -> list[str]:
    """What differs between a saved fingerprint and this call's, one phrase a part.

    Examples:
        >>> from finetune_tf.training.run_fingerprint import differences
        >>> differences({"batch_size": 8, "seed": 1}, {"batch_size": 16, "seed": 1})
        ['batch_size (saved: 8, now: 16)']
    """
    found = []
    for key in sorted(set(saved) | set(now)):
        before, after = saved.get(key), now.get(key)
        if before == after:
            continue
        name = _NAMES.get(key, key)
        if (
            isinstance(before, dict)
            and isinstance(after, dict)
            and "sample" in before
            and "sample" in after
            and _brief(before) == _brief(after)
        ):
            found.append(f"{name} (same shape and dtype, other values)")
        else:
            found.append(f"{name} (saved: {_brief(before)}, now: {_brief(after)})")
    return found
