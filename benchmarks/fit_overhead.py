"""Step time of `FineTuner.fit` against the same network in hand-written Keras `model.fit`.

Both sides train MobileNetV3Small (random weights: nothing is downloaded) at
96x96 with its top 30 layers trainable, BatchNorm in inference mode, a
pooling + softmax head, Adam, batch 32. Epochs alternate between the two
after one warm-up epoch each (tracing excluded). Target: ratio <= 1.02.

Run: python benchmarks/fit_overhead.py [--rounds 7] [--images 256]
"""

import argparse

import _common
import keras

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head


def with_finetune_tf(classes: int) -> FineTuner:
    backbone = Backbone.from_keras_applications(
        "MobileNetV3Small", weights=None, input_shape=_common.SHAPE
    )
    tuner = FineTuner(backbone, Head.classifier(classes), freeze=FreezePolicy.top(30))
    tuner.compile("adam")
    return tuner


def main(rounds: int, images: int):
    keras.utils.set_random_seed(0)
    x, y = _common.random_images(images)
    by_hand, tuner = _common.keras_guide_model(10, trainable_top=30), with_finetune_tf(10)
    print(
        f"trainable weights: by hand {len(by_hand.trainable_weights)}, "
        f"finetune_tf {len(tuner.model.trainable_weights)}"
    )
    runs = {
        "keras model.fit": lambda: by_hand.fit(x, y, batch_size=32, epochs=1, verbose=0),
        "FineTuner.fit": lambda: tuner.fit(x, y, batch_size=32, epochs=1, verbose=0),
    }
    _common.interleaved(runs, rounds=1)  # warm-up: tracing
    steps = -(-images // 32)
    times = _common.interleaved(runs, rounds)
    print(f"MobileNetV3Small 96x96, top 30 layers trainable, {steps} steps per epoch:")
    _common.report(
        {k: [t / steps for t in v] for k, v in times.items()},
        "keras model.fit",
        unit=1e-3,
        label="ms/step",
    )
    print("target: FineTuner.fit / keras model.fit <= 1.02")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    main(args.rounds, args.images)
