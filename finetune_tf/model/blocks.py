"""Transformer blocks: what `FreezePolicy.bottom(n)` and `top(k)` count in a KerasHub backbone.

A KerasHub backbone (`keras_hub.models.Backbone`, e.g. `BertBackbone`) found anywhere in a
backbone's model lists its transformer blocks: its `transformer_layers` (BERT, RoBERTa,
GPT-2, Gemma, Llama and most text backbones keep them there) or, failing that, its own
layers that are `keras_hub.layers.TransformerEncoder` or `TransformerDecoder`. Other models
have no blocks, and the freeze policies count their layers as before. A KerasHub transformer
whose blocks sit inside one sublayer (ViT's `vit_encoder`, and likewise DINOv2, SigLIP,
CLIP) has blocks this module cannot list: `unlisted_blocks` names it, and
`FreezePolicy.bottom(n)`/`top(k)` refuse it rather than count its few layers. keras-hub is never
imported here: a model holding a KerasHub backbone was built after the user imported it.
"""

from __future__ import annotations

import sys

import keras

__all__ = ["is_keras_hub", "keras_hub_backbones", "transformer_blocks", "unlisted_blocks"]


def keras_hub_backbones(model: keras.Model) -> list:
    """The KerasHub backbones (`keras_hub.models.Backbone`) in `model`, itself included.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.blocks import keras_hub_backbones
        >>> inputs = keras.Input((4,))
        >>> keras_hub_backbones(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
        []
    """
    if sys.modules.get("keras_hub") is None:
        return []
    return [layer for layer in model._flatten_layers(include_self=True) if is_keras_hub(layer)]


def is_keras_hub(layer) -> bool:
    """Whether `layer` is a KerasHub backbone (`keras_hub.models.Backbone`).

    Examples:
        >>> import keras
        >>> from finetune_tf.model.blocks import is_keras_hub
        >>> is_keras_hub(keras.layers.Dense(2))
        False
    """
    keras_hub = sys.modules.get("keras_hub")
    return keras_hub is not None and isinstance(layer, keras_hub.models.Backbone)


def transformer_blocks(model: keras.Model) -> list:
    """The transformer blocks of the first KerasHub backbone in `model` that has any, in
    order; `[]` for other models.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.blocks import transformer_blocks
        >>> inputs = keras.Input((4,))
        >>> transformer_blocks(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
        []
    """
    keras_hub = sys.modules.get("keras_hub")
    for backbone in keras_hub_backbones(model):
        blocks = getattr(backbone, "transformer_layers", None)
        if not blocks:
            kinds = (keras_hub.layers.TransformerEncoder, keras_hub.layers.TransformerDecoder)
            blocks = [layer for layer in backbone.layers if isinstance(layer, kinds)]
        if blocks:
            return list(blocks)
    return [layer for layer, attention in _graph_blocks(model) if attention == 1]


def _graph_blocks(model: keras.Model) -> list:
    """`(layer, number of attention layers in it)` for the KerasHub layers among `model`'s
    own layers that hold attention: the blocks of a KerasHub backbone that
    `Backbone.from_preset` (or a saved file) holds as a plain graph of its layers. A layer
    with one attention layer is a block; one with several holds its blocks inside it."""
    if sys.modules.get("keras_hub") is None:
        return []
    found = []
    for layer in _graph_layers(model):
        if not type(layer).__module__.startswith("keras_hub"):
            continue
        attention = sum(
            "Attention" in type(inner).__name__
            for inner in layer._flatten_layers(include_self=False)
        )
        if attention:
            found.append((layer, attention))
    return found


def _graph_layers(model) -> list:
    """`model`'s layers, with those of the functional and Sequential models in it (as
    `Backbone.layers` lists them)."""
    layers = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Sequential) or type(layer).__name__ == "Functional":
            layers += _graph_layers(layer)
        else:
            layers.append(layer)
    return layers


def unlisted_blocks(model: keras.Model) -> str:
    """The name of a KerasHub backbone in `model` that has attention layers but no blocks
    `transformer_blocks` can list (ViT, DINOv2, SigLIP, CLIP keep them inside a sublayer);
    `""` when there is none.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.blocks import unlisted_blocks
        >>> inputs = keras.Input((4,))
        >>> unlisted_blocks(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
        ''
    """
    if transformer_blocks(model):
        return ""
    for backbone in keras_hub_backbones(model):
        if any(
            "Attention" in type(layer).__name__
            for layer in backbone._flatten_layers(include_self=False)
        ):
            return f"{backbone.name} ({type(backbone).__name__})"
    for layer, attention in _graph_blocks(model):
        if attention > 1:
            return f"{layer.name} ({type(layer).__name__})"
    return ""
