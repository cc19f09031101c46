"""The learning-rate range test (Smith, 2017; fastai's `lr_find`).

Trains for a few hundred steps while the learning rate grows exponentially
from `min_lr` to `max_lr`, records the loss at each step, then puts the
model's weights back exactly as they were. The suggestion is one tenth of the
learning rate at which the smoothed loss is lowest.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import keras
import numpy as np

from finetune_tf._checks import check_int
from finetune_tf.outputs.plots import plot_lr_finder
from finetune_tf.training.compile import fresh_optimizer
from finetune_tf.training.fit_args import FitArgs

__all__ = ["LRFinderResult", "SMOOTHING", "find_learning_rate"]

SMOOTHING = 0.98  # of the loss curve, as in fastai: single batches are noisy


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What `FineTuner.find_learning_rate` measured.

    Attributes:
        learning_rates: list of float. The learning rate of each step.
        losses: list of float. The training loss of each step.
        suggestion: float. One tenth of the rate at the smoothed loss's minimum,
            kept inside the sweep (never below `min_lr` nor above `max_lr`).
        reliable: bool. False when the curve has no clear minimum: the loss
            did not fall by a tenth during the sweep, or was lowest at its very
            start or end. Then `suggestion` is a guess; `note` says why and what
            to try.
        note: str. Why the suggestion is not reliable ("" when it is).

    Examples:
        >>> from finetune_tf import LRFinderResult
        >>> result = LRFinderResult([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], 1e-3)
        >>> result.suggestion, result.reliable
        (0.001, True)
    """

    learning_rates: list
    losses: list
    suggestion: float
    reliable: bool = True
    note: str = ""

    def plot(self, path: str | None = None):
        """Plots loss against learning rate (log scale); saves it when `path` is given.

        Needs matplotlib (`pip install "finetune_tf[plot]"`). Returns the
        `matplotlib.figure.Figure`.
        """
        return plot_lr_finder(self.learning_rates, self.losses, self.suggestion, path=path)


class _ExponentialSweep(keras.callbacks.Callback):
    def __init__(self, min_lr, max_lr, steps, divergence):
        super().__init__()
        self.min_lr, self.steps, self.divergence = min_lr, steps, divergence
        self.factor = (max_lr / min_lr) ** (1.0 / max(steps - 1, 1))
        self.learning_rates, self.losses = [], []
        self.best, self._average = math.inf, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        lr = self.min_lr * self.factor ** len(self.losses)
        self.model.optimizer.learning_rate = lr
        self.learning_rates.append(lr)

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        # Keras reports the running mean over the epoch; the sweep wants the step's own loss.
        step_loss = loss if batch == 0 else loss * (batch + 1) - self._mean * batch
        self._mean = loss
        self.losses.append(step_loss)
        # Divergence is judged on the smoothed loss: single batches are noisy.
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * step_loss
        smoothed = self._average / (1 - SMOOTHING ** len(self.losses))
        if math.isfinite(smoothed):
            self.best = min(self.best, smoothed)
        if (
            len(self.losses) >= self.steps
            or not math.isfinite(smoothed)
            or smoothed > self.divergence * self.best
        ):
            self.model.stop_training = True


def _smoothed(losses: np.ndarray) -> np.ndarray:
    """The bias-corrected moving average the sweep judges divergence by."""
    smoothed = np.empty_like(losses)
    average = 0.0
    for i, value in enumerate(losses):
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed[i] = average / (1 - SMOOTHING ** (i + 1))
    return smoothed


def _suggest(learning_rates, losses) -> tuple[float, str]:
    """One tenth of the rate at the smoothed loss's minimum (fastai's `minimum` rule: robust
    to batch noise, safely below where the loss blows up), kept inside the sweep; and why it
    is not reliable ("" when it is)."""
    losses = np.asarray(losses, dtype="float64")
    finite = np.isfinite(losses)
    lrs = np.asarray(learning_rates[: len(losses)], dtype="float64")[finite]
    losses = losses[finite]
    if len(losses) < 3:
        return math.nan, "fewer than 3 finite losses were recorded; the loss diverged at once"
    smoothed = _smoothed(losses)
    best = int(np.argmin(smoothed))
    suggestion = float(np.clip(lrs[best] / 10.0, lrs[0], lrs[-1]))
    start = float(np.mean(losses[: max(1, len(losses) // 10)]))
    edge = max(1, len(losses) // 20)
    if not smoothed[best] < 0.9 * start:
        note = "the loss did not fall by a tenth anywhere in the sweep"
    elif best < edge:
        note = "the loss was lowest at the very start of the sweep"
    elif best >= len(losses) - edge:
        note = "the loss was still falling at max_lr"
    else:
        return suggestion, ""
    return suggestion, (
        f"{note}, so the curve gives no reliable minimum. Try more steps= (or more data), a "
        "wider min_lr/max_lr, or a larger batch_size (a noisy loss hides the minimum); or "
        "start from a usual rate: 1e-3 for Adam on the head, 1e-4 to 1e-5 with the backbone."
    )


def find_learning_rate(
    compiler, x, y, min_lr, max_lr, steps, batch_size, divergence, args: FitArgs | None = None
) -> LRFinderResult:
    """Runs the sweep on the model of `compiler` (a `training.compile.Compiler`) with its
    settings and `args`, fit's other checked arguments; see `FineTuner.find_learning_rate`."""
    if not (0 < min_lr < max_lr):
        raise ValueError(
            "`find_learning_rate` needs 0 < min_lr < max_lr. "
            f"Received: min_lr={min_lr!r}, max_lr={max_lr!r}."
        )
    check_int(
        steps,
        "steps",
        minimum=3,
        meaning="the number of learning rates tried",
        hint="Pass e.g. steps=100.",
        type_error=ValueError,
    )
    given = args.keras() if args is not None else {}
    its_own = sorted({"epochs", "verbose", "callbacks", "initial_epoch"} & set(given))
    if its_own:
        raise TypeError(
            f"`find_learning_rate()` sets {', '.join(its_own)} itself (a silent sweep of "
            "`steps` steps, watched by its own callback). Remove "
            f"{', '.join(f'{name}=' for name in its_own)}; `steps` sets its length."
        )
    model = compiler.model
    weights = [w.numpy().copy() for w in model.weights]
    compile_args = compiler.keras_args()
    compile_args["optimizer"] = fresh_optimizer(compile_args["optimizer"])
    model.compile(**compile_args)  # a separate optimizer: the compiled one stays untouched
    sweep = _ExponentialSweep(min_lr, max_lr, steps, divergence)
    try:
        model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=steps,
            callbacks=[sweep],
            verbose=0,
            **(args.keras() if args is not None else {}),
        )
    finally:
        for variable, value in zip(model.weights, weights, strict=True):
            variable.assign(value)
        compiler.apply()
    suggestion, note = _suggest(sweep.learning_rates, sweep.losses)
    if note:
        warnings.warn(f"find_learning_rate: {note}", UserWarning, stacklevel=3)
    return LRFinderResult(
        learning_rates=sweep.learning_rates[: len(sweep.losses)],
        losses=sweep.losses,
        suggestion=suggestion,
        reliable=not note,
        note=note,
    )
