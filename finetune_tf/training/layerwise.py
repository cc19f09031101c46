"""Discriminative (layer-wise) learning rates for any Keras optimizer.

Lower backbone layers hold general features that should move little; layers
near the head, and the head itself, need to move more (ULMFiT's
discriminative fine-tuning; the layer-wise decay of BEiT and ELECTRA). With a
decay factor `d`, the head trains at the full learning rate, the top trained
backbone layer at `d` times it, the one below at `d**2`, and so on.

Keras optimizers have one learning rate. `LayerwiseOptimizer` runs one copy
of any Keras optimizer per learning-rate multiplier, each on its own
variables, like PyTorch's parameter groups: state, weight decay, EMA and
schedules then behave exactly as the optimizer defines them, at the scaled
rate. `global_clipnorm` is applied once, over all gradients.
"""

from __future__ import annotations

import copy

import keras
import tensorflow as tf

from finetune_tf._checks import check_number
from finetune_tf._utils import revived

__all__ = [
    "LayerwiseOptimizer",
    "ScaledSchedule",
    "check_layerwise_lr_decay",
    "layerwise_multipliers",
    "learning_rate_of",
]


@keras.saving.register_keras_serializable(package="finetune_tf")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule multiplied by a constant factor.

    Args:
        schedule: `keras.optimizers.schedules.LearningRateSchedule`.
        factor: float.

    Examples:
        >>> import keras
        >>> from finetune_tf.training.layerwise import ScaledSchedule
        >>> decay = keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
        >>> schedule = ScaledSchedule(decay, 0.1)
        >>> round(float(schedule(10)), 4)
        0.05
    """

    def __init__(self, schedule, factor: float):
        self.schedule = schedule
        self.factor = float(factor)

    def __call__(self, step):
        return self.schedule(step) * self.factor

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "factor": self.factor,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**revived(config, "schedule"))


def _scaled(learning_rate, factor: float):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate if factor == 1.0 else ScaledSchedule(learning_rate, factor)
    return learning_rate * factor


def learning_rate_of(optimizer):
    """The optimizer's learning rate as set (a float or a schedule, not a variable)."""
    learning_rate = optimizer._learning_rate
    if isinstance(learning_rate, keras.Variable):
        return float(learning_rate.numpy())
    return float(learning_rate) if isinstance(learning_rate, (int, float)) else learning_rate


@keras.saving.register_keras_serializable(package="finetune_tf")
class LayerwiseOptimizer(keras.optimizers.Optimizer):
    """Trains each variable at its own multiple of an optimizer's learning rate.

    `FineTuner.compile(layerwise_lr_decay=...)` and `Stage(layerwise_lr_decay=...)`
    build this for you; use it directly for multipliers of your own.

    Args:
        optimizer: `keras.optimizers.Optimizer`. Any Keras optimizer; one copy
            of it (same config, scaled learning rate) trains each group of
            variables with the same multiplier.
        multipliers: list of `(variable_path, multiplier)` pairs, one per
            variable the optimizer will train, in the order of
            `model.trainable_variables`.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf.training.layerwise import LayerwiseOptimizer
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
        >>> optimizer = LayerwiseOptimizer(
        ...     keras.optimizers.SGD(0.1),
        ...     [(v.path, 1.0 if v.name == "bias" else 0.0) for v in model.trainable_variables])
        >>> model.compile(optimizer=optimizer, loss="mse")
        >>> kernel = model.layers[0].kernel.numpy().copy()
        >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
        >>> bool(np.array_equal(model.layers[0].kernel.numpy(), kernel))  # multiplier 0: frozen
        True
    """

    def __init__(self, optimizer, multipliers, name=None, **kwargs):
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
            optimizer, LayerwiseOptimizer
        ):
            raise TypeError(
                "`LayerwiseOptimizer(optimizer)` must be a Keras optimizer (not already "
                f"layer-wise). Received: optimizer={optimizer!r}."
            )
        if kwargs:
            raise ValueError(
                "LayerwiseOptimizer takes no optimizer arguments of its own; set them on "
                f"the wrapped optimizer. Received: {sorted(kwargs)}."
            )
        multipliers = [(str(path), float(factor)) for path, factor in multipliers]
        bad = [(path, factor) for path, factor in multipliers if not factor >= 0.0]
        if bad:
            raise ValueError(
                f"Learning-rate multipliers must be >= 0. Received {bad[0][1]} for {bad[0][0]!r}."
            )
        super().__init__(learning_rate=0.0, name=name or f"layerwise_{optimizer.name}")
        self.inner_optimizer = optimizer
        self.multipliers = multipliers
        config = optimizer.get_config()
        self._global_clipnorm = config.pop("global_clipnorm", None)
        base_rate = learning_rate_of(optimizer)
        self._groups = []  # (multiplier, optimizer copy, its variables once built)
        for index, factor in enumerate(self.factors):
            group_config = dict(config, name=f"{config['name']}_group_{index}")
            group_config["learning_rate"] = _scaled(base_rate, factor)
            self._groups.append((factor, optimizer.__class__.from_config(group_config), []))
        self._group_of = {}

    @property
    def factors(self) -> list[float]:
        """The distinct multipliers, largest first: one optimizer copy each."""
        return sorted({factor for _, factor in self.multipliers}, reverse=True)

    def build(self, var_list):
        paths = [variable.path for variable in var_list]
        expected = [path for path, _ in self.multipliers]
        if len(paths) != len(expected) or not all(map(_same_variable, expected, paths)):
            raise ValueError(
                "LayerwiseOptimizer was made for other variables than it is asked to train: "
                f"expected {len(self.multipliers)} variables "
                f"{[path for path, _ in self.multipliers][:3]}..., got {len(paths)} "
                f"{paths[:3]}.... Recompile after changing which layers train (FineTuner "
                "does this for you)."
            )
        for index, (factor, optimizer, members) in enumerate(self._groups):
            members[:] = [
                v for v, (_, f) in zip(var_list, self.multipliers, strict=True) if f == factor
            ]
            with keras.name_scope(optimizer.name):
                optimizer.build(members)
            for variable in members:
                self._group_of[self._var_key(variable)] = index
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + [v for _, opt, _ in self._groups for v in opt.variables]

    @property
    def learning_rate(self):
        """The learning rate at multiplier 1 (the head's), at the current step."""
        rate = self.inner_optimizer._learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            return rate(self._iterations)
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate
        for factor, optimizer, _ in self._groups:
            optimizer.learning_rate = _scaled(learning_rate, factor)

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not self.built:
            with keras.name_scope(self.name):
                self.build(trainable_variables)
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        if self._global_clipnorm:
            grads, _ = tf.clip_by_global_norm(grads, self._global_clipnorm)
        for index, (_, optimizer, _) in enumerate(self._groups):
            pairs = [
                (g, v)
                for g, v in zip(grads, trainable_variables, strict=True)
                if self._group_of[self._var_key(v)] == index
            ]
            optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        for _, optimizer, members in self._groups:
            optimizer.finalize_variable_values(members)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.optimizers.serialize(self.inner_optimizer),
            "multipliers": [list(pair) for pair in self.multipliers],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras' deserialization consumes what it reads
        config["optimizer"] = keras.optimizers.deserialize(
            config["optimizer"], custom_objects=custom_objects
        )
        return cls(**config)


def check_layerwise_lr_decay(decay) -> None:
    """Raises a clear error unless `decay` is None or a number in (0, 1]."""
    check_number(
        decay,
        "layerwise_lr_decay",
        low=0,
        high=1,
        low_inclusive=False,
        allow_none=True,
        meaning="the factor between the learning rates of adjacent backbone layers",
        hint="Typical values: 0.6 to 0.9 for a few blocks, 0.95 to 0.99 for a hundred layers.",
        type_error=ValueError,
    )


def _same_variable(expected: str, actual: str) -> bool:
    """Whether the variable at `actual` is the one the multipliers named `expected`. A model
    loaded from a file can scope its variables without the enclosing model's name (a
    Sequential backbone's `seq/conv2/kernel` comes back as `conv2/kernel`): `actual` may
    drop leading scopes of `expected`, nothing else."""
    return expected == actual or expected.endswith("/" + actual)


def layerwise_multipliers(backbone, model, decay: float) -> list[tuple[str, float]]:
    """`(path, multiplier)` for each trainable variable of `model`, which holds `backbone`.

    The head and any input adapter get 1; the backbone's trained layers (in
    the order of `Backbone.layers`, Hub variable groups included) get
    `decay**k`, k = 1 for the top one, counting down.
    """
    # A layer's weights in the model's trainable set, not `layer.trainable_weights`: under
    # LoRA the adapted layers are trainable=False and only their adapters train.
    trainable_ids = {id(variable) for variable in model.trainable_variables}
    depth_of = {}
    depth = 0
    for layer in reversed(backbone.layers):
        weights = [variable for variable in layer.weights if id(variable) in trainable_ids]
        if weights:
            depth += 1
            for variable in weights:
                depth_of[id(variable)] = depth
    return [
        (variable.path, decay ** depth_of.get(id(variable), 0))
        for variable in model.trainable_variables
    ]
