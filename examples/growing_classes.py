"""Grow a trained classifier: digits 0-4, then add 5-9 without forgetting 0-4.

A tuner is fine-tuned on the digits zero to four (scikit-learn's 8x8 digits), with class
names. Then data for five to nine arrives: `add_classes` widens the head (the old rows are
kept exactly) and `fit_new_classes` trains the new classes with a small memory of old
examples (rehearsal, 20 a class) and distillation of the model's old answers. The report
shows the old and the new classes apart; the grown tuner saves, loads and serves all ten
names. For comparison, the same grown tuner trained on the new classes alone forgets the old.

Run: python examples/growing_classes.py [--head-epochs 30 --epochs 10] [--no-compare]
     [--workdir DIR]
"""

# %%
import argparse
import os
import tempfile

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from finetune_tf import Backbone, FineTuner, Head

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def pretrained_cnn(x, y, epochs: int) -> Backbone:
    """A small CNN trained by hand on the old digits, cut below its classifier: a stand-in
    for a downloaded pretrained backbone."""
    encoder = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
        ],
        name="encoder",
    )
    model = keras.Sequential(
        [encoder, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return Backbone.from_model(encoder)


def accuracy(tuner: FineTuner, x, y) -> float:
    return float((tuner.predict(x, verbose=0).argmax(axis=1) == y).mean())


def main(
    head_epochs="auto",
    epochs="auto",
    pretrain_epochs: int = 30,
    seed: int = 0,
    workdir=None,
    compare: bool = True,
):
    # %% The data: one fixed half of the digits to train on, the other to test.
    workdir = workdir or tempfile.mkdtemp()
    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.5, stratify=digits.target, random_state=0
    )
    old = y_train < 5
    x_old, y_old, x_new, y_new = x_train[old], y_train[old], x_train[~old], y_train[~old]
    test_old = y_test < 5

    # %% A tuner for the digits zero to four, with their names.
    keras.utils.set_random_seed(seed)
    backbone = pretrained_cnn(x_old, y_old, pretrain_epochs)
    tuner = FineTuner(backbone, Head.classifier(5), class_names=NAMES[:5], seed=seed)
    tuner.fine_tune(x_old, y_old, head_epochs=head_epochs, epochs=epochs, verbose=0)
    before = accuracy(tuner, x_test[test_old], y_test[test_old])
    print(f"trained on 0-4: old-class accuracy {before:.1%}")
    path = os.path.join(workdir, "digits_0-4.keras")
    tuner.save(path)

    # %% Grow: add five to nine, train them with a memory of old examples.
    tuner.add_classes(NAMES[5:])
    tuner.fit_new_classes(
        x_new, y_new, memory=(x_old, y_old), head_epochs=head_epochs, epochs=epochs, verbose=0
    )
    report = tuner.report(x_test, y_test)
    print(report)
    grown = {name: row["accuracy"] for name, row in report["groups"].items()}

    print(f"old classes: {before:.1%} before, {grown['old']:.1%} grown with memory")
    print(f"new classes: {grown['new']:.1%} grown with memory")

    # %% The same growth trained on the new classes alone (no memory, no distillation).
    forgot = None
    if compare:
        naive = FineTuner.load(path)
        naive.add_classes(NAMES[5:])
        naive.fit_new_classes(
            x_new, y_new, distillation=0.0, head_epochs=head_epochs, epochs=epochs, verbose=0
        )
        forgot = accuracy(naive, x_test[test_old], y_test[test_old])
        print(f"old classes: {forgot:.1%} when trained on the new classes alone")

    # %% A grown tuner saves, loads and serves every name.
    grown_path = os.path.join(workdir, "digits_0-9.keras")
    tuner.save(grown_path)
    again = FineTuner.load(grown_path)
    print("classes after loading:", ", ".join(again.class_names))
    tuner.export(os.path.join(workdir, "serving"))
    return {"before": before, **grown, "naive_old": forgot, "class_names": again.class_names}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-epochs", default="auto", help='head stage epochs ("auto")')
    parser.add_argument("--epochs", default="auto", help='fine-tuning stage epochs ("auto")')
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary dir)")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the growth without memory (quicker)"
    )
    args = parser.parse_args()

    def epochs(value):
        return value if value == "auto" else int(value)

    main(
        epochs(args.head_epochs),
        epochs(args.epochs),
        args.pretrain_epochs,
        args.seed,
        args.workdir,
        not args.no_compare,
    )
