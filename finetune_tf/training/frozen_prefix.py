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
the tail `Assembly.head_model()`, the classic feature cache. When the first
trainable layer lies inside a nested model that is a single link of the
backbone's chain (`keras.Sequential([application, GlobalAveragePooling2D()])`),
the cut goes inside it, as deep as the nesting goes.
"""

from __future__ import annotations

import dataclasses
import inspect

import keras

from finetune_tf.model.layers import BackboneLayer, flatten_layers
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
    every trainable layer, or why there is none (the backbone must run in inference mode).
    When the first trainable layer lies inside a nested model on the backbone's single path
    (one input, one output, called once, a cut point on either side), the cut goes inside it
    (recursively, for deeper nesting)."""
    backbone = assembly.backbone.model
    if not backbone.trainable_weights:  # the classic feature cache, whatever the graph
        return _checked(_whole_backbone(assembly))
    cut = _deepest_cut(backbone)
    if cut is None:
        return _no_frozen_cut(backbone, assembly.backbone.layers)
    tensor, layer, nesting = cut
    if not nesting and tensor is backbone.outputs[0]:
        return _checked(_whole_backbone(assembly))
    return _checked(_split(assembly, tensor, layer, nesting))


def _deepest_cut(model: keras.Model, weights_before: bool = False, nesting: tuple = ()):
    """`(tensor, layer, nesting)`: the deepest frozen cut of `model` (inside the nested model
    that holds its first trainable layer when that model can be entered), with `nesting` the
    `(nested model, its node)` pairs entered from the backbone down; None when none.
    `weights_before`: whether a layer before `model` has weights."""
    points = cut_points(model)
    # A cut below every layer with weights (after a Rescaling, a padding) would save
    # nothing worth the memory.
    frozen = [(t, layer) for t, layer, f, w in points if f and (w or weights_before)]
    index = next((i for i, point in enumerate(points) if not point[2]), None)
    if index is not None and _enterable(model, points, index) is None:
        nested = points[index][1]
        weights = weights_before or (index > 0 and points[index - 1][3])
        inner = _deepest_cut(nested, weights, (*nesting, (nested, _producer(points[index][0]))))
        if inner is not None:
            return inner
    if not frozen:
        return None
    tensor, layer = frozen[-1]
    return tensor, layer, nesting


def _enterable(model: keras.Model, points: list, index: int) -> str | None:
    """Why the cut cannot go inside the layer making `points[index]` (the first cut point of
    `model` above a trainable layer), or None when it can: that layer is a nested model with
    one input and one output, called once in `model`, whose input is the previous cut point
    (or `model`'s input), so that it is the only layer between the two cuts."""
    tensor, nested = points[index][:2]
    if not isinstance(nested, keras.Model):
        return "not a nested model"
    node = _producer(tensor)
    entry = points[index - 1][0] if index > 0 else model.inputs[0]
    if len(node.input_tensors) != 1 or node.input_tensors[0] is not entry:
        return "it is not alone between two single-tensor points"
    return _one_in_one_out(model, nested)


def _one_in_one_out(model: keras.Model, nested: keras.Model) -> str | None:
    """Why `nested` cannot be cut inside as a layer of `model`'s graph, or None."""
    try:
        sizes = len(nested.inputs), len(nested.outputs)
    except (AttributeError, ValueError):  # a subclassed model: no graph to cut
        return "it has no functional graph"
    if sizes != (1, 1):
        return f"it has {sizes[0]} input(s) and {sizes[1]} output(s)"
    calls = sum(node.operation is nested for node in _nodes_in_order(model))
    if calls > 1:
        return f"it is called {calls} times (shared)"
    return None


def _no_frozen_cut(backbone: keras.Model, layers: list, nesting: tuple = ()) -> str:
    """Why no cut of `backbone` is frozen: its first trainable layer (of `layers`, the
    flattened ones `FreezePolicy` counts) comes before them, or lies inside a nested model
    the cut cannot enter (`_one_in_one_out`, or not on the single path), or comes before
    every cut inside it."""
    first = next((layer for layer in layers if layer.trainable_weights), None)
    if first is None:
        return "no point where the backbone could be cut is frozen"
    names = " in ".join(repr(name) for name in reversed(nesting))
    inside = f" inside nested model {names}" if nesting else ""
    for outer in backbone.layers:
        if isinstance(outer, keras.Model) and any(
            layer is first for layer in outer._flatten_layers(include_self=False)
        ):
            why = _one_in_one_out(backbone, outer) or _off_path(backbone, outer)
            if why is None:  # entered: the reason lies inside
                return _no_frozen_cut(outer, flatten_layers(outer), (*nesting, outer.name))
            return (
                f"the trainable layers are inside nested model {outer.name!r} (from "
                f"{first.name!r}) and {why}; the cache cannot cut inside it"
            )
    return (
        f"a trainable backbone layer ({first.name!r}{inside}) comes before every point where "
        "the backbone could be cut"
    )


def _off_path(model: keras.Model, nested: keras.Model) -> str | None:
    """Why `nested` (called once in `model`) is not alone between two cut points, or None."""
    points = cut_points(model)
    for index, point in enumerate(points):
        if point[1] is nested:
            return _enterable(model, points, index)
    return "it is not on the backbone's single path (other tensors are alive beside it)"


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


def _split(assembly, tensor, layer, nesting: tuple = ()) -> FrozenPrefix:
    splits = assembly.__dict__.setdefault("_frozen_prefix_splits", {})
    key = id(tensor)
    if key in splits:
        return splits[key]
    backbone = assembly.backbone.model
    model = assembly.model
    bottom = _chained(_bottom_parts(backbone, tensor, nesting), f"{backbone.name}_bottom")
    activations = BackboneLayer(bottom, inference_mode=True, name="backbone_bottom")(
        assembly.backbone_inputs
    )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    prefix_model = keras.Model(inputs, activations, name=f"{model.name}_prefix")
    # === The tail: activations -> top of the backbone -> head, on the same layers ===
    top = _chained(_top_parts(backbone, tensor, nesting), f"{backbone.name}_top")
    # The shape as the backbone calls it: a nested model built for any image size gives
    # (None, None, c) in its own graph.
    shape = tuple(activations.shape[1:])
    tail_inputs = keras.Input(shape, dtype=tensor.dtype, name="cached_activations")
    features = BackboneLayer(
        top, inference_mode=assembly.backbone_layer.inference_mode, name="backbone_top"
    )(tail_inputs)
    tail_model = TunedModel(tail_inputs, assembly.head_model()(features), name=f"{model.name}_tail")
    layers = assembly.backbone.layers
    position = next((i + 1 for i, entry in enumerate(layers) if entry is layer), None)
    count = f", layer {position} of {len(layers)}" if position else ""
    inside = " in ".join(repr(nested.name) for nested, _ in reversed(nesting))
    inside = f" inside nested model {inside}" if nesting else ""
    split = FrozenPrefix(prefix_model, tail_model, f"{layer.name!r}{inside}{count}", shape)
    splits[key] = split
    return split


def _bottom_parts(graph: keras.Model, tensor, nesting: tuple) -> list:
    """`(input, output)` pairs of the graphs to chain from `graph`'s input to `tensor`, down
    through `nesting`: each level's layers up to the nested model's input, then its bottom."""
    if not nesting:
        return [(graph.inputs[0], tensor)]
    (nested, node), deeper = nesting[0], nesting[1:]
    entry = node.input_tensors[0]
    outer = [] if entry is graph.inputs[0] else [(graph.inputs[0], entry)]
    return outer + _bottom_parts(nested, tensor, deeper)


def _top_parts(graph: keras.Model, tensor, nesting: tuple) -> list:
    """`(input, output)` pairs of the graphs to chain from `tensor` to `graph`'s output: the
    innermost nested model's top, then each enclosing level's layers after the nested model."""
    if not nesting:
        return [(tensor, graph.outputs[0])]
    (nested, node), deeper = nesting[0], nesting[1:]
    exit_ = node.output_tensors[0]
    outer = [] if exit_ is graph.outputs[0] else [(exit_, graph.outputs[0])]
    return _top_parts(nested, tensor, deeper) + outer


def _chained(parts: list, name: str) -> keras.Model:
    """One model running the sub-graphs `parts` (`(input, output)` pairs of tensors, sharing
    their layers) one after another."""
    if len(parts) == 1:
        return keras.Model(*parts[0], name=name)
    first = parts[0][0]
    inputs = keras.Input(batch_shape=first.shape, dtype=first.dtype)
    x = inputs
    for start, end in parts:
        x = keras.Model(start, end)(x)
    return keras.Model(inputs, x, name=name)
