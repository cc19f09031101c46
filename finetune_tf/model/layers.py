"""`BackboneLayer`: how a backbone sits inside a FineTuner's model.

It runs the backbone in inference mode while BatchNorm statistics must stay
fixed. (Keras 3 propagates the outer `training=True` into a nested model even
when the graph was built with `base_model(x, training=False)`, so the Keras
guide's recipe does not hold inside a functional model; this layer makes it
hold.) `clone_layer` copies a backbone's layers into another dtype policy, and
`placing_copy` says when a backbone must be copied to train under a strategy or a
dtype policy. `flatten_layers` lists the layers `FreezePolicy` counts.
"""

from __future__ import annotations

import os
import tempfile

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from finetune_tf._utils import revived
from finetune_tf.model.blocks import is_keras_hub
from finetune_tf.sources.hub import HubLayer
from finetune_tf.sources.keras_hub import PresetPreprocessor

__all__ = [
    "BackboneLayer",
    "clone_layer",
    "clone_model",
    "flatten_layers",
    "placing_copy",
]


def _without_lora(config):
    """A serialized model's config with the LoRA settings of its layers removed."""
    if isinstance(config, dict):
        return {
            key: _without_lora(value)
            for key, value in config.items()
            if key not in ("lora_rank", "lora_alpha")
        }
    if isinstance(config, list):
        return [_without_lora(item) for item in config]
    return config


def clone_layer(layer, dtype_policy: str | None, without_lora: bool = False):
    """A fresh copy of `layer` (nested models layer by layer), computing in `dtype_policy`;
    with `without_lora`, a plain layer where `layer` has LoRA adapters.

    A subclassed model is rebuilt from its config like any layer: it must implement
    `get_config` (Keras' rule for saving it too).
    """
    if without_lora and is_keras_hub(layer):
        # A KerasHub backbone rebuilds from its own config (no adapters in it), as its
        # class: the merged weights file then matches it object for object.
        return layer.__class__.from_config(layer.get_config())
    if isinstance(layer, keras.Sequential) or hasattr(layer, "_inputs_struct"):
        return keras.models.clone_model(
            layer, clone_function=lambda inner: clone_layer(inner, dtype_policy, without_lora)
        )
    if isinstance(layer, PresetPreprocessor):
        return layer  # no weights to copy, and its vocabulary is an asset, not config
    config = _without_lora(layer.get_config()) if without_lora else layer.get_config()
    if isinstance(layer, HubLayer):
        # Already loaded in this process, by the user's choice: a copy is not a file
        # being loaded, so the checks of a safe load (ops, downloads) do not apply.
        with serialization_lib.SafeModeScope(False):
            return HubLayer.from_config(config)
    if dtype_policy is not None and "dtype" in config:
        config["dtype"] = dtype_policy
    return layer.__class__.from_config(config)


def clone_model(
    model: keras.Model, dtype_policy: str | None, what: str, *, merge_lora: bool = False
) -> keras.Model:
    """A copy of `model` with the same weights, its layers computing in `dtype_policy`.
    With `merge_lora`, each LoRA layer of the copy is a plain layer whose kernel is the
    merged `kernel + (alpha / rank) * lora_a @ lora_b` (`finetune_tf.merge_lora`).

    Raises ValueError, naming `what` was copied, when a subclassed model cannot be
    rebuilt from its config.
    """
    try:
        if isinstance(model, keras.Sequential) or hasattr(model, "_inputs_struct"):
            clone = keras.models.clone_model(
                model, clone_function=lambda layer: clone_layer(layer, dtype_policy, merge_lora)
            )
        else:  # a subclassed model itself (finetune_tf.merge_lora takes any model)
            clone = clone_layer(model, dtype_policy, merge_lora)
            if model.built and model.get_build_config():
                clone.build_from_config(model.get_build_config())
                clone.built = True  # as Keras' deserialization does after building
    except (TypeError, NotImplementedError) as error:
        # A subclassed model whose get_config does not give its constructor's arguments.
        subclassed = [
            type(layer).__name__
            for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.Model)
            and not isinstance(layer, keras.Sequential)
            and not hasattr(layer, "_inputs_struct")
        ]
        culprit = f"the subclassed model {subclassed[0]}" if subclassed else "a layer"
        raise ValueError(
            f"{what} cannot be copied: {culprit} cannot be rebuilt from its "
            f"config ({type(error).__name__}: {str(error).splitlines()[0][:200]}). A copy "
            "is made for strategies, mixed precision and every scikit-learn fit. Give the "
            "class a get_config() that returns its constructor's arguments (and register "
            "it with keras.saving.register_keras_serializable), or build the model inside "
            "`with strategy.scope():` and pass that strategy."
        ) from None
    if merge_lora:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "merged.weights.h5")
            model.save_weights(path)  # Keras writes each LoRA kernel merged
            clone.load_weights(path)
    elif len(clone.weights) != len(model.weights) and _has_adapters(model):
        raise ValueError(
            f"{what} cannot be copied: it has LoRA adapters inside layers that rebuild "
            "without them (e.g. the attention layers of a transformer block), so the copy "
            "would lack them. A copy is made for strategies, mixed precision and every "
            "scikit-learn fit. Merge the adapters first (FineTuner.merge_lora(), or "
            "Backbone.from_model(finetune_tf.merge_lora(backbone.model))), or copy the "
            "backbone before applying FreezePolicy.lora."
        )
    if not merge_lora:
        clone.set_weights(model.get_weights())
    for layer in clone._flatten_layers(include_self=False):
        # As Keras does after loading a file: an adapted Normalization computes from its
        # statistics (weights) only once finalized; without this the copy normalised with
        # the zeros and ones it was built with. (Other adapted layers keep their state in
        # their config, and finalizing them would reset it from an empty summary.)
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    return clone


def _has_adapters(model: keras.Model) -> bool:
    """Whether a layer inside `model` has LoRA adapters (`lora.adapted_layers`, which
    imports this module for `merge_lora`)."""
    return any(
        getattr(layer, "lora_enabled", False) for layer in model._flatten_layers(include_self=False)
    )


def flatten_layers(model: keras.Model) -> list:
    """A model's layers in order, with nested models replaced by their layers.

    A `HubLayer` (SavedModel) is replaced by its variable groups, in order of use.
    """
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(flatten_layers(layer))
        elif isinstance(layer, HubLayer) and layer.variable_groups:
            layers.extend(layer.variable_groups)
        else:
            layers.append(layer)
    return layers


def placing_copy(
    model: keras.Model, strategy: tf.distribute.Strategy, dtype_policy: str | None, exact: bool
) -> tuple[bool, str | None]:
    """Whether `Backbone.placed` must copy `model` (its variables were not created in
    `strategy`'s scope, or its layers must compute in another dtype policy), and the
    dtype policy of the copy (see `Backbone.placed` for `exact`)."""
    in_scope = all(  # Keras variables hold the tf.Variable in `_value`
        strategy.extended.variable_created_in_scope(getattr(v, "_value", v)) for v in model.weights
    )
    # Layers that compute in a mixed policy (a backbone saved from a mixed-precision
    # tuner) go back to float32 when this model is float32.
    mixed = (
        exact
        and dtype_policy is None
        and any(
            getattr(layer, "dtype_policy", None) is not None
            and layer.dtype_policy.name.startswith("mixed_")
            for layer in model._flatten_layers(include_self=False)
        )
    )
    if in_scope and dtype_policy is None and not mixed:
        return False, None
    return True, "float32" if mixed else dtype_policy


@keras.saving.register_keras_serializable(package="finetune_tf")
class BackboneLayer(keras.layers.Layer):
    """Runs a backbone model inside a FineTuner's model.

    With `inference_mode=True` the backbone always runs with
    `training=False`: BatchNorm uses and keeps its moving statistics (the
    Keras transfer-learning guide's rule, which nested functional models no
    longer honour by themselves in Keras 3), and the backbone's own dropout is
    off. With `inference_mode=False`, `training` passes through, so unfrozen
    BatchNorm layers update their statistics.

    Args:
        backbone: keras.Model. The backbone model.
        inference_mode: bool. Defaults to `True`.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import BackboneLayer
        >>> inputs = keras.Input((4,))
        >>> bn = keras.layers.BatchNormalization()
        >>> layer = BackboneLayer(keras.Model(inputs, bn(inputs)))
        >>> _ = layer(np.random.rand(8, 4) * 10, training=True)
        >>> float(bn.moving_mean.numpy().max())  # statistics untouched
        0.0
    """

    def __init__(self, backbone: keras.Model, inference_mode: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.inference_mode = bool(inference_mode)
        self.built = True

    def call(self, inputs, training=None):
        if self.inference_mode:
            training = False
        return self.backbone(inputs, training=training)

    def compute_output_spec(self, inputs, training=None):
        return self.backbone.compute_output_spec(inputs)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "inference_mode": self.inference_mode,
        }

    @classmethod
    def from_config(cls, config):
        layer = cls(**revived(config, "backbone"))
        # A layer rebuilt with trainable=False freezes the variables it makes itself, but
        # not those of sublayers it makes in `build` (KerasHub's TransformerEncoder):
        # freezing its whole subtree again reaches them, so a frozen backbone loads frozen.
        for inner in layer.backbone._flatten_layers(include_self=False):
            if not inner.trainable:
                for sub in inner._flatten_layers():
                    sub.trainable = False
        return layer
