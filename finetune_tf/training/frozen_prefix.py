"""The frozen prefix: where a partly frozen backbone can be cut for the feature cache.

When the bottom of the backbone is frozen and runs in inference mode, it
computes the same activations every epoch. `frozen_prefix` finds the deepest
point below the first trainable layer where the backbone's graph narrows to a
single tensor (after a layer of a Sequential model, at a block boundary of a
ResNet, MobileNet, EfficientNet or Xception) and splits the tuner's model
there into two models that share its layers: the prefix (raw inputs to the
activations at the cut), run once by the feature cache, and the tail (those
activations to the predictions), which trains. With the whole backbone frozen
the cut is the backbone's output: the prefix is `Assembly.feature_model` and
the tail `Assembly.head_model()`, the classic feature cache.
"""

from __future__ import annotations

import dataclasses
import inspect

import keras

from finetune_tf.model.layers import BackboneLayer
from finetune_tf.model.tuned_model import TunedModel

__all__ = ["FrozenPrefix", "cut_points", "frozen_prefix"]


@dataclasses.dataclass
class FrozenPrefix:
    """A split of a tuner's model at a single tensor below everything that trains.

    Attributes:
        prefix_model: `keras.Model` from the raw inputs to the activations at the cut.
        tail_model: `keras.Model` from those activations to the predictions; it shares
            its layers (and so its variables) with the tuner's model.
        where: str. The cut, in words, for the progress line.
        shape: tuple. The shape of one example's activations at the cut.
    """

    prefix_model: keras.Model
    tail_model: keras.Model
    where: str
    shape: tuple


def _producer(tensor):
    history = tensor._keras_history
    return history.operation._inbound_nodes[history.node_index]


def _nodes_in_order(model: keras.Model) -> list:
    """The nodes of `model`'s graph in an order they can run in (inputs first): a depth-first
    post-order from the output, so each block's input comes just before the block."""
    order, done = [], set()
    stack = [(_producer(model.outputs[0]), False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        for tensor in reversed(node.input_tensors):
            parent = _producer(tensor)
            if id(parent) not in done:
                stack.append((parent, False))
    return order


def cut_points(model: keras.Model) -> list[tuple]:
    """`(tensor, layer, frozen_below, weights_below)` for each tensor of `model` that every
    path from its input to its output goes through, in order from the input (the input
    itself excluded, the output last): `layer` makes it, `frozen_below` says whether no
    layer up to it has trainable weights, `weights_below` whether one has weights at all.

    Examples:
        >>> import keras
        >>> from finetune_tf.training.frozen_prefix import cut_points
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(4, name="a")(inputs)
        >>> y = keras.layers.Add(name="block_out")([keras.layers.Dense(4, name="b")(x), x])
        >>> model = keras.Model(inputs, keras.layers.Dense(2, name="c")(y))
        >>> [layer.name for _, layer, _, _ in cut_points(model)]
        ['a', 'block_out', 'c']
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return []
    order = _nodes_in_order(model)
    last_use = {}
    for index, node in enumerate(order):
        for tensor in node.input_tensors:
            last_use[id(tensor)] = index
    last_use[id(model.outputs[0])] = len(order)
    points, live, frozen, weights = [], set(), True, False
    for index, node in enumerate(order):
        live = {key for key in live if last_use.get(key, -1) > index}
        live.update(id(t) for t in node.output_tensors if last_use.get(id(t), -1) > index)
        if node.is_input:
            continue
        frozen = frozen and not getattr(node.operation, "trainable_weights", None)
        weights = weights or bool(getattr(node.operation, "weights", None))
        outputs = node.output_tensors
        if len(outputs) == 1 and live == {id(outputs[0])}:
            points.append((outputs[0], node.operation, frozen, weights))
    return points


def frozen_prefix(assembly) -> FrozenPrefix | str:
    """The split of `assembly`'s model at the deepest single-tensor cut of its backbone below
    every trainable layer, or why there is none (the backbone must run in inference mode)."""
    backbone = assembly.backbone.model
    if not backbone.trainable_weights:  # the classic feature cache, whatever the graph
        return _checked(_whole_backbone(assembly))
    points = cut_points(backbone)
    # A cut below every layer with weights (after a Rescaling, a padding) would save
    # nothing worth the memory.
    frozen = [(tensor, layer) for tensor, layer, frozen, weights in points if frozen and weights]
    if not frozen:
        return _no_frozen_cut(backbone, assembly.backbone.layers)
    tensor, layer = frozen[-1]
    if tensor is backbone.outputs[0]:
        return _checked(_whole_backbone(assembly))
    return _checked(_split(assembly, tensor, layer))


def _no_frozen_cut(backbone: keras.Model, layers: list) -> str:
    """Why no cut of `backbone` is frozen: its first trainable layer (of `layers`, the
    flattened ones `FreezePolicy` counts) comes before them, or lies inside a nested model,
    which `cut_points` treats as one layer (it cannot cut inside it)."""
    first = next((layer for layer in layers if layer.trainable_weights), None)
    if first is None:
        return "no point where the backbone could be cut is frozen"
    for outer in backbone.layers:
        if isinstance(outer, keras.Model) and any(
            layer is first for layer in outer._flatten_layers(include_self=False)
        ):
            return (
                f"the trainable layers are inside nested model {outer.name!r} (from "
                f"{first.name!r}); the cache cannot cut inside it"
            )
    return (
        f"a trainable backbone layer ({first.name!r}) comes before every point where the "
        "backbone could be cut"
    )


def _checked(split: FrozenPrefix) -> FrozenPrefix | str:
    if split.prefix_model.trainable_weights:
        return "a layer before the backbone trains"
    varying = _training_dependent(split.prefix_model)
    if varying is not None:
        # Run once with training=False, its noise or augmentation would be dropped.
        return f"the backbone's preprocessing behaves differently in training ({varying})"
    return split


def _training_dependent(model: keras.Model) -> str | None:
    """The class name of the first layer of `model` (nested models walked into) whose output
    in training differs from inference: its call takes `training` (Dropout, GaussianNoise)
    or it draws random numbers (a `keras.random.SeedGenerator`: RandomFlip...). The frozen
    backbone in inference mode is skipped (it always runs with training=False), and so is a
    frozen BatchNormalization (Keras runs it in inference mode)."""
    for layer in model.layers:
        if isinstance(layer, BackboneLayer) and layer.inference_mode:
            continue
        if isinstance(layer, keras.Model):
            found = _training_dependent(layer)
            if found is not None:
                return found
            continue
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.trainable:
            continue
        if getattr(layer, "_seed_generators", None):
            return type(layer).__name__
        if isinstance(layer, keras.layers.Lambda):
            varies = getattr(layer, "_fn_expects_training_arg", False)
        else:
            varies = "training" in inspect.signature(layer.call).parameters
        if varies:
            return type(layer).__name__
    return None


def _whole_backbone(assembly) -> FrozenPrefix:
    return FrozenPrefix(
        assembly.feature_model,
        assembly.head_model(),
        "the backbone's output",
        tuple(assembly.features.shape[1:]),
    )


def _split(assembly, tensor, layer) -> FrozenPrefix:
    splits = assembly.__dict__.setdefault("_frozen_prefix_splits", {})
    key = id(tensor)
    if key in splits:
        return splits[key]
    backbone = assembly.backbone.model
    model = assembly.model
    bottom = keras.Model(backbone.inputs, tensor, name=f"{backbone.name}_bottom")
    activations = BackboneLayer(bottom, inference_mode=True, name="backbone_bottom")(
        assembly.backbone_inputs
    )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    prefix_model = keras.Model(inputs, activations, name=f"{model.name}_prefix")
    # === The tail: activations -> top of the backbone -> head, on the same layers ===
    top = keras.Model(tensor, backbone.outputs[0], name=f"{backbone.name}_top")
    tail_inputs = keras.Input(tensor.shape[1:], dtype=tensor.dtype, name="cached_activations")
    features = BackboneLayer(
        top, inference_mode=assembly.backbone_layer.inference_mode, name="backbone_top"
    )(tail_inputs)
    tail_model = TunedModel(tail_inputs, assembly.head_model()(features), name=f"{model.name}_tail")
    names = [entry.name for entry in assembly.backbone.layers]
    position = names.index(layer.name) + 1 if layer.name in names else None
    count = f", layer {position} of {len(names)}" if position else ""
    shape = tuple(tensor.shape[1:])
    split = FrozenPrefix(prefix_model, tail_model, f"{layer.name!r}{count}", shape)
    splits[key] = split
    return split
