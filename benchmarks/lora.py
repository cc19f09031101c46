"""LoRA against full fine-tuning on a small BERT: the share that trains, and the step time.

A `keras_hub.models.BertBackbone` with random weights (no download), fed token ids through a
one-input model, under `FreezePolicy.none()` (every weight trains) and `FreezePolicy.lora(8)`
(KerasHub's query and value projections get rank-8 adapters; the rest is frozen). Prints each
policy's `FreezeReport`, then the median wall time of one training step of each: a batch
callback times every step of plain `model.fit` epochs on the tuners' compiled models (no
FineTuner checks, data wrapping or callbacks of its own in the numbers), interleaved
(`_common.interleaved`: each round runs one epoch of each in turn, after a warm-up epoch that
traces the step). The first step of each epoch is left out (it includes the epoch's start).

Run: python benchmarks/lora.py [--rounds 5] [--layers 4] [--hidden 128] [--length 64]
     [--examples 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
from _common import interleaved, report  # noqa: E402

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head  # noqa: E402

VOCABULARY = 1000
BATCH = 32


def bert(layers: int, hidden: int, length: int) -> Backbone:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=layers,
        num_heads=max(1, hidden // 32),
        hidden_dim=hidden,
        intermediate_dim=4 * hidden,
        max_sequence_length=length,
    )
    ids = keras.Input((length,), dtype="int32", name="ids")
    inputs = {
        "token_ids": ids,
        "segment_ids": keras.ops.zeros_like(ids),
        "padding_mask": keras.ops.not_equal(ids, 0),
    }
    return Backbone.from_model(keras.Model(ids, backbone(inputs)["pooled_output"]))


class StepTimes(keras.callbacks.Callback):
    """The wall time of each training step but the first of each epoch, in seconds."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch > 0:
            self.times.append(time.perf_counter() - self.start)


def main(rounds: int, layers: int, hidden: int, length: int, examples: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCABULARY, size=(examples, length)).astype("int32")
    y = np.arange(examples) % 2
    steps = examples // BATCH
    tuners = {}
    for name, policy in (("full", FreezePolicy.none()), ("lora-8", FreezePolicy.lora(8))):
        tuner = FineTuner(bert(layers, hidden, length), Head.classifier(2), freeze=policy, seed=0)
        tuner.compile(learning_rate=1e-4)
        tuner.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)  # traces the step
        print(f"{name}: {tuner.freeze_report}")
        tuners[name] = tuner

    steps_of = {name: StepTimes() for name in tuners}

    def epoch(name):
        model = tuners[name].model
        return lambda: model.fit(
            x, y, epochs=1, batch_size=BATCH, verbose=0, callbacks=[steps_of[name]]
        )

    interleaved({name: epoch(name) for name in tuners}, rounds)
    print(f"\nOne training step ({steps} steps an epoch, batch {BATCH}, length {length}):")
    report({name: timer.times for name, timer in steps_of.items()}, "full", 1e-3, "ms/step")
    return {name: tuner.freeze_report for name, tuner in tuners.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--examples", type=int, default=512)
    args = parser.parse_args()
    main(args.rounds, args.layers, args.hidden, args.length, args.examples)
