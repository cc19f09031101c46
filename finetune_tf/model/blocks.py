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

__all__ = [
    "block_mask",
    "block_starts",
    "count_error",
    "counted_blocks",
    "is_keras_hub",
    "keras_hub_backbones",
    "transformer_blocks",
    "unlisted_blocks",
]


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


def counted_blocks(model: keras.Model, kind: str) -> list:
    """The transformer blocks of `model` (`transformer_blocks`), for a policy of `kind`;
    a ValueError for `"bottom"` and `"top"` on a KerasHub transformer whose blocks cannot
    be listed (they would count layers).

    Examples:
        >>> import keras
        >>> from finetune_tf.model.blocks import counted_blocks
        >>> inputs = keras.Input((4,))
        >>> counted_blocks(keras.Model(inputs, keras.layers.Dense(2)(inputs)), "bottom")
        []
    """
    blocks = transformer_blocks(model)
    if kind in ("bottom", "top") and not blocks:
        owner = unlisted_blocks(model)
        if owner:
            argname = "n" if kind == "bottom" else "k"
            raise ValueError(
                f"`FreezePolicy.{kind}({argname})` counts transformer blocks in a "
                f"KerasHub backbone, but the blocks of {owner} sit inside one of its "
                "layers and cannot be counted (bottom/top count blocks in backbones with "
                "`transformer_layers` or TransformerEncoder/Decoder layers, e.g. BERT, "
                "GPT-2, Gemma, Llama). Use FreezePolicy.until(name) or "
                "FreezePolicy.matching(pattern) on the names in Backbone.layers, or "
                "FreezePolicy.lora(rank)."
            )
    return blocks


def block_starts(layers: list, blocks: list) -> list[int]:
    """Where each transformer block sits in `layers`; `[]` unless every block is there.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.blocks import block_starts
        >>> embed, first, norm, second = (keras.layers.Identity() for _ in range(4))
        >>> block_starts([embed, first, norm, second], [first, second])
        [1, 3]
    """
    index = {id(layer): i for i, layer in enumerate(layers)}
    starts = [index.get(id(block)) for block in blocks]
    return [] if not starts or None in starts else starts


def block_mask(kind: str, value: int, count: int, starts: list[int]) -> list[bool]:
    """For each of `count` layers, whether `FreezePolicy.bottom(value)` (`kind="bottom"`)
    or `top(value)` (`kind="top"`) freezes it, counting the transformer blocks that start
    at `starts` (indices in the layers), the embeddings below block 0.

    Examples:
        >>> from finetune_tf.model.blocks import block_mask
        >>> block_mask("bottom", 1, 5, [1, 3])  # embeddings and the first block frozen
        [True, True, True, False, False]
    """
    blocks = len(starts)
    if value > blocks:
        raise count_error(
            kind,
            value,
            blocks,
            "transformer blocks (in a KerasHub backbone it counts blocks, not layers)",
            f" For gradual_unfreezing pass the block count, gradual_unfreezing({blocks}) "
            "(FineTuner.freeze_report.blocks), not len(backbone.layers).",
        )
    frozen_blocks = value if kind == "bottom" else blocks - value
    # Up to the start of the first block that trains; all blocks frozen: through the last.
    stop = starts[frozen_blocks] if frozen_blocks < blocks else starts[-1] + 1
    return [i < stop for i in range(count)]


def count_error(kind: str, value: int, available: int, what: str, more: str = "") -> ValueError:
    """The error of `FreezePolicy.bottom(n)` (`kind="bottom"`) or `top(k)` beyond the
    `available` layers or blocks (`what`).

    Examples:
        >>> from finetune_tf.model.blocks import count_error
        >>> print(count_error("top", 9, 4, "layers"))
        `FreezePolicy.top(k)` got k=9, but the backbone has 4 layers. Use k <= 4, or ...
    """
    argname = "n" if kind == "bottom" else "k"
    return ValueError(
        f"`FreezePolicy.{kind}({argname})` got {argname}={value}, but the "
        f"backbone has {available} {what}. Use {argname} <= {available}, or "
        f"FreezePolicy.{'all' if kind == 'bottom' else 'none'}() to "
        f"{'freeze' if kind == 'bottom' else 'train'} everything.{more}"
    )
