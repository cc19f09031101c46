"""Training throughput (images/s) of `FineTuner.fit` against hand-written Keras, fp32 and mixed.

Both sides train the whole of MobileNetV3Small (random weights: nothing is
downloaded) at 96x96 with a pooling + softmax head, Adam, batch 64, on one
device (`strategy=None` on our side, so both run on TensorFlow's default
placement: the first GPU when there is one). Epochs alternate between the two
after one warm-up epoch each (tracing excluded). Mixed precision
(`mixed_float16`, with loss scaling) runs only on a GPU; on a CPU it is
skipped with a note, so the script is known to work before anyone has a GPU.

Run: python benchmarks/gpu_throughput.py [--rounds 5] [--images 512]
"""

import argparse
import contextlib

import _common
import keras
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
from finetune_tf.runtime.precision import dtype_policy_scope

BATCH = 64


def with_finetune_tf(policy: str | None) -> FineTuner:
    backbone = Backbone.from_keras_applications(
        "MobileNetV3Small", weights=None, input_shape=_common.SHAPE
    )
    tuner = FineTuner(
        backbone,
        Head.classifier(10),
        freeze=FreezePolicy.none(),
        strategy=None,
        mixed_precision=policy,
    )
    tuner.compile("adam")
    return tuner


def by_hand(policy: str | None) -> keras.Model:
    """The Keras mixed-precision guide's way: set the global policy, build, compile."""
    scope = dtype_policy_scope(policy) if policy else contextlib.nullcontext()
    with scope:
        return _common.keras_guide_model(10, trainable_top=10_000)


def main(rounds: int, images: int):
    gpus = tf.config.list_logical_devices("GPU")
    print(f"devices: {', '.join(d.name for d in gpus) or 'no GPU, CPU only'}")
    policies = [None] + (["mixed_float16"] if gpus else [])
    if not gpus:
        print("mixed_float16: skipped (needs a GPU with compute capability >= 7.0)")
    keras.utils.set_random_seed(0)
    x, y = _common.random_images(images)
    steps = -(-images // BATCH)
    for policy in policies:
        model, tuner = by_hand(policy), with_finetune_tf(policy)
        runs = {
            "keras model.fit": lambda m=model: m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0),
            "FineTuner.fit": lambda t=tuner: t.fit(x, y, batch_size=BATCH, epochs=1, verbose=0),
        }
        _common.interleaved(runs, rounds=1)  # warm-up: tracing
        times = _common.interleaved(runs, rounds)
        name = policy or "float32"
        print(f"MobileNetV3Small 96x96, all layers training, {name}, {steps} steps per epoch:")
        _common.report(
            {k: [t / images for t in v] for k, v in times.items()},
            "keras model.fit",
            unit=1e-3,
            label="ms/image",
        )
        for key, values in times.items():
            print(f"  {key:<15}  {images / sorted(values)[len(values) // 2]:8.1f} images/s")
    print("target: FineTuner.fit / keras model.fit <= 1.02 in time per image")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    main(args.rounds, args.images)
