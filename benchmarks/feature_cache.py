"""A frozen stage with the feature cache against the Keras guide's way, side by side.

The Keras transfer-learning guide trains a head on a frozen base by running
the base on every batch of every epoch. `FineTuner.fit` with the whole
backbone frozen runs it once, caches its outputs and trains the head on them.
Both train MobileNetV3Small (random weights: nothing is downloaded) at 96x96
for 10 epochs, the cache build included in the timing. The limit is about
`epochs`x (the cache still costs one backbone pass); target (issue 20) >= 0.8 * epochs
x at 1,000 images, >= 0.9 * epochs x at 10,000 and more. Also
prints the memory the cache takes and checks both heads learned alike.

Run: python benchmarks/feature_cache.py [--rounds 3] [--images 1024] [--epochs 10]
"""

import argparse
import statistics

import _common
import keras
import numpy as np

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head


def main(rounds: int, images: int, epochs: int):
    keras.utils.set_random_seed(0)
    x, y = _common.random_images(images)
    guide = _common.keras_guide_model(10)
    backbone = Backbone.from_keras_applications(
        "MobileNetV3Small", weights=None, input_shape=_common.SHAPE
    )
    tuner = FineTuner(backbone, Head.classifier(10), freeze=FreezePolicy.all())
    tuner.compile("adam")
    results = {}

    def run_guide():
        results["guide"] = guide.fit(x, y, batch_size=32, epochs=epochs, verbose=0)

    def run_cached():
        results["cached"] = tuner.fit(x, y, batch_size=32, epochs=epochs, verbose=0)

    guide_name, cached_name = "Keras guide (backbone every epoch)", "FineTuner.fit (feature cache)"
    times = _common.interleaved({guide_name: run_guide, cached_name: run_cached}, rounds)
    features = tuner.assembly.feature_model.output.shape[1:]
    cache_mib = images * int(np.prod(features)) * 4 / 1024**2
    print(f"MobileNetV3Small 96x96 frozen, {images} images, {epochs} epochs, batch 32:")
    _common.report(times, cached_name)
    speedup = statistics.median(times[guide_name]) / statistics.median(times[cached_name])
    target = (0.9 if images >= 10_000 else 0.8) * epochs
    verdict = "met" if speedup >= target else "not met"
    print(f"speed-up: {speedup:.1f}x (limit ~{epochs}x, target >= {target:.1f}x: {verdict})")
    print(
        f"cache memory: {cache_mib:.1f} MiB of features {tuple(features)} float32 "
        f"({cache_mib * 1024 / images:.1f} KiB per image), freed after the stage"
    )
    for name, history in results.items():
        print(f"  {name}: final loss {history.history['loss'][-1]:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    main(args.rounds, args.images, args.epochs)
