"""Shared by the benchmarks: interleaved timing (both sides see the same machine noise) and
the Keras transfer-learning guide's model, written by hand."""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

SHAPE = (96, 96, 3)


def random_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random 96x96 RGB images in [0, 255] and 10 balanced labels."""
    x = np.random.default_rng(0).random((count, *SHAPE), dtype=np.float32) * 255
    return x, np.arange(count) % 10


def keras_guide_model(classes: int, trainable_top: int = 0) -> keras.Model:
    """MobileNetV3Small (random weights) the Keras guide's way: a frozen base called with
    `training=False`, pooling and a softmax layer; its top `trainable_top` layers train."""
    base = keras.applications.MobileNetV3Small(input_shape=SHAPE, include_top=False, weights=None)
    for layer in base.layers[: len(base.layers) - trainable_top]:
        layer.trainable = False
    inputs = keras.Input(SHAPE)
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def interleaved(runs: dict, rounds: int) -> dict:
    """Calls each of `runs` (name -> no-argument callable) once per round, in turn;
    returns name -> list of wall times in seconds."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict, baseline: str, unit: float = 1.0, label: str = "s") -> None:
    """Prints the median of each and its ratio to `baseline`."""
    base = statistics.median(times[baseline])
    width = max(len(name) for name in times)
    for name, values in times.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / unit
        print(
            f"  {name:<{width}}  median {median / unit:8.3f} {label} "
            f"(range {spread:.3f}, n={len(values)})  ratio to {baseline}: {median / base:.3f}"
        )
