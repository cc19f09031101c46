"""Does a small L2 penalty on the backbone change `fine_tune`'s accuracy with few labels?

`FineTuner(backbone, Head.classifier(n)).fine_tune(x, y, backbone_l2=l2)` with every other
default, for each `l2` (0: no penalty) on the same pretrained backbone and the same labelled
split per seed, side by side: the digits tasks of `benchmarks/quality.py` (a small CNN
pretrained on scikit-learn's digits 0-4; the task is digits 5-9 with 5 or 50 labels per
class, tested on the other 5-9 images).

Prints test accuracy and the sum of squares of the backbone's kernels after training per
seed, and the accuracy's mean +- std over the seeds, per task and `l2`.

Run: python benchmarks/regularization.py [--seeds 3] [--tasks digits-5,digits-50]
     [--l2 0,1e-4,1e-3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keras  # noqa: E402
import numpy as np  # noqa: E402
import quality  # noqa: E402  (the tasks, the pretrained CNN, the accuracy)

from finetune_tf import FineTuner, Head  # noqa: E402
from finetune_tf.training.regularization import BackbonePenalty  # noqa: E402


def fine_tune_accuracy(task: quality.Task, seed: int, l2: float) -> tuple[float, float]:
    """Test accuracy, and the sum of squares of the backbone's kernels after training."""
    keras.utils.set_random_seed(seed)
    tuner = FineTuner(task.backbone(), Head.classifier(task.classes))
    tuner.fine_tune(task.x, task.y, backbone_l2=l2, verbose=0)
    squares = sum(float(np.sum(v.numpy() ** 2)) for v in BackbonePenalty(tuner.backbone).kernels)
    return quality._accuracy(tuner, task), squares


def main(seeds: int, tasks: list[str], penalties: list[float], workdir: str | None) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = workdir or scratch
        os.makedirs(workdir, exist_ok=True)
        for name in tasks:
            for seed in range(seeds):
                task = quality.TASKS[name](seed, workdir)
                for l2 in penalties:  # interleaved: each seed runs every l2 in turn
                    start = time.perf_counter()
                    accuracy, squares = fine_tune_accuracy(task, seed, l2)
                    results.setdefault((name, l2), []).append(accuracy)
                    print(
                        f"{name} seed {seed} backbone_l2={l2:g}: {100 * accuracy:.1f}%, "
                        f"sum of squared backbone kernels {squares:.1f} "
                        f"({time.perf_counter() - start:.0f} s)",
                        flush=True,
                    )
    print("\ntask       backbone_l2  accuracy (mean +- std over seeds)")
    for (name, l2), values in results.items():
        values = 100 * np.asarray(values)
        print(f"{name:10s} {l2:11g}  {values.mean():.1f} +- {values.std():.1f}  {values.round(1)}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="digits-5,digits-50")
    parser.add_argument("--l2", default="0,1e-4,1e-3", help="comma-separated penalties")
    parser.add_argument("--workdir", help="cache pretrained models here (default: a temp dir)")
    args = parser.parse_args()
    main(
        args.seeds,
        args.tasks.split(","),
        [float(value) for value in args.l2.split(",")],
        args.workdir,
    )
