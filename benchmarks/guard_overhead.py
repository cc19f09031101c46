"""What the NaN guard and `checkpoint_dir` cost, where they cost most: a big frozen backbone.

With the whole backbone frozen, `FineTuner.fit` trains the head on cached features, so an
epoch is a few milliseconds while the backbone holds millions of weights. Every epoch the
NaN guard snapshots the variables it may have to restore, and `checkpoint_dir` writes the
training state to disk. Three sides, interleaved, for the same 20-epoch head stage:

- by hand: run the backbone once with `predict`, then `model.fit` a head on the features
  (what a Keras user writes to get the cache's speed), no guard and no checkpoint;
- `FineTuner.fit`: the feature cache with the NaN guard (always on);
- `FineTuner.fit(checkpoint_dir=...)`: also the per-epoch state on disk.

Backbone: ResNet50 (random weights, 23.6M parameters: nothing is downloaded) at 64x64.
Target: FineTuner.fit / by hand <= 1.10, with or without checkpoint_dir (which writes the
frozen backbone once per stage and the head and optimizer each epoch).

Run: python benchmarks/guard_overhead.py [--rounds 3] [--images 512] [--epochs 20]
"""

import argparse
import shutil
import tempfile

import _common
import keras
import numpy as np

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head

SHAPE = (64, 64, 3)


def main(rounds: int, images: int, epochs: int):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((images, *SHAPE), dtype=np.float32) * 255
    y = np.arange(images) % 10
    backbone = Backbone.from_keras_applications("ResNet50", weights=None, input_shape=SHAPE)
    params = backbone.model.count_params()
    tuner = FineTuner(backbone, Head.classifier(10), freeze=FreezePolicy.all())
    tuner.compile("adam")

    feature_model = tuner.assembly.feature_model  # the same preprocessing + backbone the cache runs
    head = keras.Sequential(
        [
            keras.Input(feature_model.output.shape[1:]),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    head.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    directory = tempfile.mkdtemp(prefix="guard_overhead_")

    def by_hand():
        features = feature_model.predict(x, batch_size=256, verbose=0)
        head.fit(features, y, batch_size=32, epochs=epochs, verbose=0)

    def guarded():
        tuner.fit(x, y, batch_size=32, epochs=epochs, verbose=0)

    def checkpointed():
        tuner.fit(x, y, batch_size=32, epochs=epochs, verbose=0, checkpoint_dir=directory)

    runs = {
        "by hand (predict + head fit)": by_hand,
        "FineTuner.fit (NaN guard)": guarded,
        "FineTuner.fit(checkpoint_dir)": checkpointed,
    }
    try:
        _common.interleaved(runs, rounds=1)  # warm-up: tracing
        times = _common.interleaved(runs, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"ResNet50 {SHAPE[0]}x{SHAPE[1]} frozen ({params / 1e6:.1f}M parameters), {images} "
        f"images, {epochs} head epochs on cached features, batch 32:"
    )
    _common.report(times, "by hand (predict + head fit)")
    print("target: FineTuner.fit / by hand <= 1.10, with or without checkpoint_dir")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    main(args.rounds, args.images, args.epochs)
