"""Transfer quality on scikit-learn's digits: `fine_tune` vs the Keras guide by hand vs scratch.

Per seed: a small CNN is pretrained on digits 0-4 (the stand-in for a
downloaded model); the task is digits 5-9 with 10 labelled examples per class,
tested on all the other 5-9 images. Three ways, each with its own defaults:

- from scratch, twice: the same CNN, randomly initialised, trained on the 50
  labels with exactly fine_tune's budget (as many epochs as both its stages
  took, batch 32), and to convergence (200 epochs at batch 16: 800 steps);
- the Keras transfer-learning guide written by hand: frozen base with
  `training=False`, new head for 20 epochs at Adam 1e-3, then the whole base
  unfrozen and recompiled, 10 epochs at Adam 1e-5;
- `FineTuner.fine_tune()` with its defaults (30 head epochs at 3e-3, then 300
  steps at 3e-4 with layer-wise decay 0.8: 150 epochs of 2 batches) and
  `FreezePolicy.none()`.

Prints test accuracy mean +- std over the seeds.

Run: python benchmarks/quality_digits.py [--seeds 5]
"""

import argparse
import os
import sys
import tempfile

import _common  # noqa: F401  (quiet TensorFlow logs)
import keras
import numpy as np
from sklearn.datasets import load_digits

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from quickstart import build_cnn, few_shot_split  # noqa: E402  (one CNN, one split)

BATCH = 32
GUIDE_EPOCHS = (20, 10)


def pretrain(images, labels, seed, workdir):
    keras.utils.set_random_seed(seed)
    model = build_cnn(5)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=20, batch_size=32, verbose=0)
    path = os.path.join(workdir, f"pretrained_{seed}.keras")
    model.save(path)
    return path


def scratch(data, seed, epochs, batch_size=BATCH):
    x, y, xt, yt = data
    keras.utils.set_random_seed(seed)
    model = build_cnn(5)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model.evaluate(xt, yt, verbose=0)[1]


def keras_guide(data, seed, path):
    x, y, xt, yt = data
    head_epochs, epochs = GUIDE_EPOCHS
    keras.utils.set_random_seed(seed)
    pretrained = keras.models.load_model(path)
    base = keras.Model(pretrained.input, pretrained.get_layer("features").output)
    base.trainable = False
    inputs = keras.Input((8, 8, 1))
    features = base(inputs, training=False)
    outputs = keras.layers.Dense(5, activation="softmax")(keras.layers.Dropout(0.2)(features))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=head_epochs, batch_size=BATCH, verbose=0)
    base.trainable = True
    model.compile(
        keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    return model.evaluate(xt, yt, verbose=0)[1]


def finetune_tf_default(data, seed, path):
    x, y, xt, yt = data
    keras.utils.set_random_seed(seed)
    backbone = Backbone.from_file(path, output_layer="features")
    tuner = FineTuner(backbone, Head.classifier(5, dropout=0.2), freeze=FreezePolicy.none())
    history = tuner.fine_tune(x, y, batch_size=BATCH, verbose=0)
    return tuner.evaluate(xt, yt, verbose=0)[1], len(history.epoch)


def main(seeds: int, shots: int = 10):
    digits = load_digits()
    images = digits.images[..., None].astype("float32")
    labels = digits.target
    source, target = labels < 5, labels >= 5
    scores = {
        name: []
        for name in (
            "FineTuner.fine_tune (defaults)",
            "Keras guide, by hand",
            "from scratch, fine_tune's budget",
            "from scratch, to convergence",
        )
    }
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(seeds):
            path = pretrain(images[source], labels[source], seed, workdir)
            rng = np.random.default_rng(seed)
            data = few_shot_split(images[target], labels[target] - 5, shots, rng)
            accuracy, epochs = finetune_tf_default(data, seed, path)
            scores["FineTuner.fine_tune (defaults)"].append(accuracy)
            scores["Keras guide, by hand"].append(keras_guide(data, seed, path))
            scores["from scratch, fine_tune's budget"].append(scratch(data, seed, epochs))
            scores["from scratch, to convergence"].append(scratch(data, seed, 200, 16))
    print(f"digits 0-4 -> 5-9, {shots} labels per class, {seeds} seeds:")
    for name, values in scores.items():
        print(f"  {name:<34} {np.mean(values):6.1%} +- {np.std(values):5.1%}")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    main(args.seeds)
