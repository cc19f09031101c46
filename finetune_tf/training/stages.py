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

from finetune_tf._checks import check_choice, check_int, check_number
from finetune_tf._utils import revived
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.runtime.progress import say
from finetune_tf.training.compile import check_learning_rate, next_optimizer
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.layerwise import check_layerwise_lr_decay, learning_rate_of

__all__ = [
    "Stage",
    "compile_rate",
    "gradual_unfreezing",
    "run_schedule",
    "stage_learning_rate",
    "stage_name",
]


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
        lr_schedule: str. `"constant"` (the default), or `"cosine"`: the
            learning rate follows a cosine from `learning_rate` down to 0 over
            the stage (Loshchilov & Hutter, 2017).
        warmup_epochs: float. Grow the learning rate linearly from 0 over this
            many epochs first (fractions allowed), so fresh optimizer state
            does not jolt the weights. Defaults to 0.
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

    Examples:
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
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    layerwise_lr_decay: float | None = None
    early_stopping: int | None = None
    restore_best_weights: bool = True
    name: str | None = None

    def __post_init__(self):
        check_int(
            self.epochs,
            "epochs",
            where="Stage",
            hint="To skip a stage, leave it out of the schedule instead.",
        )
        if self.freeze is not None and not isinstance(self.freeze, FreezePolicy):
            raise TypeError(
                f"`Stage(freeze)` must be a FreezePolicy or None. Received: freeze={self.freeze!r}."
            )
        rate = check_learning_rate(self.learning_rate, where="Stage")
        object.__setattr__(self, "learning_rate", rate)  # a numpy float as a Python float
        check_layerwise_lr_decay(self.layerwise_lr_decay)
        check_choice(
            self.lr_schedule,
            "lr_schedule",
            ("constant", "cosine"),
            where="Stage",
            hint="For any other shape pass a Keras LearningRateSchedule as `learning_rate`.",
        )
        check_number(
            self.warmup_epochs,
            "warmup_epochs",
            low=0,
            high=self.epochs,
            high_inclusive=False,
            where="Stage",
            meaning=f"part of the stage's epochs={self.epochs}, which may be fractional",
            type_error=ValueError,
        )
        if self.warmup_epochs or self.lr_schedule != "constant":
            if isinstance(self.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
                raise ValueError(
                    "`Stage(warmup_epochs, lr_schedule)` shape a float `learning_rate`; this "
                    "stage's learning_rate is already a LearningRateSchedule. Use one or the "
                    "other."
                )
        check_int(
            self.early_stopping,
            "early_stopping",
            allow_none=True,
            where="Stage",
            meaning="a patience in epochs",
            hint="None never stops the stage early.",
            type_error=ValueError,
        )

    def get_config(self) -> dict:
        """The stage as plain data (optimizer and learning-rate schedule serialized the
        Keras way); `Stage.from_config` rebuilds it.

        Examples:
            >>> from finetune_tf import FreezePolicy, Stage
            >>> stage = Stage(3, FreezePolicy.top(2), 1e-4, optimizer="sgd", name="tune")
            >>> Stage.from_config(stage.get_config()) == stage
            True
        """
        config = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.freeze is not None:
            config["freeze"] = self.freeze.get_config()
        for key in ("learning_rate", "optimizer"):
            keras_object = (
                keras.optimizers.schedules.LearningRateSchedule,
                keras.optimizers.Optimizer,
            )
            if isinstance(config[key], keras_object):
                config[key] = keras.saving.serialize_keras_object(config[key])
        config["epochs"] = int(self.epochs)
        return config

    @classmethod
    def from_config(cls, config: dict) -> Stage:
        """The stage `get_config` describes."""
        config = revived(config, "learning_rate", "optimizer")
        if config.get("freeze") is not None:
            config["freeze"] = FreezePolicy.from_config(config["freeze"])
        return cls(**config)


def gradual_unfreezing(
    layer_count: int,
    *,
    steps: int = 3,
    epochs_per_stage: int = 2,
    learning_rate: float = 3e-3,
    fine_tune_learning_rate: float = 3e-4,
    decay: float = 0.5,
) -> list[Stage]:
    """Stages that unfreeze a few more backbone layers at a time, top first (ULMFiT).

    Stage 1 trains the head alone at `learning_rate` (3e-3, as `fine_tune`'s
    head stage); each later stage trains `layer_count // steps` more layers
    from the top of the backbone, the first at `fine_tune_learning_rate`
    (3e-4, as `fine_tune`'s second stage), each next one at `decay` times
    the one before.

    The stages are counted in epochs, so this is a schedule for data with
    many steps an epoch (2 epochs of 50,000 images at batch 32 are 3,100
    steps). With little data use `FineTuner.fine_tune`, which sizes its stages
    in optimizer steps: in `benchmarks/quality.py` (25 to 900 training
    examples) these stages were far too short to train a head.

    Args:
        layer_count: int. `len(backbone.layers)`; for a KerasHub backbone, whose
            `FreezePolicy.top(k)` counts transformer blocks, the block count
            (`FineTuner.freeze_report.blocks`).
        steps: int. How many unfreezing steps after the head stage. Defaults to 3.
        epochs_per_stage: int. Defaults to 2.
        learning_rate: float. The head stage's learning rate. Defaults to 3e-3.
        fine_tune_learning_rate: float. The first unfreezing stage's rate.
            Defaults to 3e-4.
        decay: float. Learning-rate factor from one unfreezing stage to the next.
            Defaults to 0.5.

    Examples:
        >>> from finetune_tf import gradual_unfreezing
        >>> [stage.freeze for stage in gradual_unfreezing(90, steps=3)]
        [FreezePolicy.all(), FreezePolicy.top(30), FreezePolicy.top(60), FreezePolicy.top(90)]
    """
    check_int(
        layer_count,
        "layer_count",
        where="gradual_unfreezing",
        meaning="the number of backbone layers",
        hint="Pass len(backbone.layers), or for a KerasHub backbone the block count "
        "(FineTuner.freeze_report.blocks).",
        type_error=ValueError,
    )
    check_int(
        steps,
        "steps",
        maximum=layer_count,
        where="gradual_unfreezing",
        meaning=f"the unfreezing steps after the head stage, at most layer_count={layer_count}",
        type_error=ValueError,
    )
    stages = [Stage(epochs_per_stage, FreezePolicy.all(), learning_rate, name="head")]
    for step in range(1, steps + 1):
        top = layer_count if step == steps else step * (layer_count // steps)
        stages.append(
            Stage(
                epochs_per_stage,
                FreezePolicy.top(top),
                fine_tune_learning_rate * decay ** (step - 1),
                name=f"unfreeze_{step}",
            )
        )
    return stages


def stage_name(stage: Stage, index: int) -> str:
    """The stage's name, or `stage_<n>` counting from 1."""
    return stage.name or f"stage_{index + 1}"


def compile_rate(stage: Stage, name: str, previous, steps: int | None):
    """The learning rate stage `name` compiles with, after a compile with the optimizer
    `previous` (None: not compiled yet): its own, shaped by its warm-up and cosine when it
    has them, from its own rate or else `previous`'s."""
    if not stage.warmup_epochs and stage.lr_schedule == "constant":
        return stage.learning_rate
    base_rate = stage.learning_rate
    if base_rate is None:  # the rate of the last compile
        base_rate = learning_rate_of(next_optimizer(previous))
    if not isinstance(base_rate, float):
        raise ValueError(
            f"Stage {name!r} has warmup_epochs/lr_schedule but no float learning rate to "
            f"shape: it keeps the last one, which is a schedule ({type(base_rate).__name__}, "
            "e.g. the cosine or warm-up of the stage before). Give the stage a learning_rate."
        )
    return stage_learning_rate(stage, base_rate, steps)


def stage_learning_rate(stage: Stage, base_rate, steps: int | None):
    """The stage's learning rate, with its warm-up and cosine shape as a Keras schedule."""
    if not stage.warmup_epochs and stage.lr_schedule == "constant":
        return stage.learning_rate
    if steps is None:
        raise ValueError(
            "`Stage(warmup_epochs, lr_schedule)` need the number of steps per epoch, which "
            "this data does not tell (a dataset of unknown length or a generator). Pass "
            "steps_per_epoch=... to fit."
        )
    peak = float(base_rate)
    warmup = int(round(stage.warmup_epochs * steps))
    total = stage.epochs * steps
    if stage.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(1, total - warmup),
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )
    return _LinearWarmup(peak, warmup)


@keras.saving.register_keras_serializable(package="finetune_tf")
class _LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `steps`, then constant."""

    def __init__(self, peak: float, steps: int):
        self.peak, self.steps = float(peak), int(steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return self.peak * keras.ops.minimum(1.0, (step + 1.0) / float(max(self.steps, 1)))

    def get_config(self):
        return {"peak": self.peak, "steps": self.steps}


def run_schedule(loop, stages: list[Stage], x, y, args: FitArgs, feature_cache):
    """Runs `stages` (checked by `training.plan.check_plan`) with `loop` (a
    `training.loop.Loop`); returns one `History` covering every stage."""
    has_validation = args.has_validation
    steps = args.steps_per_epoch(x)
    user_callbacks = args.callbacks
    verbose = args.verbose
    run = loop.run
    assembly, compiler = loop.assembly, loop.compiler
    resume = run.resume
    params = {}
    epoch = 0
    for index, stage in enumerate(stages):
        name = stage_name(stage, index)
        initial_epoch = epoch
        resuming = run.resumes(index)
        # Done before the interruption: the saved state holds its weights. Its freeze
        # policy and compile settings still apply, for a later stage that keeps them.
        done = resume is not None and index < resume["stage"]
        if resuming:
            epoch, initial_epoch = resume["stage_start"], resume["epoch"]
        if stage.freeze is not None:
            assembly.apply_freeze(stage.freeze)  # recompiled just below, once
        learning_rate = compile_rate(
            stage, name, compiler.spec.optimizer if compiler.compiled else None, steps
        )
        compiler.recompile(
            optimizer=stage.optimizer,
            learning_rate=learning_rate,
            layerwise_lr_decay=stage.layerwise_lr_decay,
        )
        if done:
            continue
        callbacks = list(user_callbacks)
        monitor = "val_loss" if has_validation else "loss"
        early_stopping = None
        if stage.early_stopping or (stage.restore_best_weights and has_validation):
            early_stopping = keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=stage.early_stopping or stage.epochs,
                restore_best_weights=stage.restore_best_weights and has_validation,
            )
            callbacks.append(early_stopping)
        run.begin_stage(index, name, epoch, early_stopping)
        last = index == len(stages) - 1
        if resuming and run.stage_ended(epoch + stage.epochs):
            # Killed after the stage's last epoch was saved: it ends as it would have.
            say(f"stage {name!r} had ended at epoch {resume['epoch']}", verbose)
            epoch, params = run.restore_ended_stage(), run.params_seen
            run.end_stage(index + 1, epoch, write=not last)
            continue
        if resuming:
            # Compiled and frozen for this stage: its saved variables go back now, before
            # a frozen backbone computes cached features.
            run.restore_model()
            say(f"resuming stage {name!r} at epoch {initial_epoch}", verbose)
        say(f"stage {name!r}: {stage.epochs} epochs, {assembly.freeze_report}", verbose)
        history = loop.fit_stage(
            x,
            y,
            args.replace(
                initial_epoch=initial_epoch, epochs=epoch + stage.epochs, callbacks=callbacks
            ),
            feature_cache,
        )
        params = history.params
        epoch = initial_epoch + len(history.epoch)
        run.end_stage(index + 1, epoch, write=not last)
    combined = run.as_history(stages=True)
    combined.params = params
    loop.model.history = combined
    return combined
