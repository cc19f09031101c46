"""Growing a classifier: old-class accuracy kept, new classes learned (issue 18, part 2).

For each seed: a small CNN encoder (random weights, in this script) fine-tuned on classes
`0..k-1` of scikit-learn's digits with `fine_tune()`'s defaults; its old-class test accuracy
is recorded and the tuner saved. Then, each from that file (`FineTuner.load`),
`add_classes(...)` adds the remaining classes and trains them by

- (a) rehearsal: `fit_new_classes(x_new, y_new, memory=(x_old, y_old))`, every default
  (20 exemplars a class, distillation on);
- (b) LwF: `fit_new_classes(x_new, y_new)`, no old data kept (distillation alone);
- (c) naive: `fit_new_classes(x_new, y_new, distillation=0)`: the same recipe on the new
  classes alone, no remedy (the forgetting baseline);

beside (joint) the same encoder fine-tuned on all classes at once with the same recipe (the
scratch/joint baseline: what the new classes could reach). Digits are 8x8x1 in [0, 1], one
fixed stratified half to train on, the other to test. Printed: old-class accuracy before
and after, new-class accuracy against joint's, mean +- std over the seeds.

Run: python benchmarks/growing.py [--seeds 3] [--split 5]   (--split 7: 0-6 -> 7-9)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from finetune_tf import Backbone, FineTuner, Head  # noqa: E402


def pretrained_encoder(seed: int, x_old, y_old, path: str) -> str:
    """The small CNN of examples/quickstart.py, pretrained by hand on the old classes (Adam
    1e-3, 30 epochs; quality.py's stand-in), cut below its classifier, saved to `path`."""
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.BatchNormalization(name="bn2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        ],
        name="encoder",
    )
    classes = int(y_old.max()) + 1
    model = keras.Sequential(
        [encoder, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)]
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_old, y_old, epochs=30, batch_size=32, verbose=0)
    encoder.save(path)
    return path


def encoder(path: str) -> Backbone:
    return Backbone.from_model(keras.models.load_model(path))


def accuracy(tuner: FineTuner, x, y, classes) -> float:
    """Accuracy (%) on the test examples of `classes`, over all the head's classes."""
    keep = np.isin(y, classes)
    predicted = tuner.predict(x[keep], verbose=0).argmax(axis=1)
    return 100.0 * float((predicted == y[keep]).mean())


def run(seed: int, split: int, data, workdir: str) -> dict:
    x_train, x_test, y_train, y_test = data
    old, new = list(range(split)), list(range(split, 10))
    is_old = y_train < split
    x_old, y_old, x_new, y_new = (
        x_train[is_old],
        y_train[is_old],
        x_train[~is_old],
        y_train[~is_old],
    )
    results = {}
    start = time.perf_counter()
    encoder_path = pretrained_encoder(
        seed, x_old, y_old, os.path.join(workdir, f"encoder_{seed}.keras")
    )
    tuner = FineTuner(encoder(encoder_path), Head.classifier(split), seed=seed)
    tuner.fine_tune(x_old, y_old, verbose=0)
    results["before: old"] = accuracy(tuner, x_test, y_test, old)
    path = os.path.join(workdir, f"old_{seed}.keras")
    tuner.save(path)
    remedies = {
        "rehearsal": {"memory": (x_old, y_old)},
        "lwf": {},
        "naive": {"distillation": 0.0},
    }
    for name, kwargs in remedies.items():
        grown = FineTuner.load(path)
        grown.add_classes(len(new))
        grown.fit_new_classes(x_new, y_new, verbose=0, **kwargs)
        results[f"{name}: old"] = accuracy(grown, x_test, y_test, old)
        results[f"{name}: new"] = accuracy(grown, x_test, y_test, new)
    joint = FineTuner(encoder(encoder_path), Head.classifier(10), seed=seed)
    joint.fine_tune(x_train, y_train, verbose=0)
    results["joint: old"] = accuracy(joint, x_test, y_test, old)
    results["joint: new"] = accuracy(joint, x_test, y_test, new)
    print(f"  seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--split", type=int, default=5, help="old classes are 0..split-1")
    args = parser.parse_args()
    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    data = train_test_split(x, digits.target, test_size=0.5, stratify=digits.target, random_state=0)
    print(f"digits 0-{args.split - 1} -> {args.split}-9, seeds 0..{args.seeds - 1}")
    with tempfile.TemporaryDirectory() as workdir:
        runs = [run(seed, args.split, data, workdir) for seed in range(args.seeds)]
    for key in runs[0]:
        values = np.array([r[key] for r in runs])
        print(f"  {key:<16} {values.mean():5.1f} +- {values.std():4.1f}   {np.round(values, 1)}")


if __name__ == "__main__":
    main()
