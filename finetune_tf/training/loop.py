"""`Loop`: how one FineTuner's model trains, epoch by epoch.

A `fit` call is one `TrainingRun` (progress, checkpoints, resume, the NaN
guard), run as one stage or as a schedule of stages (`schedule.run_schedule`).
Each stage trains on cached backbone features when the backbone is frozen
and the data allows it (`feature_cache`), else with `keras.Model.fit`, which
here also: orders array data by `(seed, epoch)` when seeded, runs a number of
steps per execution that divides the epoch, and falls back from XLA when
`jit_compile="auto"` turned it on for a model XLA cannot compile.

The loop talks to the model through `Assembly` and `Compiler`, never through
the FineTuner that owns them.
"""

from __future__ import annotations

import contextlib
import copy

import keras
import tensorflow as tf

from finetune_tf.runtime.chief import chief_writes
from finetune_tf.runtime.devices import describe
from finetune_tf.runtime.progress import say
from finetune_tf.training.feature_cache import FeatureCache, cache_decision, fit_on_cached_features
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.plan import check_plan, is_generator
from finetune_tf.training.run_fingerprint import run_fingerprint
from finetune_tf.training.run_state import TrainingRun
from finetune_tf.training.seeding import epoch_keyed, in_keras_order, steps_per_execution_for
from finetune_tf.training.stages import run_schedule

__all__ = ["Loop"]


class Loop:
    """Trains `assembly.model`, compiled by `compiler`, under `strategy`.

    Args:
        assembly: the `Assembly` (model, backbone layer, features, freeze).
        compiler: the `Compiler` of that model.
        placement: the `Placement` it trains under (strategy, precision, chief).
        seed: int or None. Orders each epoch's array data by `(seed, epoch)`.
    """

    def __init__(self, assembly, compiler, placement, seed):
        self.assembly = assembly
        self.compiler = compiler
        self.placement = placement
        self.seed = seed
        self.run: TrainingRun | None = None  # the progress of the running fit call
        self._placement_said = False

    @property
    def model(self) -> keras.Model:
        return self.assembly.model

    @property
    def strategy(self) -> tf.distribute.Strategy:
        return self.placement.strategy

    def fit(self, x, y, args: FitArgs, *, schedule, feature_cache, checkpoint_dir):
        """One `fit` call: a run of one stage, or of `schedule`; returns its `History`.

        The whole plan is checked first (`training.plan`): nothing trains for a call
        that a later stage would refuse."""
        schedule = check_plan(self.assembly, self.compiler, x, args, schedule)
        setting = FeatureCache.get(feature_cache)
        signature = None
        if checkpoint_dir is not None:  # what a saved state must match to be resumed
            signature = run_fingerprint(
                x,
                y,
                args,
                schedule=schedule,
                compile_config=self.compiler.compiled_config,
                seed=self.seed,
            )
        chief = self.placement.is_chief()
        self.run = TrainingRun(self.model, checkpoint_dir, chief, signature)
        # A schedule freezes and compiles stage by stage; if it does not end (an error, a
        # KeyboardInterrupt in a notebook), the tuner's settings go back to what they were,
        # so the same call again is the same run and resumes from checkpoint_dir.
        settings = (self.assembly.freeze, copy.copy(self.compiler.spec))
        try:
            with chief_writes(chief, args.callbacks) as callbacks:
                if callbacks:
                    args = args.replace(callbacks=callbacks)
                if schedule is not None:
                    history = run_schedule(self, schedule, x, y, args, setting)
                else:
                    history = self._fit_single(x, y, args, setting)
            self.run.finish()
            return history
        except BaseException:
            if schedule is not None:
                self.assembly.apply_freeze(settings[0])
                self.compiler.restore(settings[1])
            raise
        finally:
            self.run = None

    def _fit_single(self, x, y, args: FitArgs, setting):
        run = self.run
        run.begin_stage(0, "fit", args.initial_epoch)
        if run.resumes(0) and run.stage_ended(args.epochs):
            run.restore_ended_stage()  # a callback had stopped it, or every epoch ran
            params = run.params_seen
        else:
            if run.resumes(0):
                run.restore_model()
                args = args.replace(initial_epoch=run.resume["epoch"])
            params = self.fit_stage(x, y, args, setting).params
        history = run.as_history(stages=False)
        history.params = params
        self.model.history = history
        return history

    def fit_stage(self, x, y, args: FitArgs, setting: FeatureCache) -> keras.callbacks.History:
        """`model.fit`, on cached features when the stage allows it, watched by the run."""
        args = args.replace(callbacks=[*args.callbacks, self.run])
        history = None
        split = cache_decision(self.assembly, x, args, setting)
        if isinstance(split, str):
            if split:
                say(f"feature cache off: {split}", args.verbose)
        else:
            history = fit_on_cached_features(self, x, y, args, setting, split)
        if history is None:
            history = self.keras_fit(self.model, x, y, args)
        self.run.raise_if_failed(history)
        return history

    def keras_fit(
        self, model: keras.Model, x, y, args: FitArgs, one_pipeline: bool = False
    ) -> keras.callbacks.History:
        """`model.fit`, falling back from XLA when `jit_compile="auto"` turned it on in vain.

        With `one_pipeline` (a model whose epochs are short, the cached head), unseeded
        arrays are read in Keras' order from a plain `tf.data` pipeline
        (`seeding.in_keras_order`)."""
        self._say_placement(args.verbose)
        readers = (tf.data.Dataset, keras.utils.PyDataset)
        if (isinstance(x, readers) or is_generator(x)) and "shuffle" not in args:
            # Keras ignores `shuffle` for these but warns about its default (True) each time.
            args = args.replace(shuffle=False)
        per_execution = model.steps_per_execution
        if self.seed is not None:
            x, y, keyed = epoch_keyed(x, y, args, self.seed)
            if keyed is not args:  # one dataset of all epochs, back to back
                per_execution = steps_per_execution_for(keyed.get("steps_per_epoch"), per_execution)
            args = keyed
        elif one_pipeline:
            x, y, args = in_keras_order(x, y, args)
        kwargs = args.keras()
        with _steps_per_execution(model, per_execution):
            try:
                return model.fit(x, y, **kwargs)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
                compiler = self.compiler
                if not (model.jit_compile and compiler.jit_compile == "auto" and _is_xla(error)):
                    raise
                lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                reason = next((line for line in lines if "XLA" in line), lines[0])[:200]
                say(f"XLA cannot compile this model ({reason}); training without XLA", 1)
                compiler.xla_failed = True
                model.jit_compile = False
                forget_functions(model)
                return model.fit(x, y, **kwargs)

    def _say_placement(self, verbose):
        if not self._placement_said and verbose != 0:
            precision = self.placement.precision or "float32"
            say(f"training on {describe(self.strategy)}, {precision}", verbose)
            self._placement_said = True


def forget_functions(model: keras.Model) -> None:
    """Drops `model`'s traced train/test/predict functions: Keras reads steps_per_execution
    when it traces them."""
    model.train_function = model.test_function = model.predict_function = None


@contextlib.contextmanager
def _steps_per_execution(model: keras.Model, steps: int):
    """`model` runs `steps` per execution inside the block, then as compiled again."""
    compiled = model.steps_per_execution
    if steps == compiled:
        yield
        return
    model.steps_per_execution = steps
    forget_functions(model)
    try:
        yield
    finally:
        model.steps_per_execution = compiled
        forget_functions(model)


def _is_xla(error: Exception) -> bool:
    return "XLA" in str(error)
