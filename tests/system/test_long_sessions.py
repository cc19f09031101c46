"""Many FineTuners in one process (notebooks, cross-validation, searches) are freed."""

import gc
import weakref

import numpy as np
from conftest import small_cnn

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_six_tuners_in_a_row_are_freed_and_memory_stays_bounded():
    x = np.random.default_rng(0).random((48, 8, 8, 3), dtype=np.float32)
    y = np.arange(48) % 3
    alive, usage = [], []
    for _ in range(6):
        tuner = FineTuner(
            Backbone.from_model(small_cnn()), Head.classifier(3), freeze=FreezePolicy.top(3)
        )
        tuner.fine_tune(x, y, head_epochs=1, epochs=1, validation_split=0.25, verbose=0)
        tuner.predict(x, verbose=0)
        alive += [weakref.ref(tuner), weakref.ref(tuner.model), weakref.ref(tuner.backbone)]
        del tuner
        gc.collect()
        usage.append(resident_mib())
    # Nothing of ours keeps a tuner, its model or its backbone alive.
    assert [r for r in alive if r() is not None] == []
    # What remains is TensorFlow's own per-model cost (traced graphs: about 10 MiB here,
    # less than plain Keras doing the same work); bound it well below a leak of models.
    # The growth is steady from the second tuner on (10 +- 4 MiB from one tuner to the
    # next), so the mean over the last four has the same power as over more.
    per_tuner = (usage[-1] - usage[1]) / 4  # after warm-up
    assert per_tuner < 25, usage
