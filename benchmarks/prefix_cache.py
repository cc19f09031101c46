"""Stage-2 epochs with the frozen-prefix cache against without it, side by side.

`FineTuner.fit` with the top of the backbone trainable (`FreezePolicy.top(k)`,
BatchNorm in inference mode) caches the activations at the deepest
single-tensor point below the first trainable layer once, then trains the rest
on them. This times one epoch (median of the epochs after the first, so
tracing is left out) with `feature_cache=False` and with the cache, for
MobileNetV3Small and ResNet50 (random weights: nothing is downloaded) with the
top 20%, 40% and 60% of their layers trainable, interleaved in one run (the
machine is shared: both sides see the same noise). The ideal epoch-time ratio
is the trainable share of the forward and backward FLOPs, counted by
TensorFlow's profiler: 3 * F_top / (F_bottom + 3 * F_top), a backward pass
costing about twice a forward; the target is to be within 15% of it. As
FLOPs miss what a weight-heavy top costs (the optimizer's update of every
trainable weight, convolutions on 2x2 maps), it also prints the measured
ideal: the epoch without the cache minus the time the frozen bottom's forward
pass takes over the same data, timed in the same rounds. Also
prints the one-time cost of the cache pass and the memory the cache takes
next to the size of the images.

Run: python benchmarks/prefix_cache.py [--rounds 2] [--images 256] [--epochs 3]

With `--nested` the application sits inside a Sequential model, the Keras guide's
`keras.Sequential([application, keras.layers.GlobalAveragePooling2D()])` given to
`Backbone.from_model`: the cut then goes inside the nested application.

On a GPU, `python benchmarks/prefix_cache.py --gpu-matrix` times one setting
(ResNet50 at 160x160, top 40% trainable, 1024 images) in float32 and
mixed_float16, XLA off and on, the prefix cache off and on, and prints one row
each (mixed precision is skipped without a GPU).
"""

import argparse
import statistics
import time

import _common  # noqa: F401 (quiets TensorFlow's C++ log before it loads)
import keras
import numpy as np
import tensorflow as tf

from finetune_tf import Backbone, FeatureCache, FineTuner, FreezePolicy, Head
from finetune_tf.training.feature_cache import cache_decision
from finetune_tf.training.fit_args import FitArgs

MODELS = {"MobileNetV3Small": (96, 96, 3), "ResNet50": (64, 64, 3)}
SHARES = (0.2, 0.4, 0.6)


def forward_flops(model: keras.Model) -> int:
    """Float operations of one example through `model` (TensorFlow's profiler)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    spec = tf.TensorSpec((1, *model.input_shape[1:]), model.inputs[0].dtype)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output()
    return profile(frozen.graph, options=options.build()).total_float_ops


def forward_time(model: keras.Model, x: np.ndarray, batch: int = 32) -> float:
    """Seconds of `model`'s forward pass over `x` in batches (traced before timing)."""
    forward = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
    batches = [tf.constant(x[i : i + batch]) for i in range(0, len(x), batch)]
    for part in {len(b): b for b in batches}.values():
        forward(part)
    start = time.perf_counter()
    for part in batches:
        forward(part).numpy()
    return time.perf_counter() - start


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def make_backbone(name: str, shape: tuple, nested: bool) -> Backbone:
    if not nested:
        return Backbone.from_keras_applications(name, weights=None, input_shape=shape)
    application = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=shape
    )
    pooling = keras.layers.GlobalAveragePooling2D(name="pooling")
    return Backbone.from_model(keras.Sequential([application, pooling]))


def one_setting(name, shape, share, x, y, rounds, epochs, nested=False):
    backbone = make_backbone(name, shape, nested)
    count = len(backbone.layers)
    freeze = FreezePolicy.top(max(1, round(share * count)))
    tuner = FineTuner(backbone, Head.classifier(10), freeze=freeze)
    tuner.compile("adam", learning_rate=1e-4)
    split = cache_decision(tuner.assembly, x, FitArgs({}), FeatureCache())
    if isinstance(split, str):
        print(f"{name} top {share:.0%}: no cache ({split})")
        return
    total = forward_flops(tuner.assembly.feature_model)
    if split.prefix_model is tuner.assembly.feature_model:
        bottom = total
    else:
        bottom = forward_flops(split.prefix_model)
    top = total - bottom
    ideal = 3 * top / (bottom + 3 * top)
    epoch_times = {"no cache": [], "prefix cache": [], "bottom forward": []}
    whole = {"no cache": [], "prefix cache": []}
    for _ in range(rounds):
        for label, cache in (("no cache", False), ("prefix cache", True)):
            timer = EpochTimes()
            start = time.perf_counter()
            tuner.fit(
                x,
                y,
                batch_size=32,
                epochs=epochs,
                feature_cache=cache,
                callbacks=[timer],
                verbose=0,
            )
            whole[label].append(time.perf_counter() - start)
            epoch_times[label].extend(timer.times[1:])
        epoch_times["bottom forward"].append(forward_time(split.prefix_model, x))
    without = statistics.median(epoch_times["no cache"])
    cached = statistics.median(epoch_times["prefix cache"])
    ratio = cached / without
    measured_ideal = 1 - statistics.median(epoch_times["bottom forward"]) / without
    cache_mib = len(x) * int(np.prod(split.shape)) * 4 / 1024**2
    data_mib = x.nbytes / 1024**2
    verdict = "met" if ratio <= ideal * 1.15 else "not met"
    print(
        f"{name} {shape[0]}px, top {share:.0%} trainable ({freeze!r}), cut at {split.where}:\n"
        f"  epoch: no cache {without:.3f} s, prefix cache {cached:.3f} s -> ratio {ratio:.3f} "
        f"(speed-up {1 / ratio:.2f}x); FLOP-share ideal {ideal:.3f} "
        f"(bottom {bottom / 1e6:.0f} MFLOP, top {top / 1e6:.0f} MFLOP an image); "
        f"target ratio <= {ideal * 1.15:.3f}: {verdict}; measured ideal {measured_ideal:.3f} "
        f"(the bottom's forward pass is {1 - measured_ideal:.0%} of the uncached epoch)\n"
        f"  whole fit of {epochs} epochs (cache pass included): "
        f"no cache {statistics.median(whole['no cache']):.2f} s, "
        f"prefix cache {statistics.median(whole['prefix cache']):.2f} s\n"
        f"  cache memory {cache_mib:.1f} MiB (float32 {split.shape}) for {data_mib:.1f} MiB "
        f"of images ({cache_mib / data_mib:.2f}x the data)"
    )


def epoch_time(tuner, x, y, epochs, cache) -> float:
    timer = EpochTimes()
    tuner.fit(x, y, batch_size=32, epochs=epochs, feature_cache=cache, callbacks=[timer], verbose=0)
    return statistics.median(timer.times[1:])


def gpu_matrix(rounds: int, images: int, epochs: int):
    gpus = tf.config.list_logical_devices("GPU")
    print(f"devices: {', '.join(d.name for d in gpus) or 'no GPU, CPU only'}")
    shape, share = (160, 160, 3), 0.4
    x = np.random.default_rng(0).random((images, *shape), dtype=np.float32) * 255
    y = np.arange(images) % 10
    print(f"ResNet50 {shape[0]}px, top {share:.0%} trainable, {images} images, batch 32")
    print("| precision | XLA | epoch, no cache (s) | epoch, prefix cache (s) | ratio |")
    print("|---|---|---|---|---|")
    for precision in ["float32"] + (["mixed_float16"] if gpus else []):
        for xla in (False, True):
            backbone = Backbone.from_keras_applications("ResNet50", weights=None, input_shape=shape)
            freeze = FreezePolicy.top(round(share * len(backbone.layers)))
            tuner = FineTuner(
                backbone,
                Head.classifier(10),
                freeze=freeze,
                jit_compile=xla,
                mixed_precision=None if precision == "float32" else precision,
            )
            tuner.compile("adam", learning_rate=1e-4)
            times = {False: [], True: []}
            for _ in range(rounds):
                for cache in (False, True):
                    times[cache].append(epoch_time(tuner, x, y, epochs, cache))
            off, on = statistics.median(times[False]), statistics.median(times[True])
            row = [precision, "on" if xla else "off", f"{off:.3f}", f"{on:.3f}", f"{on / off:.3f}"]
            print(f"| {' | '.join(row)} |")
    if not gpus:
        print("mixed_float16: skipped (needs a GPU with compute capability >= 7.0)")


def main(rounds: int, images: int, epochs: int, models, nested: bool = False):
    keras.utils.set_random_seed(0)
    for name in models:
        shape = MODELS[name]
        x = np.random.default_rng(0).random((images, *shape), dtype=np.float32) * 255
        y = np.arange(images) % 10
        for share in SHARES:
            one_setting(name, shape, share, x, y, rounds, epochs, nested)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--nested", action="store_true", help="the application nested")
    parser.add_argument("--gpu-matrix", action="store_true", help="the GPU table (docs)")
    args = parser.parse_args()
    if args.gpu_matrix:
        gpu_matrix(args.rounds, args.images if args.images != 256 else 1024, args.epochs)
    else:
        main(args.rounds, args.images, args.epochs, args.models, args.nested)
