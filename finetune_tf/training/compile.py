"""`Compiler`: the compile settings of one model, and every compile made from them.

`FineTuner.compile` records a `CompileSpec` (optimizer, loss, metrics, the
other `keras.Model.compile` arguments, layer-wise decay, the backbone's weight
penalty) and compiles; a
stage, a new freeze policy or the learning-rate finder compiles again from
the same spec with a fresh optimizer (its slots belonged to other variables),
and the model keeps its weights. The rules live here once: how an optimizer
is copied, when `"auto"` turns XLA on, how discriminative rates wrap the
optimizer, what a strategy needs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import warnings

import keras

from finetune_tf._checks import check_choice, check_number
from finetune_tf._utils import did_you_mean
from finetune_tf.runtime.devices import is_default
from finetune_tf.training.layerwise import (
    LayerwiseOptimizer,
    check_layerwise_lr_decay,
    layerwise_multipliers,
)
from finetune_tf.training.regularization import check_penalty, set_backbone_penalty

__all__ = [
    "CompileSpec",
    "Compiler",
    "check_jit_compile",
    "check_learning_rate",
    "fresh_optimizer",
    "next_optimizer",
]


def fresh_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """A new optimizer with `optimizer`'s settings and no state (no slots, step 0)."""
    return optimizer.__class__.from_config(optimizer.get_config())


@dataclasses.dataclass
class CompileSpec:
    """What `FineTuner.compile` was given, resolved: an optimizer object, a loss
    object or name, metrics (`"auto"`: the head's), the other compile arguments,
    the layer-wise learning-rate decay (None: one rate), and the L2 and L1 penalties
    on the backbone's trained kernels (`training.regularization`)."""

    optimizer: keras.optimizers.Optimizer
    loss: object
    metrics: object = "auto"
    kwargs: dict = dataclasses.field(default_factory=dict)
    layerwise_lr_decay: float | None = None
    backbone_l2: float = 0.0
    backbone_l1: float = 0.0


class Compiler:
    """Compiles `model` (a FineTuner's) from a `CompileSpec`, again and again.

    Args:
        model: the `keras.Model` to compile.
        backbone: the `Backbone` in it (layer-wise decay counts its layers).
        head: the `Head` on it (the default loss and metrics).
        placement: the `Placement` it computes under (its strategy; whether XLA
            helps, for `jit_compile="auto"`).
        jit_compile: `"auto"`, True or False.
    """

    def __init__(self, model, backbone, head, placement, jit_compile="auto"):
        check_jit_compile(jit_compile)
        self.model = model
        self.backbone = backbone
        self.head = head
        self.placement = placement
        self.jit_compile = jit_compile
        self.xla_failed = False  # set when XLA could not compile the model under "auto"
        self.spec: CompileSpec | None = None
        self.compiled_config: dict | None = None  # the user's last settings (`remember`)
        self.count = 0  # how many compiles: lets derived models know when to compile again

    @property
    def compiled(self) -> bool:
        return self.spec is not None

    @property
    def uses_head_loss(self) -> bool:
        """Whether training uses the head's own loss (or will: not compiled yet), whose
        contract the head's target checks are; a loss of the user's defines its own."""
        return self.spec is None or type(self.spec.loss) is type(self.head.default_loss())

    # === Compiling ===

    def compile(
        self,
        optimizer,
        loss,
        metrics,
        *,
        learning_rate=None,
        layerwise_lr_decay=None,
        backbone_l2=0.0,
        backbone_l1=0.0,
        **kwargs,
    ) -> None:
        """Records the settings (see `FineTuner.compile`) and compiles."""
        learning_rate = check_learning_rate(learning_rate)
        check_layerwise_lr_decay(layerwise_lr_decay)
        backbone_l2 = check_penalty(backbone_l2, "backbone_l2", where="FineTuner.compile")
        backbone_l1 = check_penalty(backbone_l1, "backbone_l1", where="FineTuner.compile")
        optimizer = resolve_optimizer(optimizer, learning_rate)
        loss = self.head.default_loss() if _is_auto(loss) else resolve_loss(loss)
        self.spec = CompileSpec(
            optimizer, loss, metrics, kwargs, layerwise_lr_decay, backbone_l2, backbone_l1
        )
        self.apply()
        self.remember()

    @contextlib.contextmanager
    def penalties(self, backbone_l2=None, backbone_l1=None, where: str = ""):
        """Within: the backbone penalties of the current settings set (None keeps that one)
        and recorded as the user's (`remember`), for the compiles of a run
        (`FineTuner.fine_tune` compiles each stage). Without earlier settings: `"adam"` and
        the head's loss, as `recompile`. They stay once the run ends; if it raises, the
        settings before go back, so nothing is left half-set (e.g. by a plan refused before
        the first step)."""
        backbone_l2 = check_penalty(backbone_l2, "backbone_l2", where=where, allow_none=True)
        backbone_l1 = check_penalty(backbone_l1, "backbone_l1", where=where, allow_none=True)
        if backbone_l2 is None and backbone_l1 is None:
            yield
            return
        before = (copy.copy(self.spec), self.compiled_config, self.count)
        if self.spec is None:
            self.spec = CompileSpec(next_optimizer(None), self.head.default_loss())
        if backbone_l2 is not None:
            self.spec.backbone_l2 = backbone_l2
        if backbone_l1 is not None:
            self.spec.backbone_l1 = backbone_l1
        self.remember()
        try:
            yield
        except BaseException:
            spec, self.compiled_config, count = before
            if self.count != count:  # compiled with the penalties: compile without them
                self.restore(spec)
            else:
                self.spec = spec
            raise

    @contextlib.contextmanager
    def using(self, loss, metrics, drop: tuple = ()):
        """Within: compiles with `loss` and `metrics` in place of the user's (a fresh copy of
        their optimizer, their other arguments but those named in `drop`, their backbone
        penalties; one learning rate); after: the user's settings again, also as those a
        run's fingerprint holds (`compiled_config`). `FineTuner.fit_new_classes` trains so."""
        user, remembered = self.spec, self.compiled_config
        if user is None:
            self.spec = CompileSpec(keras.optimizers.get("adam"), loss, metrics)
        else:
            self.spec = dataclasses.replace(
                user,
                optimizer=fresh_optimizer(user.optimizer),
                loss=loss,
                metrics=metrics,
                kwargs={k: v for k, v in user.kwargs.items() if k not in drop},
                layerwise_lr_decay=None,
            )
        try:
            yield
        finally:
            self.restore(user)
            self.compiled_config = remembered

    def remember(self) -> None:
        """Records the current settings as the user's (`compiled_config`): what a run's
        fingerprint holds. Stages compile too, and callbacks change a live optimizer's
        rate; neither may make the same call look like another run."""
        self.compiled_config = self.get_config()

    def recompile(self, *, optimizer=None, learning_rate=None, layerwise_lr_decay=None) -> None:
        """Compiles again from the last settings with a fresh optimizer; `optimizer` and
        `learning_rate` replace the last ones, `layerwise_lr_decay` holds for this
        compile only. Without earlier settings: `"adam"` and the head's loss."""
        check_layerwise_lr_decay(layerwise_lr_decay)
        previous = self.spec.optimizer if self.spec is not None else None
        optimizer = next_optimizer(previous, optimizer, learning_rate)
        if self.spec is None:
            self.spec = CompileSpec(optimizer, self.head.default_loss())
        self.spec.optimizer = optimizer
        self.apply(layerwise_lr_decay=layerwise_lr_decay)

    def restore(self, spec: CompileSpec | None) -> None:
        """Goes back to `spec` (None: not compiled by the user), compiling the model from
        it with a fresh optimizer when there is one."""
        self.spec = spec
        if spec is not None:
            spec.optimizer = fresh_optimizer(spec.optimizer)
            self.apply()
        else:
            set_backbone_penalty(self.model, self.backbone)  # none

    def refresh(self) -> None:
        """Compiles again with a fresh optimizer, if compiled (e.g. after freezing)."""
        if self.spec is not None:
            self.spec.optimizer = fresh_optimizer(self.spec.optimizer)
            self.apply()

    def retarget(self, model, head, backbone=None) -> None:
        """Compiles `model` with `head` (and `backbone`, if given) from now on (a widened
        model: `add_classes`; a merged backbone: `merge_lora`), again if compiled: the same
        settings, a fresh optimizer, and the new head's default loss where the old head's
        was in use."""
        uses_head_loss = self.uses_head_loss
        self.model, self.head = model, head
        if backbone is not None:
            self.backbone = backbone
        if uses_head_loss and self.spec is not None:
            self.spec.loss = head.default_loss()
        self.refresh()

    def apply(self, layerwise_lr_decay: float | None = None) -> None:
        """Compiles the model from the current settings (the optimizer as it is)."""
        spec = self.spec
        set_backbone_penalty(self.model, self.backbone, spec.backbone_l2, spec.backbone_l1)
        self.model.compile(**self.keras_args(layerwise_lr_decay))
        self.count += 1

    def keras_args(self, layerwise_lr_decay: float | None = None) -> dict:
        """The arguments of `keras.Model.compile` for the current settings."""
        spec = self.spec
        metrics = spec.metrics
        if _is_auto(metrics):
            metrics = self.head.default_metrics(len(self.model.output_shape))
        args = {"optimizer": spec.optimizer, "loss": spec.loss, "metrics": metrics, **spec.kwargs}
        args.setdefault("jit_compile", self.resolved_jit_compile())
        decay = layerwise_lr_decay or spec.layerwise_lr_decay
        layerwise = decay is not None and decay != 1.0
        optimizer = spec.optimizer
        if not is_default(self.placement.strategy) or layerwise:
            # A copy made here, in the strategy's scope, owns distributed variables.
            optimizer = fresh_optimizer(optimizer)
        if layerwise:
            optimizer = LayerwiseOptimizer(
                optimizer, layerwise_multipliers(self.backbone, self.model, decay)
            )
        args["optimizer"] = optimizer
        return args

    def resolved_jit_compile(self) -> bool:
        """What `jit_compile` means now: `"auto"` is XLA where it helps, until it failed."""
        if self.jit_compile != "auto":
            return self.jit_compile
        return not self.xla_failed and self.placement.xla_helps()

    # === Config ===

    def get_config(self) -> dict | None:
        """The last `compile()` settings as plain data (None before any), Keras objects
        serialized the Keras way. Arguments that would not load back without running
        code from the file (a lambda, an unregistered function) are named under
        `"not_saved"` instead."""
        spec = self.spec
        if spec is None:
            return None
        given = {"optimizer": spec.optimizer, "loss": spec.loss, "metrics": spec.metrics}
        saved, not_saved = {}, []
        for key, value in {**given, **spec.kwargs}.items():
            try:
                saved[key] = value if _is_auto(value) else _serialize(value)
            except Exception:  # whatever Keras raises for an object it cannot revive
                not_saved.append(key)
        # The penalties only when set: a run of 0.2 (which had none) stays the same run.
        penalties = {
            name: value
            for name, value in (
                ("backbone_l2", spec.backbone_l2),
                ("backbone_l1", spec.backbone_l1),
            )
            if value
        }
        return {
            "arguments": saved,
            "layerwise_lr_decay": spec.layerwise_lr_decay,
            **penalties,
            "not_saved": not_saved,
        }

    @staticmethod
    def arguments_from_config(config: dict, safe_mode: bool = True) -> dict:
        """The arguments of `FineTuner.compile` that `get_config` describes (with a warning
        naming those that could not be saved)."""
        if config.get("not_saved"):
            warnings.warn(
                "FineTuner: these compile() arguments could not be saved and are not "
                f"restored: {', '.join(config['not_saved'])}. Pass them to "
                "tuner.compile(...) again.",
                UserWarning,
                stacklevel=4,
            )

        def revive(value):
            if isinstance(value, list):
                return [revive(item) for item in value]
            if isinstance(value, dict) and "class_name" in value:
                return keras.saving.deserialize_keras_object(
                    copy.deepcopy(value), safe_mode=safe_mode
                )
            return value

        arguments = {key: revive(value) for key, value in config["arguments"].items()}
        return {
            **arguments,
            "layerwise_lr_decay": config.get("layerwise_lr_decay"),
            # Files written before the penalties existed have none.
            "backbone_l2": config.get("backbone_l2", 0.0),
            "backbone_l1": config.get("backbone_l1", 0.0),
        }

    def require(self, method: str) -> None:
        """A RuntimeError when `FineTuner.<method>` needs a `compile()` first."""
        if self.spec is None:
            raise RuntimeError(
                f"`FineTuner.{method}()` was called before `compile()`. Call "
                "tuner.compile(optimizer='adam', learning_rate=1e-3) first (loss and metrics "
                "default from the head)."
            )


def check_jit_compile(jit_compile) -> None:
    """A ValueError unless `jit_compile` is "auto", True or False."""
    check_choice(
        jit_compile,
        "jit_compile",
        ("auto", True, False),
        hint='"auto" compiles with XLA where it is known to help.',
    )


def _serialize(value):
    """Plain data as it is, Keras objects (and lists of them) as Keras configs."""
    if isinstance(value, (list, tuple)):
        return [_serialize(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        json.dumps(value)  # a TypeError for what a file cannot hold
        return value
    config = keras.saving.serialize_keras_object(value)
    if not isinstance(config, dict) or "class_name" not in config:
        raise TypeError(f"{value!r} is not a Keras object")
    json.dumps(config)
    # Only what loads back without running code from the file: built-in or registered
    # Keras objects (a lambda, or a function Keras cannot find by name, is not saved).
    keras.saving.deserialize_keras_object(copy.deepcopy(config), safe_mode=True)  # it edits
    return config


def _is_auto(value) -> bool:
    return isinstance(value, str) and value == "auto"


def optimizer_names() -> list[str]:
    """The names `keras.optimizers.get` takes, lower case."""
    return sorted(
        name.lower()
        for name in dir(keras.optimizers)
        if isinstance(getattr(keras.optimizers, name), type)
        and issubclass(getattr(keras.optimizers, name), keras.optimizers.Optimizer)
        and name not in ("Optimizer", "LossScaleOptimizer")
    )


def check_learning_rate(learning_rate, where: str = "", name: str = "learning_rate"):
    """`learning_rate` as None, a Python float (a numpy float too: Keras refuses those) or a
    `LearningRateSchedule`; a ValueError for anything else."""
    if learning_rate is None or isinstance(
        learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        return learning_rate
    return check_number(
        learning_rate,
        name,
        low=0,
        low_inclusive=False,
        also="a LearningRateSchedule",
        where=where,
        hint="Typical values: 1e-3 for the head, 1e-5 to 1e-4 when the backbone trains.",
        type_error=ValueError,
    )


def next_optimizer(previous, optimizer=None, learning_rate=None) -> keras.optimizers.Optimizer:
    """The fresh optimizer a compile after `previous` uses (see `Compiler.recompile`):
    `optimizer` (else `previous`'s kind and settings, else `"adam"`), at `learning_rate`
    when given. Compiles nothing, so a plan can be checked stage by stage before training.

    Examples:
        >>> import keras
        >>> from finetune_tf.training.compile import next_optimizer
        >>> sgd = next_optimizer(keras.optimizers.SGD(0.1), learning_rate=0.01)
        >>> type(sgd).__name__, round(float(sgd.learning_rate), 4)
        ('SGD', 0.01)
        >>> type(next_optimizer(None)).__name__
        'Adam'
    """
    learning_rate = check_learning_rate(learning_rate)
    if optimizer is None:
        optimizer = "adam" if previous is None else fresh_optimizer(previous)
    return resolve_optimizer(optimizer, learning_rate)


def resolve_optimizer(optimizer, learning_rate) -> keras.optimizers.Optimizer:
    """An optimizer object from a name or an object, at `learning_rate` when given."""
    if isinstance(optimizer, str):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError:
            names = optimizer_names()
            raise ValueError(
                f"Unknown optimizer={optimizer!r}.{did_you_mean(optimizer.lower(), names)} "
                f"Expected one of: {', '.join(names)}, or a keras.optimizers.Optimizer."
            ) from None
    elif not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "`optimizer` must be a name such as 'adam' or a keras.optimizers.Optimizer "
            f"(Keras 3). Received: optimizer={optimizer!r} of type "
            f"{type(optimizer).__name__}."
        )
    if learning_rate is not None:
        config = optimizer.get_config()
        config["learning_rate"] = learning_rate
        optimizer = optimizer.__class__.from_config(config)
    return optimizer


def resolve_loss(loss):
    """`loss` checked: a Keras loss name or object."""
    if isinstance(loss, str):
        try:
            keras.losses.get(loss)
        except ValueError:
            names = [n for n in dir(keras.losses) if n[0].islower() and not n.startswith("_")]
            raise ValueError(
                f"Unknown loss={loss!r}.{did_you_mean(loss, names)} Use 'auto' for the "
                "head's default, a keras.losses name, or a keras.losses.Loss."
            ) from None
    return loss
