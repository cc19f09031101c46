"""`BackbonePenalty`: L2 / L1 weight penalties on the kernels of the backbone layers that train.

`FineTuner.compile(backbone_l2=..., backbone_l1=...)` adds
`l2 * sum(w**2) + l1 * sum(|w|)` over the kernels of the backbone's trained
layers to the training loss, as `keras.regularizers.L1L2(l1, l2)` would on
each of them; `Head(weight_decay=...)` does the same for the head.

Kernels are the weights whose name ends in `kernel` or `weights` and that have
at least two axes: Dense, convolution, attention and recurrent kernels, and a
SavedModel's or Hub model's `.../weights` and `.../kernel` variables; under
`FreezePolicy.lora` the frozen kernels add nothing, and the adapters that train
(`lora_kernel_a`, `lora_kernel_b`) are penalised instead. Biases,
BatchNorm and LayerNorm scales and offsets, and embedding tables are left
alone, as in the weight-decay recipes of BERT and timm: pulling a bias, a norm's
scale or a rare token's embedding towards zero changes what the layer computes
rather than how complex it is.

How it works, and why not `variable.regularizer`: the penalty is a term of the
`TunedModel`'s `losses` (Keras adds `model.losses` to the loss of `fit`,
`evaluate` and `train_on_batch`, scaled for distribution strategies). It is
computed when the train step is traced, over the kernels among
`model.trainable_weights` then, so it follows the freeze policy, `set_freeze`
and each stage of a schedule (all of which compile again); a frozen layer's
weights add nothing. It is computed in float32 from the float32 variables, also
under mixed precision. Setting `regularizer` on the backbone's variables would
instead change the user's own backbone model (visible wherever else it is
used), replace regularizers it already has, and have to be undone. The penalty
is not saved in the model: a `.keras` file loads with `keras.models.load_model`
as a model with no hidden penalty, while `FineTuner.save` records the settings
with the other `compile()` settings, so `FineTuner.load` trains with it again.
"""

from __future__ import annotations

import keras

from finetune_tf._checks import check_number

__all__ = [
    "BackbonePenalty",
    "check_penalty",
    "is_kernel",
    "set_backbone_penalty",
]

# LoRA's adapters of a kernel (`FreezePolicy.lora`) are what trains of it: penalised too.
KERNEL_SUFFIXES = ("kernel", "weights", "lora_kernel_a", "lora_kernel_b")


def is_kernel(variable) -> bool:
    """Whether `variable` is a kernel the backbone penalty applies to (see the module doc).

    Examples:
        >>> import keras
        >>> from finetune_tf.training.regularization import is_kernel
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 3))
        >>> [(v.name, is_kernel(v)) for v in dense.weights]
        [('kernel', True), ('bias', False)]
    """
    name = variable.name.split(":")[0].rsplit("/", 1)[-1]
    return name.endswith(KERNEL_SUFFIXES) and len(variable.shape) >= 2


def check_penalty(value, name: str, where: str = "", allow_none: bool = False) -> float | None:
    """`value` as a float >= 0 (None when `allow_none`); a clear error naming `name` otherwise.

    Examples:
        >>> from finetune_tf.training.regularization import check_penalty
        >>> check_penalty(1e-4, "backbone_l2")
        0.0001
    """
    return check_number(
        value,
        name,
        low=0,
        allow_none=allow_none,
        where=where,
        meaning="the weight of the penalty on the backbone's trained kernels",
        hint="Typical values: 1e-5 to 1e-3; 0 turns the penalty off.",
    )


class BackbonePenalty:
    """`l2 * sum(w**2) + l1 * sum(|w|)` over the kernels of `backbone` that train in a model.

    `FineTuner.compile(backbone_l2=..., backbone_l1=...)` sets one on its model; build one
    yourself to see which weights it penalises and its value.

    Args:
        backbone: `Backbone`. Its kernels (`is_kernel`) are the candidates.
        l2: float >= 0. Defaults to 0.
        l1: float >= 0. Defaults to 0.

    Examples:
        >>> import keras
        >>> from finetune_tf import Backbone, FreezePolicy
        >>> from finetune_tf.training.regularization import BackbonePenalty
        >>> inputs = keras.Input((3,))
        >>> x = keras.layers.Dense(2, kernel_initializer="ones", name="low")(inputs)
        >>> x = keras.layers.Dense(2, kernel_initializer="ones", name="top")(x)
        >>> backbone = Backbone.from_model(keras.Model(inputs, x))
        >>> _ = FreezePolicy.top(1).apply(backbone)
        >>> penalty = BackbonePenalty(backbone, l2=0.5)
        >>> [v.path for v in penalty.variables(backbone.model)]  # the frozen "low" adds nothing
        ['top/kernel']
        >>> float(penalty(backbone.model))  # 0.5 * (4 weights of 1.0)
        2.0
    """

    def __init__(self, backbone, l2: float = 0.0, l1: float = 0.0):
        self.l2 = check_penalty(l2, "l2", where="BackbonePenalty")
        self.l1 = check_penalty(l1, "l1", where="BackbonePenalty")
        seen, self.kernels = set(), []
        for variable in backbone.model.weights:
            if id(variable) not in seen and is_kernel(variable):
                seen.add(id(variable))
                self.kernels.append(variable)

    def variables(self, model) -> list:
        """The backbone kernels among `model.trainable_weights`: those penalised now."""
        trained = {id(variable) for variable in model.trainable_weights}
        return [variable for variable in self.kernels if id(variable) in trained]

    def __call__(self, model):
        """The penalty as a float32 scalar tensor, or None when no kernel trains."""
        variables = self.variables(model)
        if not variables or not (self.l2 or self.l1):
            return None
        total = keras.ops.zeros((), "float32")
        for variable in variables:
            weights = keras.ops.cast(variable, "float32")
            if self.l2:
                total = total + self.l2 * keras.ops.sum(keras.ops.square(weights))
            if self.l1:
                total = total + self.l1 * keras.ops.sum(keras.ops.abs(weights))
        return total

    def __repr__(self):
        return f"BackbonePenalty(l2={self.l2!r}, l1={self.l1!r}, kernels={len(self.kernels)})"


def set_backbone_penalty(model, backbone, l2: float = 0.0, l1: float = 0.0) -> None:
    """Makes `model` (a `TunedModel` holding `backbone`) add the penalty to its `losses`,
    or no penalty when both are 0. Takes effect at the model's next compile, like a change
    of `trainable`."""
    model.weight_penalty = BackbonePenalty(backbone, l2, l1) if (l2 or l1) else None
