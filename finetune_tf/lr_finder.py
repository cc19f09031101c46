"""The learning-rate range test (Smith, 2017; fastai's `lr_find`).

Trains for a few hundred steps while the learning rate grows exponentially
from `min_lr` to `max_lr`, records the loss at each step, then puts the
model's weights back exactly as they were. The suggestion is one tenth of the
learning rate at which the smoothed loss is lowest.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from finetune_tf.plots import plot_lr_finder

SMOOTHING = 0.98  # of the loss curve, as in fastai: single batches are noisy


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What `FineTuner.find_learning_rate` measured.

    Attributes:
        learning_rates: list of float. The learning rate of each step.
        losses: list of float. The training loss of each step.
        suggestion: float. One tenth of the rate at the smoothed loss's minimum.

    Examples:
        >>> from finetune_tf import LRFinderResult
        >>> result = LRFinderResult([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], 1e-3)
        >>> result.suggestion
        0.001
    """

    learning_rates: list
    losses: list
    suggestion: float

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


def _suggest(learning_rates, losses) -> float:
    losses = np.asarray(losses, dtype="float64")
    finite = np.isfinite(losses)
    lrs = np.asarray(learning_rates)[finite]
    losses = losses[finite]
    if len(losses) == 0:
        return math.nan
    smoothed = np.empty_like(losses)
    average = 0.0
    for i, value in enumerate(losses):  # the bias-corrected moving average the sweep used
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed[i] = average / (1 - SMOOTHING ** (i + 1))
    # One tenth of the rate at the smoothed loss's minimum (fastai's `minimum` rule): robust
    # to batch noise, and safely below where the loss starts to blow up.
    return float(lrs[int(np.argmin(smoothed))] / 10.0)


def find_learning_rate(
    tuner, x, y, *, min_lr, max_lr, steps, batch_size, divergence, **fit_kwargs
) -> LRFinderResult:
    """Runs the sweep on `tuner`'s model; see `FineTuner.find_learning_rate`."""
    if not (0 < min_lr < max_lr):
        raise ValueError(
            "`find_learning_rate` needs 0 < min_lr < max_lr. "
            f"Received: min_lr={min_lr!r}, max_lr={max_lr!r}."
        )
    if not isinstance(steps, int) or steps < 3:
        raise ValueError(f"`steps` must be an integer >= 3. Received: steps={steps!r}.")
    model = tuner.model
    weights = [w.numpy().copy() for w in model.weights]
    compile_args = tuner._keras_compile_args()
    optimizer = compile_args["optimizer"]
    compile_args["optimizer"] = optimizer.__class__.from_config(optimizer.get_config())
    model.compile(**compile_args)  # a separate optimizer: the compiled one stays untouched
    sweep = _ExponentialSweep(min_lr, max_lr, steps, divergence)
    try:
        model.fit(
            x, y, batch_size=batch_size, epochs=steps, callbacks=[sweep], verbose=0, **fit_kwargs
        )
    finally:
        for variable, value in zip(model.weights, weights, strict=True):
            variable.assign(value)
        tuner._compile(fresh_optimizer=False)
    return LRFinderResult(
        learning_rates=sweep.learning_rates[: len(sweep.losses)],
        losses=sweep.losses,
        suggestion=_suggest(sweep.learning_rates, sweep.losses),
    )
