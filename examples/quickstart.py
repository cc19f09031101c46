"""Quickstart: fine-tune a pretrained backbone on a few labelled examples, offline.

A stand-in for a downloaded pretrained model: a small CNN is pretrained on
scikit-learn's bundled handwritten digits 0-4 and saved to a `.keras` file.
`finetune_tf` then loads it as a `Backbone`, puts a new `Head` on it and
fine-tunes it on digits 5-9 from only a few labelled examples per class with
`fine_tune()`, the default two-stage recipe: the head alone on the frozen
backbone (on cached features, so its epochs are nearly free), then the whole
backbone at a lower, layer-wise decaying learning rate. The same network
trained from scratch on the same few labels is the baseline. With a real
model, replace the backbone line with e.g.
`Backbone.from_keras_applications("MobileNetV3Small", weights="imagenet")`
or `Backbone.from_hub("https://tfhub.dev/...")`.

Run: python examples/quickstart.py [--shots 5] [--head-epochs auto] [--epochs auto] [--seed 0]
"""

# %%
import argparse
import atexit
import os
import shutil
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits

import finetune_tf
from finetune_tf import Backbone, FineTuner, Head


def build_cnn(num_classes: int) -> keras.Model:
    """The small CNN used both for pretraining and for the from-scratch baseline."""
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1.0 / 16.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def few_shot_split(x, y, shots: int, rng: np.random.Generator):
    """`shots` labelled examples per class for training; the rest for testing."""
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)]
    )
    test = np.setdiff1d(np.arange(len(y)), train)
    return x[train], y[train], x[test], y[test]


def main(
    shots: int = 5,
    head_epochs: int | str = "auto",
    epochs: int | str = "auto",
    seed: int = 0,
    workdir: str | None = None,
):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    images = digits.images[..., None].astype("float32")  # (n, 8, 8, 1), values 0..16
    labels = digits.target

    # %% 1. "Download" a pretrained model: pretrain on digits 0-4 and save it.
    source = labels < 5
    pretrained = build_cnn(5)
    pretrained.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    pretrained.fit(images[source], labels[source], epochs=20, verbose=0)
    keep = workdir is not None
    if workdir is None:  # a temporary directory, removed when the script ends
        workdir = tempfile.mkdtemp(prefix="finetune_tf_quickstart_")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    pretrained_path = os.path.join(workdir, "pretrained_digits_0-4.keras")
    pretrained.save(pretrained_path)

    # %% 2. The new task: digits 5-9 with only `shots` labels per class.
    target = ~source
    x_train, y_train, x_test, y_test = few_shot_split(
        images[target], labels[target] - 5, shots, rng
    )

    # %% 3. Fine-tune: the head on the frozen backbone, then the whole backbone, gently.
    backbone = Backbone.from_file(pretrained_path, output_layer="features")
    tuner = FineTuner(backbone, Head.classifier(num_classes=5))  # every default
    history = tuner.fine_tune(x_train, y_train, head_epochs=head_epochs, epochs=epochs, verbose=0)
    print(f"stages: {', '.join(dict.fromkeys(history.history['stage']))}; {tuner.freeze_report}")
    _, tuned_accuracy = tuner.evaluate(x_test, y_test, verbose=0)

    # %% 4. Baseline: the same network from scratch on the same few labels.
    scratch = build_cnn(5)
    scratch.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    budget = len(history.epoch)  # both stages' epochs: the same optimizer steps as fine_tune
    scratch.fit(x_train, y_train, epochs=budget, verbose=0)
    _, scratch_accuracy = scratch.evaluate(x_test, y_test, verbose=0)

    # %% 5. Save the fine-tuned model; it loads back with plain Keras after `import finetune_tf`.
    tuned_path = os.path.join(workdir, "tuned_digits_5-9.keras")
    tuner.save(tuned_path)
    restored = finetune_tf.load_model(tuned_path)
    same = np.allclose(restored.predict(x_test, verbose=0), tuner.predict(x_test, verbose=0))

    print(f"Digits 5-9 with {shots} labels per class, tested on {len(y_test)} images:")
    print(f"  fine-tuned from the pretrained backbone: {tuned_accuracy:.0%} accuracy")
    print(f"  same network from scratch, same steps:   {scratch_accuracy:.0%} accuracy")
    kept = "" if keep else " (a temporary directory; --workdir DIR keeps the files)"
    print(f"  saved to {tuned_path}{kept}, reloaded with identical predictions: {same}")
    return {"fine_tuned": tuned_accuracy, "scratch": scratch_accuracy, "reloaded_same": same}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=5, help="labelled examples per class")
    epochs_or_auto = lambda text: text if text == "auto" else int(text)  # noqa: E731
    parser.add_argument(
        "--head-epochs",
        type=epochs_or_auto,
        default="auto",
        help='epochs of the head stage ("auto": at least 500 optimizer steps)',
    )
    parser.add_argument(
        "--epochs",
        type=epochs_or_auto,
        default="auto",
        help='epochs of the fine-tuning stage ("auto": at least 300 optimizer steps)',
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the model files here (default: a temporary dir)")
    args = parser.parse_args()
    main(
        shots=args.shots,
        head_epochs=args.head_epochs,
        epochs=args.epochs,
        seed=args.seed,
        workdir=args.workdir,
    )
