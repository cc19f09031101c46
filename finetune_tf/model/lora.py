"""LoRA: low-rank adapters on a backbone's Dense, EinsumDense and Embedding layers.

(Every layer with Keras' `enable_lora` takes them: recent Keras versions give it to
convolutions too.)

`FreezePolicy.lora(rank)` freezes the whole backbone and gives each target layer a trainable
pair of low-rank matrices (Keras' own `layer.enable_lora(rank, lora_alpha)`): the layer then
computes with `kernel + (alpha / rank) * lora_a @ lora_b`, and only `lora_a` and `lora_b`
train. The targets are, by default, KerasHub's choice in a KerasHub backbone (its
`default_lora_layer_names()`: the query and value projections of the attention layers) and
every Dense and EinsumDense layer elsewhere; or the layers named in `targets`
(`policy_targets`); `adapt` is what the policy's `apply` does.

`merge_lora(model)` folds the adapters into the kernels and gives back a model of plain
layers, for export. Keras itself saves a LoRA layer's kernel merged (`.keras` files and
weights files hold `kernel + (alpha / rank) * lora_a @ lora_b`) and loads it with zero
adapters; `enable_adapters` starts such adapters afresh (as `enable_lora` does), so that a
loaded model trains again.
"""

from __future__ import annotations

import keras
import numpy as np

from finetune_tf._utils import did_you_mean, short_list
from finetune_tf.model.blocks import keras_hub_backbones, transformer_blocks
from finetune_tf.model.freeze_report import FreezeReport, parameter_count
from finetune_tf.model.layers import clone_model

__all__ = [
    "adaptable_layers",
    "adapted_layers",
    "adapt",
    "adapter_weights",
    "enable_adapters",
    "merge_lora",
    "policy_targets",
    "target_layers",
]

# The adapter pair of each kind of layer Keras gives `enable_lora`: (A, B).
_ADAPTERS = (("lora_kernel_a", "lora_kernel_b"), ("lora_embeddings_a", "lora_embeddings_b"))
_TARGETS_HINT = "Pass targets=None for the default targets, or names from that list."


def adaptable_layers(model: keras.Model) -> list:
    """The built layers inside `model`, at any depth, that can take LoRA adapters
    (those with Keras' `enable_lora`: Dense, EinsumDense, Embedding, and convolutions in
    recent Keras versions).

    Examples:
        >>> import keras
        >>> from finetune_tf.model.lora import adaptable_layers
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(3, name="hidden")(keras.layers.Normalization()(inputs))
        >>> [layer.name for layer in adaptable_layers(keras.Model(inputs, x))]
        ['hidden']
    """
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if hasattr(layer, "enable_lora") and layer.built and layer.weights
    ]


def adapted_layers(model: keras.Model) -> list:
    """The layers inside `model` that have LoRA adapters."""
    return [layer for layer in adaptable_layers(model) if getattr(layer, "lora_enabled", False)]


def _pair(layer) -> tuple:
    """A LoRA layer's adapter variables `(A, B)`."""
    for names in _ADAPTERS:
        if hasattr(layer, names[0]):
            return tuple(getattr(layer, name) for name in names)
    return ()


def adapter_weights(model: keras.Model) -> list:
    """The adapter variables (A and B of each adapted layer) inside `model`."""
    return [weight for layer in adapted_layers(model) for weight in _pair(layer)]


def _default_targets(model: keras.Model) -> list:
    """KerasHub's choice in each KerasHub backbone inside `model` (or in the KerasHub blocks
    of a plain graph); without them, every Dense and EinsumDense layer."""
    hub_backbones = keras_hub_backbones(model)
    if hub_backbones:
        chosen = []
        for backbone in hub_backbones:
            names = set(backbone.default_lora_layer_names())
            chosen += [layer for layer in adaptable_layers(backbone) if layer.name in names]
        return chosen
    blocks = transformer_blocks(model)
    if blocks:
        # A KerasHub backbone held as a plain graph of its layers (`Backbone.from_preset`):
        # KerasHub's default choice, the query and value projections in its blocks.
        names = {"query_dense", "value_dense", "query", "value"}
        inside = {id(inner) for block in blocks for inner in block._flatten_layers()}
        return [
            layer
            for layer in adaptable_layers(model)
            if layer.name in names and id(layer) in inside
        ]
    kinds = (keras.layers.Dense, keras.layers.EinsumDense)
    return [layer for layer in adaptable_layers(model) if isinstance(layer, kinds)]


def target_layers(
    model: keras.Model, targets, rank: int, where: str, alpha=None, planned: dict | None = None
) -> list:
    """The layers `FreezePolicy.lora(rank, alpha=alpha, targets=targets)` adapts in `model`,
    or a ValueError (before anything changes) naming what does not fit.

    `planned` maps `id(layer)` to the `(rank, alpha)` of adapters that earlier stages of a
    schedule will add: they are checked as if the layer had them already."""
    available = adaptable_layers(model)
    names = list(dict.fromkeys(layer.name for layer in available))
    listing = (
        f"Layers that take adapters: {short_list(names, 20)}."
        if names
        else "It has no layer that takes adapters (Dense, EinsumDense, Embedding)."
    )
    if targets is None:
        chosen = _default_targets(model)
        if not chosen:
            raise ValueError(
                f"`{where}` found no layer to adapt in the backbone: the default targets are "
                "the Dense and EinsumDense layers (KerasHub's query and value projections in a "
                f"KerasHub backbone). {listing} "
                "Name the layers with targets=[...], or use another FreezePolicy."
            )
    else:
        unknown = [name for name in targets if name not in names]
        if unknown:
            hint = did_you_mean(unknown[0], names)
            raise ValueError(
                f"`{where}(targets)` got targets={list(targets)!r}, but {unknown[0]!r} is not "
                f"the name of a backbone layer that takes adapters.{hint} "
                f"{listing} {_TARGETS_HINT}"
            )
        chosen = [layer for layer in available if layer.name in targets]
    effective = rank if alpha is None else alpha
    for layer in chosen:
        if getattr(layer, "lora_enabled", False):
            has = (layer.lora_rank, layer.lora_alpha)
        else:
            has = (planned or {}).get(id(layer))
        if has is not None and (has[0] != rank or has[1] / has[0] != effective / rank):
            _refuse_other_adapters(where, layer, rank, alpha, effective, has)
        for constraint in ("kernel_constraint", "embeddings_constraint"):
            if getattr(layer, constraint, None) is not None:
                raise ValueError(
                    f"`{where}` cannot adapt the layer {layer.name!r}: it has a constraint "
                    f"(`{constraint}`), which Keras' LoRA does not support. Leave it out "
                    "with targets=[...]."
                )
    return chosen


def policy_targets(policy, backbone, planned: dict | None = None) -> list:
    """The layers the LoRA `policy` (a `FreezePolicy.lora`) adapts in `backbone`
    (`target_layers`, checked with the policy's rank, alpha and targets).

    Examples:
        >>> import keras
        >>> from finetune_tf import Backbone, FreezePolicy
        >>> from finetune_tf.model.lora import policy_targets
        >>> layers = [keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2)]
        >>> backbone = Backbone.from_model(keras.Sequential(layers))
        >>> [layer.name for layer in policy_targets(FreezePolicy.lora(2, targets="a"), backbone)]
        ['a']
    """
    return target_layers(
        backbone.model,
        policy.options["targets"],
        policy.value,
        where="FreezePolicy.lora",
        alpha=policy.options["alpha"],
        planned=planned,
    )


def adapt(policy, backbone) -> FreezeReport:
    """Applies the LoRA `policy` to `backbone`: adapts its targets, freezes the rest
    (`enable_adapters`), and reports it (what `FreezePolicy.lora(...).apply` does).

    Examples:
        >>> import keras
        >>> from finetune_tf import Backbone, FreezePolicy
        >>> from finetune_tf.model.lora import adapt
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(3, name="a")(inputs)
        >>> backbone = Backbone.from_model(keras.Model(inputs, x))
        >>> adapt(FreezePolicy.lora(2), backbone).trainable_layers
        ['a']
    """
    targets = policy_targets(policy, backbone)
    model = backbone.model
    enable_adapters(model, targets, policy.value, policy.options["alpha"])
    adapted = {id(layer) for layer in targets}
    frozen = [
        layer.name
        for layer in backbone.layers
        if not any(id(inner) in adapted for inner in layer._flatten_layers(include_self=True))
    ]
    trainable_params = parameter_count(model.trainable_weights)
    return FreezeReport(
        policy=repr(policy),
        trainable_layers=[layer.path or layer.name for layer in targets],
        frozen_layers=frozen,
        trainable_params=trainable_params,
        non_trainable_params=parameter_count(model.weights) - trainable_params,
        batchnorm=policy.batchnorm,
        blocks=len(transformer_blocks(model)),
        lora_rank=policy.value,
        # the adapters that train: those of layers left out since are frozen, counted
        # with the backbone's other frozen weights (the report's numbers then agree)
        adapter_params=parameter_count([w for w in adapter_weights(model) if w.trainable]),
    )


def _refuse_other_adapters(where: str, layer, rank: int, alpha, effective, has: tuple):
    """The ValueError of a LoRA policy whose rank or alpha differs from the adapters that
    `layer` has (or that an earlier stage gives it): `has` is their `(rank, alpha)`."""
    if has[0] != rank:
        argument, received, remedy = "rank", f"rank={rank}", f"rank={has[0]}, alpha={has[1]}"
    else:
        argument = "alpha"
        received = f"alpha={alpha}" + (f" (alpha = rank = {effective})" if alpha is None else "")
        remedy = f"alpha={has[1]}"
    raise ValueError(
        f"`{where}({argument})` got {received}, but the backbone's layer {layer.name!r} "
        f"already has adapters of rank {has[0]}, alpha {has[1]} (or an earlier stage of the "
        f"schedule gives it them). Use {remedy}, or merge the adapters first "
        "(FineTuner.merge_lora() or finetune_tf.merge_lora(model))."
    )


def enable_adapters(model: keras.Model, layers: list, rank: int, alpha) -> None:
    """Freezes every weight of `model` but the LoRA adapters of `layers`, which it adds
    (`layer.enable_lora(rank, lora_alpha=alpha)`) where missing. Adapters that are both zero
    (a model loaded from a file: Keras saves them merged) start afresh, A random and B zero,
    as `enable_lora` makes them: the layer computes the same, and can train again.
    Should `enable_lora` raise, every `trainable` flag (of layers and weights) is restored
    first; adapters added before it stay, frozen, computing nothing (B is zero)."""
    everything = list(model._flatten_layers(include_self=True))
    flags = [layer.trainable for layer in everything]
    weights = {id(weight): (weight, weight.trainable) for weight in model.weights}
    try:
        _enable(model, layers, rank, alpha)
    except Exception:
        for layer, flag in zip(everything, flags, strict=True):
            layer.trainable = flag
        for weight in model.weights:
            weight.trainable = weights[id(weight)][1] if id(weight) in weights else False
        raise


def _tell_keras_hub(model: keras.Model, rank: int) -> None:
    """Records the adapters of each KerasHub backbone in `model` as its own `enable_lora`
    does (the indices of its adapted layers among its layers with weights, and the rank),
    so that KerasHub's `save_lora_weights` and `load_lora_weights` see them. (KerasHub's
    file keeps the rank, not alpha: `load_lora_weights` restores A and B into adapters of
    the same rank, whatever their alpha.)"""
    for backbone in keras_hub_backbones(model):
        weighted = [
            layer for layer in backbone._flatten_layers(include_self=False) if layer.weights
        ]
        backbone._lora_enabled_layers = [
            index for index, layer in enumerate(weighted) if getattr(layer, "lora_enabled", False)
        ]
        backbone._lora_rank = rank


def _enable(model: keras.Model, layers: list, rank: int, alpha) -> None:
    """`enable_adapters`' work, without the restoring."""
    model.trainable = True
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False  # BatchNorm too: it runs in inference mode
    for layer in layers:
        layer.trainable = True
        if not layer.lora_enabled:
            layer.enable_lora(rank, lora_alpha=alpha)
        a, b = _pair(layer)
        if not np.any(keras.ops.convert_to_numpy(a)) and not np.any(keras.ops.convert_to_numpy(b)):
            a.assign(keras.initializers.HeUniform()(a.shape, dtype=a.dtype))
        adapters = {id(a), id(b)}
        for weight in layer.weights:
            weight.trainable = id(weight) in adapters
    _tell_keras_hub(model, rank)


def merge_lora(model: keras.Model) -> keras.Model:
    """A copy of `model` with each LoRA adapter folded into its layer's kernel.

    Each adapted layer of the copy is a plain layer whose kernel is `kernel + (alpha / rank)
    * lora_a @ lora_b`: it predicts what `model` predicts (to float tolerance), and saves and
    exports without adapters. `model` is left as it is. Works on any Keras model with
    adapters: a FineTuner's (`FineTuner.merge_lora()` calls this on its backbone), or one
    loaded with `keras.models.load_model`. Keras saves each adapted kernel merged, so a
    model loaded from a file whose adapters sat in attention layers (layers that rebuild
    without them) is already merged: plain layers, nothing left to merge (an error says so).

    Args:
        model: keras.Model. A model with LoRA adapters (`FreezePolicy.lora`, or Keras'
            `layer.enable_lora`).

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import merge_lora
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
        >>> model.get_layer("dense").enable_lora(2)
        >>> plain = merge_lora(model)
        >>> plain.get_layer("dense").lora_enabled, len(plain.weights)
        (False, 2)
        >>> x = np.ones((2, 4), "float32")
        >>> bool(np.allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0)))
        True
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`merge_lora(model)` expects a keras.Model. "
            f"Received: model={model!r} of type {type(model).__name__}. For a model file, "
            "load it first: merge_lora(finetune_tf.load_model(path))."
        )
    if not adapted_layers(model):
        raise ValueError(
            f"`merge_lora(model)` found no LoRA adapters in the model {model.name!r}: there "
            "is nothing to merge. Adapters come from FreezePolicy.lora(rank) or "
            "layer.enable_lora(rank). A model loaded from a file may already be merged: "
            "Keras saves each adapted kernel merged, and adapters inside layers that "
            "rebuild without them (the attention layers of a transformer block) load as "
            "plain layers; such a model needs no merge_lora."
        )
    # The copy that Backbone.copy makes, its layers rebuilt without adapters.
    return clone_model(model, None, f"merge_lora(model): the model {model.name!r}", merge_lora=True)
