"""`FreezeReport`: what applying a `FreezePolicy` did, in layers and parameters.

`FreezePolicy.apply` (model/freeze.py) and a LoRA policy's `adapt` (model/lora.py) return
one; `FineTuner.freeze_report` gives the current one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["FreezeReport", "parameter_count"]


def parameter_count(weights) -> int:
    """The number of parameters in `weights` (a list of variables).

    Examples:
        >>> import keras
        >>> from finetune_tf.model.freeze_report import parameter_count
        >>> layer = keras.layers.Dense(3)
        >>> layer.build((None, 4))
        >>> parameter_count(layer.weights)  # a 4x3 kernel and 3 biases
        15
    """
    return int(sum(np.prod(w.shape) for w in weights))


@dataclasses.dataclass(frozen=True)
class FreezeReport:
    """What applying a `FreezePolicy` did.

    Attributes:
        policy: str. The policy that was applied.
        trainable_layers: list of str. Backbone layers that train (with LoRA: the paths
            of the layers whose adapters train).
        frozen_layers: list of str. Backbone layers that are frozen.
        trainable_params: int. Backbone parameters that train.
        non_trainable_params: int. Frozen parameters plus BatchNorm statistics.
        batchnorm: str. The BatchNorm mode.
        unit: str. What `bottom(n)` and `top(k)` counted: `"layers"`, or `"blocks"`
            (the transformer blocks of a KerasHub backbone). Defaults to `"layers"`.
        blocks: int. The backbone's transformer blocks (0 when it has none).
        lora_rank: int or None. The adapters' rank under `FreezePolicy.lora`.
        adapter_params: int. The parameters of the adapters that train under
            `FreezePolicy.lora` (adapters of layers no longer targeted are frozen and
            counted with the backbone's parameters).

    Examples:
        >>> import keras
        >>> from finetune_tf import Backbone, FreezePolicy
        >>> inputs = keras.Input((4,), name="features_in")
        >>> x = keras.layers.Dense(3, name="a")(inputs)
        >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(2, name="b")(x)))
        >>> FreezePolicy.bottom(2).apply(backbone).frozen_layers
        ['features_in', 'a']
    """

    policy: str
    trainable_layers: list
    frozen_layers: list
    trainable_params: int
    non_trainable_params: int
    batchnorm: str
    unit: str = "layers"
    blocks: int = 0
    lora_rank: int | None = None
    adapter_params: int = 0

    @property
    def trainable_fraction(self) -> float:
        """The share of the backbone's parameters that train: under LoRA, adapter
        parameters over the backbone's own (adapters left out), else trainable over all.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FreezePolicy
            >>> inputs = keras.Input((4,))
            >>> x = keras.layers.Dense(4, name="a")(inputs)
            >>> backbone = Backbone.from_model(keras.Model(inputs, x))
            >>> FreezePolicy.lora(1).apply(backbone).trainable_fraction  # (4 + 4) / (16 + 4)
            0.4
        """
        total = self.trainable_params + self.non_trainable_params - self.adapter_params
        return self.trainable_params / total if total else 0.0

    def __str__(self):
        total_params = self.trainable_params + self.non_trainable_params
        share = 100.0 * self.trainable_fraction
        if self.lora_rank is not None:
            return (
                f"{self.policy}: LoRA rank {self.lora_rank} on "
                f"{len(self.trainable_layers)} layers | adapter params "
                f"{self.adapter_params:,} / backbone params "
                f"{total_params - self.adapter_params:,} ({share:.2f}%), the rest frozen | "
                f"BatchNorm: {self.batchnorm}"
            )
        total_layers = len(self.trainable_layers) + len(self.frozen_layers)
        counted = (
            f" (counted in transformer blocks: {self.blocks})" if self.unit == "blocks" else ""
        )
        return (
            f"{self.policy}{counted}: trainable layers {len(self.trainable_layers)} / "
            f"{total_layers} | trainable params {self.trainable_params:,} / "
            f"{total_params:,} ({share:.2f}%) | BatchNorm: {self.batchnorm}"
        )
