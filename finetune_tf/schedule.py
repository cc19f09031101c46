"""Staged fine-tuning: `Stage`, the staged training loop, and gradual unfreezing.

Every serious recipe trains in stages: the new head on a frozen backbone
first, then part of the backbone at a much smaller learning rate (the Keras
transfer-learning guide, fastai's `fine_tune`, ULMFiT's gradual unfreezing,
LP-FT by Kumar et al. 2022). A schedule is a list of `Stage`s; between
stages the model is recompiled with the trained weights kept and a fresh
optimizer, and Keras callbacks see one continuous run (epochs keep counting).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from finetune_tf.feature_cache import say
from finetune_tf.freeze import FreezePolicy
from finetune_tf.layerwise import check_layerwise_lr_decay


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a fine-tuning schedule.

    Args:
        epochs: int. How many epochs the stage trains.
        freeze: `FreezePolicy`, optional. The policy for this stage; `None`
            keeps the current one.
        learning_rate: float or `LearningRateSchedule`, optional. `None`
            keeps the learning rate of the last `compile()`.
        optimizer: str or `keras.optimizers.Optimizer`, optional. `None`
            keeps the optimizer of the last `compile()` (with fresh state).
        layerwise_lr_decay: float in (0, 1], optional. Discriminative learning
            rates for this stage: the head at `learning_rate`, each trained
            backbone layer below the top at `layerwise_lr_decay` times the
            rate of the layer above. `None` uses the one given to `compile()`.
        early_stopping: int, optional. Stop the stage after this many epochs
            without improvement of the monitored loss (`val_loss` with
            validation data, else `loss`).
        restore_best_weights: bool. With validation data, end the stage with
            the weights of its best epoch. Defaults to `True`.
        name: str, optional. Recorded per epoch in the history.

    Example:

    >>> from finetune_tf import FreezePolicy, Stage
    >>> schedule = [
    ...     Stage(epochs=3, freeze=FreezePolicy.all(), learning_rate=1e-3),
    ...     Stage(epochs=5, freeze=FreezePolicy.top(30), learning_rate=1e-4,
    ...           layerwise_lr_decay=0.8, early_stopping=2),
    ... ]
    >>> schedule[1].epochs
    5
    """

    epochs: int
    freeze: FreezePolicy | None = None
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | None = None
    optimizer: str | keras.optimizers.Optimizer | None = None
    layerwise_lr_decay: float | None = None
    early_stopping: int | None = None
    restore_best_weights: bool = True
    name: str | None = None

    def __post_init__(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)):
            raise TypeError(
                f"`Stage(epochs)` must be a whole number. Received: epochs={self.epochs!r}."
            )
        if self.epochs < 1:
            raise ValueError(
                f"`Stage(epochs)` must be at least 1. Received: epochs={self.epochs}. "
                "Remove the stage instead of giving it no epochs."
            )
        if self.freeze is not None and not isinstance(self.freeze, FreezePolicy):
            raise TypeError(
                f"`Stage(freeze)` must be a FreezePolicy or None. Received: freeze={self.freeze!r}."
            )
        check_layerwise_lr_decay(self.layerwise_lr_decay)
        if self.early_stopping is not None and (
            isinstance(self.early_stopping, bool)
            or not isinstance(self.early_stopping, (int, np.integer))
            or self.early_stopping < 1
        ):
            raise ValueError(
                "`Stage(early_stopping)` is a patience in epochs (a whole number >= 1) or None. "
                f"Received: early_stopping={self.early_stopping!r}."
            )


def gradual_unfreezing(
    layer_count: int,
    *,
    steps: int = 3,
    epochs_per_stage: int = 2,
    learning_rate: float = 1e-4,
    decay: float = 0.5,
) -> list[Stage]:
    """Stages that unfreeze a few more backbone layers at a time, top first (ULMFiT).

    Stage 1 trains the head alone; each later stage trains `layer_count //
    steps` more layers from the top of the backbone, at a learning rate
    `decay` times that of the stage before.

    Args:
        layer_count: int. `len(backbone.layers)`.
        steps: int. How many unfreezing steps after the head stage. Defaults to 3.
        epochs_per_stage: int. Defaults to 2.
        learning_rate: float. The head stage's learning rate. Defaults to 1e-4.
        decay: float. Learning-rate factor from one stage to the next. Defaults to 0.5.

    Example:

    >>> from finetune_tf import gradual_unfreezing
    >>> [stage.freeze for stage in gradual_unfreezing(90, steps=3)]
    [FreezePolicy.all(), FreezePolicy.top(30), FreezePolicy.top(60), FreezePolicy.top(90)]
    """
    if not isinstance(layer_count, (int, np.integer)) or layer_count < 1:
        raise ValueError(
            "`gradual_unfreezing(layer_count)` needs the number of backbone layers "
            f"(len(backbone.layers)). Received: layer_count={layer_count!r}."
        )
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= layer_count:
        raise ValueError(
            f"`steps` must be between 1 and layer_count={layer_count}. Received: steps={steps!r}."
        )
    stages = [Stage(epochs_per_stage, FreezePolicy.all(), learning_rate, name="head")]
    for step in range(1, steps + 1):
        top = layer_count if step == steps else step * (layer_count // steps)
        stages.append(
            Stage(
                epochs_per_stage,
                FreezePolicy.top(top),
                learning_rate * decay**step,
                name=f"unfreeze_{step}",
            )
        )
    return stages


def run_schedule(tuner, schedule, x, y, fit_kwargs: dict, feature_cache) -> keras.callbacks.History:
    """Runs `schedule` on `tuner`; returns one `History` covering every stage."""
    if isinstance(schedule, Stage):
        schedule = [schedule]
    schedule = list(schedule)
    if not schedule or not all(isinstance(stage, Stage) for stage in schedule):
        raise ValueError(
            "`schedule` must be a non-empty list of finetune_tf.Stage. "
            f"Received: schedule={schedule!r}."
        )
    for argument in ("epochs", "initial_epoch"):
        if argument in fit_kwargs:
            raise ValueError(
                f"`fit(schedule=...)` got `{argument}`={fit_kwargs[argument]!r}, but a "
                "schedule sets the epochs of each stage. Remove it, or set Stage(epochs=...)."
            )
    has_validation = (
        fit_kwargs.get("validation_data") is not None or fit_kwargs.get("validation_split", 0.0) > 0
    )
    user_callbacks = list(fit_kwargs.pop("callbacks", None) or [])
    verbose = fit_kwargs.get("verbose", "auto")
    combined = keras.callbacks.History()
    combined.set_model(tuner.model)
    combined.history, combined.epoch = {}, []
    epoch = 0
    for index, stage in enumerate(schedule):
        name = stage.name or f"stage_{index + 1}"
        if stage.freeze is not None:
            tuner._apply_freeze(stage.freeze)  # recompiled just below, once
        tuner.recompile(
            optimizer=stage.optimizer,
            learning_rate=stage.learning_rate,
            layerwise_lr_decay=stage.layerwise_lr_decay,
        )
        callbacks = list(user_callbacks)
        monitor = "val_loss" if has_validation else "loss"
        if stage.early_stopping or (stage.restore_best_weights and has_validation):
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=monitor,
                    patience=stage.early_stopping or stage.epochs,
                    restore_best_weights=stage.restore_best_weights and has_validation,
                )
            )
        say(f"stage {name!r}: {stage.epochs} epochs, {tuner.freeze_report}", verbose)
        history = tuner._fit_stage(
            x,
            y,
            dict(fit_kwargs, initial_epoch=epoch, epochs=epoch + stage.epochs, callbacks=callbacks),
            feature_cache,
        )
        ran = len(history.epoch)
        for key, values in history.history.items():
            combined.history.setdefault(key, []).extend(values)
        combined.history.setdefault("stage", []).extend([name] * ran)
        combined.epoch.extend(history.epoch)
        combined.params = history.params
        epoch += ran
    return combined
