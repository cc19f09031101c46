"""`FineTuner`: backbone + head + freeze policy as one `keras.Model`.

The model is functional: inputs -> input adapter (if the data's shape
differs from the backbone's) -> the backbone's preprocessing -> the backbone
(in a `BackboneLayer`) -> the head. `compile/fit/evaluate/predict` take what
Keras takes and return what Keras returns. Changing the freeze policy after
`compile()` recompiles with the trained weights kept, because Keras ignores
a change of `trainable` until the next `compile()`.
"""

from __future__ import annotations

import functools
import os

import keras
import tensorflow as tf

from finetune_tf.model.assembly import Assembly, check_policy, input_plan, resolve_augmentation
from finetune_tf.model.backbone import Backbone
from finetune_tf.model.freeze import FreezePolicy, FreezeReport
from finetune_tf.model.head import Head
from finetune_tf.model.tuned_model import TunedModel
from finetune_tf.outputs.export import export_model
from finetune_tf.outputs.report import Report, predict_with_labels
from finetune_tf.outputs.tuner_config import TunerConfig, copy_weights_by_layer_name
from finetune_tf.runtime.chief import chief_path
from finetune_tf.runtime.placement import Placement
from finetune_tf.training.compile import Compiler, check_jit_compile
from finetune_tf.training.data_checks import DataGate
from finetune_tf.training.feature_cache import FeatureCache
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.loop import Loop
from finetune_tf.training.lr_finder import LRFinderResult, find_learning_rate
from finetune_tf.training.recipes import fine_tune_schedule
from finetune_tf.training.run_state import check_checkpoint_dir
from finetune_tf.training.seeding import check_seed

__all__ = ["FineTuner"]


def _in_scope(method):
    """Runs a FineTuner method inside its strategy's scope (see `FineTuner._scope`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._scope():
            return method(self, *args, **kwargs)

    return wrapper


class FineTuner:
    """Fine-tunes a pretrained `Backbone` with a new `Head`.

    Args:
        backbone: `Backbone`, or anything `Backbone.load` accepts (a
            `keras.Model`, a `keras.applications` name, a model file, a
            SavedModel directory or a Hub URL).
        head: `Head`. The task layers.
        freeze: `FreezePolicy`. Which backbone layers train. Defaults to
            `FreezePolicy.all()`: only the head trains in `fit`, the safe first
            stage; `fine_tune` then trains the whole backbone in its second
            stage unless you chose a policy.
        input_shape: tuple, optional. The shape of your raw inputs, without
            the batch axis, if it differs from the backbone's: images are then
            resized and their channels repeated or projected inside the model
            (e.g. `(28, 28, 1)` digits into a `(96, 96, 3)` network).
        input_channels: str. How to adapt channels: `"auto"`, `"repeat"` or
            `"project"` (see `InputAdapter`). Defaults to `"auto"`.
        augmentation: Keras layer or list of layers, optional. Random
            augmentation applied to the raw inputs while training (e.g.
            `keras.layers.RandomFlip`); Keras' random layers pass inputs
            through unchanged at inference.
        strategy: `"auto"`, None or a `tf.distribute.Strategy`. Where to
            train. `"auto"`: an enclosing `strategy.scope()`'s strategy, else
            `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes workers,
            `TPUStrategy` on TPUs, `MirroredStrategy` over several local GPUs
            (or logical CPU devices), else TensorFlow's device placement (the
            one GPU, or the CPU). None: TensorFlow's current strategy.
            `batch_size` stays the global batch. See docs/devices.md.
            Defaults to `"auto"`.
        mixed_precision: `"auto"`, None, `"mixed_float16"` or
            `"mixed_bfloat16"`. `"auto"`: `mixed_float16` on GPUs of compute
            capability 7.0 or more, `mixed_bfloat16` on TPUs, float32
            elsewhere; for this model's layers only, with float32 predictions
            and loss. Defaults to `"auto"`.
        jit_compile: `"auto"`, True or False. XLA for the train step.
            `"auto"`: on GPUs and TPUs, off on CPUs, falling back to no XLA
            when a layer cannot be compiled. Defaults to `"auto"`.
        memory_growth: bool or None. Let TensorFlow allocate GPU memory as
            needed (None: leave the setting alone). Defaults to True.
        seed: int, optional. Repeatable training: seeds Python, NumPy and
            TensorFlow before building and orders each epoch's shuffle of
            array data by `(seed, epoch)`, so two runs (and a run resumed from
            `checkpoint_dir`) end with identical weights on CPU; on GPUs also
            call `tf.config.experimental.enable_op_determinism()`. Give your
            augmentation layers a `seed` too. Defaults to None.
        name: str. The model's name. Defaults to `"fine_tuner"`.

    With a strategy or mixed precision, the backbone's model is copied (same
    weights) into the strategy's scope and dtype; `tuner.backbone` is the copy.

    Attributes:
        model: the `keras.Model` (inputs to predictions) that trains and saves.
        strategy: the `tf.distribute.Strategy` it builds and trains under.
        devices: list of str. The devices it computes on, e.g.
            `["/job:localhost/replica:0/task:0/device:GPU:0"]`.
        mixed_precision: str or None. The dtype policy of its layers (None:
            float32). See docs/devices.md.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
        >>> inputs = keras.Input((8, 8, 1))
        >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        >>> backbone = Backbone.from_model(keras.Model(inputs, x))
        >>> tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none())
        >>> tuner.compile(optimizer="adam", learning_rate=1e-3)
        >>> history = tuner.fit(np.random.rand(12, 8, 8, 1), np.arange(12) % 3,
        ...                     epochs=1, verbose=0)
        >>> tuner.predict(np.random.rand(2, 8, 8, 1), verbose=0).shape
        (2, 3)
    """

    def __init__(
        self,
        backbone,
        head: Head,
        *,
        freeze: FreezePolicy | None = None,
        input_shape: tuple | None = None,
        input_channels: str = "auto",
        augmentation=None,
        strategy="auto",
        mixed_precision="auto",
        jit_compile="auto",
        memory_growth: bool | None = True,
        seed: int | None = None,
        name: str = "fine_tuner",
    ):
        self._seed = check_seed(seed)
        backbone = Backbone.load(backbone)
        if not isinstance(head, Head):
            raise TypeError(
                "`head` must be a finetune_tf.Head, e.g. Head.classifier(num_classes=5). "
                f"Received: head={head!r} of type {type(head).__name__}."
            )
        # Whether the user chose what trains: without a choice, `fine_tune`'s second stage
        # trains the whole backbone (a method named fine_tune must fine-tune it).
        self._freeze_chosen = freeze is not None
        freeze = FreezePolicy.all() if freeze is None else freeze
        check_policy(freeze)
        model_input_shape, adapt = input_plan(backbone, input_shape)
        augmentation = resolve_augmentation(augmentation)
        check_jit_compile(jit_compile)
        self._placement = Placement(strategy, mixed_precision, memory_growth)
        self._strategy = self._placement.strategy
        self.devices: list[str] = self._placement.devices
        self.mixed_precision: str | None = self._placement.precision
        self._input_channels = input_channels
        with self._placement.building():
            backbone = backbone.placed(self._strategy, self.mixed_precision)
            if self._seed is not None:
                # Copying the backbone into a strategy's scope draws from the generator; the
                # head must start from the same weights with or without that copy.
                keras.utils.set_random_seed(self._seed)
            self._assembly = Assembly.build(
                backbone,
                head,
                freeze,
                input_shape=model_input_shape,
                adapt=adapt,
                input_channels=input_channels,
                augmentation=augmentation,
                name=name,
            )
        self.model: TunedModel = self._assembly.model
        self._compiler = Compiler(self.model, backbone, head, self._placement, jit_compile)
        self._loop = Loop(self._assembly, self._compiler, self._placement, self._seed)
        self._data = DataGate(self._assembly, self._compiler)

    # --- Placement ----------------------------------------------------------

    @property
    def strategy(self) -> tf.distribute.Strategy:
        """The `tf.distribute.Strategy` this FineTuner builds and trains under."""
        return self._strategy

    @property
    def placement(self) -> Placement:
        """Where this tuner computes: its `strategy`, `devices` and `precision`, and the
        answers to "does XLA help here" and "does this process write files"."""
        return self._placement

    def _scope(self):
        """The strategy's scope (when it is not the default), mended for multi-worker Keras."""
        return self._placement.scope()

    # --- Properties -------------------------------------------------------

    @property
    def backbone(self) -> Backbone:
        """The `Backbone` inside the model (a copy under a strategy or mixed precision)."""
        return self._assembly.backbone

    @property
    def head(self) -> Head:
        """The `Head` on top."""
        return self._assembly.head

    @property
    def freeze(self) -> FreezePolicy:
        """The freeze policy. Assigning a new one is `set_freeze(policy)`."""
        return self._assembly.freeze

    @freeze.setter
    def freeze(self, policy: FreezePolicy):
        self.set_freeze(policy)

    @property
    def freeze_report(self) -> FreezeReport:
        """What the current freeze policy trains (`FreezeReport`)."""
        return self._assembly.freeze_report

    @property
    def augmentation(self) -> keras.layers.Layer | None:
        """The augmentation layer the model applies while training, or None."""
        return self._assembly.augmentation

    @property
    def assembly(self) -> Assembly:
        """The wired model and its parts (`model`, `backbone_layer`, `features`,
        `feature_model`, `head_model()`), for code that builds on a FineTuner."""
        return self._assembly

    @property
    def input_shape(self) -> tuple:
        """The shape of raw inputs the model takes, without the batch axis."""
        return self._assembly.input_shape

    def set_freeze(self, policy: FreezePolicy) -> FreezeReport:
        """Applies a new freeze policy, recompiling if already compiled.

        Trained weights are kept; the optimizer starts afresh with the same
        settings (its slots belonged to the previous set of variables).

        Returns:
            The `FreezeReport`.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
            >>> inputs = keras.Input((4,))
            >>> x = keras.layers.Dense(3, name="features")(inputs)
            >>> tuner = FineTuner(Backbone.from_model(keras.Model(inputs, x)), Head.regressor())
            >>> tuner.set_freeze(FreezePolicy.none()).trainable_params
            15
        """
        report = self._assembly.apply_freeze(policy)
        self._freeze_chosen = True
        self._compiler.refresh()
        return report

    # --- Keras API ----------------------------------------------------------

    @_in_scope
    def compile(
        self,
        optimizer="adam",
        loss="auto",
        metrics="auto",
        *,
        learning_rate: float | None = None,
        layerwise_lr_decay: float | None = None,
        **kwargs,
    ) -> None:
        """Configures training, like `keras.Model.compile`.

        Args:
            optimizer: str or `keras.optimizers.Optimizer`. Defaults to `"adam"`.
            loss: `"auto"` (the head's default), a loss name or a Keras loss.
                Defaults to `"auto"`.
            metrics: `"auto"` (the head's default), or what Keras takes.
                Defaults to `"auto"`.
            learning_rate: float or `LearningRateSchedule`, optional. Sets the
                optimizer's learning rate.
            layerwise_lr_decay: float in (0, 1], optional. Discriminative
                learning rates: the head trains at `learning_rate`, the top
                trained backbone layer at `layerwise_lr_decay` times it, the
                next one down at its square, and so on (see
                `LayerwiseOptimizer`). Works with any Keras optimizer.
            **kwargs: passed to `keras.Model.compile` (e.g. `loss_weights`,
                `run_eagerly`, `jit_compile`, `steps_per_execution`).
        """
        self._compiler.compile(
            optimizer,
            loss,
            metrics,
            learning_rate=learning_rate,
            layerwise_lr_decay=layerwise_lr_decay,
            **kwargs,
        )

    @_in_scope
    def recompile(
        self, *, optimizer=None, learning_rate=None, layerwise_lr_decay: float | None = None
    ) -> None:
        """Compiles again with the settings of the last `compile()` and a fresh optimizer.

        Trained weights are kept. `optimizer` and `learning_rate` override the
        previous ones; without a previous `compile()`, Keras' defaults for
        this head are used (`"adam"`, the head's loss and metrics).
        `layerwise_lr_decay` applies to this compilation only (`None`: the
        one given to `compile()`).

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(3)(inputs))), Head.regressor())
            >>> tuner.compile(optimizer="adam", learning_rate=1e-3)
            >>> tuner.recompile(learning_rate=1e-5)
            >>> round(float(tuner.model.optimizer.learning_rate), 6)
            1e-05
        """
        self._compiler.recompile(
            optimizer=optimizer, learning_rate=learning_rate, layerwise_lr_decay=layerwise_lr_decay
        )
        self._compiler.remember()

    @_in_scope
    def fit(
        self,
        x=None,
        y=None,
        *,
        schedule=None,
        feature_cache="auto",
        checkpoint_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> keras.callbacks.History:
        """Trains the model; takes and returns what `keras.Model.fit` does.

        `x` may be numpy arrays (strings too, for text backbones), tensors,
        a `tf.data.Dataset` or a `keras.utils.PyDataset`; `validation_data`,
        `validation_split`, `class_weight`, `callbacks` etc. pass through to
        Keras.

        Args:
            schedule: list of `Stage`, optional. Train in stages, each with
                its own freeze policy, epochs, learning rate, optimizer and
                early stopping; the model is recompiled between stages with
                the trained weights kept and a fresh optimizer. Returns one
                `History` for all stages, with `history.history["stage"]`
                naming the stage of each epoch; callbacks see one continuous
                run (epoch numbers keep counting). Without a previous
                `compile()`, `"adam"` with the head's loss and metrics is used.
            feature_cache: `"auto"`, `True`, `False` or `FeatureCache`. While
                the whole backbone is frozen, run it once over the data and
                train the head on its cached outputs (same result, about
                `epochs` times faster). `"auto"` does so when the data is
                known to be the same every epoch, and says why not otherwise
                (e.g. augmentation). See `FeatureCache`.
            checkpoint_dir: str or path, optional. Save the training state
                (weights, optimizer, stage and epoch, history, early
                stopping) there at the end of every epoch, atomically. If the
                process dies, the same call resumes from the last completed
                epoch (and stage) instead of starting over; with `seed=` on
                the FineTuner it ends with the weights of an uninterrupted
                run. The state is removed when the call completes. Resuming
                with other arguments is refused.

        Whatever the arguments, a NaN or inf loss stops training: the model
        gets back the weights of the last epoch that ended with a finite loss
        and `fit` raises `FloatingPointError` (its `.history` holds the epochs
        run).
        """
        if schedule is None:
            self._compiler.require("fit")
        setting = FeatureCache.get(feature_cache)
        checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
        x, args = self._data.for_fit(x, y, FitArgs.checked(kwargs, where="FineTuner.fit"))
        return self._loop.fit(
            x, y, args, schedule=schedule, feature_cache=setting, checkpoint_dir=checkpoint_dir
        )

    @_in_scope
    def fine_tune(
        self,
        x=None,
        y=None,
        *,
        head_epochs: int | str = "auto",
        epochs: int | str = "auto",
        learning_rate: float = 3e-3,
        fine_tune_learning_rate: float = 3e-4,
        layerwise_lr_decay: float | None = 0.8,
        early_stopping: int | str | None = "auto",
        **kwargs,
    ) -> keras.callbacks.History:
        """The default two-stage recipe: train the head, then fine-tune gently.

        Stage 1 (`"head"`) trains only the new head on the frozen backbone at
        `learning_rate` (3e-3) until it has learned (a random head would send
        large gradients into the pretrained weights: the Keras guide; LP-FT,
        Kumar et al. 2022). Stage 2 (`"fine_tune"`) trains the backbone: the
        freeze policy you gave (`freeze=` or `set_freeze`), or else the whole
        backbone with BatchNorm in inference mode, at `fine_tune_learning_rate`
        (3e-4) for the head and `layerwise_lr_decay` (0.8) times the layer
        above for each backbone layer (ULMFiT; BEiT). `layerwise_lr_decay=None`
        gives every layer the same rate.

        Both stages are sized in optimizer steps: `head_epochs="auto"` runs 30
        epochs or as many as make 500 steps (at most 500); `epochs="auto"` runs
        10 or as many as make 300 steps (at most 200); 30 and 10 for data of
        unknown length. With validation data both stages keep their best
        epoch's weights and `early_stopping="auto"` stops stage 2 after a tenth
        of its epochs (at least 3) without a better `val_loss`; without it,
        all epochs run (pass a patience to stop on `loss`, None never to stop).
        docs/recipes.md has the reasons and `benchmarks/quality.py` the
        measurements (seven tasks, against the Keras guide's recipe by hand, a
        linear probe and training from scratch).

        Takes what `fit` takes (`validation_data`, `callbacks`, `checkpoint_dir`,
        `feature_cache`, ...) and returns one `History` for both stages.

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(8, name="features")(inputs)))
            >>> tuner = FineTuner(backbone, Head.classifier(2), freeze=FreezePolicy.none())
            >>> history = tuner.fine_tune(np.random.rand(32, 4), np.arange(32) % 2,
            ...                           head_epochs=2, epochs=2, verbose=0)
            >>> history.history["stage"]
            ['head', 'head', 'fine_tune', 'fine_tune']
        """
        schedule = fine_tune_schedule(
            self.freeze,
            self._freeze_chosen,
            x,
            FitArgs.checked(
                kwargs, where="FineTuner.fine_tune", others=("feature_cache", "checkpoint_dir")
            ),
            head_epochs=head_epochs,
            epochs=epochs,
            learning_rate=learning_rate,
            fine_tune_learning_rate=fine_tune_learning_rate,
            layerwise_lr_decay=layerwise_lr_decay,
            early_stopping=early_stopping,
        )
        return self.fit(x, y, schedule=schedule, **kwargs)

    @_in_scope
    def find_learning_rate(
        self,
        x=None,
        y=None,
        *,
        min_lr: float = 1e-7,
        max_lr: float = 1.0,
        steps: int = 100,
        batch_size: int | None = 32,
        divergence: float = 4.0,
        **kwargs,
    ) -> LRFinderResult:
        """The learning-rate range test: sweep, record, restore, suggest.

        Trains up to `steps` steps with the learning rate growing
        exponentially from `min_lr` to `max_lr` (stopping early once the loss
        exceeds `divergence` times its best), then restores the weights and
        the compiled optimizer exactly as they were. Uses the optimizer of the
        last `compile()` (or `"adam"`) with the current freeze policy.

        Returns:
            `LRFinderResult` with `learning_rates`, `losses`, `suggestion` (one
            tenth of the rate at the smoothed loss's minimum, always inside
            `[min_lr, max_lr]`), `reliable` and `note`, and `plot(path=None)`.
            When the curve has no clear minimum (the loss never fell by a
            tenth, or was lowest at the sweep's start or end), `reliable` is
            False and a warning says what to try.

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(3)(inputs))), Head.regressor())
            >>> result = tuner.find_learning_rate(np.random.rand(64, 4), np.random.rand(64),
            ...                                   steps=20, batch_size=8)
            >>> 0.0 < result.suggestion < 1.0
            True
        """
        if not self._compiler.compiled:
            self.compile()
        args = FitArgs.checked(kwargs, where="FineTuner.find_learning_rate")
        x, args = self._data.for_fit(x, y, args)
        return find_learning_rate(
            self._compiler,
            x,
            y,
            min_lr=min_lr,
            max_lr=max_lr,
            steps=steps,
            batch_size=batch_size,
            divergence=divergence,
            **args.keras(),
        )

    @_in_scope
    def evaluate(self, x=None, y=None, **kwargs):
        """Evaluates the model; takes and returns what `keras.Model.evaluate` does."""
        self._compiler.require("evaluate")
        return self.model.evaluate(self._data.check(x, y, "evaluate"), y, **kwargs)

    @_in_scope
    def predict(self, x, **kwargs):
        """Predicts; takes and returns what `keras.Model.predict` does."""
        return self.model.predict(self._data.check(x, None, "predict"), **kwargs)

    @_in_scope
    def report(self, x=None, y=None, *, class_names: list | None = None, batch_size=None) -> Report:
        """Precision, recall, F1 and the confusion matrix of the model on `x`, `y`.

        Args:
            x: inputs (arrays, tensors, strings for text backbones), or a
                `tf.data.Dataset` or `keras.utils.PyDataset` of
                `(inputs, labels)` batches.
            y: labels in any format `fit` takes (integer ids, one-hot,
                multi-label indicators, regression targets). None when `x`
                is a dataset.
            class_names: list of str, optional. Names for classes 0..k-1 (or
                for the labels of a multi-label head).
            batch_size: int, optional. Batch size for prediction.

        Returns:
            A `Report`: a dict (`report["accuracy"]`,
            `report["per_class"]["cat"]["f1"]`, `report["confusion_matrix"]`;
            `mae`, `rmse` and `r2` for regression heads) that prints as a
            table and plots its confusion matrix with
            `report.plot_confusion_matrix(path=None)`. Computed with
            `sklearn.metrics`. Binary and multi-label predictions are
            thresholded at 0.5 (logits at 0).

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(8)(inputs))), Head.classifier(3))
            >>> report = tuner.report(np.random.rand(30, 4), np.arange(30) % 3,
            ...                       class_names=["a", "b", "c"])
            >>> sorted(report["per_class"]), len(report["confusion_matrix"])
            (['a', 'b', 'c'], 3)
        """
        self.head.label_names(class_names)  # checked before predicting
        if not isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
            x = self._data.check(x, y, "report")
        predictions, y = predict_with_labels(self.model, x, y, batch_size)
        return self.head.report(predictions, y, class_names)

    def summary(self, **kwargs):
        """Prints the model summary (`keras.Model.summary`)."""
        return self.model.summary(**kwargs)

    def save(self, filepath: str | os.PathLike, *, overwrite: bool = True) -> None:
        """Saves the model and the tuner's settings to a `.keras` file, atomically.

        `FineTuner.load(filepath)` gives back a tuner (backbone, head, freeze
        policy, compile settings) ready to train again; the model alone loads
        with `finetune_tf.load_model(filepath)` or plain
        `keras.models.load_model(filepath)` after `import finetune_tf`; no
        `custom_objects` needed. A model with a SavedModel or Hub backbone
        stores the handle, which must still resolve when loading.
        """
        self._config().save(
            self.model, filepath, chief=self._placement.is_chief(), overwrite=overwrite
        )

    @classmethod
    def load(
        cls,
        filepath: str | os.PathLike,
        *,
        safe_mode: bool = True,
        strategy="auto",
        mixed_precision="auto",
        memory_growth: bool | None = True,
    ) -> FineTuner:
        """A tuner saved with `FineTuner.save`, ready to `fit`, `fine_tune` or `report`.

        The backbone, head, augmentation and weights come from the file; the
        freeze policy, input settings, seed and the last `compile()` settings
        from the tuner's saved settings. The optimizer starts afresh (its
        state is not in the file); to continue an interrupted run exactly,
        use `fit(checkpoint_dir=...)`.

        Args:
            filepath: str or path. A `.keras` file written by `FineTuner.save`.
            safe_mode: bool. Refuse files that would run Python code on load
                (see `finetune_tf.load_model`). Defaults to True.
            strategy, mixed_precision, memory_growth: as for `FineTuner`, for
                where the restored tuner trains.

        Examples:
            >>> import os, tempfile, keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
            >>> tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.top(1))
            >>> tuner.compile(learning_rate=1e-3)
            >>> path = os.path.join(tempfile.mkdtemp(), "tuned.keras")
            >>> tuner.save(path)
            >>> again = FineTuner.load(path)
            >>> again.head, again.freeze
            (Head.classifier(num_classes=3, pooling='avg'), FreezePolicy.top(1))
            >>> x = np.ones((2, 4), "float32")
            >>> bool(np.allclose(again.predict(x, verbose=0), tuner.predict(x, verbose=0)))
            True
        """
        placement = Placement(strategy, mixed_precision, memory_growth)
        strategy = placement.strategy  # the file's variables are made in its scope
        model, config = TunerConfig.read(
            filepath, safe_mode=safe_mode, strategy=strategy, precision=placement.precision
        )
        tuner = cls._from_config(
            config,
            safe_mode=safe_mode,
            strategy=strategy,
            mixed_precision=placement.precision,
            memory_growth=None,
        )
        with tuner._scope():
            copy_weights_by_layer_name(model, tuner.model)
        return tuner

    def get_config(self) -> dict:
        """The tuner as plain data: the backbone's architecture (no weights), the head,
        the freeze policy, the input settings, the seed and the last `compile()`
        settings. `FineTuner.from_config` rebuilds it, as `keras.Model.from_config`
        rebuilds a model: same architecture, fresh weights. Where the tuner trains
        (strategy, mixed precision) is not part of it.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
            >>> tuner = FineTuner(backbone, Head.regressor(), seed=1)
            >>> again = FineTuner.from_config(tuner.get_config())
            >>> again.head, again.freeze, again.backbone.output_shape
            (Head.regressor(num_outputs=1, pooling='avg'), FreezePolicy.all(), (3,))
        """
        return self._config().get_config()

    def _config(self) -> TunerConfig:
        """The tuner's settings, its backbone and its augmentation layer."""
        backbone = self.backbone
        settings = {
            "head": self.head.get_config(),
            "freeze": self.freeze.get_config(),
            "freeze_chosen": self._freeze_chosen,
            "input_shape": (
                None if self.input_shape == backbone.input_shape else list(self.input_shape)
            ),
            "input_channels": self._input_channels,
            "jit_compile": self._compiler.jit_compile,
            "seed": self._seed,
            "name": self.model.name,
            "compile": self._compiler.get_config(),
        }
        return TunerConfig(settings, backbone, self._assembly.augmentation)

    @classmethod
    def from_config(cls, config: dict) -> FineTuner:
        """The tuner `get_config` describes, with fresh weights (see `get_config`)."""
        return cls._from_config(TunerConfig.from_config(config))

    @classmethod
    def _from_config(cls, config: TunerConfig, safe_mode: bool = True, **placement) -> FineTuner:
        tuner = cls(**config.tuner_arguments(), **placement)
        tuner._freeze_chosen = config.freeze_chosen
        compiled = config.compile_arguments(safe_mode)
        if compiled is not None:
            tuner.compile(**compiled)
        return tuner

    def export(
        self,
        path: str | os.PathLike,
        *,
        format: str = "saved_model",
        class_names: list | None = None,
        quantize: str | None = None,
        overwrite: bool = True,
    ) -> str:
        """Exports for serving (`"saved_model"`) or for mobile (`"tflite"`); returns `path`.

        The export needs no handle and no finetune_tf, and carries the class
        names. A SavedModel directory: `tf.saved_model.load(path).serve(x)`
        returns the predictions; its `serving_default` signature (what TF
        Serving calls) takes `inputs` and returns `predictions`, plus
        `class_id` and `label` for classification heads (`active` for
        multi-label heads, whose names are in `assets/labels.txt`). A
        `.tflite` file: the same signature in one flatbuffer, for
        `tf.lite.Interpreter` / LiteRT.

        Args:
            path: a directory for `"saved_model"`, a file ending in `.tflite`.
            format: `"saved_model"` or `"tflite"`. Defaults to `"saved_model"`.
            class_names: list of str, optional. The name of each class (or
                label); defaults to "0", "1", ...
            quantize: None or `"dynamic"`: TFLite weights in int8 (about 4x
                smaller, outputs within about 1e-2). Defaults to None.
            overwrite: bool. Replace an existing export. Defaults to True.

        Examples:
            >>> import os, tempfile, keras, numpy as np, tensorflow as tf
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(3)(inputs))), Head.regressor())
            >>> path = tuner.export(os.path.join(tempfile.mkdtemp(), "serving"))
            >>> served = tf.saved_model.load(path)  # keep a reference while calling it
            >>> x = np.ones((2, 4), "float32")
            >>> bool(np.allclose(served.serve(x), tuner.predict(x, verbose=0), atol=1e-6))
            True
        """
        with chief_path(self._placement.is_chief(), path) as target:
            written = export_model(
                self.model,
                self.head,
                target,
                format=format,
                class_names=class_names,
                quantize=quantize,
                overwrite=overwrite,
            )
        return written if target is path else os.path.abspath(os.fspath(path))

    def __repr__(self):
        return (
            f"<FineTuner {self.model.name!r}: {self.backbone!r} + {self.head!r}, "
            f"freeze={self.freeze!r}>"
        )
