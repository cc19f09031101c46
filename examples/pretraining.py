"""Pre-training: many unlabeled images, few labels.

scikit-learn's handwritten digits (8x8 grayscale), split in half. All the training images
are used without their labels to pre-train a small conv encoder (`Backbone.pretrain` with
`method="contrastive"`, which did best on these images; `--method denoising` trains a
denoising auto-encoder whose decoder is built for you); then only `--labels` labeled
images per class fine-tune it with `FineTuner.fine_tune`. The same network from scratch,
with the same `fine_tune`, is the baseline; both are scored on the test half.

Run: python examples/pretraining.py [--labels 5] [--method contrastive] [--pretrain-epochs auto]
     [--head-epochs auto] [--epochs auto] [--seed 0]
"""

# %%
import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits

from finetune_tf import Backbone, FineTuner, Head


def build_encoder() -> keras.Model:
    """The encoder both sides train: two conv blocks, 8x8x1 images to 2x2x64 features."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool2"),
        ],
        name="encoder",
    )


def main(
    labels: int = 5,
    method: str = "contrastive",
    pretrain_epochs: int | str = "auto",
    head_epochs: int | str = "auto",
    epochs: int | str = "auto",
    seed: int = 0,
):
    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (n, 8, 8, 1) in [0, 1]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[: len(x) // 2], order[len(x) // 2 :]
    rng = np.random.default_rng(seed)
    few = np.concatenate(
        [rng.choice(train[y[train] == c], labels, replace=False) for c in range(10)]
    )

    # %% 1. Two identical encoders: one to pre-train, one to train from scratch.
    scratch = Backbone.from_model(build_encoder())
    pretrained = scratch.copy()

    # %% 2. Pre-train on every training image, without labels (the backbone trains in place).
    pretrained.pretrain(x[train], method=method, epochs=pretrain_epochs, seed=seed, verbose=0)

    # %% 3. Fine-tune both on the few labeled images, with the same default recipe.
    accuracy = {}
    for name, backbone in (("pretrained", pretrained), ("scratch", scratch)):
        tuner = FineTuner(backbone, Head.classifier(10), seed=seed)
        tuner.fine_tune(x[few], y[few], head_epochs=head_epochs, epochs=epochs, verbose=0)
        accuracy[name] = float(tuner.report(x[test], y[test])["accuracy"])

    print(f"Digits with {labels} labels per class, tested on {len(test)} images:")
    rows = {
        "pretrained": f"pre-trained on {len(train)} unlabeled images:",
        "scratch": "same network from scratch:",
    }
    width = max(map(len, rows.values()))
    for name, text in rows.items():
        print(f"  {text:<{width}} {accuracy[name]:.1%} accuracy")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=5, help="labeled images per class")
    parser.add_argument(
        "--method",
        default="contrastive",
        choices=["contrastive", "denoising", "masked", "autoencoder"],
        help="how the encoder pre-trains without labels",
    )
    epochs_or_auto = lambda text: text if text == "auto" else int(text)  # noqa: E731
    parser.add_argument(
        "--pretrain-epochs",
        type=epochs_or_auto,
        default="auto",
        help='epochs of pre-training ("auto": about 5000 optimizer steps, within bounds)',
    )
    parser.add_argument("--head-epochs", type=epochs_or_auto, default="auto")
    parser.add_argument("--epochs", type=epochs_or_auto, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        labels=args.labels,
        method=args.method,
        pretrain_epochs=args.pretrain_epochs,
        head_epochs=args.head_epochs,
        epochs=args.epochs,
        seed=args.seed,
    )
