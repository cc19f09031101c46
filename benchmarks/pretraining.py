"""Unsupervised pre-training: does it help when labels are few?

Digits (sklearn's `load_digits`, 8x8 grayscale in [0, 1]), split in half: A pre-trains a
small conv encoder on all training images without labels (`Backbone.pretrain(x,
method="contrastive")` with its defaults), then `FineTuner(...).fine_tune` on `--labels`
labeled images per class with its defaults; B is the same network from scratch with the
same `fine_tune`. Both are scored on the test half, over `--seeds` seeds. `--encoder mlp`
uses a Dense encoder on the 64 pixels as a vector instead (the second setting of
docs/benchmarks.md).

`--method denoising` (or masked, autoencoder) pre-trains by reconstruction instead;
`--epochs` sets the pre-training epochs (default: `"auto"`); `--neighbors 0` makes the
contrastive pairs two views of one input (plain SimCLR) instead of an input and a neighbour.

Usage: python benchmarks/pretraining.py [--labels 5] [--seeds 3] [--encoder conv|mlp]
    [--method contrastive|denoising|masked|autoencoder] [--epochs auto|N] [--temperature T]
    [--neighbors auto|K]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from finetune_tf import Backbone, FineTuner, Head  # noqa: E402


def encoder(kind: str) -> keras.Model:
    """The network both sides train: a small conv encoder, or an MLP on 64 pixels."""
    if kind == "mlp":
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(64, activation="relu"),
            ],
            name="mlp_encoder",
        )
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
    ]
    return keras.Sequential(layers, name="conv_encoder")


def data(kind: str, labels: int, seed: int):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")
    x = x.reshape(-1, 64) if kind == "mlp" else x[..., None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[: len(x) // 2], order[len(x) // 2 :]
    rng = np.random.default_rng(seed)
    few = np.concatenate(
        [rng.choice(train[y[train] == c], labels, replace=False) for c in range(10)]
    )
    return x[train], x[few], y[few], x[test], y[test]


def accuracy(backbone: Backbone, x_few, y_few, x_test, y_test, seed: int) -> float:
    tuner = FineTuner(backbone, Head.classifier(10), seed=seed)
    tuner.fine_tune(x_few, y_few, verbose=0)
    return float(tuner.report(x_test, y_test)["accuracy"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=5, help="labeled images per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--encoder", choices=("conv", "mlp"), default="conv")
    parser.add_argument("--method", default="contrastive")
    parser.add_argument("--noise", default="auto", type=lambda v: v if v == "auto" else float(v))
    parser.add_argument("--temperature", type=float, default=None, help="contrastive only")
    auto_or_int = lambda v: v if v == "auto" else int(v)  # noqa: E731
    parser.add_argument("--neighbors", default="auto", type=auto_or_int, help="contrastive only")
    parser.add_argument("--epochs", default="auto", type=lambda v: v if v == "auto" else int(v))
    args = parser.parse_args()
    contrastive = {}
    if args.method == "contrastive":
        contrastive["neighbors"] = args.neighbors
        if args.temperature is not None:
            contrastive["temperature"] = args.temperature
    results = {"pretrained": [], "scratch": []}
    start = time.perf_counter()
    for seed in range(args.seeds):
        x_all, x_few, y_few, x_test, y_test = data(args.encoder, args.labels, seed)
        keras.utils.set_random_seed(seed)
        scratch = Backbone.from_model(encoder(args.encoder))
        pretrained = scratch.copy()  # the same initial weights on both sides
        pretrained.pretrain(
            x_all,
            method=args.method,
            noise=args.noise,
            epochs=args.epochs,
            seed=seed,
            verbose=0,
            **contrastive,
        )
        results["pretrained"].append(accuracy(pretrained, x_few, y_few, x_test, y_test, seed))
        results["scratch"].append(accuracy(scratch, x_few, y_few, x_test, y_test, seed))
        print(
            f"seed {seed}: pretrained {results['pretrained'][-1]:.3f}  "
            f"scratch {results['scratch'][-1]:.3f}",
            flush=True,
        )
    mean = {name: statistics.mean(values) for name, values in results.items()}
    settings = "".join(f", {key}={value}" for key, value in contrastive.items())
    print(
        f"digits, {args.encoder} encoder, {args.labels} labels per class, {args.seeds} seeds, "
        f"method={args.method}, epochs={args.epochs}{settings}: pretrained "
        f"{mean['pretrained']:.3f}, scratch "
        f"{mean['scratch']:.3f}, difference {100 * (mean['pretrained'] - mean['scratch']):+.1f} "
        f"points ({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
