"""`FineTuner`: backbone + head + freeze policy as one `keras.Model`, a facade over its parts."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from finetune_tf.model.assembly import Assembly, resolve_parts
from finetune_tf.model.backbone import Backbone
from finetune_tf.model.freeze import FreezePolicy, FreezeReport
from finetune_tf.model.head import Head
from finetune_tf.model.head.widening import check_class_names, classes_to_add, widened_assembly
from finetune_tf.model.lora import adapted_layers, merge_lora
from finetune_tf.model.tuned_model import TunedModel
from finetune_tf.outputs.export import export_model
from finetune_tf.outputs.report import Report, predict_with_labels
from finetune_tf.outputs.tuner_config import TunerConfig
from finetune_tf.runtime.placement import Placement, in_scope
from finetune_tf.training.compile import Compiler, check_jit_compile
from finetune_tf.training.data_checks import DataGate
from finetune_tf.training.feature_cache import FeatureCache
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.growing import DISTILLATION_WEIGHT, MEMORY_PER_CLASS, TEMPERATURE, Growth
from finetune_tf.training.loop import Loop
from finetune_tf.training.lr_finder import LRFinderResult, find_learning_rate
from finetune_tf.training.recipes import fine_tune_schedule
from finetune_tf.training.run_state import check_checkpoint_dir
from finetune_tf.training.seeding import check_seed

__all__ = ["FineTuner"]


class FineTuner:
    """Fine-tunes a pretrained `Backbone` with a new `Head`.

    Args:
        backbone: `Backbone`, or anything `Backbone.load` accepts (a `keras.Model`, a
            `keras.applications` name, a model file, a SavedModel directory or a Hub URL).
        head: `Head`. The task layers.
        freeze: `FreezePolicy`. Which backbone layers train. Defaults to `FreezePolicy.all()`:
            only the head trains in `fit` (see `fine_tune`).
        input_shape: tuple, optional. The shape of your raw inputs, without the batch axis, if
            it differs from the backbone's: images are then resized and their channels adapted
            inside the model (docs/usage.md).
        input_channels: str. How to adapt channels: `"auto"`, `"repeat"` or `"project"` (see
            `InputAdapter`). Defaults to `"auto"`.
        augmentation: Keras layer or list of layers, optional. Random augmentation of the raw
            inputs while training, saved with the model.
        strategy: `"auto"`, None or a `tf.distribute.Strategy`. Where to train: `"auto"` picks
            one for the workers and devices present (or an enclosing `strategy.scope()`'s), None
            is TensorFlow's current one; `batch_size` stays the global batch. See
            docs/devices.md. Defaults to `"auto"`.
        mixed_precision: `"auto"`, None, `"mixed_float16"` or `"mixed_bfloat16"`. The dtype
            policy of this model's layers (predictions and loss stay float32). `"auto"`:
            `mixed_float16` on GPUs of compute capability 7.0 or more, `mixed_bfloat16` on TPUs,
            float32 elsewhere. Defaults to `"auto"`.
        jit_compile: `"auto"`, True or False. XLA for the train step. `"auto"`: on GPUs and
            TPUs, off on CPUs, falling back to no XLA when a layer cannot be compiled. Defaults
            to `"auto"`.
        memory_growth: bool or None. Let TensorFlow allocate GPU memory as needed (None: leave
            the setting alone). Defaults to True.
        seed: int, optional. Repeatable training: seeds Python, NumPy and TensorFlow before
            building and orders each epoch's shuffle of array data by `(seed, epoch)`
            (docs/robustness.md). Defaults to None.
        class_names: list of str, optional. The name of each class (or label), kept with
            the tuner: the default of `report` and `export` (see `class_names`).
        name: str. The model's name. Defaults to `"fine_tuner"`.

    Attributes:
        model: the `keras.Model` (inputs to predictions) that trains and saves.
        devices: list of str. The devices it computes on, e.g. `["/job:localhost/.../GPU:0"]`.
        mixed_precision: str or None. The dtype policy of its layers (None: float32).

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
        >>> inputs = keras.Input((8, 8, 1))
        >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        >>> backbone = Backbone.from_model(keras.Model(inputs, x))
        >>> tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none())
        >>> tuner.compile(optimizer="adam", learning_rate=1e-3)
        >>> history = tuner.fit(np.random.rand(12, 8, 8, 1), np.arange(12) % 3, epochs=1, verbose=0)
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
        class_names: list | None = None,
        name: str = "fine_tuner",
    ):
        self._seed = check_seed(seed)
        parts = resolve_parts(backbone, head, freeze, input_shape, augmentation)
        check_jit_compile(jit_compile)
        # Not chosen: `fine_tune`'s second stage trains the whole backbone (it must fine-tune).
        self._freeze_chosen = freeze is not None
        self._placement = Placement(strategy, mixed_precision, memory_growth)
        self.devices: list[str] = self._placement.devices
        self.mixed_precision: str | None = self._placement.precision
        self._assembly = Assembly.build_placed(
            self._placement, self._seed, **parts, input_channels=input_channels, name=name
        )
        self._compiler = Compiler(
            self._assembly.model, self.backbone, head, self._placement, jit_compile
        )
        self._wire(self._assembly)
        self._growth = Growth()  # what add_classes and fit_new_classes remember
        self.class_names = class_names

    def _wire(self, assembly: Assembly) -> None:
        """Trains, checks data for and compiles `assembly`'s model (a new one: `add_classes`)."""
        self._assembly = assembly
        self.model: TunedModel = assembly.model
        self._loop = Loop(assembly, self._compiler, self._placement, self._seed)
        self._data = DataGate(assembly, self._compiler)

    # --- Properties -------------------------------------------------------

    @property
    def strategy(self) -> tf.distribute.Strategy:
        """The `tf.distribute.Strategy` this FineTuner builds and trains under."""
        return self._placement.strategy

    @property
    def placement(self) -> Placement:
        """Where it computes (strategy, devices, precision); does XLA help; does it write?"""
        return self._placement

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
    def compiled(self) -> bool:
        """Whether `compile` (or a method that compiles, like `fine_tune`) has run.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
            >>> tuner = FineTuner(backbone, Head.classifier(2))
            >>> before = tuner.compiled
            >>> tuner.compile()
            >>> before, tuner.compiled
            (False, True)
        """
        return self._compiler.compiled

    @property
    def seed(self) -> int | None:
        """The `seed` given (checked), which seeds initial weights, shuffling and augmentation.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
            >>> FineTuner(backbone, Head.classifier(2), seed=7).seed
            7
        """
        return self._seed

    @property
    def assembly(self) -> Assembly:
        """The wired model and its parts, for code that builds on a FineTuner."""
        return self._assembly

    @property
    def input_shape(self) -> tuple:
        """The shape of raw inputs the model takes, without the batch axis."""
        return self._assembly.input_shape

    @property
    def class_names(self) -> list[str] | None:
        """The name of each class (or label), or None: `report` and `export` use them, and
        `save` keeps them. Assign a list of str (one per class) to set them.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(3)(inputs))), Head.classifier(3))
            >>> tuner.class_names = ["cat", "dog", "fox"]
            >>> tuner.class_names
            ['cat', 'dog', 'fox']
        """
        return self._class_names

    @class_names.setter
    def class_names(self, names: list | None):
        self._class_names = None if names is None else check_class_names(self.head, names)

    def set_freeze(self, policy: FreezePolicy) -> FreezeReport:
        """Applies a new freeze policy and returns its `FreezeReport`; if compiled, compiles
        again, with the trained weights kept and a fresh optimizer (docs/usage.md).

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

    @in_scope
    def merge_lora(self) -> FreezeReport:
        """Folds the backbone's LoRA adapters into its kernels, for export; returns the new
        `FreezeReport`.

        The backbone becomes a copy of plain layers whose kernels are `kernel + (alpha /
        rank) * lora_a @ lora_b` (`finetune_tf.merge_lora`): the model predicts the same, to
        float tolerance, and `save` and `export` write no adapters. The freeze policy becomes
        `FreezePolicy.all()` (the head alone trains); set another to train again. If
        compiled, compiles again (same settings, fresh optimizer). Without it, `save` keeps
        the adapters and `FineTuner.load` gives them back ready to train (docs/usage.md).

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(8)(inputs)))
            >>> tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.lora(2))
            >>> x = np.ones((2, 4), "float32")
            >>> before = tuner.predict(x, verbose=0)
            >>> tuner.merge_lora().policy
            'FreezePolicy.all()'
            >>> bool(np.allclose(tuner.predict(x, verbose=0), before, atol=1e-6))
            True
        """
        backbone = self.backbone
        if not adapted_layers(backbone.model):
            raise ValueError(
                f"`FineTuner.merge_lora()` found no LoRA adapters in the backbone "
                f"{backbone.name!r} (its freeze policy is {self.freeze!r}): there is nothing "
                "to merge. Train with freeze=FreezePolicy.lora(rank) first."
            )
        with self._placement.building():
            merged = Backbone(
                merge_lora(backbone.model),
                preprocessing=backbone.preprocessing,
                source=backbone.source,
            )
        policy = FreezePolicy.all()
        rebuilt = self._assembly.rebuilt(
            self._placement, backbone=merged, freeze=policy, skip=("backbone",)
        )
        self._wire(rebuilt)
        self._compiler.retarget(self.model, self.head, merged)
        return self.freeze_report

    # --- Keras API ----------------------------------------------------------

    @in_scope
    def compile(
        self,
        optimizer="adam",
        loss="auto",
        metrics="auto",
        *,
        learning_rate: float | None = None,
        layerwise_lr_decay: float | None = None,
        backbone_l2: float = 0.0,
        backbone_l1: float = 0.0,
        **kwargs,
    ) -> None:
        """Configures training, like `keras.Model.compile`.

        Args:
            optimizer: str or `keras.optimizers.Optimizer`. Defaults to `"adam"`.
            loss, metrics: `"auto"` (the head's defaults), or what Keras takes (names or
                objects). Default to `"auto"`.
            learning_rate: float or `LearningRateSchedule`, optional. Sets the optimizer's
                learning rate.
            layerwise_lr_decay: float in (0, 1], optional. Discriminative learning rates: the
                head trains at `learning_rate`, each trained backbone layer at
                `layerwise_lr_decay` times the one above (`LayerwiseOptimizer`, any Keras
                optimizer; docs/recipes.md).
            backbone_l2, backbone_l1: float >= 0. L2 and L1 penalties on the kernels of the
                backbone layers that train (not biases, norms or embeddings; frozen layers
                add nothing), added to the loss: `backbone_l2 * sum(w**2) + backbone_l1 *
                sum(|w|)` (`training.regularization`, docs/usage.md). Kept by `recompile`, stages,
                `set_freeze` and `FineTuner.save`/`load`. Default to 0 (none).
            **kwargs: passed to `keras.Model.compile` (e.g. `loss_weights`, `run_eagerly`,
                `jit_compile`, `steps_per_execution`).
        """
        self._compiler.compile(
            optimizer,
            loss,
            metrics,
            learning_rate=learning_rate,
            layerwise_lr_decay=layerwise_lr_decay,
            backbone_l2=backbone_l2,
            backbone_l1=backbone_l1,
            **kwargs,
        )

    @in_scope
    def recompile(
        self, *, optimizer=None, learning_rate=None, layerwise_lr_decay: float | None = None
    ) -> None:
        """Compiles again with the settings of the last `compile()` and a fresh optimizer.

        Trained weights are kept. `optimizer` and `learning_rate` override the previous ones
        (without a previous `compile()`: `"adam"`, the head's loss and metrics);
        `layerwise_lr_decay` applies to this compilation only (`None`: the one given to
        `compile()`).

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

    @in_scope
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
        """Trains the model; takes (strings too, for text backbones) and returns what
        `keras.Model.fit` does.

        Args:
            schedule: list of `Stage`, optional. Train in stages, each with its own freeze
                policy, epochs, learning rate, optimizer and early stopping, recompiled in
                between; one `History`, with `history.history["stage"]`. See docs/recipes.md.
            feature_cache: `"auto"`, `True`, `False` or `FeatureCache`. While the whole backbone
                is frozen, train the head on its cached outputs (same result, about `epochs`
                times faster; a `tf.data` pipeline that reshuffles each epoch gets the
                cache's own order, seeded by `seed`: the same only in distribution); while
                its bottom is frozen, train the rest on the activations cached at the deepest
                single-tensor point below it. See docs/recipes.md.
            checkpoint_dir: str or path, optional. Save the training state there every epoch, so
                that the same call resumes after a crash. See docs/robustness.md.

        A NaN or inf loss stops training with the last finite epoch's weights and raises
        `FloatingPointError` (docs/robustness.md).
        """
        if schedule is None:
            self._compiler.require("fit")
        setting = FeatureCache.get(feature_cache)
        checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
        x, args = self._data.for_fit(x, y, FitArgs.checked(kwargs, where="FineTuner.fit"))
        return self._loop.fit(
            x, y, args, schedule=schedule, feature_cache=setting, checkpoint_dir=checkpoint_dir
        )

    @in_scope
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
        backbone_l2: float | None = None,
        backbone_l1: float | None = None,
        **kwargs,
    ) -> keras.callbacks.History:
        """The default two-stage recipe: train the head, then fine-tune gently.

        Stage 1 (`"head"`) trains the head alone at `learning_rate`; stage 2 (`"fine_tune"`) the
        freeze policy you chose, or else the whole backbone, at `fine_tune_learning_rate`, each
        backbone layer at `layerwise_lr_decay` times the one above (None: one rate). `"auto"`
        sizes both stages in optimizer steps and stops stage 2 once `val_loss` stops improving
        (`early_stopping`: a patience, or None). See docs/recipes.md for the numbers and why.
        `backbone_l2`/`backbone_l1` set the backbone's weight penalties as `compile` does (and
        keep them for later fits); None keeps those of the last `compile()` (none by default).

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
        with self._compiler.penalties(backbone_l2, backbone_l1, where="FineTuner.fine_tune"):
            return self.fit(x, y, schedule=schedule, **kwargs)

    # --- Growing -----------------------------------------------------------

    @in_scope
    def add_classes(self, new: int | list[str]) -> None:
        """Widens the head with new classes, keeping what it learned (docs/growing.md).

        The predictions layer keeps its old rows exactly (old logits unchanged); a binary head
        becomes a softmax classifier of 2 + n classes, a multi-label head gains sigmoid units,
        a regression head is refused. If compiled, compiles again (same settings, fresh
        optimizer). Train the new classes with `fit_new_classes`.

        Args:
            new: int or list of str. How many classes to add, or their names (required when
                the tuner has `class_names`).

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(keras.Model(
            ...     inputs, keras.layers.Dense(8)(inputs))), Head.classifier(3),
            ...     class_names=["a", "b", "c"])
            >>> tuner.add_classes(["d", "e"])
            >>> tuner.head.num_classes, tuner.class_names
            (5, ['a', 'b', 'c', 'd', 'e'])
        """
        count, names = classes_to_add(new, self.head, self.class_names)
        if self.head.task == "binary" and not self._compiler.uses_head_loss:
            raise ValueError(
                "`FineTuner.add_classes` turns this binary head into a softmax classifier, but "
                f"compile() was given a loss of its own ({self._compiler.spec.loss!r}) that "
                'would not fit it. Compile with the head\'s loss first: tuner.compile(loss="auto", '
                'metrics="auto"), then add the classes.'
            )
        old_count = len(self.head.label_names())
        self._wire(widened_assembly(self._assembly, self._placement, count))
        self._compiler.retarget(self.model, self.head)
        self._class_names = names
        self._growth = self._growth.grown(old_count)

    @in_scope
    def fit_new_classes(
        self,
        x,
        y,
        *,
        memory: tuple | None = None,
        memory_per_class: int = MEMORY_PER_CLASS,
        temperature: float = TEMPERATURE,
        distillation: float = DISTILLATION_WEIGHT,
        **kwargs,
    ) -> keras.callbacks.History:
        """Learns the classes `add_classes` added without forgetting the old ones.

        Trains with `fine_tune`'s recipe on `x`, `y` (arrays; class ids in the grown range)
        plus, with `memory=(x_old, y_old)`, a seeded exemplar set of `memory_per_class` old
        examples a class (rehearsal; kept for later calls), every class weighing the same;
        the loss adds distillation of the model's old-class responses recorded before
        training (Learning without Forgetting, at `temperature`, weighted `distillation`).
        Takes `fine_tune`'s arguments (`epochs`, `learning_rate`, `validation_data`,
        `callbacks`, ...) and returns its `History`; the compile settings come back after.
        See docs/growing.md for what each remedy keeps.

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((4,))
            >>> tuner = FineTuner(Backbone.from_model(keras.Model(
            ...     inputs, keras.layers.Dense(8)(inputs))), Head.classifier(3), seed=0)
            >>> x_old, y_old = np.random.rand(30, 4), np.arange(30) % 3
            >>> tuner.add_classes(1)
            >>> history = tuner.fit_new_classes(np.random.rand(10, 4), np.full(10, 3),
            ...     memory=(x_old, y_old), head_epochs=2, epochs=1, verbose=0)
            >>> history.history["stage"]
            ['head', 'head', 'fine_tune']
        """
        return self._growth.fit(
            self,
            self._compiler,
            x,
            y,
            memory=memory,
            memory_per_class=memory_per_class,
            temperature=temperature,
            distillation=distillation,
            **kwargs,
        )

    @in_scope
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

        Trains up to `steps` steps with the learning rate growing exponentially from `min_lr` to
        `max_lr` (stopping once the loss exceeds `divergence` times its best), with the last
        `compile()`'s optimizer (or `"adam"`) and the current freeze policy, then restores the
        weights and the compiled optimizer exactly. Returns an `LRFinderResult` (`suggestion`,
        `reliable`, `plot()`, ...). See docs/recipes.md.

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
            self._compiler, x, y, min_lr, max_lr, steps, batch_size, divergence, args
        )

    @in_scope
    def evaluate(self, x=None, y=None, **kwargs):
        """Evaluates the model; takes and returns what `keras.Model.evaluate` does."""
        self._compiler.require("evaluate")
        return self.model.evaluate(self._data.check(x, y, "evaluate"), y, **kwargs)

    @in_scope
    def predict(self, x, **kwargs):
        """Predicts; takes and returns what `keras.Model.predict` does."""
        return self.model.predict(self._data.check(x, None, "predict"), **kwargs)

    @in_scope
    def report(self, x=None, y=None, *, class_names: list | None = None, batch_size=None) -> Report:
        """Precision, recall, F1 and the confusion matrix of the model on `x`, `y`.

        Args:
            x: inputs (arrays, tensors, strings for text backbones), or a `tf.data.Dataset` or
                `keras.utils.PyDataset` of `(inputs, labels)` batches.
            y: labels in any format `fit` takes. None when `x` is a dataset.
            class_names: list of str, optional. Names for classes 0..k-1 (or for the labels of a
                multi-label head). Defaults to the tuner's `class_names`.
            batch_size: int, optional. Batch size for prediction.

        Returns a `Report`: a dict that prints as a table (docs/reports.md). After
        `add_classes`, it also shows the old and the new classes apart (`report["groups"]`).

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
        class_names = self.class_names if class_names is None else class_names
        self.head.label_names(class_names)  # checked before predicting
        if not isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
            x = self._data.check(x, y, "report")
        predictions, y = predict_with_labels(self.model, x, y, batch_size)
        return self._growth.grouped(self.head.report(predictions, y, class_names))

    def summary(self, **kwargs):
        """Prints the model summary (`keras.Model.summary`)."""
        return self.model.summary(**kwargs)

    def save(self, filepath: str | os.PathLike, *, overwrite: bool = True) -> None:
        """Saves the model and the tuner's settings to a `.keras` file, atomically.

        `FineTuner.load(filepath)` gives the tuner back, ready to train again;
        `finetune_tf.load_model(filepath)` (or `keras.models.load_model` after `import
        finetune_tf`) the model alone. A SavedModel or Hub backbone's handle must still resolve
        when loading. See docs/usage.md.
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

        Weights and settings come from the file; the optimizer starts afresh (docs/usage.md).

        Args:
            filepath: str or path. A `.keras` file written by `FineTuner.save`.
            safe_mode: bool. Refuse files that would run Python code on load (see
                `finetune_tf.load_model`). Defaults to True.
            strategy, mixed_precision, memory_growth: as for `FineTuner`, for where the restored
                tuner trains.

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
        return TunerConfig.load(filepath, cls._from_config, placement, safe_mode=safe_mode)

    def get_config(self) -> dict:
        """The tuner as plain data, with the backbone's architecture but no weights.

        `FineTuner.from_config` rebuilds it with fresh weights; docs/usage.md says what it holds.

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
        config = TunerConfig.of(self._assembly, self._compiler, self._freeze_chosen, self._seed)
        config.settings.update(self._growth.settings(self.class_names))
        return config

    @classmethod
    def from_config(cls, config: dict) -> FineTuner:
        """The tuner `get_config` describes, with fresh weights (see `get_config`)."""
        return cls._from_config(TunerConfig.from_config(config))

    @classmethod
    def _from_config(cls, config: TunerConfig, safe_mode: bool = True, **placement) -> FineTuner:
        tuner = cls(**config.tuner_arguments(), **placement)
        tuner._freeze_chosen = config.freeze_chosen
        tuner._class_names, tuner._growth = Growth.from_settings(config.settings)
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

        It needs neither finetune_tf nor the backbone's handle; its `serving_default` signature
        returns named outputs with the class names (docs/export.md).

        Args:
            path: a directory for `"saved_model"`, a file ending in `.tflite`.
            format: `"saved_model"` or `"tflite"`. Defaults to `"saved_model"`.
            class_names: list of str, optional. The name of each class (or label); defaults to
                the tuner's `class_names`, else "0", "1", ...
            quantize: None or `"dynamic"`: TFLite weights in int8 (about 4x smaller, outputs
                within about 1e-2). Defaults to None.
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
        return export_model(
            self.model,
            self.head,
            path,
            format=format,
            class_names=self.class_names if class_names is None else class_names,
            quantize=quantize,
            overwrite=overwrite,
            chief=self._placement.is_chief(),
        )

    def __repr__(self):
        return (
            f"<FineTuner {self.model.name!r}: {self.backbone!r} + {self.head!r}, "
            f"freeze={self.freeze!r}>"
        )
