"""A frozen stage with the feature cache against the Keras guide's way, side by side.

The Keras transfer-learning guide trains a head on a frozen base by running
the base on every batch of every epoch. `FineTuner.fit` with the whole
backbone frozen runs it once, caches its outputs and trains the head on them.
Both train MobileNetV3Small (random weights: nothing is downloaded) at 96x96
for 10 epochs, the cache build included in the timing. The limit is about
`epochs`x (the cache still costs one backbone pass); target (issue 20) >= 0.8 * epochs
x at 1,000 images, >= 0.9 * epochs x at 10,000 and more. Also
prints the memory the cache takes and checks both heads learned alike.

With `--memory` it measures instead what the cache costs in memory (issue 20):
the peak resident memory of a child process that fits with the cache in
memory, with the cache spilled to disk (`FeatureCache(memory_limit=0)`) and
without the cache, each against a child that only holds the data and builds
the same model, as a ratio to the size of the data.

Run: python benchmarks/feature_cache.py [--rounds 3] [--images 1024] [--epochs 10] [--memory]
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile

import _common
import keras
import numpy as np

from finetune_tf import Backbone, FeatureCache, FineTuner, FreezePolicy, Head

_MEMORY_MODES = {
    "data only": None,
    "cache in memory": "auto",
    "cache spilled to disk": "spill",
    "no cache": False,
}


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


def child(mode: str, images: int, epochs: int):
    """One measurement: hold the data, build the tuner, fit as `mode` says; print the peak
    resident memory of this process in bytes."""
    keras.utils.set_random_seed(0)
    x, y = _common.random_images(images)
    backbone = Backbone.from_keras_applications(
        "MobileNetV3Small", weights=None, input_shape=_common.SHAPE
    )
    tuner = FineTuner(backbone, Head.classifier(10), freeze=FreezePolicy.all())
    tuner.compile("adam")
    setting = _MEMORY_MODES[mode]
    if setting is not None:
        with tempfile.TemporaryDirectory() as directory:
            if setting == "spill":
                setting = FeatureCache(memory_limit=0, directory=directory)
            tuner.fit(x, y, batch_size=32, epochs=epochs, verbose=0, feature_cache=setting)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(peak, int(np.prod(tuner.assembly.feature_model.output.shape[1:])))


def memory(images: int, epochs: int):
    data_mib = images * int(np.prod(_common.SHAPE)) * 4 / 1024**2
    peaks = {}
    for mode in _MEMORY_MODES:
        command = [sys.executable, __file__, "--child", mode, "--images", str(images)]
        command += ["--epochs", str(epochs)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        peak, per_image = output.split()[-2:]
        peaks[mode] = int(peak) / 1024**2
    features = images * int(per_image) * 4 / 1024**2  # float32
    print(
        f"Peak resident memory, MobileNetV3Small 96x96 frozen, {images} images "
        f"({data_mib:.1f} MiB of float32 images, {features:.1f} MiB of features), "
        f"{epochs} epoch(s), one process each:"
    )
    base, uncached = peaks["data only"], peaks["no cache"]
    for mode, peak in peaks.items():
        line = f"  {mode:<22} {peak:8.1f} MiB"
        if mode != "data only":
            extra = peak - base
            line += f"  {extra:+7.1f} MiB over data only ({extra / data_mib:.2f}x the data)"
        if mode.startswith("cache"):
            line += f", {peak - uncached:+7.1f} MiB over no cache"
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--memory", action="store_true", help="peak memory instead of time")
    parser.add_argument("--child", choices=list(_MEMORY_MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.epochs)
    elif args.memory:
        memory(args.images, args.epochs)
    else:
        main(args.rounds, args.images, args.epochs)
