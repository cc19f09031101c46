"""`BackboneLayer`: how a backbone sits inside a FineTuner's model.

It runs the backbone in inference mode while BatchNorm statistics must stay
fixed. (Keras 3 propagates the outer `training=True` into a nested model even
when the graph was built with `base_model(x, training=False)`, so the Keras
guide's recipe does not hold inside a functional model; this layer makes it
hold.) `clone_layer` copies a backbone's layers into another dtype policy.
"""

from __future__ import annotations

import keras
from keras.src.saving import serialization_lib

from finetune_tf._utils import revived
from finetune_tf.sources.hub import HubLayer

__all__ = ["BackboneLayer", "clone_layer", "clone_model"]


def clone_layer(layer, dtype_policy: str | None):
    """A fresh copy of `layer` (nested models layer by layer), computing in `dtype_policy`.

    A subclassed model is rebuilt from its config like any layer: it must implement
    `get_config` (Keras' rule for saving it too).
    """
    if isinstance(layer, keras.Sequential) or hasattr(layer, "_inputs_struct"):
        return keras.models.clone_model(
            layer, clone_function=lambda inner: clone_layer(inner, dtype_policy)
        )
    config = layer.get_config()
    if isinstance(layer, HubLayer):
        # Already loaded in this process, by the user's choice: a copy is not a file
        # being loaded, so the checks of a safe load (ops, downloads) do not apply.
        with serialization_lib.SafeModeScope(False):
            return HubLayer.from_config(config)
    if dtype_policy is not None and "dtype" in config:
        config["dtype"] = dtype_policy
    return layer.__class__.from_config(config)


def clone_model(model: keras.Model, dtype_policy: str | None, what: str) -> keras.Model:
    """A copy of `model` with the same weights, its layers computing in `dtype_policy`.

    Raises ValueError, naming `what` was copied, when a subclassed model cannot be
    rebuilt from its config.
    """
    try:
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: clone_layer(layer, dtype_policy)
        )
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
    clone.set_weights(model.get_weights())
    for layer in clone._flatten_layers(include_self=False):
        # As Keras does after loading a file: an adapted Normalization computes from its
        # statistics (weights) only once finalized; without this the copy normalised with
        # the zeros and ones it was built with. (Other adapted layers keep their state in
        # their config, and finalizing them would reset it from an empty summary.)
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    return clone


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
        return cls(**revived(config, "backbone"))
